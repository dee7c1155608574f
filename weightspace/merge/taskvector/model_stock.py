"""``model_stock`` — Model Stock (Jang et al.): interpolate between the base ``w0`` and the
fine-tunes' average by ``t = N cos / (1 + (N - 1) cos)``, where ``cos`` is the mean cosine
between the fine-tunes' task vectors (per tensor, or per output row with ``filter_wise``);
where the denominator vanishes the base is kept. Two orthogonal fine-tunes give the base."""
from __future__ import annotations

from .base import Param, register_tv_method

PARAMS = (Param("filter_wise", bool, "shared", False,
                "one angle per output row instead of per tensor"),)


@register_tv_method("model_stock", "Model Stock: base and fine-tunes' average mixed by the "
                    "angle between their task vectors", PARAMS, min_inputs=3)
def model_stock(tensors: list, base: int, shared: dict, per_input: list[dict], generator):
    import torch

    w0 = tensors[base]
    ws = [t for i, t in enumerate(tensors) if i != base]
    shape = w0.shape
    if shared["filter_wise"]:
        if w0.dim() == 1:  # a bias is one row
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    den = 1 + (n - 1) * c
    singular = den.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c),
                    n * c / torch.where(singular, torch.ones_like(den), den))
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(shape)
