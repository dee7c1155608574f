"""``weightspace align A B``: permute B into A's basin; the method flags `canonicalize` shares."""
from __future__ import annotations

import json
import sys

from ..canonicalize import METHODS, align
from ..canonicalize.methods import get_align_method
from ..checkpoint import load_model, save_checkpoint
from ..errors import check_output
from ..functional import check_compatible
from ..symmetry import apply, spec as discover_spec
from ..zoo import DatasetError, check_fits, load_dataset
from .options import SEED, allow_code, arch_override, method_flags, method_options


def _method_args(p) -> None:
    """``--method`` and every method's options, from the registry of alignment methods."""
    method_flags(p, METHODS, get_align_method, METHODS[0])
    p.add_argument("--dataset", default=None,
                   help="data for methods that read it (am, ste; default: the dataset in "
                        "the checkpoint metadata)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    allow_code(p)


def load_data(args, model, path) -> object:
    """The dataset of ``--dataset`` or of the checkpoint's metadata, checked to fit the
    model (am / ste run it)."""
    name = args.dataset or model.weightspace_meta.get("dataset")
    if not name:
        raise DatasetError(f"--method {args.method} needs data: pass --dataset NAME "
                           f"({path} records none)")
    data = load_dataset(name, args.data_root)
    check_fits(model, data, model.weightspace_arch)
    return data


def print_notes(*models) -> None:
    for m in models:
        for n in getattr(m, "weightspace_notes", ()):
            print(f"note: {n}", file=sys.stderr)


def method_kwargs(args) -> dict:
    return method_options(args, get_align_method)


def add_parser(sub) -> None:
    p = sub.add_parser("align", help="permute model B into model A's basin",
                       description="Find the permutation of B's hidden units that brings it "
                                   "closest to A and write the permuted B (same function).")
    p.add_argument("a", metavar="A", help="reference checkpoint")
    p.add_argument("b", metavar="B", help="checkpoint to permute")
    p.add_argument("--out", required=True, help="where to write the aligned B (.safetensors)")
    arch_override(p)
    _method_args(p)


def run(args) -> int:
    check_output(args.out, "file")
    ma = load_model(args.a, arch=args.arch)
    mb = load_model(args.b, arch=args.arch)
    print_notes(ma, mb)
    A, B = ma.state_dict(), mb.state_dict()
    check_compatible([A, B], [args.a, args.b])
    data = load_data(args, ma, args.a) if get_align_method(args.method).needs_data else None
    spec = discover_spec(ma.weightspace_arch)
    perms, rep = align(spec, A, B, args.method, model=ma, data=data, seed=args.seed,
                       **method_kwargs(args))
    meta = {**mb.weightspace_meta, "aligned": {"to": str(args.a), "method": args.method,
                                              "l2_before": rep.l2_before,
                                              "l2_after": rep.l2_after}}
    save_checkpoint(args.out, apply(spec, perms, B), mb.weightspace_arch, meta)
    out = {**rep.to_dict(), "out": args.out}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.method}: L2 distance to A {rep.l2_before:.4f} -> {rep.l2_after:.4f} "
              f"in {rep.seconds:.2f} s ({rep.iterations} iteration(s)); wrote {args.out}")
        for n in rep.notes:
            print(f"  {n}", file=sys.stderr)
    return 0
