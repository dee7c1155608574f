"""``weightspace generate fit|sample|eval|run``: learn a zoo's distribution, sample,
audit; or all of it (canonicalizing first if needed) in one resumable command."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import check_output
from ..generate.config import (AUTO, DEFAULT_SOLVER, GUIDANCE_GRID, MAX_MIX, ODE_SOLVERS,
                               PASS_BUDGET, SOLVER_GRID, VELOCITY_KINDS, FlowSettings,
                               SampleSettings, describe_defaults, solver_name)
from .options import POSITIVE, SEED, allow_code, float_range, int_range


FS = FlowSettings()  # the defaults of `generate fit`


def _recipe_args(p) -> None:
    """The fit recipe's flags, shared by ``fit`` and ``run``."""
    p.add_argument("--steps", type=int_range(1, 10**8), default=FS.steps,
                   help=f"generator training steps ({FS.steps})")
    p.add_argument("--batch-size", type=int_range(1, 10**6), default=FS.batch_size)
    p.add_argument("--lr", type=float_range(0, 100, lo_open=True), default=FS.lr)
    p.add_argument("--width", type=int_range(1, 65536), default=FS.width,
                   help=f"velocity width ({FS.width})")
    p.add_argument("--depth", type=int_range(1, 256), default=FS.depth,
                   help=f"velocity layers ({FS.depth})")
    p.add_argument("--pca", action=argparse.BooleanOptionalAction, default=None,
                   help="model a PCA code of the zoo (default: automatic, on when the zoo "
                        "has fewer models than parameters and the velocity is mlp)")


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="flow-matching generator of complete networks",
                       description="Fit a flow-matching generator on a (canonical) zoo, "
                                   "sample new networks as a zoo, and audit them.")
    gs = p.add_subparsers(dest="gen_verb", metavar="GEN_VERB", required=True)
    f = gs.add_parser("fit", help="train a generator on a zoo (resumes an interrupted fit)")
    f.add_argument("zoo", metavar="ZOO_OR_CANON_DIR")
    f.add_argument("--out", required=True, help="generator directory")
    _recipe_args(f)
    f.add_argument("--velocity", choices=VELOCITY_KINDS, default=FS.velocity,
                   help="mlp over the code (default), or a transformer over per-layer "
                        "tokens of the full encoding (large models; not with --pca)")
    f.add_argument("--token", type=int_range(1, 10**7), default=FS.token,
                   help="numbers per token (transformer)")
    f.add_argument("--heads", type=int_range(1, 4096), default=FS.heads,
                   help="attention heads (transformer; must divide --width)")
    f.add_argument("--condition", metavar="NAME", default=AUTO,
                   help="condition on a per-model metric (e.g. val_acc) or hyperparameter "
                        "(e.g. weight_decay), with classifier-free guidance at sampling; "
                        "none: unconditional (default: auto, val_acc when every "
                        "finished model has it, else train_loss)")
    f.add_argument("--p-uncond", type=float_range(0, 1, hi_open=True), default=FS.p_uncond,
                   help="probability of dropping the condition in training (0.1)")
    f.add_argument("--no-ot", action="store_true", help="no minibatch OT coupling")
    f.add_argument("--no-probe", action="store_true",
                   help="skip the mixability probe before the fit (default: probe the zoo's "
                        "mixtures on validation data, print and record the result, and say "
                        "when samples would be near-copies or inaccurate)")
    f.add_argument("--seed", type=SEED, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--json", action="store_true")
    allow_code(f)
    s = gs.add_parser("sample", help="sample N networks into a new zoo directory")
    s.add_argument("gen", metavar="GEN_DIR")
    s.add_argument("-n", type=int_range(1, 100_000), default=100, help="networks (100)")
    _solver_args(s, "--steps")
    s.add_argument("--seed", type=SEED, default=0)
    s.add_argument("--condition", metavar="VALUE", default=AUTO,
                   help="target value of the generator's condition (its own units), max / "
                        "min / mean of the zoo's values, or none (default: the zoo's best "
                        "value when the generator is conditional: min for a loss, else max)")
    s.add_argument("--guidance", default=None,
                   help="classifier-free guidance weight w (1 = plain conditional), or "
                        f"auto: the w among {GUIDANCE_GRID[0]:g}-{GUIDANCE_GRID[-1]:g} with "
                        "the best validation accuracy under the validation novelty limit "
                        "(default: auto when sampling with a condition, else 1)")
    _mix_arg(s)
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
    r = gs.add_parser("run", help="the whole path: canonicalize (if needed), fit, sample, "
                                  "audit; resumable stage by stage",
                      description="Canonicalize ZOO (only if its manifest has no "
                                  "canonicalization record; the method the mixability "
                                  "probe measures best, see --canonicalize) into "
                                  "OUT/canonical, fit OUT/generator, sample OUT/samples and "
                                  "audit them into OUT/report. Rerunning skips finished "
                                  "stages and resumes an interrupted fit. Unset options "
                                  "follow the best measured recipe, as in fit and sample.")
    r.add_argument("zoo", metavar="ZOO_DIR")
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--canonicalize", default="auto", metavar="METHOD",
                   help="how a zoo without a canonicalization record is canonicalized: auto "
                        "(default: the method whose mixtures the probe measures most "
                        "accurate on validation: none, wm or am), none (as it is), or an "
                        "alignment method")
    _recipe_args(r)
    r.add_argument("--condition", metavar="NAME", default=AUTO,
                   help="fit condition: a metric or hyperparameter name, or none (default: "
                        "auto, val_acc when every finished model has it, else train_loss)")
    r.add_argument("-n", type=int_range(1, 100_000), default=100, help="samples (100)")
    _solver_args(r, "--sample-steps")
    r.add_argument("--target", metavar="VALUE", default=AUTO,
                   help="sampling target of the condition (a value, max / min / mean, or "
                        "none; default: the zoo's best value when the generator is conditional: "
                        "min for a loss, else max)")
    r.add_argument("--guidance", default=None,
                   help="guidance weight, or auto (default: auto with a condition, else 1)")
    _mix_arg(r)
    r.add_argument("--ensemble", type=POSITIVE, default=10, help="audit ensemble size (10)")
    r.add_argument("--seed", type=SEED, default=0)
    r.add_argument("--data-root")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--json", action="store_true")
    allow_code(r)


