"""Merging 2, 4, 8, 16 models by mean / MergeMany / STE, with and without REPAIR, against
the ensemble (averaged logits) of the same models. Test accuracy on the dataset's test
split; everything the merges select on uses train / validation only.

    .venv/bin/python studies/merge_many_study.py --out runs/merge_many
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.func import functional_call

from weightspace.arch import build
from weightspace.functional import loss_acc
from weightspace.merge import merge
from weightspace.symmetry import symmetry_of
from weightspace.zoo import HParams, load_dataset, train_batched


def ensemble_acc(model, states, x, y) -> float:
    with torch.no_grad():
        model.eval()
        logits = sum(functional_call(model, s, (x,)).softmax(-1) for s in states)
    return float((logits.argmax(1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mlp:64-128-128-128-10")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--counts", default="2,4,8,16")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--ste-steps", type=int, default=100)
    p.add_argument("--out", default="runs/merge_many")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset)
    x, y = data["train"]
    xt, yt = data["test"]
    counts = [int(c) for c in args.counts.split(",")]
    states = train_batched(args.arch, list(range(max(counts))), HParams(epochs=args.epochs),
                           x, y)
    model = build(args.arch)
    spec = symmetry_of(model.eval(), x[:1])
    rows = []
    cols = [(m, post) for m in ("mean", "mergemany", "ste") for post in ("none", "repair")]
    print(f"{'N':>3} {'endpoints':>9} {'ensemble':>9} " +
          " ".join(f"{m + ('+R' if post == 'repair' else ''):>12}" for m, post in cols))
    for n in counts:
        sub = states[:n]
        row = {"n": n, "endpoint_mean": statistics.fmean(loss_acc(model, xt, yt, state=s)[1]
                                                        for s in sub),
               "ensemble": ensemble_acc(model, sub, xt, yt)}
        for method, post in cols:
            kw = {"steps": args.ste_steps} if method == "ste" else {}
            t = time.perf_counter()
            merged, _ = merge(spec, model, sub, method, post, data, **kw)
            row[f"{method}+{post}"] = loss_acc(model, xt, yt, state=merged)[1]
            row[f"{method}+{post}_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"{n:>3} {row['endpoint_mean']:>9.4f} {row['ensemble']:>9.4f} " +
              " ".join(f"{row[f'{m}+{post}']:>12.4f}" for m, post in cols), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge_many.json").write_text(json.dumps({"arch": args.arch, "dataset":
                                                     args.dataset, "rows": rows}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in rows]
    ax.plot(ns, [r["ensemble"] for r in rows], "k--", label="ensemble")
    ax.plot(ns, [r["endpoint_mean"] for r in rows], "k:", label="endpoints (mean)")
    for m, post in cols:
        ax.plot(ns, [r[f"{m}+{post}"] for r in rows], "o-", label=f"{m}, {post}")
    ax.set(xscale="log", xlabel="models merged", ylabel="test accuracy", title=args.arch)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "merge_many.png", dpi=120)
    print(f"wrote {out / 'merge_many.json'} and {out / 'merge_many.png'}")


if __name__ == "__main__":
    main()
