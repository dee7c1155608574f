"""Zoo training throughput: batched (stacked / vmap) vs one model at a time, as ratios in one run.

In-process cases train the same seeds for the same epochs with weightspace's own
``train_batched`` (stacked along channels where the architecture allows, else vmap) and
``train_sequential``: same initialisation, data order and optimizer implementation. The
batched time is the median of ``--repeat`` runs, the sequential one is one run over all
models (long enough to average a noisy machine). ``auto`` is what ``weightspace zoo train``
does by default: the time of ``choose_path`` (one timed step of each path) plus the time
of the path it picked; ``ratio`` is sequential / auto, so below 1.0 means auto lost.

The ``mlp-cli`` case times the whole ``weightspace zoo train`` command (a subprocess:
start-up, planning, the timed choice, training, evaluation, checkpoints) against a plain
PyTorch loop script over the same models (also a subprocess).

    .venv/bin/python scripts/benchmarks/zoo_throughput.py                 # mlp, resnet, mlp-cli
    .venv/bin/python scripts/benchmarks/zoo_throughput.py --case resnet-fashion
    .venv/bin/python scripts/benchmarks/zoo_throughput.py --case all --device cuda
    .venv/bin/python scripts/benchmarks/zoo_throughput.py --roofline --case resnet-fashion

``--eval`` times evaluation instead (issue 14 item 3): the case's models, and 64 of them,
evaluated on the test split stacked (one grouped layer for all), one at a time, and the
way ``evaluate`` does by default (``eval_batched``: together on a GPU, the loop on a CPU).

``--roofline`` says how far from the machine each path runs, for the in-process cases: the
FLOPs of one training step of one model (``torch.utils.flop_counter``), the step times
``choose_path`` measured, the GFLOP/s each path reaches, and the peak of this process (a
4096^2 float32 matmul). ``peak / sequential`` bounds what any batching can gain there.

Cases:
  mlp            32 x mlp:64-64-64-10 on digits, 30 epochs, batch 32, Adam 1e-3
  resnet         16 x resnet20?width=1&in_chans=1 (BatchNorm) on digits (8x8), 5 epochs,
                 batch 32, SGD 0.05 cosine
  resnet-fashion 16 x resnet20?width=1&in_chans=1 on fashion-mnist?train_size=10000
                 (28x28), 2 epochs, batch 64, SGD (needs the Debian package
                 dataset-fashion-mnist)
  mlp-cli        ``weightspace zoo train`` for 32 x mlp:64-64-64-10, 30 epochs, vs a plain
                 PyTorch loop script
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from weightspace.zoo import HParams, load_dataset, metrics, train_batched, train_sequential
from weightspace.zoo import train as train_mod
from weightspace.zoo.train import batched_impl, choose_path, evaluate, init_model

CASES = {
    "mlp": ("mlp:64-64-64-10", "digits", 32, HParams(epochs=30, batch_size=32, lr=1e-3)),
    "resnet": ("resnet20?width=1&in_chans=1", "digits", 16,
               HParams(epochs=5, batch_size=32, lr=0.05, optimizer="sgd", schedule="cosine")),
    "resnet-fashion": ("resnet20?width=1&in_chans=1", "fashion-mnist?train_size=10000", 16,
                       HParams(epochs=2, batch_size=64, lr=0.05, optimizer="sgd")),
    "mlp-cli": ("mlp:64-64-64-10", "digits", 32, HParams(epochs=30, batch_size=32, lr=1e-3)),
}

PLAIN_LOOP = """
import sys, time, torch, torch.nn.functional as F
from torch import nn
from weightspace.zoo import load_dataset
torch.set_num_threads({threads})
t0 = time.perf_counter()
d = load_dataset("digits")
x, y = d["train"]
xt, yt = d["test"]
accs = []
for seed in range({models}):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
                          nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range({epochs}):
        for idx in torch.randperm(len(y), generator=g).split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accs.append(float((model(xt).argmax(1) == yt).float().mean()))
    torch.save(model.state_dict(), f"{{sys.argv[1]}}/m{{seed}}.pt")
