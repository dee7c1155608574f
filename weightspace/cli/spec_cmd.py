"""``weightspace spec ARCH``: discover, verify and print a model's permutation symmetry."""
from __future__ import annotations

import json
import time

from ..errors import check_output
from .options import SEED, allow_code, arch_override, reads_help

MAX_INPUT_NUMBERS = 2**28  # 1 GiB of float32: far more than any example input needs


def add_parser(sub) -> None:
    p = sub.add_parser(
        "spec", help="discover and verify the permutation symmetry of a model",
        description="Trace ARCH (an architecture reference or a checkpoint) with torch.fx, "
                    "discover its permutation groups, verify them by permuting a perturbed "
                    "copy of the model, and print the result.")
    p.add_argument("arch", metavar="ARCH_OR_CKPT", nargs="?",
                   help=reads_help("e.g. 'resnet20?width=4', 'mlp:64-128-10', "
                                   "'timm:resnet18', or a checkpoint"))
    p.add_argument("--input-shape", default=None,
                   help="example input shape, e.g. 1,3,32,32 (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", help="also write the spec as JSON to this file (atomic; no "
                                 "checkpoint is written)")
    p.add_argument("--no-verify", action="store_true", help="skip the verification forward")
    p.add_argument("--seed", type=SEED, default=0, help="seed of input and permutations")
    p.add_argument("--ops", action="store_true",
                   help="list the ops (functions and methods) whose symmetry rule is modelled "
                        "and what each rule does, then exit")
    arch_override(p, dest="checkpoint_arch")
    allow_code(p)


def _shape(text: str) -> tuple[int, ...]:
    from ..symmetry import SpecError
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise SpecError(f"--input-shape must be integers like 1,3,32,32, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise SpecError(f"--input-shape must be positive integers, got {text!r}")
    n = 1
    for s in shape:
        n *= s
    if n > MAX_INPUT_NUMBERS:
        raise SpecError(f"--input-shape {text}: {n} numbers is more than an example input "
                        f"needs (at most {MAX_INPUT_NUMBERS}); use batch 1 and the model's "
                        f"input size")
    return shape


def run(args) -> int:
    from ..checkpoint import atomic_write_text  # torch: only once there is work to do
    from ..symmetry import SpecError, spec
    from ..symmetry.report import spec_table
    from ..symmetry.rules import list_op_rules
    if args.ops:
        rules = list_op_rules()
        if args.json:
            print(json.dumps(rules, indent=1))
        else:
            w = max(map(len, rules))
            print("\n".join(f"{op:<{w}}  {what}" for op, what in rules.items()))
        return 0
    if args.arch is None:
        raise SpecError("give an architecture reference or a checkpoint (or --ops)")
    t0 = time.perf_counter()
    if args.out is not None:
        check_output(args.out, "file")
    shape = _shape(args.input_shape) if args.input_shape else None
    result = spec(args.arch, shape, check=not args.no_verify, seed=args.seed,
                  arch=args.checkpoint_arch)
    seconds = time.perf_counter() - t0
    obj = result.to_dict()
    obj["seconds"] = round(seconds, 3)
    if args.out:
        atomic_write_text(args.out, json.dumps(obj, indent=1))
    if args.json:
        print(json.dumps(obj))
    else:
        print(spec_table(result, seconds))
    return 0
