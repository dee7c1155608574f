"""A zoo matched to its barycenter by batched weight matching is kept stacked ([N, ...] per
tensor): permuting the stack must give model by model's tensors bitwise, and the rounds
must give the same permutations and RMS history as the model-by-model bookkeeping."""
import pytest
import torch

from weightspace.arch import build, input_shape
from weightspace.canonicalize import zoo as zoo_mod
from weightspace.canonicalize.batched import stacked_apply
from weightspace.canonicalize.zoo import barycenter_perms
from weightspace.symmetry import apply, random_perms, symmetry_of

REFS = ["mlp:64-64-64-10", "resnet20?width=1&in_chans=1"]


def spec_and_zoo(ref, models=5):
    model = build(ref).eval()
    spec = symmetry_of(model, torch.randn(input_shape(ref, model),
                                          generator=torch.Generator().manual_seed(0)))
    states = []
    for seed in range(models):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(100 + seed)
        sd = {}
        for k, v in build(ref).state_dict().items():
            if v.is_floating_point():
                v = v + 0.1 * torch.randn(v.shape, generator=g)
                if "running_var" in k:
                    v = v.abs() + 0.5
            sd[k] = v
        states.append(sd)
    return spec, states


@pytest.mark.parametrize("ref", REFS)
def test_stacked_apply_equals_apply_model_by_model(ref):
    spec, states = spec_and_zoo(ref)
    perms = [random_perms(spec, seed=s) for s in range(len(states))]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    out = stacked_apply(spec, {g: torch.stack([p[g] for p in perms]) for g in perms[0]},
                        stacked)
    for i, (s, p) in enumerate(zip(states, perms)):
        one = apply(spec, p, s)
        assert all(torch.equal(out[k][i], one[k]) for k in one)


@pytest.mark.parametrize("ref", REFS)
def test_stacked_barycenter_rounds_equal_model_by_model(ref, monkeypatch):
    spec, states = spec_and_zoo(ref)
    fast, rounds, history = barycenter_perms(spec, states, seed=1, max_rounds=4)
    monkeypatch.setattr(zoo_mod, "_stacked", lambda states: None)
    slow, rounds0, history0 = barycenter_perms(spec, states, seed=1, max_rounds=4)
    assert rounds == rounds0 and history == history0
    assert fast.keys() == slow.keys()
    assert all(torch.equal(fast[i][g], slow[i][g]) for i in fast for g in fast[i])
