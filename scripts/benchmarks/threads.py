"""OpenMP waiting, idle and next to other work: ms per step of a small training loop (the size
of the generator's velocity network), each configuration in fresh processes.

    .venv/bin/python scripts/benchmarks/threads.py

Conditions: an idle machine; one process spinning on one core; another torch job (2
threads, the same OpenMP settings) running throughout. The OpenMP runtime reads its
settings once, when torch is imported, so every measurement is its own interpreter.
weightspace sets ``GOMP_SPINCOUNT=1000`` unless the user set a wait policy.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import time

STEP = """
import sys, time, torch
torch.set_num_threads({threads})
net = torch.nn.Sequential(torch.nn.Linear(130, 512), torch.nn.SiLU(), torch.nn.Linear(512, 512),
                          torch.nn.SiLU(), torch.nn.Linear(512, 128))
opt = torch.optim.AdamW(net.parameters(), 1e-3)
x, y = torch.randn(128, 130), torch.randn(128, 128)
def step():
    loss = ((net(x) - y) ** 2).mean(); opt.zero_grad(); loss.backward(); opt.step()
for _ in range({warm}): step()
t = time.perf_counter()
for _ in range({steps}): step()
print((time.perf_counter() - t) / {steps} * 1e3)
"""
CONFIGS = [("1 thread", 1, {}), ("2, default spin", 2, {}),
           ("2, GOMP_SPINCOUNT=1000", 2, {"GOMP_SPINCOUNT": "1000"}),
           ("2, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"})]


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return {**env, **extra}


def _spin(stop):
    while not stop.is_set():
        pass


def measure(threads: int, extra: dict) -> float:
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads, warm=20,
                                                            steps=200)],
                         env=_env(extra), capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@contextlib.contextmanager
def neighbour(kind: str, extra: dict):
    """Run next to a process spinning on one core, or next to another torch job."""
    if kind == "spinner":
        stop = mp.Event()
        p = mp.Process(target=_spin, args=(stop,))
        p.start()
        halt = lambda: (stop.set(), p.join())  # noqa: E731
    else:
        p = subprocess.Popen([sys.executable, "-c", STEP.format(threads=2, warm=10**6, steps=1)],
                             env=_env(extra), stdout=subprocess.DEVNULL)
        halt = lambda: (p.kill(), p.wait())  # noqa: E731
    time.sleep(0.2 if kind == "spinner" else 2)
    try:
        yield
    finally:
        halt()


def next_to(kind: str, threads: int, extra: dict) -> float:
    with neighbour(kind, extra):
        return measure(threads, extra)


def main() -> None:
    print(f"{'configuration':<28} {'idle':>7} {'spinner':>8} {'torch job':>9}  (ms/step)")
    for name, threads, extra in CONFIGS:
        row = [measure(threads, extra), next_to("spinner", threads, extra),
               next_to("torch job", threads, extra)]
        print(f"{name:<28} " + " ".join(f"{v:>7.2f} " for v in row), flush=True)


if __name__ == "__main__":
    main()
