"""Multi-task merging offline, FusionBench's protocol on small models: one base, one
fine-tune per task (each with its own head), every task-vector method and plain averaging
merged into one backbone, evaluated with each task's own head.

Base: pre-trained on Fashion-MNIST (10 classes, upright). Tasks (10 classes each):
``digits`` (scikit-learn's, scaled to 28x28), ``digits-inv`` (inverted), ``fmnist-rot90``
(rotated a quarter turn), ``fmnist-inv`` (inverted). Models: a small CNN and a small ViT
(timm, 7x7 patches). Each method's lambda / density is chosen on the tasks' validation
splits (mean accuracy); test accuracy is reported only for the chosen setting, absolute
and normalised (merged / that task's fine-tune).

Alignment (``--align``): the CNN's tasks trained from scratch from independent inits and
merged against an independently pre-trained base, with and without weight matching each
model into the base's basin first; and weight matching on the fine-tunes of one base (it
should move nothing).

Memory (``--memory``): ``weightspace merge`` streaming 1 base + 4 fine-tunes of synthetic
checkpoints, peak RSS against the inputs' size, in a child process.

    python scripts/benchmarks/multitask_merge.py [--quick] [--only cnn|vit] [--no-align]
                                                 [--memory] [--json OUT] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from weightspace.arch import build
from weightspace.merge.taskvector.recipe import Recipe
from weightspace.merge.taskvector.stream import merge_states
from weightspace.zoo import load_dataset

VIT = ("timm:vit_tiny_patch16_224?img_size=28&patch_size=7&in_chans=1&embed_dim=48&depth=3"
       "&num_heads=3&mlp_ratio=2&num_classes=10")
TASKS = ("digits", "digits-inv", "fmnist-rot90", "fmnist-inv")
STEPS = {False: (500, 200), True: (150, 60)}  # (pre-training, fine-tuning) steps

# the grids searched on validation (mergekit's parameter names)
# lambda scales a sum of task vectors (normalize false: mergekit's default except ties and
# della) or their mean (normalize true)
SUM_LAMBDAS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
MEAN_LAMBDAS = (0.4, 0.7, 1.0, 1.5, 2.0)
GRID = {
    "averaging": [{}],
    "task_arithmetic": [{"lambda": lam} for lam in SUM_LAMBDAS],
    "ties": [{"lambda": lam, "density": d} for d in (0.2, 0.5) for lam in MEAN_LAMBDAS],
    "dare_linear": [{"lambda": lam, "density": d} for d in (0.3, 0.6) for lam in SUM_LAMBDAS],
    "dare_ties": [{"lambda": lam, "density": d} for d in (0.3, 0.6) for lam in SUM_LAMBDAS],
    "breadcrumbs": [{"lambda": lam, "density": 0.8, "gamma": 0.02} for lam in SUM_LAMBDAS],
    "breadcrumbs_ties": [{"lambda": lam, "density": 0.8, "gamma": 0.02}
                         for lam in SUM_LAMBDAS],
    "della": [{"lambda": lam, "density": 0.5, "epsilon": 0.1} for lam in MEAN_LAMBDAS],
    "model_stock": [{}],
}
CACHE: Path | None = None  # --cache: trained states kept between runs


class CNN(nn.Module):
    """Three 3x3 convolutions (the first with stride 2), global average pooling, a linear
    head."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten())
        self.head = nn.Linear(4 * w, classes)

    def forward(self, x):
        return self.head(self.features(x))


