"""The C solver's row scans run four columns at a time with AVX2 where the machine has it,
and in plain C elsewhere. Both must take the same steps: the same assignments and, bit
for bit, the same column duals, cold and warm, on random, integer, tied and (near) rank-one
costs whose sizes are and are not multiples of four; and the plain path alone must still
reach the optimum (it is the one other machines run)."""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from weightspace.canonicalize import assignment as asg

pytestmark = pytest.mark.skipif(not asg.available(), reason="C extension not built")


def ext():
    from weightspace.canonicalize import _lapjv
    return _lapjv


@pytest.fixture
def plain_scans():
    before = ext().simd(False)
    yield
    ext().simd(before)


def kinds(n: int, rng) -> list[np.ndarray]:
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    return [rng.standard_normal((n, n)), rng.integers(-20, 20, (n, n)).astype(float),
            rng.integers(0, 2, (n, n)).astype(float),
            np.outer(a, b) + 1e-3 * rng.standard_normal((n, n)), np.outer(a, b),
            np.zeros((n, n))]


def run(c: np.ndarray, x: np.ndarray, v: np.ndarray, warm: bool):
    x, v = x.copy()[None], v.copy()[None]
    status, freed = np.zeros(1, np.int64), np.zeros(1, np.int64)
    ext().solve(np.ascontiguousarray(c)[None], x, v, status, freed, -1.0, warm, 1e-10)
    return x[0], v[0], int(status[0])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 31, 64, 129])
def test_simd_and_plain_scans_take_the_same_steps(n):
    rng = np.random.default_rng(n)
    before = ext().simd(True)
    try:
        for c in kinds(n, rng):
            starts = [(np.full(n, -1, np.int64), np.zeros(n), False),
                      (rng.permutation(n).astype(np.int64), rng.standard_normal(n), True)]
            for x0, v0, warm in starts:
                ext().simd(True)
                fast = run(c, x0, v0, warm)
                ext().simd(False)
                plain = run(c, x0, v0, warm)
                # (a failed certificate, answered by scipy in use, fails on both paths:
                # e.g. all-zero costs from random duals, where the tolerance is zero)
                assert fast[2] == plain[2]
                assert np.array_equal(fast[0], plain[0])
                assert np.array_equal(fast[1], plain[1])  # bit for bit
                if fast[2]:
                    continue
                want = linear_sum_assignment(c, maximize=True)[1]
                assert c[np.arange(n), fast[0]].sum() == pytest.approx(
                    c[np.arange(n), want].sum(), rel=1e-12, abs=1e-9)
    finally:
        ext().simd(before)


@pytest.mark.parametrize("n", [3, 64, 200])
def test_plain_scans_reach_scipys_answer_cold_and_warm(n, plain_scans):
    rng = np.random.default_rng(100 + n)
    c = rng.standard_normal((n, n))
    want = linear_sum_assignment(c, maximize=True)[1]
    p, state = asg.solve(c)
    assert np.array_equal(p.numpy(), want)
    c2 = c + 0.05 * rng.standard_normal((n, n))
    p2, _ = asg.solve(c2, state)
    assert np.array_equal(p2.numpy(), linear_sum_assignment(c2, maximize=True)[1])


def test_simd_switch_reports_and_restores():
    before = ext().simd()
    assert ext().simd(False) is before
    assert ext().simd() is False
    ext().simd(before)
    assert ext().simd() is before