print(sum(accs) / len(accs))
"""


def run(case: str, repeat: int, device: str, epochs: int | None) -> dict:
    """Batched, sequential and auto (timed choice + chosen path) for one in-process case."""
    arch, dataset, n, hp = CASES[case]
    if epochs:
        hp = HParams(**{**hp.to_dict(), "epochs": epochs})
    data = load_dataset(dataset)
    x, y = (t.to(device) for t in data["train"])
    seeds = list(range(n))
    warm = HParams(**{**hp.to_dict(), "epochs": 1})
    train_batched(arch, seeds[:2], warm, x[:256], y[:256])
    train_sequential(arch, 0, warm, x[:256], y[:256])

    t = time.perf_counter()
    choice = choose_path(arch, n, hp, x, y)
    t_choose = time.perf_counter() - t
    times = []
    for _ in range(repeat):  # this machine is shared and noisy: median of a few batched runs
        t = time.perf_counter()
        batched = train_batched(arch, seeds, hp, x, y)
        times.append(time.perf_counter() - t)
    t_batched = statistics.median(times)
    t = time.perf_counter()
    sequential = [train_sequential(arch, s, hp, x, y)[0] for s in seeds]
    t_seq = time.perf_counter() - t
    t_auto = t_choose + (t_batched if choice["path"] == "batched" else t_seq)

    acc_b = [m["test_acc"] for m in metrics(arch, batched, data, device, splits=("test",))]
    acc_s = [m["test_acc"] for m in metrics(arch, sequential, data, device, splits=("test",))]
    return {"case": case, "models": n, "epochs": hp.epochs, "impl": batched_impl(arch),
            "batched_s": t_batched, "sequential_s": t_seq, "auto_s": t_auto,
            "auto_path": choice["path"], "choose_s": t_choose,
            "step_ratio": choice["sequential_step_s"] / choice["batched_step_s"],
            "batched_ratio": t_seq / t_batched, "ratio": t_seq / t_auto,
            "batched_test_acc": statistics.fmean(acc_b),
            "sequential_test_acc": statistics.fmean(acc_s)}


def evaluation(case: str, device: str, models: int) -> dict:
    """Seconds to evaluate ``models`` models of the case on its test split, each way."""
    arch, dataset, _, _ = CASES[case]
    x, y = (t.to(device) for t in load_dataset(dataset)["test"])
    states = [{k: v.to(device) for k, v in init_model(arch, s).state_dict().items()}
              for s in range(models)]
    evaluate(arch, states[:2], x[:64], y[:64], batched=True)  # warm-up
    evaluate(arch, states[:2], x[:64], y[:64], batched=False)
    out = {"case": case, "models": models, "examples": len(y)}
    for name, batched in (("batched", True), ("sequential", False), ("auto", None)):
        t = time.perf_counter()
        evaluate(arch, states, x, y, batched=batched)
        out[f"{name}_s"] = time.perf_counter() - t
    out["auto_path"] = "batched" if train_mod.eval_batched(arch, states, x) else "sequential"
    out["ratio"] = out["sequential_s"] / out["auto_s"]
    return out


def sgemm_gflops(device: str) -> float:
    """Best of five 4096^2 float32 matmuls, in GFLOP/s: the compute peak batching can reach."""
    a, b = (torch.randn(4096, 4096, device=device) for _ in range(2))
    best = float("inf")
    for _ in range(6):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 4096 ** 3 / best / 1e9


def roofline(case: str, device: str) -> dict:
    """GFLOP/s of one training step, batched and sequential, against the matmul peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from weightspace.arch import build
    arch, dataset, n, hp = CASES[case]
    data = load_dataset(dataset)
    x, y = (t.to(device) for t in data["train"])
    model = build(arch).to(device).train()
    xb, yb = x[:hp.batch_size], y[:hp.batch_size]
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
    flops = fc.get_total_flops()
    choice = choose_path(arch, n, hp, x, y)
    peak = sgemm_gflops(device)
    out = {"case": case, "models": n, "gflop_per_step": n * flops / 1e9, "peak": peak}
    for path in ("batched", "sequential"):
        sec = choice[f"{path}_step_s"]
        out[path] = n * flops / sec / 1e9 if sec else float("nan")
    out["ceiling"] = peak / out["sequential"]
    return out


