"""BatchNorm reset and REPAIR (Jordan et al. 2022) for interpolated or merged weights.

Interpolating two networks shrinks the variance of their hidden units ("variance
collapse"); REPAIR rescales every repairable unit so that its mean and standard deviation
on train data are the interpolation of the endpoints' values, then folds the correction
into the module's own affine parameters, so the result is an ordinary checkpoint.

Repairable modules are those whose output features are a symmetry group's units and that
carry a per-feature affine map to fold into: ``Linear`` / ``Conv`` with a bias, affine
``BatchNorm`` / ``LayerNorm`` / ``GroupNorm``. The correction is computed progressively in
forward order (each module sees inputs already corrected upstream), as in the paper's
reset layers; for BatchNorm modules the goal is written into their affine parameters and
the statistics are reset.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightspaceError
from ..features import feature_axis, feature_modules
from ..functional import has_batchnorm, reset_bn, scratch
from ..symmetry.structure import Spec


def repairable(spec: Spec, model: nn.Module) -> list[tuple[str, int]]:
    """(module name, feature dim) of every module REPAIR can correct, in forward order."""
    mods = dict(model.named_modules())
    found = []
    for items in feature_modules(spec, model).values():
        for name, dim in items:
            m = mods[name]
            ok = (isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and m.bias is not None) \
                or (isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
                    and getattr(m, "weight", None) is not None)
            if ok:
                found.append((name, dim))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(set(found), key=lambda x: order[x[0]])


BN_ONLY_NOTE = ("every module REPAIR corrects here is a BatchNorm, so REPAIR equals the BN "
                "reset (recalibrated statistics already give each unit the mix of the "
                "endpoints' mean and std)")


def bn_only(spec: Spec, model: nn.Module) -> bool:
    """Whether every module REPAIR would correct is a BatchNorm (then REPAIR is, up to the
    endpoints' statistics matching their own affine parameters, the BN reset)."""
    mods = dict(model.named_modules())
    found = repairable(spec, model)
    return bool(found) and all(isinstance(mods[n], nn.modules.batchnorm._BatchNorm)
                               for n, _ in found)


@torch.no_grad()
def repair(spec: Spec, model: nn.Module, state: dict, endpoint_stats: list[dict],
           weights: list[float], x: torch.Tensor) -> dict:
    """``state`` with every repairable unit's statistics set to the weighted mix of the
    endpoints' (``endpoint_stats[i]`` from :func:`feature_stats`), folded into weights.

    BatchNorm targets need no measurement: after a BN reset their outputs have mean
    ``bias`` and std ``|weight|``, so those are set to the goal directly. The other targets
    are corrected progressively in one forward pass over ``x`` (each hook rescales its
    module's output with the statistics of the full calibration batch, so downstream
    modules see corrected inputs, as the paper's reset layers do)."""
    model = scratch(model)
    model.load_state_dict(state)
    mods = dict(model.named_modules())
    targets = repairable(spec, model)
    goal = {}
    for name, _ in targets:
        goal[name] = (sum(w * s[name][0] for w, s in zip(weights, endpoint_stats)).float(),
                      sum(w * s[name][1] for w, s in zip(weights, endpoint_stats)).float())
    others = []
    for name, dim in targets:
        m = mods[name]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(torch.where(m.weight < 0, -1.0, 1.0) * goal[name][1])
            m.bias.copy_(goal[name][0])
        else:
            others.append((name, dim))
    if has_batchnorm(model):  # statistics of interpolated BN buffers are meaningless
        reset_bn(model, x)
    if others:
        fixes, handles = {}, []
        for name, dim in others:
            def hook(m, _i, out, name=name, dim=dim):
                dim = feature_axis(m, out, dim)
                flat = out.movedim(dim, -1).reshape(-1, out.shape[dim]).double()
                mean, std = flat.mean(0), flat.std(0, unbiased=False)
                scale = (goal[name][1].double() / std.clamp_min(1e-8))
                shift = goal[name][0].double() - mean * scale
                fixes[name] = (scale.float(), shift.float())
                shape = [1] * out.dim()
                shape[dim] = -1
                return out * scale.float().view(shape) + shift.float().view(shape)
            handles.append(mods[name].register_forward_hook(hook))
        model.eval()
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        for name, (scale, shift) in fixes.items():
            _fold(mods[name], scale, shift)
        if has_batchnorm(model):
            reset_bn(model, x)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fold(m: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """Make ``m``'s output ``out * scale + shift`` per feature."""
    w, b = m.weight, m.bias
    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
        w.mul_(scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype))
    else:
        w.mul_(scale.to(w.dtype))
    if b is None:
        raise WeightspaceError(f"{type(m).__name__} has no bias to fold a shift into")
    b.mul_(scale.to(b.dtype)).add_(shift.to(b.dtype))
