"""Equality with mergekit's own merge functions on the same tensors and parameters.

mergekit is not a dependency (CI does not install it): these tests skip with the reason
when it cannot be imported. To run them, install it beside torch, e.g. a venv made with
the project venv's packages visible and ``pip install --no-deps mergekit pydantic``.
"""
import pytest
import torch

from weightspace.merge.taskvector.recipe import evaluate
from weightspace.merge.taskvector.stream import merge_tensor

api = pytest.importorskip("mergekit.merge_methods.api",
                          reason="mergekit (>= 0.1.5, with merge_methods.api) is not "
                                 "installed")

DETERMINISTIC = {
    "linear": dict(weight=[0.2, 0.5, 0.3]),
    "linear_unnormalized": dict(weight=[0.2, 0.5, 0.3], normalize=False),
    "task_arithmetic": dict(weight=[1.0, 0.7, 0.4], **{"lambda": 0.8}),
    "task_arithmetic_normalized": dict(weight=[1.0, 0.7, 0.4], normalize=True),
    "ties": dict(weight=[1.0, 0.6, 1.0], density=[1.0, 0.3, 0.5]),
    "ties_unnormalized": dict(weight=[1.0, 0.6, 1.0], density=0.4, normalize=False,
                              **{"lambda": 1.5}),
    "breadcrumbs": dict(weight=[1.0, 0.5, 0.5], density=0.6, gamma=[0.0, 0.05, 0.1]),
    "breadcrumbs_ties": dict(weight=[1.0, 0.5, 0.8], density=0.7, gamma=0.02, rescale=True),
    "model_stock": dict(),
    "model_stock_filter_wise": dict(filter_wise=True),
    "slerp": dict(t=0.3),
}
# dare_* and della* draw at random: compared on the same draws below


def _inputs(n: int, shape, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    return [base] + [base + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
                     for _ in range(n - 1)]


@pytest.mark.parametrize("case", sorted(DETERMINISTIC))
@pytest.mark.parametrize("shape", [(37,), (16, 24), (8, 3, 3, 3)])
def test_equal_to_mergekit(case, shape):
    method = case.replace("_unnormalized", "").replace("_normalized", "") \
        .replace("_filter_wise", "")
    params = DETERMINISTIC[case]
    n = 2 if method == "slerp" else 3
    tensors = _inputs(n, shape, seed=len(case) + len(shape))
    ours = merge_tensor(method, tensors, base=0, **{
        k: (v[:n] if isinstance(v, list) else v) for k, v in params.items()})
    # mergekit takes a non-base parameter's list without the base's entry (index 0 here)
    skip = 0 if method == "linear" else 1
    theirs = api.merge_tensors(tensors, method, base_index=None if skip == 0 else 0,
                               parameters={k: (v[skip:n] if isinstance(v, list) else v)
                                           for k, v in params.items()})
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_equal_to_mergekit_on_the_same_draws(method):
    """mergekit draws from torch's global generator: seeded alike, the draws are the same."""
    tensors = _inputs(3, (12, 10), seed=5)
    params = dict(weight=[1.0, 0.5, 0.8], density=0.6, **({"epsilon": 0.1} if "della" in
                                                          method else {}))
    g = torch.Generator().manual_seed(11)
    from weightspace.merge.taskvector.methods import get_tv_method
    m = get_tv_method(method)  # the method itself: merge_tensor seeds per tensor instead
    shared = {p.name: p.default for p in m.params if p.scope == "shared"}
    per = [{}] + [{"weight": w, "density": 0.6, **({"epsilon": 0.1} if "della" in method
                                                   else {})} for w in params["weight"][1:]]
    ours = m.fn(tensors, 0, shared, per, g)
    torch.manual_seed(11)
    theirs = api.merge_tensors(tensors, method, base_index=0, parameters={
        k: (v[1:] if isinstance(v, list) else v) for k, v in params.items()})
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_slerp_parallel_and_float64_equal_to_mergekit():
    a = torch.randn(50, dtype=torch.float64)
    for b in (2.5 * a, -a, torch.randn(50, dtype=torch.float64)):
        ours = merge_tensor("slerp", [a, b], base=0, t=0.7)
        theirs = api.merge_tensors([a, b], "slerp", base_index=0, parameters={"t": 0.7})
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_settings_evaluate_like_mergekit():
    config = pytest.importorskip("mergekit.config", reason="mergekit.config needs "
                                 "mergekit's language-model dependencies (peft, "
                                 "transformers)", exc_type=ImportError)
    ConditionalParameter, evaluate_setting = config.ConditionalParameter, \
        config.evaluate_setting
    settings = [0.5, [0.0, 1.0], [0.1, 0.9, 0.3, 0.7], [True, False, True],
                [{"filter": "attn", "value": 0.2}, {"value": [0.0, 0.5]}],
                [{"filter": "mlp", "value": 0.9}]]
    for s in settings:
        theirs_s = [ConditionalParameter(**c) for c in s] if isinstance(s, list) and \
            isinstance(s[0], dict) else s
        for name in ("blocks.3.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "head.weight"):
            for t in (0.0, 0.3, 0.5, 0.99, 1.0):
                validate = bool if isinstance(s, list) and isinstance(s[0], bool) else float
                want = evaluate_setting(name, theirs_s, t, validate=validate)
                got = evaluate(s, name, t)
                assert (got is None and want is None) or got == pytest.approx(want), \
                    (s, name, t)
