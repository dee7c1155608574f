"""``linear`` — the weighted average of the inputs (Wortsman et al.'s model soups); with
``normalize`` (mergekit's default) the weights are divided by their sum. A recipe's base,
when it names one, is one more input. Computed in float32 (float64 inputs stay float64)."""
from __future__ import annotations

from .base import Param, TaskVectorError, register_tv_method

PARAMS = (Param("weight", float, "input", help="the model's weight"),
          Param("normalize", bool, "shared", True, "divide by the sum of the weights"))


@register_tv_method("linear", "weighted average of the models (model soup); the plain average "
                    "with equal weights", PARAMS, base="ignored")
def linear(tensors: list, base, shared: dict, per_input: list[dict], generator):
    import torch

    first = tensors[0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = [float(p["weight"]) for p in per_input]
    out = torch.zeros_like(first, dtype=dtype)
    for t, w in zip(tensors, weights):
        out.add_(t.to(dtype), alpha=w)
    if shared["normalize"]:
        total = torch.tensor(weights, dtype=dtype).sum()
        if total == 0:
            raise TaskVectorError("linear: the weights sum to 0, so they cannot be "
                                  "normalized (give normalize: false or other weights)")
        out.div_(total)
    return out.to(first.dtype)
