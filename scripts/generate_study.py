"""Generator study: the same flow-matching pipeline on a canonical zoo and on the raw zoo.

Trains a zoo (or reuses it), canonicalizes it to its barycenter, fits one generator on each
version, samples, and audits both against their training zoo. Prints one table.

    .venv/bin/python scripts/generate_study.py --out runs/generate_study
    .venv/bin/python scripts/generate_study.py --arch mlp:784-128-128-10 \\
        --dataset 'fashion-mnist?train_size=10000' --out runs/generate_fashion
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from weightspace.canonicalize.zoo import canonicalize_zoo
from weightspace.generate import audit, fit_generator, sample_zoo
from weightspace.zoo import HParams, train_zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="mlp:64-64-64-10")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--models", type=int, default=128)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--steps", type=int, default=4000, help="generator training steps")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--out", default="runs/generate_study")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    t = time.perf_counter()
    train_zoo(out / "zoo", args.arch, args.dataset, HParams(epochs=args.epochs),
              models=args.models, progress=False)
    canonicalize_zoo(out / "zoo", out / "canon", "wm", "barycenter", force=True,
                     progress=False)
    print(f"zoo and canonical zoo ready in {time.perf_counter() - t:.0f} s")
    rows = {}
    for name in ("canon", "zoo"):
        fit = fit_generator(out / name, out / f"gen_{name}", steps=args.steps, pca=True,
                            progress=False)
        samples = out / f"samples_{name}"
        if not samples.exists():
            sample_zoo(out / f"gen_{name}", samples, args.samples)
        rows[name] = (fit, audit(samples, out / name, out_dir=out / f"report_{name}"))
    print(f"\n{'trained on':<12} {'zoo acc':>8} {'gen acc':>8} {'gen min':>8} {'gen max':>8} "
          f"{'novelty':>8} {'zoo LOO':>8} {'fit s':>6} {'nfe':>4}")
    for name, (fit, r) in rows.items():
        g, z = r["generated"], r["zoo"]
        print(f"{'canonical' if name == 'canon' else 'raw':<12} {z['acc_mean']:>8.4f} "
              f"{g['acc_mean']:>8.4f} {g['acc']['min']:>8.4f} {g['acc']['max']:>8.4f} "
              f"{g['max_iou_mean']:>8.3f} {z['max_iou_loo_mean']:>8.3f} "
              f"{fit['train_seconds']:>6.0f} {r['nfe']:>4}")
    print(f"reports: {out}/report_canon/report.md, {out}/report_zoo/report.md")


if __name__ == "__main__":
    main()