def _solver_args(p, steps_flag: str) -> None:
    auto = (f"default: auto, the solver and steps chosen on validation with the guidance "
            f"and mix among {', '.join(f'{m} x{s}' for m, s in SOLVER_GRID)}, within "
            f"{PASS_BUDGET} network passes per network; passing one of --method / "
            f"{steps_flag} fixes the solver, the other then {DEFAULT_SOLVER[0]} / "
            f"{DEFAULT_SOLVER[1]}")
    p.add_argument(steps_flag, type=int_range(1, 10_000), default=None,
                   help=f"ODE steps of a fixed-step method ({auto})")
    p.add_argument("--method", choices=ODE_SOLVERS, default=None, help="ODE solver (see "
                   f"{steps_flag})")


def _mix(text: str):
    if text == AUTO:
        return text
    return int_range(1, MAX_MIX)(text)


def _mix_arg(p) -> None:
    p.add_argument("--mix", type=_mix, default=None, metavar="K",
                   help="average K flow samples into each network, or auto (default: auto, "
                        "chosen on validation with the guidance weight and the solver)")
    p.add_argument("--correction", choices=("auto", "bn", "repair", "none"), default="auto",
                   help="statistics of each sample: bn (BatchNorm recalibrated on train "
                        "data), repair (units set to the code's mixture of the zoo's "
                        "statistics), none; auto (default): bn for BatchNorm nets, repair "
                        "for LayerNorm / GroupNorm nets, none for the others")


def _settings(args) -> FlowSettings:
    return FlowSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        velocity=getattr(args, "velocity", FS.velocity), width=args.width,
                        depth=args.depth, token=getattr(args, "token", FS.token),
                        heads=getattr(args, "heads", FS.heads),
                        ot=not getattr(args, "no_ot", False), seed=args.seed,
                        p_uncond=getattr(args, "p_uncond", FS.p_uncond))


def _sampling(args, steps: int | None, condition) -> SampleSettings:
    """The sampling flags as the typed settings the library validates."""
    return SampleSettings(method=args.method, steps=steps, guidance=args.guidance,
                          mix=args.mix, condition=condition, correction=args.correction)


def run(args) -> int:
    from ..generate import audit, fit_generator, sample_zoo  # torch: only once there is work
    from ..generate.run import run_generation
    check_output(args.out, "dir", "--out")
    if args.gen_verb == "fit":
        res = fit_generator(args.zoo, args.out, _settings(args), pca=args.pca,
                            condition=args.condition, probe=not args.no_probe,
                            progress=not args.no_progress and not args.json)
        print(describe_defaults(res["defaults"]), file=sys.stderr)
        print(json.dumps(res.to_json(), indent=1) if args.json else
              f"fitted a generator on {res['models']} models (code dim {res['dim']}) in "
              f"{res['train_seconds']:.1f} s; wrote {res['out']}")
    elif args.gen_verb == "sample":
        res = sample_zoo(args.gen, args.out, args.n, seed=args.seed, data_root=args.data_root,
                         settings=_sampling(args, args.steps, args.condition))
        print(describe_defaults(res["defaults"]), file=sys.stderr)
        why = (res["guidance_choice"] or {}).get("undecided")
        if why:
            print(why["message"], file=sys.stderr)
        print(json.dumps(res.to_json(), indent=1) if args.json else
              f"sampled {res['n']} networks in {res['seconds']:.2f} s ({res['nfe']} function "
              f"evaluations, {solver_name(res['method'], res['steps'])}" +
              (f", guidance {res['guidance']:g}" if res["condition"] is not None else "") +
              f", mix {res['mix']}, {res['network_passes']} passes per network" +
              f"); mean test acc {res['mean_test_acc']:.4f}; wrote {res['out']}")
    elif args.gen_verb == "run":
        res = run_generation(args.zoo, args.out, _settings(args), pca=args.pca,
                             condition=args.condition, n=args.n,
                             sampling=_sampling(args, args.sample_steps, args.target),
                             seed=args.seed, ensemble=args.ensemble, data_root=args.data_root,
                             canonicalize=args.canonicalize,
                             progress=not args.no_progress and not args.json,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
        if args.json:
            out = res.to_json()
            print(json.dumps({k: out[k] for k in ("out", "canonical", "generator", "samples",
                                                   "report", "stages", "fit", "sample",
                                                   "seconds")} |
                             {"audit": {k: res["audit"].get(k) for k in
                                        ("generated", "zoo", "nfe")}}, indent=1, default=str))
        else:
            print(open(res["report"]).read())
    else:
        r = audit(args.samples, args.zoo, args.ensemble, data_root=args.data_root,
                  out_dir=args.out)
        if args.json:
            print(json.dumps(r.to_json(), indent=1))
        else:
            print(open(f"{args.out}/report.md").read())
    return 0