def run_cli(case: str, threads: int, epochs: int | None) -> dict:
    """The whole ``weightspace zoo train`` command vs a plain PyTorch loop script."""
    arch, dataset, n, hp = CASES[case]
    epochs = epochs or hp.epochs
    env_py = [sys.executable]
    with tempfile.TemporaryDirectory() as tmp:
        loop = Path(tmp, "loop.py")
        loop.write_text(PLAIN_LOOP.format(threads=threads, models=n, epochs=epochs))
        Path(tmp, "plain").mkdir()
        t = time.perf_counter()
        plain = subprocess.run(env_py + [str(loop), str(Path(tmp, "plain"))], check=True,
                               capture_output=True, text=True)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        zoo = subprocess.run(env_py + ["-m", "weightspace.cli.main", "zoo", "train", "--arch",
                                       arch, "--dataset", dataset, "--models", str(n),
                                       "--epochs", str(epochs), "--batch-size",
                                       str(hp.batch_size), "--lr", str(hp.lr), "--out",
                                       str(Path(tmp, "zoo")), "--no-progress"],
                             check=True, capture_output=True, text=True)
        t_zoo = time.perf_counter() - t
    acc = float(zoo.stdout.rsplit("mean test acc ", 1)[1].split()[0])
    return {"case": case, "models": n, "epochs": epochs, "impl": "cli",
            "batched_s": t_zoo, "sequential_s": t_plain, "auto_s": t_zoo, "auto_path": "cli",
            "choose_s": float("nan"), "step_ratio": float("nan"),
            "batched_ratio": t_plain / t_zoo, "ratio": t_plain / t_zoo,
            "batched_test_acc": acc, "sequential_test_acc": float(plain.stdout.split()[-1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "all"], action="append")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (in-process cases)")
    p.add_argument("--repeat", type=int, default=3, help="batched runs (median is reported)")
    p.add_argument("--epochs", type=int, default=None, help="override every case's epochs")
    p.add_argument("--roofline", action="store_true",
                   help="GFLOP/s of each path against the matmul peak, instead of training")
    p.add_argument("--eval", action="store_true",
                   help="time evaluation (batched / one at a time / auto), not training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = args.case or ["mlp", "resnet", "mlp-cli"]
    if "all" in cases:
        cases = list(CASES)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    if args.eval:
        print(f"{'case':<15} {'models':>6} {'examples':>8} {'batched s':>9} {'seq s':>7} "
              f"{'auto s':>7} {'auto path':>10} {'seq / auto':>10}")
        for case in (c for c in cases if c != "mlp-cli"):
            for models in dict.fromkeys((CASES[case][2], 64)):
                r = evaluation(case, args.device, models)
                print(f"{case:<15} {models:>6} {r['examples']:>8} {r['batched_s']:>9.3f} "
                      f"{r['sequential_s']:>7.3f} {r['auto_s']:>7.3f} {r['auto_path']:>10} "
                      f"{r['ratio']:>9.2f}x", flush=True)
        return
    if args.roofline:
        print(f"{'case':<15} {'models':>6} {'GFLOP/step':>10} {'batched GFLOP/s':>15} "
              f"{'seq GFLOP/s':>11} {'peak GFLOP/s':>12} {'ceiling x':>9}")
        for case in (c for c in cases if c != "mlp-cli"):
            r = roofline(case, args.device)
            print(f"{case:<15} {r['models']:>6} {r['gflop_per_step']:>10.2f} "
                  f"{r['batched']:>15.1f} {r['sequential']:>11.1f} {r['peak']:>12.1f} "
                  f"{r['ceiling']:>8.1f}x", flush=True)
        return
    print(f"{'case':<15} {'models':>6} {'epochs':>6} {'impl':>7} {'batched s':>9} {'seq s':>8} "
          f"{'auto s':>7} {'auto path':>10} {'choose s':>8} {'step x':>6} {'batched x':>9} "
          f"{'ratio':>6} {'acc b':>6} {'acc seq':>7}")
    for case in cases:
        r = (run_cli(case, args.threads, args.epochs) if case == "mlp-cli"
             else run(case, args.repeat, args.device, args.epochs))
        print(f"{case:<15} {r['models']:>6} {r['epochs']:>6} {r['impl']:>7} "
              f"{r['batched_s']:>9.2f} {r['sequential_s']:>8.2f} {r['auto_s']:>7.2f} "
              f"{r['auto_path']:>10} {r['choose_s']:>8.2f} {r['step_ratio']:>5.1f}x "
              f"{r['batched_ratio']:>8.1f}x {r['ratio']:>5.1f}x {r['batched_test_acc']:>6.4f} "
              f"{r['sequential_test_acc']:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
