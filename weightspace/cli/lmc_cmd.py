"""``weightspace lmc`` (interpolation barriers) and ``weightspace merge`` (many models)."""
from __future__ import annotations

import itertools
import json
import random
import sys
import time
from pathlib import Path

from ..canonicalize import METHODS as ALIGN_METHODS
from ..checkpoint import atomic_write_text, load_model, save_checkpoint
from ..errors import check_output
from ..functional import check_compatible, loss_acc
from ..merge import BN_MODES, LMCError, heatmap, lmc, merge, plot
from ..merge.merging import METHODS as MERGE_METHODS
from ..merge.registry import get_merge_method
from ..symmetry import spec as discover_spec
from ..zoo import DatasetError, Zoo, ZooError, check_fits, load_dataset
from .align_cmd import print_notes
from .options import SEED, allow_code, arch_override, int_range, method_flags, method_options

MAX_POINTS = 1001


def _pairs(text: str):
    if text == "all":
        return text
    return int_range(1, 10**7)(text)


def add_parser(sub) -> None:
    p = sub.add_parser("lmc", help="linear mode connectivity: barriers before/after alignment",
                       description="Interpolate A and B (or every pair of a zoo), report loss "
                                   "and accuracy barriers on train and test before and after "
                                   "alignment, with diagnostics and plots.")
    p.add_argument("models", nargs="*", metavar="CKPT", help="two checkpoints A B")
    p.add_argument("--zoo", help="a zoo: pairwise barrier matrix instead of one pair")
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
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--out", required=True, help="report directory (lmc.json, lmc.png)")
    p.add_argument("--json", action="store_true")
    arch_override(p)
    allow_code(p)

    m = sub.add_parser("merge", help="merge several checkpoints into one",
                       description="Merge checkpoints of one architecture: plain mean, "
                                   "MergeMany or multi-model STE, optionally with REPAIR or a "
                                   "BatchNorm reset on the train split.")
    m.add_argument("models", nargs="+", metavar="CKPT")
    method_flags(m, MERGE_METHODS, get_merge_method, "mergemany")
    post = m.add_mutually_exclusive_group()
    post.add_argument("--repair", action="store_true", help="REPAIR the merged model")
    post.add_argument("--bn-reset", action="store_true", help="recompute BN statistics")
    m.add_argument("--dataset", help="default: the dataset in the first checkpoint's metadata")
    m.add_argument("--data-root")
    m.add_argument("--seed", type=SEED, default=0)
    m.add_argument("--out", required=True, help="merged checkpoint (.safetensors)")
    m.add_argument("--json", action="store_true")
    arch_override(m)
    allow_code(m)


def _data(args, model, required: bool = True):
    name = args.dataset or model.weightspace_meta.get("dataset")
    if not name:
        if required:
            raise DatasetError("no dataset: pass --dataset NAME (the checkpoint records none)")
        return None
    data = load_dataset(name, args.data_root)
    check_fits(model, data, model.weightspace_arch)
    return data


def _load_all(paths, arch: str | None = None):
    models = [load_model(p, arch=arch) for p in paths]
    print_notes(*models)
    check_compatible([m.state_dict() for m in models], [str(p) for p in paths])
    return models


def run_lmc(args) -> int:
    out = check_output(args.out, "dir")
    for name in ("lmc.json", "lmc.png", "barriers.json", "barriers_unaligned.png",
                 "barriers_aligned.png"):
        check_output(out / name, "file")
    if args.zoo:
        if args.models:
            raise LMCError("give two checkpoints A B or --zoo DIR, not both")
        return _pairwise(args)
    if len(args.models) != 2:
        raise LMCError(f"lmc takes two checkpoints A B (got {len(args.models)}), or --zoo DIR")
    ma, mb = _load_all(args.models, args.arch)
    data = _data(args, ma)
    spec = discover_spec(ma.weightspace_arch)
    t = time.perf_counter()
    res = lmc(spec, ma, ma.state_dict(), mb.state_dict(), data, args.align, args.points,
              args.bn, seed=args.seed)
    res["seconds"] = time.perf_counter() - t
    res["a"], res["b"], res["dataset"] = args.models[0], args.models[1], data.name
    final = res.get("aligned", res["unaligned"])
    summary = {"loss_barrier": final["test_loss_barrier"], "acc_barrier": final["test_acc_barrier"],
               "train_loss_barrier": final["train_loss_barrier"],
               "train_acc_barrier": final["train_acc_barrier"],
               "loss_barrier_unaligned": res["unaligned"]["test_loss_barrier"],
               "acc_barrier_unaligned": res["unaligned"]["test_acc_barrier"],
               "t": final["t"], "test_loss": final["test_loss"], "test_acc": final["test_acc"]}
    res = {**summary, **res}
    out = Path(args.out)
    atomic_write_text(out / "lmc.json", json.dumps(res, indent=1) + "\n")
    plot(res, out / "lmc.png")
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"bn between endpoints: {final['bn']}; {args.points} points; {res['seconds']:.1f} s")
    print(f"{'':<12} {'test loss barrier':>17} {'test acc barrier':>16} "
          f"{'train loss barrier':>18} {'train acc barrier':>17}")
    for name in ("unaligned", "aligned"):
        c = res.get(name)
        if c is not None:
            label = name if name == "unaligned" else f"{args.align}"
            print(f"{label:<12} {c['test_loss_barrier']:>17.4f} {c['test_acc_barrier']:>16.4f} "
                  f"{c['train_loss_barrier']:>18.4f} {c['train_acc_barrier']:>17.4f}")
    if "diagnostics" in res:
        d = res["diagnostics"]
        print(f"L2 distance {d['l2_unaligned']:.4f} -> {d['l2_aligned']:.4f} "
              f"(ratio {d['l2_ratio']:.3f}); top-5 singular subspace overlap per layer "
              f"(left, before -> after):")
        for r in d["singular_alignment"]:
            print(f"  {r['param']:<40} {r['left_before']:.3f} -> {r['left_after']:.3f}")
    print(f"wrote {out / 'lmc.json'} and {out / 'lmc.png'}")
    return 0


