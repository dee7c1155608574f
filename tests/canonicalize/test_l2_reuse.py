"""l2_distance reuses one temporary from tensor to tensor, and WeightMatcher reuses its
cost buffers: the distance must equal the plain formula (tensors of several shapes, sizes
up and down, other dtypes, integer tensors and keys missing from B skipped, inputs that
require gradients), and matching tensors that require gradients must work and give the
same permutations as their detached copies."""
import torch

from weightspace.arch import build, input_shape
from weightspace.canonicalize import l2_distance, weight_matching
from weightspace.symmetry import symmetry_of


def test_l2_distance_equals_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    A = {"big": torch.randn(40, 30, generator=g), "small": torch.randn(3, generator=g),
         "mid": torch.randn(7, 5, 2, generator=g), "half": torch.randn(6, generator=g).half(),
         "int": torch.arange(4), "only_a": torch.randn(5, generator=g),
         "grad": torch.randn(9, generator=g).requires_grad_()}
    B = {k: (torch.randn(v.shape, generator=g).to(v.dtype) if v.is_floating_point() else v + 1)
         for k, v in A.items() if k != "only_a"}
    B["mid"] = B["mid"].double()
    want = sum(float(((A[k].detach().float() - B[k].detach().float()) ** 2).sum())
               for k in A if A[k].is_floating_point() and k in B) ** 0.5
    assert abs(l2_distance(A, B) - want) <= 1e-6 * want
    assert l2_distance(A, A) == 0.0


def test_matching_tensors_that_require_gradients():
    ref = "mlp:8-16-16-4"
    model = build(ref).eval()
    spec = symmetry_of(model, torch.randn(input_shape(ref, model)))
    torch.manual_seed(1)
    A = build(ref).state_dict()
    torch.manual_seed(2)
    B = build(ref).state_dict()
    p0, r0 = weight_matching(spec, A, B)
    Ag = {k: v.clone().requires_grad_() for k, v in A.items()}
    Bg = {k: v.clone().requires_grad_() for k, v in B.items()}
    p1, r1 = weight_matching(spec, Ag, Bg)
    assert all(torch.equal(p0[g], p1[g]) for g in p0)
    assert r0.l2_after == r1.l2_after
