"""Features of hidden units: which modules output a group's units, and their values on data.

Activation matching correlates the features of two models; REPAIR matches their means and
standard deviations. Both read them the same way: a forward hook on every module whose
output features are a symmetry group's units, batch by batch, in eval mode.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from .symmetry.structure import Spec

# modules whose features lie on the last axis / on axis 1 of their output
_FEATURE_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding)
_FEATURE_DIM1 = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def feature_modules(spec: Spec, model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """group -> [(module name, feature dim)] for modules whose outputs are its units."""
    mods = dict(model.named_modules())
    out: dict[str, list[tuple[str, int]]] = {}
    for g in spec.groups:
        if g.parent is not None:
            continue
        for member in g.members:
            if spec.layouts.get(member) != ("group", g.name) or not member.endswith(
                    (".weight:0", ".bias:0")):
                continue
            name = member.rsplit(".", 1)[0]
            m = mods.get(name)
            dim = -1 if isinstance(m, _FEATURE_LAST) else 1 if isinstance(m, _FEATURE_DIM1) \
                else None
            if dim is not None and (name, dim) not in out.get(g.name, []):
                out.setdefault(g.name, []).append((name, dim))
    return out


def _width(m: nn.Module) -> int | None:
    """How many features the module outputs, from its own settings."""
    for attr in ("out_features", "out_channels", "num_features", "num_channels",
                 "embedding_dim"):
        if isinstance(getattr(m, attr, None), int):
            return getattr(m, attr)
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    return None


def feature_axis(module: nn.Module, out: torch.Tensor, dim: int) -> int:
    """The axis of ``out`` holding ``module``'s features: ``dim`` as its kind says, or axis
    1 when the module is a channel-first variant of a kind that puts them last (a LayerNorm
    over the channels of an NCHW tensor, as ``LayerNorm2d`` here and in timm)."""
    n = _width(module)
    if n is None or out.shape[dim] == n or out.dim() < 3 or out.shape[1] != n:
        return dim
    return 1


@torch.no_grad()
def feature_batches(model: nn.Module, state: dict, targets: list[tuple[str, int]],
                    x: torch.Tensor, batch_size: int = 512) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch of ``x``: ``{module name: [rows, features]}`` (float64) outputs of the
    ``targets`` (module name, feature dim), with ``model`` run on ``state`` in eval mode."""
    mods = dict(model.named_modules())
    feats: dict[str, torch.Tensor] = {}
    handles = []
    for name, dim in targets:
        def hook(m, _i, out, name=name, dim=dim):
            d = feature_axis(m, out, dim)
            feats[name] = out.movedim(d, -1).reshape(-1, out.shape[d]).double()
        handles.append(mods[name].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for lo in range(0, len(x), batch_size):
            feats.clear()
            functional_call(model, state, (x[lo:lo + batch_size],))
            yield dict(feats)
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def feature_stats(model: nn.Module, state: dict, targets: list[tuple[str, int]],
                  x: torch.Tensor, batch_size: int = 512) -> dict[str, tuple]:
    """Per-feature ``(mean, std)`` of each target module's output over ``x``."""
    acc = {n: [0.0, 0.0, 0] for n, _ in targets}
    for batch in feature_batches(model, state, targets, x, batch_size):
        for n, a in batch.items():
            s = acc[n]
            s[0], s[1], s[2] = s[0] + a.sum(0), s[1] + (a * a).sum(0), s[2] + len(a)
    out = {}
    for n, (s1, s2, k) in acc.items():
        mean = s1 / k
        out[n] = (mean, (s2 / k - mean * mean).clamp_min(0).sqrt())
    return out
