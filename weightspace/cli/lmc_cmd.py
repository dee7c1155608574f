"""``weightspace lmc`` (interpolation barriers) and ``weightspace merge`` (many models)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..canonicalize.methods import ALIGN_METHODS
from ..merge.methods import MERGE_METHODS
from ..merge.registry import BN_MODES, MergeError, get_merge_method
from ..merge.taskvector.methods import TASK_VECTOR_METHODS as TV_METHODS
from ..merge.taskvector.recipe import ALIGN, DTYPES, HEADS
from .options import (SEED, allow_code, arch_override, checkpoint_output, device, float_range,
                      int_range, method_flags, method_options, reads_help, restarts, verbose)

MAX_POINTS = 1001


def _pairs(text: str):
    if text == "all":
        return text
    return int_range(1, 10**7)(text)


def _common(p, out_help: str | None) -> None:
    """The flags lmc and merge share: seed, restarts, output, JSON, --arch, --allow-code."""
    p.add_argument("--seed", type=SEED, default=0)
    restarts(p)
    device(p)
    if out_help is None:
        checkpoint_output(p, "the merged checkpoint, in the first input's precision")
    else:
        p.add_argument("--out", required=True, help=out_help)
        verbose(p)
    p.add_argument("--json", action="store_true")
    arch_override(p)
    allow_code(p)


def add_parser(sub) -> None:
    p = sub.add_parser("lmc", help="linear mode connectivity: barriers before/after alignment",
                       description="Interpolate A and B (or every pair of a zoo), report loss "
                                   "and accuracy barriers on train and test before and after "
                                   "alignment, with diagnostics and plots.")
    p.add_argument("models", nargs="*", metavar="CKPT", help=reads_help("two checkpoints A B"))
    p.add_argument("--zoo", help="a zoo (its .safetensors models): pairwise barrier matrix "
                                 "instead of one pair")
    p.add_argument("--pairs", type=_pairs, default="all",
                   help="with --zoo: 'all' or a number of random pairs (default all)")
    p.add_argument("--dataset", help="default: the dataset in A's metadata")
    p.add_argument("--data-root")
    p.add_argument("--align", choices=("none", *ALIGN_METHODS), default="wm")
    p.add_argument("--points", type=int_range(2, MAX_POINTS), default=25,
                   help=f"interpolation points including the endpoints (25; 2-{MAX_POINTS})")
    p.add_argument("--bn", choices=BN_MODES, default="reset",
                   help="between the endpoints: reset BN statistics on train data (default), "
                        "REPAIR, or keep the interpolated buffers")
    _common(p, "report directory (lmc.json, lmc.png)")

    m = sub.add_parser("merge", help="merge several checkpoints into one",
                       description="Merge checkpoints of one architecture: plain mean, "
                                   "MergeMany or multi-model STE, optionally with REPAIR or a "
                                   "BatchNorm reset on the train split (--method mean "
                                   "without post-processing streams: one tensor per input "
                                   "in memory at a time); or fine-tunes of one base with a "
                                   "task-vector method (mergekit's names and parameters: "
                                   + ", ".join(TV_METHODS) + "), from flags or a mergekit "
                                   "YAML recipe, streamed one tensor at a time.")
    m.add_argument("models", nargs="*", metavar="CKPT",
                   help=reads_help("checkpoints of one architecture"))
    method_flags(m, MERGE_METHODS, get_merge_method, "mergemany")
    m._option_string_actions["--method"].choices = (*MERGE_METHODS, *TV_METHODS)
    _taskvector_flags(m)
    post = m.add_mutually_exclusive_group()
    post.add_argument("--repair", action="store_true", help="REPAIR the merged model")
    post.add_argument("--bn-reset", action="store_true", help="recompute BN statistics")
    m.add_argument("--dataset", help="default: the dataset in the first checkpoint's metadata")
    m.add_argument("--data-root")
    _common(m, None)


def _floats(text: str) -> list[float]:
    """``0.5`` or ``0.3,0.7`` (one value per model)."""
    parse = float_range()
    return [parse(x) for x in text.split(",")]


def _taskvector_flags(m) -> None:
    """The flags of task-vector merges (mergekit's parameters; see the recipe keys)."""
    g = m.add_argument_group("task-vector merges (fine-tunes of one base)")
    g.add_argument("--recipe", metavar="YAML",
                   help="a mergekit recipe (merge_method, base_model, models, parameters, "
                        "dtype); instead of CKPTs, --method and the flags below")
    g.add_argument("--base", metavar="CKPT", help="the base model the task vectors are "
                   "taken against (mergekit's base_model)")
    g.add_argument("--weight", type=_floats, metavar="W[,W...]",
                   help="each model's weight: one value, or one per CKPT (1.0)")
    g.add_argument("--density", type=_floats, metavar="D[,D...]",
                   help="fraction of each task vector kept, in (0, 1] (1.0)")
    g.add_argument("--gamma", type=_floats, metavar="G[,G...]",
                   help="breadcrumbs: fraction of largest entries removed (0.01)")
    g.add_argument("--lambda", dest="lambda_", type=float_range(), metavar="L",
                   help="scale of the mixed task vector (1.0)")
    g.add_argument("--normalize", choices=("true", "false"),
                   help="divide by the sum of the weights (method's default)")
    g.add_argument("--rescale", choices=("true", "false"),
                   help="DARE / sparsified task vectors rescaled to their L1 norm "
                        "(method's default)")
    g.add_argument("--t", type=float_range(0, 1), help="slerp: 0 the base, 1 the other model")
    g.add_argument("--filter-wise", action="store_true", default=None,
                   help="model_stock: one angle per output row")
    g.add_argument("--out-dtype", choices=DTYPES,
                   help="task-vector methods: output dtype (default: --dtype, which for them "
                        "is mergekit's dtype: inputs cast to it, arithmetic in it)")
    g.add_argument("--align", dest="tv_align", choices=ALIGN, default=None,
                   help="permute each model into the base's basin before its task vector "
                        "is taken (none)")
    g.add_argument("--heads", choices=HEADS, default=None,
                   help="tensors whose shapes differ between models (a head per task): "
                        "refuse (default) or keep the base's")


TV_FLAGS = ("base", "weight", "density", "gamma", "lambda_", "normalize", "rescale", "t",
            "filter_wise", "out_dtype", "tv_align", "heads")


def _notes(res: dict) -> None:
    for n in (*res.get("load_notes", ()), *res.get("notes", ())):
        print(f"note: {n}", file=sys.stderr)


def run_lmc(args) -> int:
    if args.zoo:
        if args.models:
            raise MergeError("give two checkpoints A B or --zoo DIR, not both")
        return _pairwise(args)
    if len(args.models) != 2:
        raise MergeError(f"lmc takes two checkpoints A B (got {len(args.models)}), or --zoo DIR")
    from ..merge.files import lmc_checkpoints  # torch: only once there is work to do
    res = lmc_checkpoints(*args.models, args.out, args.align, args.points, args.bn,
                          arch=args.arch, dataset=args.dataset, data_root=args.data_root,
                          seed=args.seed, restarts=args.restarts, device=args.device)
    _notes(res)
    if args.verbose:
        print(f"peak memory (RSS): {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    final = res.get("aligned", res["unaligned"])
    print(f"bn between endpoints: {final['bn']}; {args.points} points; {res['seconds']:.1f} s "
          f"on {res['device']}")
    print(f"{'':<12} {'test loss barrier':>17} {'test acc barrier':>16} "
          f"{'train loss barrier':>18} {'train acc barrier':>17}")
    for name in ("unaligned", "aligned"):
        c = res.get(name)
        if c is not None:
            label = name if name == "unaligned" else f"{args.align}"
            print(f"{label:<12} {c['test_loss_barrier']:>17.4f} {c['test_acc_barrier']:>16.4f} "
                  f"{c['train_loss_barrier']:>18.4f} {c['train_acc_barrier']:>17.4f}")
    if "barrier_spread" in res:
        s = res["barrier_spread"]
        kept = next(r for r in res["restarts"] if r["kept"])
        print(f"{len(res['restarts'])} restarts: aligned test loss barrier {s['min']:.4f} .. "
              f"{s['max']:.4f} (mean {s['mean']:.4f}); kept seed {kept['seed']} (lowest "
              f"train midpoint loss)")
    if "diagnostics" in res:
        d = res["diagnostics"]
        print(f"L2 distance {d['l2_unaligned']:.4f} -> {d['l2_aligned']:.4f} "
              f"(ratio {d['l2_ratio']:.3f}); top-5 singular subspace overlap per layer "
              f"(left, before -> after):")
        for r in d["singular_alignment"]:
            print(f"  {r['param']:<40} {r['left_before']:.3f} -> {r['left_after']:.3f}")
    out = Path(args.out)
    print(f"wrote {out / 'lmc.json'} and {out / 'lmc.png'}")
    return 0


def _pairwise(args) -> int:
    from ..merge.files import barrier_matrix
    result = barrier_matrix(args.zoo, args.out, args.align, args.points, args.bn, args.pairs,
                            dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                            restarts=args.restarts, device=args.device)
    if args.verbose:
        print(f"peak memory (RSS): {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    ids, pairs = result["ids"], [(result["ids"].index(a), result["ids"].index(b))
                                 for a, b in result["pairs"]]
    before, after = result["test_loss_barrier_unaligned"], result["test_loss_barrier_aligned"]
    vals = [after[i][j] if after is not None else before[i][j] for i, j in pairs]
    print(f"{len(pairs)} pair(s) of {len(ids)} models in {result['seconds']:.1f} s on "
          f"{result['device']}; mean test "
          f"loss barrier {sum(before[i][j] for i, j in pairs) / len(pairs):.4f} unaligned"
          + (f", {sum(vals) / len(vals):.4f} after {args.align}" if after is not None
             else "") + f"; wrote {Path(args.out) / 'barriers.json'}")
    return 0


def run_merge(args) -> int:
    if args.recipe or args.method in TV_METHODS:
        return run_taskvector(args)
    given = [f for f in TV_FLAGS if getattr(args, f) is not None]
    if given:
        raise MergeError(f"--{given[0].rstrip('_').replace('_', '-')} is for task-vector "
                       f"methods ({', '.join(TV_METHODS)}), not {args.method!r}")
    if not args.models:
        raise MergeError("give the checkpoints to merge")
    post = "repair" if args.repair else "reset" if args.bn_reset else "none"
    from ..merge.files import merge_checkpoints
    rep = merge_checkpoints(args.models, args.out, args.method, post, arch=args.arch,
                            dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                            restarts=args.restarts, device=args.device, dtype=args.dtype,
                            max_shard_size=args.max_shard_size,
                            **method_options(args, get_merge_method))
    _notes(rep)
    from .align_cmd import print_written
    print_written(rep, args)
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    if rep["merged_test_acc"] is None:
        print("note: no dataset known, so no accuracies are reported", file=sys.stderr)
    line = f"{args.method} of {rep['models']} model(s), post {post}: wrote {args.out} " \
           f"in {rep['seconds']:.2f} s on {rep['device']}"
    if rep["merged_test_acc"] is not None:
        accs = rep["endpoint_test_accs"]
        line += (f"; test acc merged {rep['merged_test_acc']:.4f} vs endpoints mean "
                 f"{sum(accs) / len(accs):.4f} (min {min(accs):.4f}, max {max(accs):.4f})")
    print(line)
    return 0


def _bool(text):
    return None if text is None else text == "true"


def run_taskvector(args) -> int:
    """A task-vector merge: from ``--recipe`` or from the flags (one typed recipe)."""
    from ..merge.taskvector.files import merge_recipe
    from ..merge.taskvector.recipe import Recipe, recipe_dict
    if args.repair or args.restarts != 1 or args.device != "auto":
        flag = "--repair" if args.repair else "--restarts" if args.restarts != 1 \
            else "--device"
        raise MergeError(f"{flag} is for permutation merges, not task-vector methods")
    if args.recipe:
        given = [f for f in TV_FLAGS + ("dtype",) if getattr(args, f) is not None]
        if args.models or given or args.seed != 0 or args.bn_reset or args.dataset:
            what = "CKPTs" if args.models else f"--{given[0].rstrip('_')}" if given else \
                "--seed / --bn-reset / --dataset"
            raise MergeError(f"give a recipe or {what}, not both (the recipe says everything; "
                           f"weightspace settings go under its 'weightspace:' key)")
        recipe = Recipe.from_yaml(args.recipe)
    else:
        if not args.models:
            raise MergeError(f"{args.method!r} merges the CKPTs given (or a --recipe)")
        shared = {"lambda": args.lambda_, "normalize": _bool(args.normalize),
                  "rescale": _bool(args.rescale), "t": args.t,
                  "filter_wise": args.filter_wise}
        weight = args.weight
        if weight is None and Recipe.param_of(args.method, "weight"):
            weight = [1.0]
            print("note: default weight=1.0 for every model", file=sys.stderr)
        recipe = Recipe.from_dict(recipe_dict(
            args.method, args.models, args.base,
            {k: v for k, v in shared.items() if Recipe.param_of(args.method, k)},
            args.dtype, args.out_dtype, args.seed, args.tv_align or "none",
            "reset" if args.bn_reset else "base", args.heads or "refuse", args.dataset,
            weight=weight, density=args.density, gamma=args.gamma), "arguments")
    for n in recipe.notes:
        print(f"note: {n}", file=sys.stderr)
    defaults = recipe.defaults()
    if defaults:
        print("defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()),
              file=sys.stderr)
    rep = merge_recipe(recipe, args.out, arch=args.arch, data_root=args.data_root,
                       max_shard_size=args.max_shard_size)
    for n in rep["notes"][len(recipe.notes):]:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        print(json.dumps({**rep, "recipe": recipe.to_dict()}, indent=1))
        return 0
    line = (f"{recipe.merge_method} of {len(rep['inputs'])} checkpoint(s): {rep['merged']} "
            f"tensors merged, {len(rep['from_base'])} from the base")
    if rep["heads_from_base"]:
        line += f", {len(rep['heads_from_base'])} of differing shapes from the base"
    if "align" in rep:
        moved = sum(r["units_moved"] for r in rep["align"]["models"])
        line += f"; aligned with {rep['align']['method']} ({moved} units moved)"
    print(f"{line}; wrote {args.out} in {rep['seconds']:.2f} s")
    return 0


def run(args) -> int:
    return run_merge(args) if args.verb == "merge" else run_lmc(args)
