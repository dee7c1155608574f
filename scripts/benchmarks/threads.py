"""OpenMP wait policy and torch threads, idle and next to a busy process: ms per step of a
small training loop (the size of the generator's velocity network) in fresh processes.

    .venv/bin/python scripts/benchmarks/threads.py

A busy neighbour is one process spinning on one core for the whole measurement. Each
configuration runs in its own interpreter because the OpenMP runtime reads
``OMP_WAIT_POLICY`` once, when torch is imported.
"""
from __future__ import annotations

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
for _ in range(20): step()
t = time.perf_counter()
for _ in range(200): step()
print((time.perf_counter() - t) / 200 * 1e3)
"""


def _spin(stop):
    while not stop.is_set():
        pass


def measure(threads: int, policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    configs = [(1, "PASSIVE"), (2, "ACTIVE"), (2, "PASSIVE")]
    print(f"{'threads':>7} {'OMP_WAIT_POLICY':>15} {'idle ms/step':>12} {'busy neighbour':>14}")
    for threads, policy in configs:
        idle = measure(threads, policy)
        stop = mp.Event()
        p = mp.Process(target=_spin, args=(stop,))
        p.start()
        time.sleep(0.2)
        try:
            busy = measure(threads, policy)
        finally:
            stop.set()
            p.join()
        print(f"{threads:>7} {policy:>15} {idle:>12.2f} {busy:>14.2f}")


if __name__ == "__main__":
    main()
