"""Novelty of networks, measured by their errors (Zeng et al. 2025): for a model, the
highest IoU of its set of misclassified examples with any reference model's. 1 = it errs
exactly where some reference model errs (a copy, functionally); an independently trained
network scores what the zoo's leave-one-out gives.
"""
from __future__ import annotations

import torch

from ..zoo.train import logits


@torch.no_grad()
def probabilities(arch: str, states: list[dict], x: torch.Tensor) -> torch.Tensor:
    """[models, examples, classes] softmax outputs (eval mode; conv nets of the built-in
    architectures stacked along channels, see :func:`~weightspace.zoo.train.logits`)."""
    return logits(arch, states, x).float().softmax(-1)


def errors(arch: str, states: list[dict], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[models, examples] bool: where each model's prediction is wrong."""
    return probabilities(arch, states, x).argmax(-1) != y


def max_iou(wrong: torch.Tensor, ref: torch.Tensor, leave_one_out: bool = False):
    """For each row of ``wrong`` [M, n] the max IoU with any row of ``ref`` [R, n]."""
    w, r = wrong.float(), ref.float()
    inter = w @ r.T
    union = w.sum(1, keepdim=True) + r.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    if leave_one_out:
        iou.fill_diagonal_(-1)
    return iou.max(1).values
