"""Generalized task arithmetic (mergekit's ``GeneralizedTaskArithmeticMerge``), the one
computation behind ``task_arithmetic``, ``ties``, ``dare_*``, ``breadcrumbs*`` and
``della*``.

For one tensor with base ``b`` and fine-tunes ``x_i`` (weights ``w_i``):
``d_i = sparsify(x_i - b)``; with TIES consensus the sign of ``sum_i w_i d_i`` is elected
per entry and only entries that agree with it are kept (``m_i``); the mix is
``sum_i w_i d_i m_i``, divided by ``sum_i w_i m_i`` (``normalize``; a zero divisor becomes
1), times ``lambda``; the result is ``b + mix``. Without consensus ``m_i = 1``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def sign_mask(deltas: torch.Tensor) -> torch.Tensor:
    """``[M, *shape]`` weighted task vectors -> the bool mask of entries whose sign is the
    elected one: the sign of their sum (ties go to +); zeros never agree."""
    sign = deltas.sign()
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    return sign == majority


def gta(tensors: list, base: int, shared: dict, per_input: list[dict], generator,
        consensus: bool, sparsification: str | None) -> torch.Tensor:
    """The merged tensor (see the module docstring); ``sparsification`` is None,
    ``magnitude``, ``random``, ``magnitude_outliers`` or ``della_magprune``."""
    import torch

    from .sparsify import bernoulli, della_magprune, magnitude, magnitude_outliers

    b = tensors[base]
    others = [i for i in range(len(tensors)) if i != base]
    if not others:
        return b
    rescale = bool(shared["rescale"])
    deltas = b.new_empty((len(others), *b.shape))
    for row, i in enumerate(others):
        d = tensors[i].to(b.dtype) - b
        p = per_input[i]
        if sparsification == "magnitude":
            d = magnitude(d, p["density"], rescale)
        elif sparsification == "random":
            d = bernoulli(d, p["density"], rescale, generator)
        elif sparsification == "magnitude_outliers":
            d = magnitude_outliers(d, p["density"], p["gamma"], rescale)
        elif sparsification == "della_magprune":
            d = della_magprune(d, p["density"], p["epsilon"], rescale, generator)
        deltas[row] = d
    weights = torch.tensor([per_input[i]["weight"] for i in others], dtype=deltas.dtype,
                           device=deltas.device)
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    deltas.mul_(weights)
    if consensus:
        mask = sign_mask(deltas)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if shared["normalize"]:
        mixed /= divisor
    if shared["lambda"] != 1:
        mixed *= shared["lambda"]
    return (b + mixed).to(b.dtype)


def register_gta(name: str, summary: str, consensus: bool, sparsification: str | None,
                 normalize: bool, rescale: bool):
    """Register one generalized-task-arithmetic method under mergekit's ``name``, with
    its default ``normalize`` / ``rescale``."""
    from .base import gta_params, register_tv_method

    def fn(tensors, base, shared, per_input, generator):
        return gta(tensors, base, shared, per_input, generator, consensus, sparsification)

    fn.__name__ = name
    params = gta_params(normalize, rescale, gamma=sparsification == "magnitude_outliers",
                        epsilon=sparsification == "della_magprune")
    register_tv_method(name, summary, params,
                       random=sparsification in ("random", "della_magprune"))(fn)
    return fn