def make(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return CNN() if arch == "cnn" else build(VIT)


# ---------------------------------------------------------------- data
def _split(ds, n_train, n_val, n_test):
    (xt, yt), (xv, yv), (xs, ys) = ds["train"], ds["val"], ds["test"]
    return {"train": (xt[:n_train], yt[:n_train]), "val": (xv[:n_val], yv[:n_val]),
            "test": (xs[:n_test], ys[:n_test])}


def tasks(quick: bool):
    n = (1500, 300, 500) if quick else (4000, 500, 1000)
    fmnist = load_dataset("fashion-mnist")
    fm = _split(fmnist, *n)
    dg = load_dataset("digits")
    up = {k: (F.interpolate(x, size=28, mode="bilinear", align_corners=False), y)
          for k, (x, y) in dg.splits.items()}
    up = _split(up, *n)
    base = _split(fmnist, 500, 500, 1000)
    # the pre-training data and the tasks' use disjoint Fashion-MNIST train rows: the base
    # takes the last ones, the tasks the first
    x, y = fmnist["train"]
    k = 3000 if quick else 10000
    base["train"] = (x[-k:], y[-k:])

    def mapped(d, f):
        return {k: (f(x), y) for k, (x, y) in d.items()}

    return base, {"digits": up, "digits-inv": mapped(up, lambda x: -x),
                  "fmnist-rot90": mapped(fm, lambda x: torch.rot90(x, 1, (2, 3))),
                  "fmnist-inv": mapped(fm, lambda x: -x)}


# ---------------------------------------------------------------- training, evaluation
def train(model: nn.Module, data, steps: int, lr: float, seed: int, tag: str = "") -> dict:
    """Adam, batches of 128, ``steps`` steps (cosine decay), the train split only; with
    ``--cache`` a state trained before under the same ``tag`` and settings is reused."""
    n = len(data["train"][1])
    path = CACHE / f"{tag}-{n}-{steps}-{lr}-{seed}.safetensors" if CACHE and tag else None
    if path is not None and path.exists():
        from weightspace.checkpoint import open_checkpoint
        with open_checkpoint(path) as ck:
            state = ck.state_dict()
        model.load_state_dict(state)
        return {k: v.clone() for k, v in model.eval().state_dict().items()}
    state = _train(model, data, steps, lr, seed)
    if path is not None:
        from weightspace.checkpoint import save_tensors
        save_tensors(path, state)
    return state


def _train(model: nn.Module, data, steps: int, lr: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y = data["train"]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(y), generator=g).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def accuracy(model: nn.Module, state: dict, x, y) -> float:
    correct = 0
    for xb, yb in zip(x.split(1000), y.split(1000)):
        correct += int((functional_call(model, state, (xb,)).argmax(1) == yb).sum())
    return correct / len(y)


def is_head(k: str) -> bool:
    return k.startswith("head.")


def backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not is_head(k)}


def with_head(bb: dict, state: dict) -> dict:
    return {**bb, **{k: v for k, v in state.items() if is_head(k)}}


def merged_backbone(method: str, params: dict, base: dict, fts: list[dict]) -> dict:
    """One merge through the library (mergekit semantics); ``averaging`` is ``linear`` with
    equal weights over the fine-tunes only."""
    names = [f"t{i}" for i in range(len(fts))]
    if method == "averaging":
        r = Recipe.from_dict({"merge_method": "linear", "models": names,
                              "parameters": {"weight": 1.0}})
        return merge_states(r, [backbone(s) for s in fts])[0]
    per = {k: params[k] for k in ("density", "gamma", "epsilon") if k in params}
    shared = {k: v for k, v in params.items() if k not in per}
    r = Recipe.from_dict({"merge_method": method, "base_model": "base",
                          "models": names, "parameters": {
                              **({"weight": 1.0} if method != "model_stock" else {}),
                              **per, **shared}})
    return merge_states(r, [backbone(s) for s in fts] + [backbone(base)])[0]


def evaluate(model, bb: dict, fts: list[dict], data: dict, split: str) -> list[float]:
    return [accuracy(model, with_head(bb, s), *data[t][split]) for s, t in zip(fts, TASKS)]


def run_methods(model, base, fts, data, ft_test, label: str) -> list[dict]:
    rows = []
    for method, grid in GRID.items():
        t0 = time.perf_counter()
        best, merge_s = None, []
        for params in grid:
            t1 = time.perf_counter()
            bb = merged_backbone(method, params, base, fts)
            merge_s.append(time.perf_counter() - t1)
            val = sum(evaluate(model, bb, fts, data, "val")) / len(fts)
            if best is None or val > best[0]:
                best = (val, params, bb)
        val, params, bb = best
        test = evaluate(model, bb, fts, data, "test")
        norm = [a / f for a, f in zip(test, ft_test)]
        rows.append({"setting": label, "method": method, "params": params, "val": val,
                     "test": test, "normalised": norm,
                     "mean_test": sum(test) / len(test), "mean_norm": sum(norm) / len(norm),
                     "merge_seconds": sum(merge_s) / len(merge_s),
                     "search_seconds": time.perf_counter() - t0, "configs": len(grid)})
        print(f"  {label:<14} {method:<17} mean test {rows[-1]['mean_test']:.3f} "
              f"(norm {rows[-1]['mean_norm']:.3f}) params {params}", flush=True)
    return rows


def finetune_all(arch, base_state, data, epochs, seed0, from_scratch=False):
    fts, accs = [], []
    for i, t in enumerate(TASKS):
        m = make(arch, seed0 + i)
        if not from_scratch:  # the base's backbone, a fresh head per task
            m.load_state_dict(with_head(backbone(base_state), m.state_dict()))
        s = train(m, data[t], epochs, 1e-3 if not from_scratch else 2e-3, seed0 + i,
                  f"{arch}-{t}-{'scratch' if from_scratch else 'ft'}")
        fts.append(s)
        accs.append(accuracy(m, s, *data[t]["test"]))
    return fts, accs


