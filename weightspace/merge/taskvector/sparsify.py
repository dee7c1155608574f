"""Sparsifying a task vector, as mergekit does: keep the largest entries (TIES), drop at
random (DARE), or drop the largest ``gamma`` and the smallest (Model Breadcrumbs); with
``rescale`` the kept entries are scaled back to the task vector's L1 norm.

Tensor in, tensor out (same shape); ``density`` is the fraction of entries kept.
"""
from __future__ import annotations

import torch


def rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: bool,
             eps: float = 1e-7) -> torch.Tensor:
    """``delta * mask``, scaled to ``delta``"s L1 norm when ``rescale`` (left as is when
    either norm is below ``eps``)."""
    masked = delta * mask
    if not rescale:
        return masked
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude(delta: torch.Tensor, density: float, rescale: bool = False) -> torch.Tensor:
    """Keep the ``max(1, int(density * n))`` entries of largest magnitude."""
    if density >= 1:
        return delta
    if delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    w = delta.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    mask[torch.argsort(w, descending=True)[:k]] = 1
    return rescaled(delta, mask.reshape_as(delta), rescale)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float,
                       rescale: bool = False) -> torch.Tensor:
    """Drop the ``int(gamma * n)`` largest entries, then the smallest, keeping
    ``int(density * n)`` (fewer outliers are dropped when both do not fit)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    w = delta.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    order = torch.sort(w, descending=False).indices
    mask = torch.zeros(n, dtype=delta.dtype, device=delta.device)
    mask[order[bottom:bottom + keep]] = 1
    return rescaled(delta, mask.reshape_as(delta), rescale)


def bernoulli(delta: torch.Tensor, density: float, rescale: bool,
              generator: torch.Generator | None) -> torch.Tensor:
    """Keep each entry with probability ``density`` (DARE), drawn from ``generator``."""
    if density >= 1:
        return delta
    work = delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 \
        else torch.float32  # bernoulli has no CPU float16 kernel
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    return rescaled(delta.to(work), mask, rescale).to(delta.dtype)


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, rescale: bool,
                   generator: torch.Generator | None) -> torch.Tensor:
    """DELLA's MagPrune: per row, keep each entry with a probability from ``density -
    epsilon`` (smallest) to ``density + epsilon`` (largest), linear in its magnitude rank."""
    from .base import TaskVectorError
    if density >= 1:
        return delta
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise TaskVectorError(f"della: density +/- epsilon must lie in (0, 1), got density "
                              f"{density}, epsilon {epsilon}")
    work = delta.dtype if delta.device.type != "cpu" or delta.dtype == torch.bfloat16 \
        else torch.float32
    shape = delta.shape
    t = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = torch.argsort(t.abs(), dim=1, descending=False).argsort(dim=1).to(work) + 1
    lo, hi = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    # a row of one entry has no rank spread (mergekit divides by zero there): it is kept
    # with probability ``density``
    norm = torch.where(hi > lo, (ranks - lo) / (hi - lo).clamp_min(1), 0.5).clamp(0, 1)
    mask = torch.bernoulli((density - epsilon) + norm * 2 * epsilon,
                           generator=generator).to(work)
    return rescaled(t.to(work), mask, rescale).to(delta.dtype).reshape(shape)
