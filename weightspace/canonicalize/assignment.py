"""Linear assignment (maximisation): exact, warm-started, certified; batched for stacks.

Weight matching solves one LAP per family per sweep, and after the first sweeps each LAP is
close to the one solved before: its costs moved a little, its optimal assignment moved in a
few rows. The solver here (the C extension ``_lapjv``, Jonker-Volgenant) keeps what a solve
found, the assignment and the column duals (:class:`LapState`), and starts the next solve
from those duals: a shortest augmenting path re-seats each row, most in one step at their
old column. (Keeping the rows that are still tight measured slower: with the costs moved,
a third of them are not.) A first solve starts from row and column reduction, or, on costs
close to rank one after centring (convolutions), from the duals of their rank-one part.
Each Dijkstra step is one pass over all columns, and those passes (most of a solve) run
four columns at a time where the CPU has AVX2, with the same steps and
duals as the plain C that other machines run (``_lapjv.simd`` switches it, for tests).

Every answer of the extension is certified in float64 before it is used: with the row duals
``u_i`` taken on the assignment, every reduced cost ``-c_ij - u_i - v_j`` is ``>= -tol``
(``tol`` relative to the largest cost or column dual, whichever is larger: the reduced
costs round at that scale), so no assignment is better by more than ``n * tol``.
A failed certificate, a non-finite cost, or a build without the extension falls back to
``scipy.optimize.linear_sum_assignment`` (exact; :data:`STATS` counts every fallback).
:func:`scipy_only` switches the extension off (the baseline of the benchmarks and tests).
The extension is imported on the first solve, so commands that do not align never load it.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

REL_TOL = 1e-10  # certificate: reduced costs >= -REL_TOL * max(|cost|, |column dual|)


@dataclass
class LapState:
    """What a warm start keeps: ``x[i]`` the column of row ``i``; ``v`` the column duals
    (of the minimisation of ``-cost``)."""
    x: np.ndarray
    v: np.ndarray


@dataclass
class LapStats:
    """Counters of how solves were answered (for benchmarks and tests)."""
    warm: int = 0
    cold: int = 0
    freed_rows: int = 0   # rows a warm start re-seated (every row: the duals are kept)
    fallback: int = 0     # certificate failed or non-finite cost: scipy answered
    scipy: int = 0        # solved by scipy (fallbacks, scipy_only, no extension)

    def reset(self) -> None:
        self.__init__()


STATS = LapStats()
_STATS_LOCK = threading.Lock()  # solves run on several threads
_EXT: list = []          # [module or None] once looked up
_SCIPY_ONLY = [False]


def _ext():
    """The compiled solver, or None (not built: scipy answers every problem)."""
    if _SCIPY_ONLY[0]:
        return None
    if not _EXT:
        try:
            from . import _lapjv
        except ImportError:
            _lapjv = None
        _EXT.append(_lapjv)
    return _EXT[0]


def available() -> bool:
    """Whether the compiled warm-started solver is in use."""
    return _ext() is not None


@contextlib.contextmanager
def scipy_only(on: bool = True):
    """Within the block every LAP is solved cold by scipy (today's baseline path)."""
    before = _SCIPY_ONLY[0]
    _SCIPY_ONLY[0] = on
    try:
        yield
    finally:
        _SCIPY_ONLY[0] = before


def _as_f64(cost) -> np.ndarray:
    """``cost`` [..., n, n] as a C-contiguous float64 numpy array (one conversion)."""
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().to("cpu", torch.float64).numpy()
    return np.ascontiguousarray(cost, dtype=np.float64)


def _scipy(c: np.ndarray) -> np.ndarray:
    """scipy's maximising assignment of one [n, n] float64 matrix (as today: row and
    column reduced first)."""
    with _STATS_LOCK:
        STATS.scipy += 1
    return linear_sum_assignment(_reduced(-c))[1].astype(np.int64)


def _solve_stack(c: np.ndarray, x: np.ndarray, v: np.ndarray, warm: bool) -> None:
    """Solve the stack ``c`` [B, n, n] in place into ``x``/``v`` [B, n] (warm: from them);
    problems the certificate rejects are answered by scipy, their duals set to NaN (the
    next solve of that problem starts cold)."""
    ext = _ext()
    status = np.zeros(len(c), dtype=np.int64)
    freed = np.zeros(len(c), dtype=np.int64)
    if ext is None:
        status[:] = -1
    else:
        ext.solve(c, x, v, status, freed, -1.0, warm, REL_TOL)
    bad = np.flatnonzero(status)
    with _STATS_LOCK:
        if ext is not None:
            STATS.warm += len(c) if warm else 0
            STATS.cold += 0 if warm else len(c)
            STATS.freed_rows += int(freed.sum()) if warm else 0
        STATS.fallback += int((status[bad] > 0).sum())
    for b in bad:
        x[b] = _scipy(c[b])
        v[b] = np.nan


def solve(cost, state: LapState | None = None) -> tuple[torch.Tensor, LapState | None]:
    """Maximising assignment of ``cost`` [n, n]: (``perm`` with ``perm[i]`` the column of
    row ``i``, state for the next warm start, None without the extension). ``state`` from a
    previous solve of a matrix of the same size warm-starts it (any assignment and duals
    give the same, exact answer; good ones give it sooner)."""
    c = _as_f64(cost)
    n = c.shape[-1]
    if c.ndim != 2 or c.shape[0] != n or _ext() is None:
        return lap(cost), None
    warm = state is not None and len(state.x) == n and bool(np.isfinite(state.v).all())
    x = (state.x.astype(np.int64) if warm else np.full(n, -1, dtype=np.int64))[None].copy()
    v = (state.v.astype(np.float64) if warm else np.zeros(n))[None].copy()
    _solve_stack(c[None], x, v, warm)
    return torch.from_numpy(x[0].copy()), LapState(x[0], v[0])


def _reduced(m: np.ndarray) -> np.ndarray:
    """``m`` minus its row minima, then minus its column minima (in place; the optimal
    assignments are the same). scipy's shortest-augmenting-path solver starts from zero
    duals; on a reduced matrix most rows find a zero of their own at once, which measured
    faster on weight-matching costs."""
    m -= m.min(-1, keepdims=True)
    m -= m.min(-2, keepdims=True)
    return m


T = TypeVar("T")
R = TypeVar("R")
_POOL: ThreadPoolExecutor | None = None
_CPUS: list[int] = []


def workers() -> int:
    """Threads for independent LAPs: torch's intra-op thread budget (what the user or the
    CLI set), at most the CPUs there are. The extension and scipy release the GIL while
    they solve, so independent problems solve side by side."""
    if not _CPUS:
        _CPUS.append(os.cpu_count() or 1)  # asked once: it is a system call
    return max(1, min(torch.get_num_threads(), _CPUS[0]))


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, on :func:`workers` threads when there are several (the
    results, and their order, are the same)."""
    n = min(workers(), len(items))
    if n <= 1:
        return [fn(x) for x in items]
    global _POOL
    if _POOL is None or _POOL._max_workers < n:
        _POOL = ThreadPoolExecutor(n, thread_name_prefix="weightspace-lap")
    return list(_POOL.map(fn, items))


def lap(cost: torch.Tensor) -> torch.Tensor:
    """Maximising assignment (exact, cold): ``perm[i]`` is the column matched to row ``i``."""
    c = _as_f64(cost)
    if _ext() is None or c.shape[0] != c.shape[-1]:
        with _STATS_LOCK:
            STATS.scipy += 1
        return torch.from_numpy(linear_sum_assignment(_reduced(-c))[1]).long()
    return solve(c)[0]


def lap_batch(costs: torch.Tensor, x: np.ndarray | None = None, v: np.ndarray | None = None
              ) -> torch.Tensor:
    """Maximising assignments of a stack ``costs`` [N, n, n] -> [N, n] (one transfer to
    the CPU, one exact solve each, in contiguous chunks on :func:`workers` threads).

    ``x``/``v`` [N, n] (int64 / float64, C order), when given, are each problem's last
    assignment and column duals: problems whose duals are finite start warm from them, and
    both arrays are overwritten with the new answers and duals (the state of the next
    solve); NaN duals mark a problem to start cold."""
    c = _as_f64(costs)
    nb, n = c.shape[:2]
    keep = x is not None
    if not keep:
        x = np.full((nb, n), -1, dtype=np.int64)
        v = np.full((nb, n), np.nan)
    warm = np.isfinite(v).all(1)

    def chunk(bounds):
        lo, hi = bounds
        for flag in (True, False):
            idx = np.flatnonzero(warm[lo:hi] == flag) + lo
            if len(idx) == 0:
                continue
            if len(idx) == idx[-1] - idx[0] + 1:  # contiguous: views, solved in place
                sl = slice(idx[0], idx[-1] + 1)
                _solve_stack(c[sl], x[sl], v[sl], flag)
            else:
                xs, vs = x[idx].copy(), v[idx].copy()
                _solve_stack(c[idx], xs, vs, flag)
                x[idx], v[idx] = xs, vs
    edges = np.linspace(0, nb, min(workers(), nb) + 1).astype(int)
    parallel_map(chunk, list(zip(edges[:-1], edges[1:])))
    return torch.from_numpy(x.copy() if keep else x)


def objective(cost: torch.Tensor, perm: torch.Tensor) -> float:
    """``sum_i cost[i, perm[i]]`` in float64."""
    c = cost.detach().double().cpu()
    return float(c[torch.arange(len(perm)), perm].sum())


__all__ = ["LapState", "LapStats", "STATS", "available", "lap", "lap_batch", "objective",
           "parallel_map", "scipy_only", "solve", "workers"]
