"""``weightspace align A B``: permute B into A's basin; the method flags `canonicalize` shares."""
from __future__ import annotations

import json
import sys

from ..canonicalize.methods import METHODS, get_align_method
from .options import (SEED, allow_code, arch_override, checkpoint_output, device, method_flags,
                      method_options, reads_help, restarts)


def _method_args(p) -> None:
    """``--method`` and every method's options, from the registry of alignment methods."""
    method_flags(p, METHODS, get_align_method, METHODS[0])
    p.add_argument("--dataset", default=None,
                   help="data for methods that read it (am, ste; default: the dataset in "
                        "the checkpoint metadata)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--seed", type=SEED, default=0)
    restarts(p)
    device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    allow_code(p)


def method_kwargs(args) -> dict:
    return method_options(args, get_align_method)


def add_parser(sub) -> None:
    p = sub.add_parser("align", help="permute model B into model A's basin",
                       description="Find the permutation of B's hidden units that brings it "
                                   "closest to A and write the permuted B (same function).")
    p.add_argument("a", metavar="A", help=reads_help("reference checkpoint"))
    p.add_argument("b", metavar="B", help="checkpoint to permute (same layouts as A)")
    checkpoint_output(p, "where to write the aligned B, in B's precision")
    arch_override(p)
    _method_args(p)


def run(args) -> int:
    from ..canonicalize.files import align_checkpoints  # torch: only once there is work
    rep = align_checkpoints(args.a, args.b, args.out, args.method, arch=args.arch,
                            dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                            restarts=args.restarts, device=args.device, dtype=args.dtype,
                            max_shard_size=args.max_shard_size, **method_kwargs(args))
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"{args.method}: L2 distance to A {rep['l2_before']:.4f} -> "
              f"{rep['l2_after']:.4f} in {rep['seconds']:.2f} s ({rep['iterations']} "
              f"iteration(s), device {rep['device']}); wrote {args.out}")
    for n in rep["load_notes"] + ([] if args.json else rep["notes"]):
        print(f"note: {n}", file=sys.stderr)
    print_written(rep, args)
    return 0


def print_written(rep: dict, args) -> None:
    """The output choices a user did not pass (dtype, shard size) and, with --verbose, the
    peak memory; on stderr so --json stays one object."""
    if not args.json:
        print(f"note: dtype {rep['dtype']}" + (f", max shard size {rep['max_shard_size']}"
                                               if "max_shard_size" in rep else ""),
              file=sys.stderr)
    if args.verbose:
        print(f"peak memory (RSS): {rep['peak_rss_mb']:.0f} MB", file=sys.stderr)
