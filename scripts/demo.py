"""The main job on the bundled default (digits): what weightspace can do today.

1. discover + verify the permutation symmetry of the built-in ResNet-20 and a timm ViT;
2. train a zoo of 128 MLPs on digits, batched across seeds with torch.func (rerunning the
   demo resumes it: finished models are skipped);
3. rebuild one zoo model from its checkpoint alone and show that a random permutation from
   its spec moves the weights far away while leaving every prediction unchanged;
4. canonicalize the zoo (weight matching to its barycenter) and measure the loss barrier
   between two of its models before and after alignment;
5. ``generate run`` on the canonical zoo with the default recipe: fit a flow-matching
   generator (a PCA code, conditioned on validation accuracy), sample 100 new networks
   (classifier-free guidance towards the zoo's best validation accuracy, the weight chosen
   on validation) and audit them on test against the zoo and the baselines,
   including the curve of zoo models plus noise.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from weightspace.arch import build
from weightspace.symmetry.report import spec_table
from weightspace.symmetry import apply, random_perms, spec
from weightspace.canonicalize.zoo import canonicalize_zoo
from weightspace.generate.config import solver_name
from weightspace.generate.run import run_generation
from weightspace.merge import lmc
from weightspace.zoo import HParams, Zoo, load_dataset, train_zoo

OUT = Path("demo_out")
ARCH = "mlp:64-64-64-10"
MODELS = 128
GEN_STEPS = 6000


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    start = time.perf_counter()
    torch.set_num_threads(2)
    print("== 1. permutation symmetry, discovered with torch.fx and verified ==\n")
    for ref, shape in [("resnet20?width=4", None),
                       ("timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2", None)]:
        t = time.perf_counter()
        s = spec(ref, shape)
        print(spec_table(s, time.perf_counter() - t), "\n")

    print(f"== 2. a zoo: {MODELS} x {ARCH} on digits, 30 epochs each, batched across seeds ==\n")
    zoo_dir = OUT / "zoo"
    res = train_zoo(zoo_dir, ARCH, "digits", HParams(epochs=30, batch_size=32, lr=1e-3),
                    models=MODELS, progress=True)
    print(f"trained {res['trained']} model(s) ({res['skipped']} already done) in "
          f"{res['seconds']:.1f} s; {res['done']} models in {zoo_dir}: mean val acc "
          f"{res['mean_val_acc']:.4f}, mean test acc {res['mean_test_acc']:.4f} "
          f"+- {res['std_test_acc']:.4f}")
    print(f"(inspect it: weightspace zoo list {zoo_dir}; weightspace zoo eval {zoo_dir})\n")

    print("== 3. one zoo model: rebuild from the file alone, permute ==\n")
    zoo = Zoo(zoo_dir)
    rebuilt = zoo.load("s0000")  # architecture comes from the file's metadata
    x_test, y_test = load_dataset("digits")["test"]
    path = zoo.model_path("s0000")
    s = spec(str(path))
    perms = random_perms(s, seed=1)
    permuted = build(ARCH).eval()
    permuted.load_state_dict(apply(s, perms, rebuilt.state_dict()))
    dist = sum(float((a - b).pow(2).sum()) for a, b in
               zip(rebuilt.state_dict().values(), permuted.state_dict().values())) ** 0.5
    same = bool((rebuilt(x_test).argmax(1) == permuted(x_test).argmax(1)).all())
    print(f"{path} rebuilt from metadata: test acc {accuracy(rebuilt, x_test, y_test):.4f}")
    print(f"randomly permuted:     test acc {accuracy(permuted, x_test, y_test):.4f}  "
          f"(L2 distance to original {dist:.2f}, identical predictions: {same})")
    (OUT / "mlp_spec.json").write_text(s.to_json())
    print(f"spec written to {OUT / 'mlp_spec.json'} (groups: "
          f"{', '.join(f'{g.name}[{g.size}]' for g in s.groups)})")

    print("\n== 4. canonicalize the zoo; linear mode connectivity of two of its models ==\n")
    canon = OUT / "zoo_canon"
    rep = canonicalize_zoo(zoo_dir, canon, "wm", "barycenter", force=True, progress=False)
    print(f"weight matching to the barycenter: RMS L2 to the barycenter "
          f"{rep['l2_to_barycenter_before']:.3f} -> {rep['l2_to_barycenter_after']:.3f} in "
          f"{rep['seconds']:.1f} s; permutations stored in {canon / 'perms'}")
    data = load_dataset("digits")
    A = zoo.load("s0000").state_dict()
    B = zoo.load("s0001").state_dict()
    res = lmc(s, build(ARCH), A, B, data, "wm", points=11)
    for name in ("unaligned", "aligned"):
        c = res[name]
        print(f"{name:>9}: test loss barrier {c['test_loss_barrier']:.4f}, test accuracy "
              f"barrier {100 * c['test_acc_barrier']:.2f} points")

    print("\n== 5. generate: flow matching over the canonical zoo, 100 new networks ==\n")
    t = time.perf_counter()
    for d in ("generator", "samples", "report"):  # the canonical zoo was rebuilt: refit
        shutil.rmtree(OUT / d, ignore_errors=True)
    # `weightspace generate run` as a function: the zoo is canonical already (step 4), so
    # it fits, samples and audits; every setting left out is the default recipe: a PCA
    # code, conditioned on validation accuracy; sampling asks for the zoo's best value,
    # with the ODE solver, guidance weight and mix chosen on the validation split within
    # 20 network passes per network (the audit below is on test)
    run = run_generation(canon, OUT, steps=GEN_STEPS, n=100, progress=True, log=print)
    fit, smp, rep = run["fit"], run["sample"], run["audit"]
    print(f"chosen on validation: {solver_name(smp['method'], smp['steps'])}, "
          f"w={smp['guidance']:g}, "
          f"mix {smp['mix']} (samples averaged per network); val acc by w there: " +
          ", ".join(f"w={float(w):g}: {a:.4f}" for w, a in smp["guidance_val_acc"].items()))
    print(f"generator fitted in {fit['train_seconds']:.1f} s; 100 samples in "
          f"{smp['seconds']:.2f} s with {smp['nfe']} function evaluations "
          f"({smp['network_passes']} network passes)")
    g, z = rep["generated"], rep["zoo"]
    print(f"{'':<14} {'test acc':>9} {'novelty (max IoU, lower = newer)':>34} "
          f"{'L2 to nearest zoo model':>24}")
    print(f"{'zoo (LOO)':<14} {z['acc_mean']:>9.4f} {z['max_iou_loo_mean']:>34.3f} "
          f"{z['nn_l2_loo']['mean']:>24.1f}")
    print(f"{'generated':<14} {g['acc_mean']:>9.4f} {g['max_iou_mean']:>34.3f} "
          f"{g['nn_l2']['mean']:>24.1f}")
    for name, b in rep["baselines"].items():
        print(f"{name:<14} {b['acc_mean']:>9.4f} {b['max_iou_mean']:>34.3f} "
              f"{b['nn_l2_mean']:>24.1f}")
    gm, zm = g["noise_margin"], z["noise_margin_loo"]
    print(f"\naccuracy above the noise curve at equal novelty: generated "
          f"{100 * gm['at_mean']:+.2f} points at the mean ({100 * gm['above']:.0f}% of samples "
          f"above it), the zoo itself {100 * zm['at_mean']:+.2f} points")
    print(f"report: {OUT / 'report' / 'report.md'} ({time.perf_counter() - t:.0f} s)")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
