"""``weightspace generate fit|sample|eval``: learn a zoo's distribution, sample, audit."""
from __future__ import annotations

import json

from ..errors import check_output
from ..generate import METHODS, audit, fit_generator, sample_zoo
from ..generate.config import VELOCITY_KINDS, FlowSettings
from .options import POSITIVE, SEED, allow_code, float_range, int_range


FS = FlowSettings()  # the defaults of `generate fit`


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="flow-matching generator of complete networks",
                       description="Fit a flow-matching generator on a (canonical) zoo, "
                                   "sample new networks as a zoo, and audit them.")
    gs = p.add_subparsers(dest="gen_verb", metavar="GEN_VERB", required=True)
    f = gs.add_parser("fit", help="train a generator on a zoo (resumes an interrupted fit)")
    f.add_argument("zoo", metavar="ZOO_OR_CANON_DIR")
    f.add_argument("--out", required=True, help="generator directory")
    f.add_argument("--steps", type=int_range(1, 10**8), default=FS.steps)
    f.add_argument("--batch-size", type=int_range(1, 10**6), default=FS.batch_size)
    f.add_argument("--lr", type=float_range(0, 100, lo_open=True), default=FS.lr)
    f.add_argument("--width", type=int_range(1, 65536), default=FS.width,
                   help=f"velocity width ({FS.width})")
    f.add_argument("--depth", type=int_range(1, 256), default=FS.depth,
                   help=f"velocity layers ({FS.depth})")
    f.add_argument("--pca", action="store_true", help="model a PCA code of the zoo")
    f.add_argument("--velocity", choices=VELOCITY_KINDS, default=FS.velocity,
                   help="mlp over the code (default), or a transformer over per-layer "
                        "tokens of the full encoding (large models; not with --pca)")
    f.add_argument("--token", type=int_range(1, 10**7), default=FS.token,
                   help="numbers per token (transformer)")
    f.add_argument("--heads", type=int_range(1, 4096), default=FS.heads,
                   help="attention heads (transformer; must divide --width)")
    f.add_argument("--condition", metavar="NAME",
                   help="condition on a per-model metric (e.g. val_acc) or hyperparameter "
                        "(e.g. weight_decay), with classifier-free guidance at sampling")
    f.add_argument("--p-uncond", type=float_range(0, 1, hi_open=True), default=FS.p_uncond,
                   help="probability of dropping the condition in training (0.1)")
    f.add_argument("--no-ot", action="store_true", help="no minibatch OT coupling")
    f.add_argument("--seed", type=SEED, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--json", action="store_true")
    allow_code(f)
    s = gs.add_parser("sample", help="sample N networks into a new zoo directory")
    s.add_argument("gen", metavar="GEN_DIR")
    s.add_argument("-n", type=int_range(1, 100_000), default=100, help="networks (100)")
    s.add_argument("--steps", type=int_range(1, 10_000), default=10,
                   help="ODE steps (fixed-step methods)")
    s.add_argument("--method", choices=METHODS, default="midpoint")
    s.add_argument("--seed", type=SEED, default=0)
    s.add_argument("--condition", metavar="VALUE",
                   help="target value of the generator's condition (its own units), or "
                        "max / min / mean of the zoo's values")
    s.add_argument("--guidance", default="1",
                   help="classifier-free guidance weight w (1 = plain conditional), or "
                        "auto: the w among 1,2,4,6,8 with the best validation accuracy")
    s.add_argument("--data-root")
    s.add_argument("--out", required=True)
    s.add_argument("--json", action="store_true")
    allow_code(s)
    e = gs.add_parser("eval", help="audit a sample zoo against its training zoo")
    e.add_argument("samples", metavar="SAMPLES_DIR")
    e.add_argument("--zoo", required=True, help="the training zoo (canonical or raw)")
    e.add_argument("--ensemble", type=POSITIVE, default=10, help="ensemble size K (10)")
    e.add_argument("--data-root")
    e.add_argument("--out", required=True, help="report directory")
    e.add_argument("--json", action="store_true")
    allow_code(e)


def run(args) -> int:
    check_output(args.out, "dir")
    if args.gen_verb == "fit":
        settings = FlowSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                velocity=args.velocity, width=args.width, depth=args.depth,
                                token=args.token, heads=args.heads, ot=not args.no_ot,
                                seed=args.seed, p_uncond=args.p_uncond)
        res = fit_generator(args.zoo, args.out, settings, pca=args.pca,
                            condition=args.condition,
                            progress=not args.no_progress and not args.json)
        print(json.dumps(res, indent=1) if args.json else
              f"fitted a generator on {res['models']} models (code dim {res['dim']}) in "
              f"{res['train_seconds']:.1f} s; wrote {res['out']}")
    elif args.gen_verb == "sample":
        res = sample_zoo(args.gen, args.out, args.n, args.steps, args.method, args.seed,
                         args.data_root, condition=args.condition, guidance=args.guidance)
        print(json.dumps(res, indent=1) if args.json else
              f"sampled {res['n']} networks in {res['seconds']:.2f} s ({res['nfe']} function "
              f"evaluations" + (f", guidance {res['guidance']:g}" if res["condition"] is not
                                None else "") +
              f"); mean test acc {res['mean_test_acc']:.4f}; wrote {res['out']}")
    else:
        r = audit(args.samples, args.zoo, args.ensemble, data_root=args.data_root,
                  out_dir=args.out)
        if args.json:
            print(json.dumps({k: v for k, v in r.items()}, indent=1))
        else:
            print(open(f"{args.out}/report.md").read())
    return 0
