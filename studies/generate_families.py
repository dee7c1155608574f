"""The generator on several families of networks, one table row each (issue 11, item 2).

For each family: train a zoo with ``weightspace zoo train``'s library function (reused if
present), canonicalize it to the barycenter (weight matching; the ViT also with TransFusion),
fit the default recipe (PCA code, conditioned on val_acc), sample 100 networks the default
way (towards the zoo's best validation accuracy; the guidance weight and the number of flow
samples averaged per network chosen together on validation; BatchNorm recalibrated on train
data), and audit them on test. Prints: zoo accuracy, generated
accuracy, novelty (mean max IoU; the zoo's leave-one-out), the margin above the noise curve
for generated models and for the zoo, L2 to the nearest zoo model, the effective number of
zoo models a sample mixes, and seconds to fit and to sample 100.

    .venv/bin/python studies/generate_families.py --family resnet20 --out runs/families
    .venv/bin/python studies/generate_families.py --family all --out runs/families
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from weightspace.canonicalize import canonicalize_zoo
from weightspace.generate.config import solver_name
from weightspace.generate import audit, fit_generator, sample_zoo
from weightspace.zoo import HParams, Zoo, train_zoo

SGD = dict(optimizer="sgd", lr=0.05, schedule="cosine")
VIT = ("timm:vit_tiny_patch16_224?img_size=8&patch_size=2&in_chans=1&depth=2&num_classes=10"
       "&embed_dim=48&num_heads=3")
FAMILIES = {  # name: (arch, dataset, models, hparams, canonicalization methods)
    "mlp": ("mlp:64-64-64-10", "digits", 64, HParams(epochs=30), ("wm",)),
    "resnet20": ("resnet20?width=1&in_chans=1", "digits", 48, HParams(epochs=5, **SGD),
                 ("wm",)),
    "vgg11-ln": ("vgg11?width=0.125&norm=ln&in_chans=1&pools=3", "digits", 48,
                 HParams(epochs=20, lr=1e-3), ("wm",)),  # SGD 0.05 did not learn (7%)
    "vit": (VIT, "digits", 48, HParams(epochs=20, lr=1e-3), ("transfusion", "wm")),
    "mlp-fashion": ("mlp:784-128-128-10", "fashion-mnist?train_size=10000", 48,
                    HParams(epochs=10), ("wm",)),
}


def run_family(name: str, out: Path, steps: int, samples: int) -> list[dict]:
    arch, dataset, models, hp, methods = FAMILIES[name]
    root = out / name
    t = time.perf_counter()
    train_zoo(root / "zoo", arch, dataset, hp, models=models, progress=False)
    t_zoo = time.perf_counter() - t
    rows = []
    for method in methods:
        canon, gen, smp = root / f"canon_{method}", root / f"gen_{method}", \
            root / f"samples_{method}"
        t = time.perf_counter()
        if not Zoo(canon).exists():
            canonicalize_zoo(root / "zoo", canon, method, "barycenter", progress=False)
        t_canon = time.perf_counter() - t
        fit = fit_generator(canon, gen, steps=steps, pca=True, condition="val_acc",
                            progress=False) if not (gen / "generator.safetensors").exists() \
            else json.loads((gen / "config.json").read_text())
        if not Zoo(smp).exists():
            sample_zoo(gen, smp, samples)  # the default: condition max, guidance and mix auto
        gen_info = json.loads((smp / "manifest.json").read_text())
        r = audit(smp, canon, out_dir=root / f"report_{method}")
        g, z = r["generated"], r["zoo"]
        rows.append({"family": name, "canon": method, "arch": arch,
                     "zoo_acc": z["acc_mean"], "gen_acc": g["acc_mean"],
                     "novelty": g["max_iou_mean"], "zoo_loo_novelty": z["max_iou_loo_mean"],
                     "margin": g["noise_margin"]["at_mean"],
                     "zoo_margin": z["noise_margin_loo"]["at_mean"],
                     "l2_nearest": g["nn_l2"]["mean"], "zoo_l2_nearest": z["nn_l2_loo"]["mean"],
                     "effective_models": g["span"]["effective_models"]["mean"],
                     "fit_s": fit.get("train_seconds"),
                     "sample_100_s": gen_info["generation"]["seconds"] * 100 / samples,
                     "passes": gen_info["generation"]["network_passes"],
                     "guidance": gen_info["settings"]["guidance"],
                     "solver": solver_name(gen_info["settings"]["method"],
                                           gen_info["settings"]["steps"]),
                     "mix": gen_info["settings"].get("mix", 1),
                     "zoo_s": t_zoo, "canon_s": t_canon})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=[*FAMILIES, "all"], action="append")
    p.add_argument("--steps", type=int, default=4000, help="generator training steps")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/families")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = list(FAMILIES) if not args.family or "all" in args.family else args.family
    rows = [r for n in names for r in run_family(n, Path(args.out), args.steps, args.samples)]
    print("\n| family | canon | solver, w, K | zoo acc | gen acc | novelty (zoo LOO) "
          "| margin gen / zoo | L2 nearest (zoo) | eff. models | fit s | sample 100 s (passes) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['canon']} | {r['solver']}, {r['guidance']:g}, "
              f"{r['mix']} | "
              f"{r['zoo_acc']:.4f} | {r['gen_acc']:.4f} | "
              f"{r['novelty']:.3f} ({r['zoo_loo_novelty']:.3f}) | "
              f"{100 * r['margin']:+.2f} / {100 * r['zoo_margin']:+.2f} | "
              f"{r['l2_nearest']:.1f} ({r['zoo_l2_nearest']:.1f}) | "
              f"{r['effective_models']:.2f} | {r['fit_s'] or 0:.0f} | "
              f"{r['sample_100_s']:.2f} ({r['passes']}) |")


if __name__ == "__main__":
    main()
