"""Assignment solvers: every path (cold, warm-started, batched) reaches scipy's optimum on
random, integer and tied costs and on real weight-matching costs."""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from weightspace.arch import build, input_shape
from weightspace.canonicalize import WeightMatcher
from weightspace.canonicalize.assignment import lap, lap_batch, objective, solve
from weightspace.symmetry import identity_perms, symmetry_of


def best(c: np.ndarray) -> float:
    r, k = linear_sum_assignment(c, maximize=True)
    return float(c[r, k].sum())


def costs(kind: str, n: int, rng) -> np.ndarray:
    if kind == "float":
        return rng.standard_normal((n, n))
    if kind == "int":
        return rng.integers(-50, 50, (n, n)).astype(float)
    return rng.integers(0, 3, (n, n)).astype(float)  # many ties


def is_perm(p: torch.Tensor, n: int) -> bool:
    return sorted(p.tolist()) == list(range(n))


@pytest.mark.parametrize("kind", ["float", "int", "ties"])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 200])
def test_cold_and_warm_reach_the_optimum(kind, n):
    rng = np.random.default_rng(n)
    c = costs(kind, n, rng)
    p, state = solve(torch.tensor(c))
    assert is_perm(p, n) and objective(torch.tensor(c), p) == pytest.approx(best(c), abs=1e-9)
    assert objective(torch.tensor(c), lap(torch.tensor(c))) == pytest.approx(best(c), abs=1e-9)
    for step in range(6):  # nearby problems, as in later sweeps, warm-started from the last
        if kind == "float":
            c = c + 0.05 * rng.standard_normal((n, n))
        else:
            i, j = rng.integers(0, n, (2, 3))
            c[i, j] += rng.integers(-3, 4, 3)
        p, state = solve(torch.tensor(c), state, max_free=1.0)
        assert is_perm(p, n)
        assert objective(torch.tensor(c), p) == pytest.approx(best(c), abs=1e-8), (step, kind)


def test_batched_solver_matches_scipy():
    rng = np.random.default_rng(0)
    stack = np.stack([costs(k, 32, rng) for k in ("float", "int", "ties") * 3])
    perms = lap_batch(torch.tensor(stack))
    assert perms.shape == (9, 32)
    for c, p in zip(stack, perms):
        assert is_perm(p, 32)
        assert objective(torch.tensor(c), p) == pytest.approx(best(c), abs=1e-9)


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
    each solved cold and warm-started from its neighbour's state."""
    spec, states = spec_and_two_inits(ref)
    m = WeightMatcher(spec, *states)
    perms = identity_perms(spec)
    state = None
    checked = 0
    for fam in m.fams:
        plain, _ = m.family_cost(fam, perms)
        c = plain.double().numpy()
        p, st = solve(plain)
        assert objective(plain, p) == pytest.approx(best(c), rel=1e-12, abs=1e-9)
        if state is not None and len(state.x) == len(c):
            p2, _ = solve(plain, state, max_free=1.0)
            assert objective(plain, p2) == pytest.approx(best(c), rel=1e-12, abs=1e-9)
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
