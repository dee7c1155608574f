"""Batched (torch.func vmap) vs one-at-a-time zoo training, same seeds, same epochs, one run.

Both paths are weightspace's own (``train_batched`` and ``train_sequential``): same
initialisation, same per-model data order, same optimizer implementation. Each is warmed up
once before timing (first-call costs of vmap / oneDNN are not training throughput). The
batched time is the median of ``--repeat`` runs (it is short and this machine is noisy);
the sequential time is one run over all models (long enough to average the noise).

    .venv/bin/python scripts/benchmarks/zoo_throughput.py            # mlp + resnet20 on digits
    .venv/bin/python scripts/benchmarks/zoo_throughput.py --case resnet-fashion

Cases:
  mlp            32 x mlp:64-64-64-10 on digits, 30 epochs, batch 32, Adam 1e-3
  resnet         16 x resnet20?width=1 (BatchNorm) on digits (8x8), 3 epochs, batch 32, SGD
  resnet-fashion 16 x resnet20?width=1 (BatchNorm) on 2,000 Fashion-MNIST images (28x28),
                 1 epoch, batch 64, SGD (needs the Debian package dataset-fashion-mnist)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from weightspace.zoo import HParams, load_dataset, metrics, train_batched, train_sequential

CASES = {
    "mlp": ("mlp:64-64-64-10", "digits", 32, HParams(epochs=30, batch_size=32, lr=1e-3)),
    "resnet": ("resnet20?width=1&in_chans=1", "digits", 16,
               HParams(epochs=3, batch_size=32, lr=0.05, optimizer="sgd", schedule="cosine")),
    "resnet-fashion": ("resnet20?width=1&in_chans=1", "fashion-mnist?train_size=2000", 16,
                       HParams(epochs=1, batch_size=64, lr=0.05, optimizer="sgd")),
}


def run(case: str, repeat: int) -> dict:
    arch, dataset, n, hp = CASES[case]
    data = load_dataset(dataset)
    x, y = data["train"]
    seeds = list(range(n))
    warm = HParams(**{**hp.to_dict(), "epochs": 1})
    train_batched(arch, seeds[:2], warm, x[:256], y[:256])
    train_sequential(arch, 0, warm, x[:256], y[:256])

    times = []
    for _ in range(repeat):  # this machine is shared and noisy: median of a few batched runs
        t = time.perf_counter()
        batched = train_batched(arch, seeds, hp, x, y)
        times.append(time.perf_counter() - t)
    t_batched = statistics.median(times)
    t = time.perf_counter()
    sequential = [train_sequential(arch, s, hp, x, y)[0] for s in seeds]
    t_seq = time.perf_counter() - t

    acc_b = [m["test_acc"] for m in metrics(arch, batched, data, "cpu", splits=("test",))]
    acc_s = [m["test_acc"] for m in metrics(arch, sequential, data, "cpu", splits=("test",))]
    return {"case": case, "arch": arch, "dataset": dataset, "models": n, "epochs": hp.epochs,
            "batched_s": t_batched, "sequential_s": t_seq, "ratio": t_seq / t_batched,
            "batched_models_per_s": n / t_batched, "sequential_models_per_s": n / t_seq,
            "batched_test_acc": statistics.fmean(acc_b),
            "sequential_test_acc": statistics.fmean(acc_s)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=[*CASES, "all"], action="append")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="batched runs (median is reported)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = args.case or ["mlp", "resnet"]
    if "all" in cases:
        cases = list(CASES)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")
    print(f"{'case':<15} {'models':>6} {'epochs':>6} {'batched s':>9} {'seq s':>8} "
          f"{'batched m/s':>11} {'seq m/s':>8} {'ratio':>6} {'acc batched':>11} {'acc seq':>8}")
    for case in cases:
        r = run(case, args.repeat)
        print(f"{case:<15} {r['models']:>6} {r['epochs']:>6} {r['batched_s']:>9.2f} "
              f"{r['sequential_s']:>8.2f} {r['batched_models_per_s']:>11.3f} "
              f"{r['sequential_models_per_s']:>8.3f} {r['ratio']:>5.1f}x "
              f"{r['batched_test_acc']:>11.4f} {r['sequential_test_acc']:>8.4f}", flush=True)


if __name__ == "__main__":
    main()
