"""Weight matching updates each family's cost from what moved since its last call (only the
columns a neighbouring group's new permutation moved, in one float64 sum per family). After
any sequence of permutation changes, small (a few units swapped) or whole, the kept cost
must equal the cost built from scratch at the same permutations: on an MLP, a ResNet
(conv, BatchNorm and residual groups) and a ViT (per-head groups nested in products)."""
import random

import pytest
import torch

from weightspace.arch import build, input_shape
from weightspace.canonicalize.matching import WeightMatcher
from weightspace.symmetry import random_perms, symmetry_of
from weightspace.symmetry.structure import identity_perms

REFS = ["mlp:64-64-64-10", "resnet20?width=1",
        "timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2"]


def spec_and_pair(ref):
    model = build(ref).eval()
    spec = symmetry_of(model, torch.randn(input_shape(ref, model),
                                          generator=torch.Generator().manual_seed(0)))
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({k: v for k, v in build(ref).state_dict().items()})
    return spec, states


def close(a, b) -> bool:
    scale = max(1.0, float(b.abs().max()))
    return torch.allclose(a.double(), b.double(), rtol=0, atol=1e-5 * scale)


def step(perms, spec, rng: random.Random, seed: int) -> set[str]:
    """Change some groups' permutations in place: a few units of a top-level group swapped
    among themselves, or a whole new permutation; returns the groups changed."""
    fresh = random_perms(spec, seed=seed)
    changed = set()
    for g in rng.sample(sorted(perms), k=max(1, len(perms) // 3)):
        p = perms[g]
        if p.dim() == 1 and len(p) > 3 and rng.random() < 0.7:
            k = rng.randint(2, max(2, len(p) // 8))
            pos = torch.tensor(rng.sample(range(len(p)), k))
            p = p.clone()
            p[pos] = p[pos[torch.randperm(k, generator=torch.Generator().manual_seed(seed))]]
        else:
            p = fresh[g]
        if not torch.equal(p, perms[g]):
            perms[g] = p
            changed.add(g)
    return changed


@pytest.mark.parametrize("ref", REFS)
def test_kept_costs_equal_costs_from_scratch(ref):
    spec, (A, B) = spec_and_pair(ref)
    kept = WeightMatcher(spec, A, B)
    perms = identity_perms(spec)
    rng = random.Random(0)
    checked = 0
    for r in range(6):
        for fam in rng.sample(kept.fams, k=len(kept.fams)):
            plain, nested = kept.family_cost(fam, perms)
            plain0, nested0 = WeightMatcher(spec, A, B, fams=kept.fams).family_cost(fam, perms)
            assert (plain is None) == (plain0 is None)
            if plain is not None:
                assert plain.dtype == torch.float64 and close(plain, plain0), (fam.top, r)
            assert nested.keys() == nested0.keys()
            assert all(close(nested[c], nested0[c]) for c in nested)
            checked += 1
        for g in step(perms, spec, rng, seed=r):
            kept.version[g] += 1
    assert checked >= 6 * 2


def test_a_kept_cost_is_updated_not_rebuilt_when_few_units_move():
    """The incremental path is the one taken: after a swap of two units of one group, a
    neighbouring family's sum is the same tensor, changed in place."""
    spec, (A, B) = spec_and_pair("mlp:64-64-64-10")
    m = WeightMatcher(spec, A, B)
    perms = identity_perms(spec)
    fams = {f.top: f for f in m.fams}
    first, second = sorted(fams)[:2]
    before, _ = m.family_cost(fams[second], perms)
    kept = before.clone()
    p = perms[first].clone()
    p[[0, 1]] = p[[1, 0]]
    perms[first] = p
    m.version[first] += 1
    after, _ = m.family_cost(fams[second], perms)
    assert after is before and not torch.equal(after, kept)
    scratch, _ = WeightMatcher(spec, A, B).family_cost(fams[second], perms)
    assert close(after, scratch)
