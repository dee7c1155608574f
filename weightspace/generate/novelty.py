"""Novelty of networks, measured by their errors (Zeng et al. 2025): for a model, the
highest IoU of its set of misclassified examples with any reference model's. 1 = it errs
exactly where some reference model errs (a copy, functionally); an independently trained
network scores what the zoo's leave-one-out gives.
"""
from __future__ import annotations

import torch

from ..errors import WeightspaceError
from ..evaluation import errors, probabilities  # noqa: F401 (re-exported)
from ..zoo.datasets import load_dataset


def max_iou(wrong: torch.Tensor, ref: torch.Tensor, leave_one_out: bool = False):
    """For each row of ``wrong`` [M, n] the max IoU with any row of ``ref`` [R, n]."""
    w, r = wrong.float(), ref.float()
    inter = w @ r.T
    union = w.sum(1, keepdim=True) + r.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    if leave_one_out:
        iou.fill_diagonal_(-1)
    return iou.max(1).values


class ZooValErrors:
    """[N, n_val] bool: where each zoo model errs on the validation split (kept with the
    generator, so that sampling can measure novelty without the zoo), gathered while the
    zoo is read: models are evaluated in groups of ``chunk`` and then dropped. ``result()``
    is None when the zoo's dataset cannot be loaded."""

    def __init__(self, manifest: dict, chunk: int = 16):
        ds = manifest.get("dataset") or {}
        try:
            self.data = load_dataset(ds.get("name", ""), ds.get("data_root"))["val"]
        except WeightspaceError:
            self.data = None
        self.chunk, self.pending, self.rows, self.arch = chunk, [], [], None

    def add(self, i: int, state: dict, arch: str) -> None:
        if self.data is None:
            return
        self.arch = arch
        self.pending.append(state)
        if len(self.pending) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.rows.append(errors(self.arch, self.pending, *self.data))
            self.pending = []

    def result(self) -> torch.Tensor | None:
        if self.data is None:
            return None
        self._flush()
        return torch.cat(self.rows)
