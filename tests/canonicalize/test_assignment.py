"""Assignment solvers: every path (cold, warm-started from any assignment and duals,
batched, scipy fallback) reaches the optimum on random, tied and rank-one costs of sizes 1
to 1024, with scipy's very answer wherever the optimum is unique."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from weightspace.arch import build, input_shape
from weightspace.canonicalize import WeightMatcher
from weightspace.canonicalize import assignment as asg
from weightspace.canonicalize.assignment import (STATS, LapState, lap, lap_batch, scipy_only, solve)
from weightspace.symmetry import identity_perms, symmetry_of

needs_ext = pytest.mark.skipif(not asg.available(), reason="C extension not built")


def best(c: np.ndarray) -> float:
    r, k = linear_sum_assignment(c, maximize=True)
    return float(c[r, k].sum())


def costs(kind: str, n: int, rng) -> np.ndarray:
    if kind == "float":
        return rng.standard_normal((n, n))
    if kind == "int":
        return rng.integers(-50, 50, (n, n)).astype(float)
    if kind == "ties":
        return rng.integers(0, 3, (n, n)).astype(float)
    if kind == "rank1+noise":  # weight-matching costs of conv layers are close to this
        return np.outer(rng.standard_normal(n), rng.standard_normal(n)) \
            + 1e-3 * rng.standard_normal((n, n))
    if kind == "offsets+rank1+noise":  # rows and columns shifted, a rank-one core, noise
        return rng.standard_normal((n, 1)) * 5 + rng.standard_normal((1, n)) * 5 \
            + np.outer(rng.standard_normal(n), rng.standard_normal(n)) \
            + 0.3 * rng.standard_normal((n, n))
    return np.outer(rng.standard_normal(n), rng.standard_normal(n))  # rank one


def rank_one_best(a: np.ndarray, b: np.ndarray) -> float:
    """max over permutations of sum a_i b_p(i): sorted against sorted (rearrangement)."""
    return float(np.sort(a) @ np.sort(b))


def is_perm(p, n: int) -> bool:
    return sorted(np.asarray(p).tolist()) == list(range(n))


def check(c: np.ndarray, p, unique: bool, ref: np.ndarray | None = None):
    n = len(c)
    p = np.asarray(p)
    assert is_perm(p, n)
    r, k = linear_sum_assignment(c, maximize=True) if ref is None else (None, ref)
    want = float(c[np.arange(n), k].sum())
    got = float(c[np.arange(n), p].sum())
    assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
    if unique:
        assert np.array_equal(p, k)


SIZES = [1, 2, 3, 7, 64, 200, pytest.param(513, marks=pytest.mark.slow)]


@needs_ext
@pytest.mark.parametrize("kind", ["float", "int", "ties", "rank1+noise",
                                  "offsets+rank1+noise"])
@pytest.mark.parametrize("n", SIZES)
def test_cold_and_warm_reach_the_optimum(kind, n):
    """Cold; then nearby problems (as in later sweeps) warm-started from the last state;
    then from a random assignment with random duals: always the optimum, and scipy's very
    assignment for continuous costs (a unique optimum)."""
    rng = np.random.default_rng(n)
    c = costs(kind, n, rng)
    unique = kind in ("float", "rank1+noise", "offsets+rank1+noise")
    p, state = solve(torch.tensor(c))
    check(c, p, unique)
    check(c, lap(torch.tensor(c)), unique)
    for _ in range(3):
        if unique:
            c = c + 0.05 * c.std() * rng.standard_normal((n, n))
        else:
            i, j = rng.integers(0, n, (2, 3))
            c[i, j] += rng.integers(-3, 4, 3)
        p, state = solve(torch.tensor(c), state)
        check(c, p, unique)
    wild = LapState(rng.permutation(n), rng.standard_normal(n) * c.std() * 3)
    check(c, solve(c, wild)[0], unique)
    check(c, solve(c, LapState(np.full(n, -1), np.zeros(n)))[0], unique)


@needs_ext
@pytest.mark.parametrize("n", [256, pytest.param(1024, marks=pytest.mark.slow)])
def test_large_random_and_rank_one(n):
    rng = np.random.default_rng(n)
    c = costs("float", n, rng)
    p, st = solve(c)
    check(c, p, unique=True)
    c2 = c + 0.02 * rng.standard_normal((n, n))
    check(c2, solve(c2, st)[0], unique=True)  # warm from the neighbour's answer
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    r1 = np.outer(a, b)  # exact rank one: the optimum is known without scipy
    p, st = solve(r1)
    assert is_perm(p, n)
    assert float(r1[np.arange(n), p.numpy()].sum()) == pytest.approx(rank_one_best(a, b),
                                                                      rel=1e-12)
    want = np.empty(n, dtype=np.int64)
    want[np.argsort(a)] = np.argsort(b)  # distinct values: the sorted matching is unique
    assert np.array_equal(p.numpy(), want)
    p2, _ = solve(r1, LapState(rng.permutation(n), np.zeros(n)))
    assert np.array_equal(p2.numpy(), want)


@needs_ext
def test_tied_costs_give_an_optimal_permutation_from_any_start():
    """All-equal and block-tied matrices: many optima; every start returns one of them."""
    rng = np.random.default_rng(0)
    for c in (np.zeros((50, 50)), np.ones((9, 9)), np.kron(np.eye(5), np.ones((8, 8)))):
        n = len(c)
        for start in (None, LapState(rng.permutation(n), rng.standard_normal(n))):
            p, _ = solve(c, start)
            assert is_perm(p, n)
            assert float(c[np.arange(n), p.numpy()].sum()) == best(c)


def test_batched_solver_matches_scipy_cold_and_warm():
    rng = np.random.default_rng(0)
    stack = np.stack([costs(k, 32, rng) for k in ("float", "int", "ties") * 3])
    perms = lap_batch(torch.tensor(stack))
    assert perms.shape == (9, 32)
    for c, p in zip(stack, perms):
        check(c, p, unique=False)
    x = np.full((9, 32), -1, dtype=np.int64)
    v = np.full((9, 32), np.nan)
    lap_batch(stack, x, v)  # fills the states
    assert np.isfinite(v).all() or not asg.available()
    stack2 = stack + 0.1 * rng.standard_normal(stack.shape)
    v[::2] = np.nan          # every other problem starts cold, the rest warm
    warm = lap_batch(stack2, x, v)
    assert np.array_equal(warm.numpy(), x)
    for c, p in zip(stack2, warm):
        check(c, p, unique=True)


@needs_ext
def test_a_failed_certificate_falls_back_to_scipy(monkeypatch):
    """A certificate that cannot pass: scipy answers every problem, and each is counted."""
    monkeypatch.setattr(asg, "REL_TOL", -1.0)
    rng = np.random.default_rng(3)
    STATS.reset()
    c = costs("float", 40, rng)
    p, state = solve(c)
    check(c, p, unique=True)
    assert STATS.fallback == 1 and not np.isfinite(state.v).any()
    check(c, solve(c, state)[0], unique=True)   # NaN duals: starts cold (and falls back)
    assert STATS.fallback == 2 and STATS.warm == 0
    stack = np.stack([costs("float", 16, rng) for _ in range(3)])
    for c, p in zip(stack, lap_batch(stack)):
        check(c, p, unique=True)
    assert STATS.fallback == 5


@needs_ext
def test_constant_costs_warm_started_from_any_duals_certify_without_fallback():
    """All-equal costs (every assignment optimal) from random assignments and duals: the
    certificate's tolerance follows the duals too, so their rounding is not a failed check
    (a tolerance from the costs alone is zero here and fell back to scipy)."""
    STATS.reset()
    for n in (2, 5, 16, 33, 64):
        for seed in range(6):
            rng = np.random.default_rng(seed)
            for value, scale in ((0.0, 1.0), (0.0, 1e3), (3.0, 1.0)):
                c = np.full((n, n), value)
                start = LapState(rng.permutation(n).astype(np.int64), rng.random(n) * scale)
                assert is_perm(solve(c, start)[0], n)
    assert STATS.fallback == 0


def test_non_finite_costs_fail_like_scipy():
    c = np.zeros((4, 4))
    c[1, 2] = np.nan
    with pytest.raises(ValueError):
        lap(torch.tensor(c))


def test_scipy_only_is_todays_path():
    rng = np.random.default_rng(5)
    c = costs("float", 30, rng)
    STATS.reset()
    with scipy_only():
        assert not asg.available()
        p, state = solve(c)
    assert state is None and STATS.scipy == 1 and STATS.cold == 0
    check(c, p, unique=True)


def spec_and_two_inits(ref: str):
    """The architecture's spec and two independently initialised state dicts."""
    model = build(ref).eval()
    spec = symmetry_of(model, torch.randn(input_shape(ref, model)))
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(build(ref).state_dict())
    return spec, states


