"""Can a short fine-tune take samples out of the zoo's affine span honestly? (issue 24)

A PCA sample is an affine mixture of canonical zoo models, so on a zoo whose mixtures are
inaccurate (VGG-11 LN, independent seeds) samples are either near-copies or inaccurate.
This study measures the obvious way out -- "polish" each mixture with a few epochs of the
zoo's own recipe -- against the baseline that keeps the audit fair: noisy zoo models (the
audit's noise scales) polished alike, whose isotonic accuracy-on-novelty fit is the
polished noise curve. A polished mixture is only a generator's contribution if it beats
that curve; random initialisations trained for the same epochs are the floor.

``anneal`` asks the other question the polish raises: are the zoo's models at the end of a
constant-learning-rate recipe still moving? Every canonical zoo model is trained a few
more epochs with the rate decayed to 0 (cosine), and the annealed zoo's accuracy,
leave-one-out novelty and mixtures are compared with the zoo as trained.

Test accuracy and novelty are measured on the test split; nothing here chooses a setting.

    .venv/bin/python studies/polish_study.py polish RUN_DIR --plans 0:1,2:0.3
    .venv/bin/python studies/polish_study.py anneal RUN_DIR --epochs 3 --lr-scale 1

``RUN_DIR`` is a ``generate run`` output directory (its ``canonical/`` zoo is read).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from weightspace.arch import build
from weightspace.evaluation import errors, recalibrate
from weightspace.generate.audit import NOISE, curve_margin, noise_curve
from weightspace.generate.novelty import max_iou
from weightspace.generate.store import load_zoo_states
from weightspace.merge.mixing import endpoint_stats, mix, resolve_correction
from weightspace.symmetry.cache import read_zoo_spec
from weightspace.zoo.datasets import load_dataset
from weightspace.zoo.hparams import HParams
from weightspace.zoo.train import Start, train_batched

SIZES = (2, 4, 8)


class Zoo:
    """The canonical zoo of a run, its data, recipe and correction."""

    def __init__(self, run: str):
        m, _, self.states, self.arch = load_zoo_states(f"{run}/canonical")
        self.spec = read_zoo_spec(f"{run}/canonical", self.arch, self.states[0])
        self.data = load_dataset(m["dataset"]["name"])
        self.recipe = m["settings"]["hparams"]
        self.net = build(self.arch)
        self.how = resolve_correction(self.net, self.spec, "auto")
        self.x_train, self.y_train = self.data["train"]
        self.test_wrong = errors(self.arch, self.states, *self.data["test"])

    def train(self, states: list[dict], epochs: int, lr_scale: float, seed0: int,
              schedule: str = "none", chunk: int = 16) -> list[dict]:
        """``epochs`` more epochs of the zoo's recipe at ``lr_scale`` times its rate, each
        model with its own data order (seeds from ``seed0``)."""
        if epochs == 0:
            return states
        hp = HParams(**{**self.recipe, "epochs": epochs, "schedule": schedule,
                        "lr": self.recipe["lr"] * lr_scale})
        out = []
        for lo in range(0, len(states), chunk):
            part = states[lo:lo + chunk]
            out += train_batched(self.arch, list(range(seed0 + lo, seed0 + lo + len(part))),
                                 hp, self.x_train, self.y_train,
                                 starts=[Start(s) for s in part])
        return self.bn(out)

    def bn(self, states: list[dict]) -> list[dict]:
        return recalibrate(self.arch, states, self.x_train[:1024]) if self.how == "bn" \
            else states

    def mixtures(self, states: list[dict], k: int, count: int, rng: random.Random):
        stats = endpoint_stats(self.spec, self.net, states, self.x_train) \
            if self.how == "repair" else None
        out = []
        for _ in range(count):
            idx = rng.sample(range(len(states)), k)
            out.append(mix([states[i] for i in idx], [1 / k] * k, self.spec, self.how,
                           self.x_train, self.net,
                           [stats[i] for i in idx] if stats is not None else None))
        return out

    def measure(self, states: list[dict]) -> tuple[list[float], list[float]]:
        """(test accuracy, novelty) per model: novelty is the max IoU of its test errors
        with any zoo model's (the audit's)."""
        wrong = errors(self.arch, states, *self.data["test"])
        return (1 - wrong.float().mean(1)).tolist(), max_iou(wrong, self.test_wrong).tolist()


def polish(args) -> None:
    zoo = Zoo(args.run)
    fm = statistics.fmean
    acc, nov = zoo.measure(zoo.states)
    loo = max_iou(zoo.test_wrong, zoo.test_wrong, leave_one_out=True)
    print(f"{zoo.arch} ({zoo.how}): zoo {len(zoo.states)} models, test acc {fm(acc):.4f}, "
          f"leave-one-out novelty {float(loo.mean()):.3f}", flush=True)
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    mixes = {k: zoo.mixtures(zoo.states, k, args.n, rng) for k in SIZES}
    noisy = {}
    for scale in NOISE:
        picks = torch.randint(len(zoo.states), (args.n,), generator=gen).tolist()
        noisy[scale] = zoo.bn([{k: v + scale * v.float().std().nan_to_num() *
                                torch.randn(v.shape, generator=gen)
                                if v.is_floating_point() and v.numel() > 1 else v
                                for k, v in zoo.states[p].items()} for p in picks])
    for plan in args.plans.split(","):
        epochs, scale = int(plan.split(":")[0]), float(plan.split(":")[1])
        t0 = time.time()
        base = {}
        for s in NOISE:
            a, u = zoo.measure(zoo.train(noisy[s], epochs, scale, 100))
            base[f"noise_{s}"] = {"acc": a, "max_iou": u}
            print(f"  {epochs} ep x{scale}: noise {s}: acc {fm(a):.4f} novelty {fm(u):.3f}",
                  flush=True)
        curve = noise_curve(base)
        for k, mm in mixes.items():
            a, u = zoo.measure(zoo.train(mm, epochs, scale, 50))
            print(f"{epochs} ep x{scale}: mean of {k}: acc {fm(a):.4f} novelty {fm(u):.3f} "
                  f"margin {100 * curve_margin(curve, u, a)['at_mean']:+.2f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if epochs:
            fresh = [build(zoo.arch).state_dict() for _ in range(args.n)]
            a, u = zoo.measure(zoo.train(fresh, epochs, 1.0, 90))
            print(f"{epochs} ep x1: random initialisations: acc {fm(a):.4f} "
                  f"novelty {fm(u):.3f}", flush=True)


def anneal(args) -> None:
    zoo = Zoo(args.run)

    def describe(tag: str, states: list[dict]) -> None:
        wrong = errors(zoo.arch, states, *zoo.data["test"])
        val = errors(zoo.arch, states, *zoo.data["val"])
        line = (f"{tag}: test acc {1 - float(wrong.float().mean()):.4f}, val acc "
                f"{1 - float(val.float().mean()):.4f}, leave-one-out novelty "
                f"{float(max_iou(wrong, wrong, leave_one_out=True).mean()):.3f}; mixtures "
                f"({zoo.how}) val acc")
        rng = random.Random(args.seed)
        for k in SIZES:
            mm = zoo.mixtures(states, k, args.n, rng)
            line += f" {k}: {1 - float(errors(zoo.arch, mm, *zoo.data['val']).float().mean()):.4f}"
        print(line, flush=True)

    describe("as trained", zoo.states)
    t0 = time.time()
    annealed = zoo.train(zoo.states, args.epochs, args.lr_scale, 0, schedule="cosine")
    describe(f"annealed {args.epochs} ep, lr x{args.lr_scale} to 0 (cosine, "
             f"{time.time() - t0:.0f} s)", annealed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["polish", "anneal"])
    p.add_argument("run", help="a generate run directory (its canonical/ zoo is read)")
    p.add_argument("--plans", default="0:1,2:0.3",
                   help="polish: EPOCHS:LR_SCALE,... (0 epochs = unpolished)")
    p.add_argument("--epochs", type=int, default=3, help="anneal: epochs")
    p.add_argument("--lr-scale", type=float, default=1.0, help="anneal: the recipe's rate x")
    p.add_argument("-n", type=int, default=8, help="models per mixture size / noise scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    (polish if args.what == "polish" else anneal)(args)


if __name__ == "__main__":
    main()
