"""``slerp`` — spherical interpolation from the base (``t = 0``) to the other model
(``t = 1``), each tensor treated as one vector; nearly parallel or antiparallel vectors
(``|cos| > 0.9995``) are interpolated linearly, as in mergekit. Computed in float32
(float64 inputs stay float64)."""
from __future__ import annotations

from .base import Param, fraction_check, register_tv_method

DOT_THRESHOLD, EPS = 0.9995, 1e-8
PARAMS = (Param("t", float, "shared", help="interpolation factor from the base (0) to the "
                "other model (1)", check=fraction_check),)


@register_tv_method("slerp", "spherical interpolation between the base and one other model",
                    PARAMS, min_inputs=2, max_inputs=2)
def slerp(tensors: list, base: int, shared: dict, per_input: list[dict], generator):
    import torch

    v0, v1 = tensors[base], tensors[1 - base]
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    t = torch.tensor(float(shared["t"]), dtype=dtype)
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    if a.numel() == 0:
        return v0.clone()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = torch.where(na > EPS, na, 1)
    nb = torch.where(nb > EPS, nb, 1)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        theta = torch.acos(dot)
        ca, cb = torch.sin((1 - t) * theta) / torch.sin(theta), \
            torch.sin(t * theta) / torch.sin(theta)
    return (ca * a + cb * b).to(v0.dtype).reshape(v0.shape)
