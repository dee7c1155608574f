import os

import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
