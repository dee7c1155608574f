"""Datasets with fixed train / validation / test splits.

``digits`` (scikit-learn's bundled 8x8 handwritten digits, 1,797 images) is the embedded
default and works offline. Validation is carved from the training part with a fixed seed;
model selection must only ever look at ``train`` and ``val``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class DatasetError(ValueError):
    """An unknown dataset or one whose files are missing."""


@dataclass
class Dataset:
    name: str
    input_shape: tuple[int, ...]        # one example, e.g. (1, 8, 8)
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (x [N, *shape], y [N])

    def __getitem__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r}; "
                               f"splits: {sorted(self.splits)}")
        return self.splits[split]


def _digits(val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4  # roughly zero mean, unit scale
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = int(round(test_fraction * len(y)))
    test, rest = order[:n_test], order[n_test:]
    rest = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))]
    n_val = int(round(val_fraction * len(rest)))
    val, train = rest[:n_val], rest[n_val:]
    splits = {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
    return Dataset("digits", (1, 8, 8), 10, splits)


DATASETS = {"digits": _digits}


def load_dataset(name: str, **kwargs) -> Dataset:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](**kwargs)
