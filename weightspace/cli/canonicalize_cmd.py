"""``weightspace canonicalize ZOO_DIR``: put a whole zoo into one basin."""
from __future__ import annotations

import json

from ..errors import WeightspaceError, check_output
from .align_cmd import _method_args, method_kwargs
from .options import POSITIVE, float_range, int_range

CORRECTIONS = ("auto", "bn", "repair", "none")  # merge.mixing.CORRECTIONS (no torch here)


def add_parser(sub) -> None:
    p = sub.add_parser("canonicalize", help="align every model of a zoo into one basin",
                       description="Write a canonicalized copy of a zoo: every model permuted "
                                   "to a reference model or to the zoo's barycenter; the "
                                   "permutations are stored so each original is recoverable.")
    p.add_argument("zoo", metavar="ZOO_DIR",
                   help="a zoo (weightspace zoo train / zoo import: one .safetensors file "
                        "per model; other layouts enter through zoo import)")
    p.add_argument("--reference", default="barycenter",
                   help="a model id, or 'barycenter' (default; for am: the mean of the "
                        "aligned models' features; for ste: the mean of the aligned zoo, "
                        "BatchNorm recalibrated; until no permutation changes)")
    p.add_argument("--out", default=None,
                   help="the canonical zoo directory (new); with --probe, a JSON report")
    p.add_argument("--probe", action="store_true",
                   help="write no zoo: measure the validation accuracy of random means of 2 "
                        "and 4 canonical models (corrected as generated samples are) "
                        "against single models, and say whether the zoo is mixable enough "
                        "to generate from; a canonical ZOO_DIR is probed as it is")
    p.add_argument("--as-is", action="store_true",
                   help="--probe: the models as they are, not aligned (e.g. a "
                        "shared-initialisation zoo)")
    p.add_argument("--correction", choices=CORRECTIONS, default="auto",
                   help="--probe: the statistic correction of mixtures (auto: BN reset for "
                        "BatchNorm nets, REPAIR for LayerNorm / GroupNorm / no-norm nets)")
    p.add_argument("--draws", type=int_range(1, 1000), default=3,
                   help="--probe: random mixtures per size (default 3)")
    p.add_argument("--max-rounds", type=POSITIVE, default=20, help="barycenter rounds (20)")
    p.add_argument("--tol", type=float_range(0, 1), default=1e-3,
                   help="barycenter: stop when the RMS distance improves by less (1e-3)")
    p.add_argument("--force", action="store_true", help="replace an existing --out zoo")
    p.add_argument("--no-progress", action="store_true")
    _method_args(p)


def run(args) -> int:
    if args.probe:
        return _probe(args)
    if args.out is None:
        raise WeightspaceError("canonicalize needs --out (the canonical zoo directory), "
                               "unless --probe")
    from ..canonicalize.zoo import canonicalize_zoo  # torch: only once there is work to do
    check_output(args.out, "dir", "--out")
    rep = canonicalize_zoo(args.zoo, args.out, args.method, args.reference,
                           data_root=args.data_root, seed=args.seed, max_rounds=args.max_rounds, tol=args.tol,
                           force=args.force, progress=not args.no_progress and not args.json,
                           restarts=args.restarts, device=args.device,
                           **method_kwargs(args))
    if not rep.pop("main_process"):
        return 0  # another process of an `accelerate launch` run reports
    if args.json:
        print(json.dumps({**rep, "out": args.out}, indent=1))
    else:
        print(f"{args.method} to {args.reference}: {rep['models']} models, RMS L2 to the "
              f"barycenter {rep['l2_to_barycenter_before']:.4f} -> "
              f"{rep['l2_to_barycenter_after']:.4f} in {rep['seconds']:.1f} s "
              f"({rep['rounds']} round(s), device {rep['device']}); wrote {args.out}")
    return 0


def _probe(args) -> int:
    """``--probe``: the mixability table and verdict; a JSON report with --out."""
    import sys

    from ..checkpoint import atomic_write_text
    from ..merge.probe import probe_zoo
    from ..zoo.store import Zoo
    if args.out is not None:
        check_output(args.out, "file")
    canonical = "canonicalization" in Zoo(args.zoo).read()
    method = None if canonical else "none" if args.as_is else args.method
    if canonical and not args.as_is:
        print("note: ZOO_DIR is canonical: probed as it is (--method not used)",
              file=sys.stderr)
    rep = probe_zoo(args.zoo, method, args.reference, args.correction, args.draws, args.seed,
                    data_root=args.data_root, device=args.device, max_rounds=args.max_rounds,
                    progress=not args.no_progress and not args.json, **method_kwargs(args))
    if args.out is not None:
        atomic_write_text(args.out, rep.to_json() + "\n")
    if args.json:
        print(rep.to_json())
        return 0
    for n in rep.notes:
        print(f"note: {n}", file=sys.stderr)
    print("\n".join(rep.table()))
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
