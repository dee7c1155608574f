"""``weightspace align A B`` and ``weightspace canonicalize ZOO``: remove permutation symmetry."""
from __future__ import annotations

import json
import sys

from ..canonicalize import METHODS, align
from ..checkpoint import load_model, save_checkpoint
from ..errors import check_output
from ..functional import check_compatible
from ..symmetry import apply, spec as discover_spec
from ..zoo import DatasetError, check_fits, load_dataset
from .options import POSITIVE, SEED, allow_code, arch_override


def _method_args(p) -> None:
    p.add_argument("--method", choices=METHODS, default="wm",
                   help="wm: weight matching (default); am: activation matching; ste: "
                        "straight-through estimator; transfusion: head-aware attention matching")
    p.add_argument("--dataset", default=None,
                   help="data for am/ste (default: the dataset in the checkpoint metadata)")
    p.add_argument("--data-root", default=None, help="where the dataset files are")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--max-iter", type=POSITIVE, default=None, help="weight-matching sweeps (100)")
    p.add_argument("--steps", type=POSITIVE, default=None, help="STE steps (300)")
    p.add_argument("--pearson", action="store_true", help="am: Pearson correlation")
    p.add_argument("--residual", choices=("identity", "wm"), default=None,
                   help="transfusion: leave the residual stream at identity (default) or "
                        "weight-match it")
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
    kw = {}
    if args.max_iter is not None and args.method in ("wm", "am", "transfusion"):
        kw["max_iter"] = args.max_iter
    if args.steps is not None and args.method == "ste":
        kw["steps"] = args.steps
    if args.pearson and args.method == "am":
        kw["pearson"] = True
    if args.residual and args.method == "transfusion":
        kw["residual"] = args.residual
    return kw


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
    data = load_data(args, ma, args.a) if args.method in ("am", "ste") else None
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
