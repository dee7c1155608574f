"""Generator study: the same flow-matching pipeline on a canonical zoo and on the raw zoo.

Trains a zoo (or reuses it), canonicalizes it to its barycenter, fits one generator on each
version (conditioned on validation accuracy), samples without guidance and with guidance
towards the zoo's best validation accuracy (weight chosen on validation), and audits each
sample zoo against its training zoo on test. Prints one table.

    .venv/bin/python studies/generate_study.py --out runs/generate_study
    .venv/bin/python studies/generate_study.py --arch mlp:784-128-128-10 \\
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
    p.add_argument("--width", type=int, default=512, help="velocity width")
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
                            width=args.width, progress=False, condition="val_acc")
        for mode, kw in (("free", {"condition": None}),
                         ("guided", {"condition": "max", "guidance": "auto"})):
            samples = out / f"samples_{name}_{mode}"
            if not samples.exists():
                smp = sample_zoo(out / f"gen_{name}", samples, args.samples, **kw)
                if mode == "guided":
                    print(f"{name}: guidance chosen on validation {smp['guidance']:g} "
                          f"(val acc by w: {smp['guidance_val_acc']})")
            rows[f"{name}_{mode}"] = (fit, audit(samples, out / name,
                                                 out_dir=out / f"report_{name}_{mode}"))
    print(f"\n{'trained on':<18} {'zoo acc':>8} {'gen acc':>8} {'gen min':>8} {'gen max':>8} "
          f"{'novelty':>8} {'zoo LOO':>8} {'margin':>7} {'zoo mrg':>7} {'fit s':>6} {'nfe':>4}")
    for name, (fit, r) in rows.items():
        g, z = r["generated"], r["zoo"]
        label = ("canonical" if name.startswith("canon") else "raw") + \
            (", guided" if name.endswith("guided") else "")
        print(f"{label:<18} {z['acc_mean']:>8.4f} "
              f"{g['acc_mean']:>8.4f} {g['acc']['min']:>8.4f} {g['acc']['max']:>8.4f} "
              f"{g['max_iou_mean']:>8.3f} {z['max_iou_loo_mean']:>8.3f} "
              f"{100 * g['noise_margin']['at_mean']:>+7.2f} "
              f"{100 * z['noise_margin_loo']['at_mean']:>+7.2f} "
              f"{fit['train_seconds']:>6.0f} {r['nfe']:>4}")
    print("margin: mean accuracy minus the noise curve's accuracy at the mean novelty, in "
          "points (zoo mrg: the zoo's own leave-one-out margin, what independently trained "
          "networks get)")
    for name, b in rows["canon_free"][1]["baselines"].items():
        print(f"  baseline {name:<13} acc {b['acc_mean']:.4f} novelty {b['max_iou_mean']:.3f}")
    print(f"reports: {out}/report_*/report.md")


if __name__ == "__main__":
    main()