def benchmark(arch: str, base_data, data, quick: bool, align: bool) -> dict:
    ep = STEPS[quick]
    t0 = time.perf_counter()
    model = make(arch, 0)
    base = train(model, base_data, ep[0], 2e-3, 0, f"{arch}-base")
    base_acc = accuracy(model, base, *base_data["test"])
    fts, ft_test = finetune_all(arch, base, data, ep[1], 100)
    train_s = time.perf_counter() - t0
    print(f"{arch}: base fmnist test {base_acc:.3f}; fine-tunes "
          + ", ".join(f"{t} {a:.3f}" for t, a in zip(TASKS, ft_test))
          + f" ({train_s:.0f} s training)", flush=True)
    # the base's backbone with each task's fine-tuned head: what merging starts from
    base_heads = evaluate(model, backbone(base), fts, data, "test")
    out = {"arch": arch, "params": sum(v.numel() for v in base.values()),
           "base_fmnist_test": base_acc, "finetuned_test": ft_test,
           "base_backbone_task_heads_test": base_heads, "train_seconds": train_s,
           "rows": run_methods(model, base, fts, data, ft_test, "shared base")}
    if align and arch == "cnn":
        out["align"] = alignment(model, base, fts, base_data, data, ep, ft_test)
    return out


def alignment(model, base, fts, base_data, data, ep, ft_test) -> dict:
    """Weight matching into the base's basin: on fine-tunes of one base (should move
    nothing) and on independently trained models (what it adds)."""
    from weightspace.canonicalize import align
    from weightspace.symmetry import apply, symmetry_of
    from weightspace.symmetry.structure import identity_perms

    x = base_data["train"][0][:8]
    spec = symmetry_of(model, x)
    ident = identity_perms(spec)

    def aligned(ref, states):
        out, moved, l2 = [], [], []
        for s in states:
            perms, rep = align(spec, ref, s, "wm", seed=0)
            moved.append(sum(int((perms[g] != ident[g]).sum()) for g in perms))
            l2.append((rep.l2_before, rep.l2_after))
            out.append(apply(spec, perms, s))
        return out, moved, l2

    res = {}
    fa, moved, l2 = aligned(base, fts)
    same = [torch.equal(a[k], b[k]) for a, b in zip(fa, fts) for k in a]
    res["shared_base"] = {"units_moved": moved, "unchanged": all(same)}
    print(f"  wm on fine-tunes of one base: units moved {moved}", flush=True)
    # independent: a base and four task models, each from its own random init
    t0 = time.perf_counter()
    ind_model = make("cnn", 7)
    ind_base = train(ind_model, base_data, ep[0], 2e-3, 7, "cnn-base")
    # trained from scratch: as many steps as the base had, so they are as good as they get
    ind, ind_test = finetune_all("cnn", ind_base, data, ep[0], 200, from_scratch=True)
    print("  independent models: " + ", ".join(f"{t} {a:.3f}" for t, a in
                                                 zip(TASKS, ind_test)), flush=True)
    ia, moved, l2 = aligned(ind_base, ind)
    res["independent"] = {"finetuned_test": ind_test, "units_moved": moved,
                          "l2_before_after": l2,
                          "train_seconds": time.perf_counter() - t0}
    rows = []
    for label, states in (("indep, none", ind), ("indep, wm", ia)):
        rows += run_methods(model, ind_base, states, data, ind_test, label)
    res["rows"] = rows
    return res