def _pairwise(args) -> int:
    zoo = Zoo(args.zoo)
    ids = [e["id"] for e in zoo.models("done")]
    if len(ids) < 2:
        raise ZooError(f"{args.zoo}: need at least two finished models")
    pairs = list(itertools.combinations(range(len(ids)), 2))
    if args.pairs != "all":
        pairs = sorted(random.Random(args.seed).sample(pairs, min(args.pairs, len(pairs))))
    models = _load_all([zoo.model_path(i) for i in ids])
    data = _data(args, models[0])
    spec = discover_spec(models[0].weightspace_arch)
    n = len(ids)
    before = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    after = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    t = time.perf_counter()
    for i, j in pairs:
        res = lmc(spec, models[i], models[i].state_dict(), models[j].state_dict(), data,
                  args.align, args.points, args.bn, seed=args.seed)
        before[i][j] = before[j][i] = res["unaligned"]["test_loss_barrier"]
        if "aligned" in res:
            after[i][j] = after[j][i] = res["aligned"]["test_loss_barrier"]
    out = Path(args.out)
    result = {"zoo": args.zoo, "ids": ids, "pairs": [[ids[i], ids[j]] for i, j in pairs],
              "align": args.align, "bn": args.bn, "points": args.points,
              "test_loss_barrier_unaligned": before,
              "test_loss_barrier_aligned": after if args.align != "none" else None,
              "seconds": time.perf_counter() - t}
    atomic_write_text(out / "barriers.json", json.dumps(result, indent=1) + "\n")
    heatmap(before, ids, out / "barriers_unaligned.png", "test loss barrier, unaligned")
    if args.align != "none":
        heatmap(after, ids, out / "barriers_aligned.png", f"test loss barrier, {args.align}")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        vals = [after[i][j] if args.align != "none" else before[i][j] for i, j in pairs]
        print(f"{len(pairs)} pair(s) of {n} models in {result['seconds']:.1f} s; mean test "
              f"loss barrier {sum(before[i][j] for i, j in pairs) / len(pairs):.4f} unaligned"
              + (f", {sum(vals) / len(vals):.4f} after {args.align}" if args.align != "none"
                 else "") + f"; wrote {out / 'barriers.json'}")
    return 0


def run_merge(args) -> int:
    check_output(args.out, "file")
    models = _load_all(args.models, args.arch)
    post = "repair" if args.repair else "reset" if args.bn_reset else "none"
    data = _data(args, models[0], required=get_merge_method(args.method).needs_data
                 or post != "none")
    if data is None and not args.json:
        print("note: no dataset known, so no accuracies are reported", file=sys.stderr)
    spec = discover_spec(models[0].weightspace_arch)
    kw = method_options(args, get_merge_method)
    merged, rep = merge(spec, models[0], [m.state_dict() for m in models], args.method, post,
                        data, seed=args.seed, names=[str(p) for p in args.models], **kw)
    if data is not None:
        x, y = data["test"]
        rep["endpoint_test_accs"] = [loss_acc(m, x, y)[1] for m in models]
        rep["merged_test_acc"] = loss_acc(models[0], x, y, state=merged)[1]
        rep["dataset"] = data.name
    else:
        rep["endpoint_test_accs"], rep["merged_test_acc"] = None, None
    meta = {"merged": {"sources": [str(p) for p in args.models], "method": args.method,
                       "post": post}, "dataset": data.name if data is not None else None}
    save_checkpoint(args.out, merged, models[0].weightspace_arch, meta)
    rep["out"] = args.out
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    line = f"{args.method} of {len(models)} model(s), post {post}: wrote {args.out} " \
           f"in {rep['seconds']:.2f} s"
    if rep["merged_test_acc"] is not None:
        accs = rep["endpoint_test_accs"]
        line += (f"; test acc merged {rep['merged_test_acc']:.4f} vs endpoints mean "
                 f"{sum(accs) / len(accs):.4f} (min {min(accs):.4f}, max {max(accs):.4f})")
    print(line)
    return 0


def run(args) -> int:
    return run_merge(args) if args.verb == "merge" else run_lmc(args)
