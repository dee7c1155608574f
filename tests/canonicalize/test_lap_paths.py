"""The warm-started LAP changes how fast weight matching runs, never what it returns: the
same permutations and L2 as the scipy-only path on independent pairs, planted
permutations, batches, and batches that carry their warm starts from call to call."""
import pytest
import torch

from weightspace.arch import build, input_shape
from weightspace.canonicalize import weight_matching
from weightspace.canonicalize.assignment import STATS, available, scipy_only
from weightspace.canonicalize.batched import LapCarry, batched_weight_matching
from weightspace.symmetry import apply, random_perms, symmetry_of

pytestmark = pytest.mark.skipif(not available(), reason="C extension not built")
REFS = ["mlp:64-64-64-10", "resnet20?width=1"]


def spec_of(ref):
    model = build(ref).eval()
    return symmetry_of(model, torch.randn(input_shape(ref, model),
                                          generator=torch.Generator().manual_seed(0)))


def state(ref, seed, noise=0.1):
    """A random init with biases and norm statistics moved off their defaults."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    out = {}
    for k, v in build(ref).state_dict().items():
        if v.is_floating_point():
            v = v + noise * torch.randn(v.shape, generator=g)
            if "running_var" in k:
                v = v.abs() + 0.5
        out[k] = v
    return out


def same(p, q) -> bool:
    return p.keys() == q.keys() and all(torch.equal(p[g], q[g]) for g in p)


@pytest.mark.parametrize("ref", REFS)
def test_independent_pairs_match_the_scipy_path(ref):
    spec = spec_of(ref)
    A, B = state(ref, 0), state(ref, 1)
    STATS.reset()
    ours, rep = weight_matching(spec, A, B, seed=4)
    assert STATS.warm > 0 and STATS.fallback == 0
    with scipy_only():
        theirs, rep_sc = weight_matching(spec, A, B, seed=4)
    assert same(ours, theirs)
    assert rep.l2_after == rep_sc.l2_after and rep.iterations == rep_sc.iterations


@pytest.mark.parametrize("ref", REFS)
def test_planted_permutations_recovered_like_the_scipy_path(ref):
    spec = spec_of(ref)
    A = state(ref, 2)
    planted = random_perms(spec, seed=9)
    g = torch.Generator().manual_seed(3)
    B = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
         for k, v in apply(spec, planted, A).items()}
    ours, _ = weight_matching(spec, A, B, seed=1)
    with scipy_only():
        theirs, _ = weight_matching(spec, A, B, seed=1)
    assert same(ours, theirs)
    back = apply(spec, ours, B)
    assert max(float((back[k] - A[k]).abs().max()) for k in A) < 0.1


@pytest.mark.parametrize("ref", REFS)
def test_batches_and_carried_warm_starts_match_the_scipy_path(ref):
    """Two calls on the same models (as two barycenter rounds): carrying the LAP states
    from the first into the second gives what a cold batch and the scipy path give."""
    spec = spec_of(ref)
    A = [state(ref, s) for s in range(3)]
    A2 = [state(ref, 20 + s) for s in range(3)]
    B = [state(ref, 10 + s) for s in range(3)]
    carry = LapCarry()
    first = batched_weight_matching(spec, A, B, seed=5, carry=carry, ids=[7, 8, 9])
    assert {i for i, _ in carry.kept} == {7, 8, 9}
    second = batched_weight_matching(spec, A2, B, init=first, seed=6, carry=carry,
                                     ids=[7, 8, 9])
    cold = batched_weight_matching(spec, A2, B, init=first, seed=6)
    with scipy_only():
        first_sc = batched_weight_matching(spec, A, B, seed=5)
        second_sc = batched_weight_matching(spec, A2, B, init=first_sc, seed=6)
    for b in range(3):
        assert same(first[b], first_sc[b])
        assert same(second[b], cold[b]) and same(second[b], second_sc[b])

