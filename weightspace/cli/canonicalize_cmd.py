"""``weightspace canonicalize ZOO_DIR``: put a whole zoo into one basin."""
from __future__ import annotations

import json

from ..errors import check_output
from .align_cmd import _method_args, method_kwargs
from .options import POSITIVE, float_range


def add_parser(sub) -> None:
    p = sub.add_parser("canonicalize", help="align every model of a zoo into one basin",
                       description="Write a canonicalized copy of a zoo: every model permuted "
                                   "to a reference model or to the zoo's barycenter; the "
                                   "permutations are stored so each original is recoverable.")
    p.add_argument("zoo", metavar="ZOO_DIR",
                   help="a zoo (weightspace zoo train / zoo import: one .safetensors file "
                        "per model; other layouts enter through zoo import)")
    p.add_argument("--reference", default="barycenter",
                   help="a model id, or 'barycenter' (default; wm / transfusion)")
    p.add_argument("--out", required=True,
                   help="the canonical zoo directory (new): models/ID.safetensors "
                        "(float32), perms/ID.safetensors, a manifest")
    p.add_argument("--max-rounds", type=POSITIVE, default=20, help="barycenter rounds (20)")
    p.add_argument("--tol", type=float_range(0, 1), default=1e-3,
                   help="barycenter: stop when the RMS distance improves by less (1e-3)")
    p.add_argument("--force", action="store_true", help="replace an existing --out zoo")
    p.add_argument("--no-progress", action="store_true")
    _method_args(p)


def run(args) -> int:
    from ..canonicalize.zoo import canonicalize_zoo  # torch: only once there is work to do
    check_output(args.out, "dir")
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