# ---------------------------------------------------------------- memory
def memory(tmp: Path, tensors: int = 32, size: int = 1 << 20) -> dict:
    """Peak RSS of ``weightspace merge`` (ties, 1 base + 4 fine-tunes of ``tensors`` float32
    tensors of ``size`` entries) in a child process, against the same child importing only."""
    from weightspace.checkpoint import save_tensors
    g = torch.Generator().manual_seed(0)
    base = {f"layers.{i}.weight": torch.randn(size, generator=g) for i in range(tensors)}
    save_tensors(tmp / "base.safetensors", base)
    for j in range(4):
        save_tensors(tmp / f"ft{j}.safetensors",
                     {k: v + 0.01 * torch.randn(size, generator=g) for k, v in base.items()})
    del base
    each = tensors * size * 4

    def child(code):
        """Run ``code`` in a fresh interpreter; its peak anonymous RSS (RssAnon sampled
        every 5 ms: the memory it allocates, not the input files' mapped pages, which the
        kernel counts in RSS but can drop at any time)."""
        sampler = ("import threading, time\npeak = [0]\ndef _watch():\n    while True:\n"
                   "        with open('/proc/self/status') as f:\n"
                   "            v = [int(l.split()[1]) for l in f if l.startswith('RssAnon')][0]\n"
                   "        peak[0] = max(peak[0], v)\n        time.sleep(0.005)\n"
                   "threading.Thread(target=_watch, daemon=True).start()\n")
        r = subprocess.run([sys.executable, "-c", sampler + code +
                            "\ntime.sleep(0.05)\nprint(peak[0])"], capture_output=True,
                           text=True, check=True, cwd=tmp)
        return int(r.stdout.strip().splitlines()[-1]) * 1024

    idle = child("import torch, weightspace.cli.lmc_cmd, weightspace.merge.taskvector.files")
    t0 = time.perf_counter()
    stream = child("from weightspace.cli.main import main\nassert main(['merge', "
                   "'ft0.safetensors', 'ft1.safetensors', 'ft2.safetensors', 'ft3.safetensors',"
                   " '--base', 'base.safetensors', '--method', 'ties', '--density', '0.3', "
                   "'--out', 'out.safetensors']) == 0")
    seconds = time.perf_counter() - t0
    loaded = child("from weightspace.checkpoint import open_checkpoint\nstates = "
                   "[{k: v.clone() for k, v in open_checkpoint(f).state_dict().items()} "
                   "for f in ['base.safetensors'] + [f'ft{j}.safetensors' for j in range(4)]]")
    return {"input_bytes_each": each, "inputs": 5, "idle_rss": idle, "merge_rss": stream,
            "all_inputs_loaded_rss": loaded, "merge_seconds": seconds,
            "merge_extra_over_idle": stream - idle, "loaded_extra_over_idle": loaded - idle}


def table(rows: list[dict]) -> str:
    head = ("| setting | method | chosen | " + " | ".join(TASKS) +
            " | mean acc | mean norm | merge s | search s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['setting']} | {r['method']} | {params} | " +
                     " | ".join(f"{a:.3f} ({n:.2f})" for a, n in zip(r["test"], r["normalised"]))
                     + f" | {r['mean_test']:.3f} | {r['mean_norm']:.3f} | "
                       f"{r['merge_seconds']:.3f} | {r['search_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller splits, fewer epochs")
    p.add_argument("--only", choices=("cnn", "vit"))
    p.add_argument("--no-align", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--json")
    p.add_argument("--cache", help="a directory for the trained states (reused when there)")
    a = p.parse_args()
    global CACHE
    CACHE = Path(a.cache) if a.cache else None
    if CACHE:
        CACHE.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    res = {"machine_note": "shared CPU machine; timings are noisy"}
    if a.memory:
        with tempfile.TemporaryDirectory() as d:
            res["memory"] = memory(Path(d))
        m = res["memory"]
        mib = 2 ** 20
        print(f"memory: 5 inputs of {m['input_bytes_each'] / mib:.0f} MiB; peak RSS idle "
              f"{m['idle_rss'] / mib:.0f} MiB, streaming merge {m['merge_rss'] / mib:.0f} MiB "
              f"(+{m['merge_extra_over_idle'] / mib:.0f}), all inputs loaded "
              f"{m['all_inputs_loaded_rss'] / mib:.0f} MiB "
              f"(+{m['loaded_extra_over_idle'] / mib:.0f}); merge {m['merge_seconds']:.1f} s")
    else:
        base_data, data = tasks(a.quick)
        res["results"] = []
        for arch in ("cnn", "vit"):
            if a.only and arch != a.only:
                continue
            res["results"].append(benchmark(arch, base_data, data, a.quick,
                                            not a.no_align))
        for r in res["results"]:
            print(f"\n{r['arch']} ({r['params']} parameters): fine-tuned test "
                  + ", ".join(f"{t} {x:.3f}" for t, x in zip(TASKS, r["finetuned_test"]))
                  + "; base backbone with the task heads "
                  + ", ".join(f"{x:.3f}" for x in r["base_backbone_task_heads_test"]))
            print(table(r["rows"]))
            if "align" in r:
                al = r["align"]
                print(f"\nwm on fine-tunes of one base: units moved "
                      f"{al['shared_base']['units_moved']}, weights unchanged: "
                      f"{al['shared_base']['unchanged']}; independent: units moved "
                      f"{al['independent']['units_moved']}, fine-tuned test "
                      + ", ".join(f"{x:.3f}" for x in al["independent"]["finetuned_test"]))
                print(table(al["rows"]))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\npeak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


if __name__ == "__main__":
    main()