@pytest.mark.parametrize("ref", ["mlp:64-64-64-10", "resnet20?width=1"])
def test_real_weight_matching_costs(ref):
    """The cost matrices weight matching builds (every family, two independent inits),
    each solved cold and warm-started from its neighbour's state: scipy's answer."""
    spec, states = spec_and_two_inits(ref)
    m = WeightMatcher(spec, *states)
    perms = identity_perms(spec)
    state = None
    checked = 0
    for fam in m.fams:
        plain, _ = m.family_cost(fam, perms)
        c = plain.double().numpy()
        p, st = solve(plain)
        check(c, p, unique=True)
        if state is not None and len(state.x) == len(c):
            check(c, solve(plain, state)[0], unique=True)
        state = st
        checked += 1
    assert checked == len(m.fams) >= 2


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_batched_solver_on_threads_equals_one_at_a_time(two_threads):
    from weightspace.canonicalize.assignment import workers
    rng = np.random.default_rng(1)
    stack = torch.tensor(np.stack([costs(k, 24, rng) for k in ("float", "int") * 5]))
    assert workers() == min(2, __import__("os").cpu_count())
    serial = torch.stack([lap(c) for c in stack])
    assert torch.equal(lap_batch(stack), serial)


@pytest.mark.parametrize("ref", ["mlp:64-64-64-10", "resnet20?width=1",
                                 "timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2"])
def test_weight_matching_on_threads_takes_the_same_steps(ref, two_threads):
    """Families that share no parameter are solved side by side: same permutations, same
    objective history as one family after the other."""
    from weightspace.canonicalize import weight_matching
    spec, states = spec_and_two_inits(ref)
    m = WeightMatcher(spec, *states)
    runs = m._independent_runs(m.fams)
    assert sum(map(len, runs)) == len(m.fams)
    for run in runs:  # no two families of a run touch one tensor
        keys = [set(m.fam_keys[f.top]) for f in run]
        assert all(not (a & b) for i, a in enumerate(keys) for b in keys[i + 1:])
    threaded = weight_matching(spec, *states, seed=3)
    torch.set_num_threads(1)
    serial = weight_matching(spec, *states, seed=3)
    assert all(torch.equal(threaded[0][g], serial[0][g]) for g in serial[0])
    assert threaded[1].objective_history == pytest.approx(serial[1].objective_history,
                                                          rel=1e-6)
