"""A zoo's training recipe (:class:`HParams`) and its choices: plain Python, so the CLI can
build ``zoo train --help`` without importing torch."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import WeightspaceError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine")


class TrainError(WeightspaceError):
    """Bad hyperparameters."""


@dataclass(frozen=True)
class HParams:
    """One training recipe; every model of a zoo records its own."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9       # SGD only
    schedule: str = "none"      # per-step cosine decay to 0, or constant

    def __post_init__(self):
        def bad(msg):
            raise TrainError(f"hyperparameter {msg}")
        for f in fields(self):
            v = getattr(self, f.name)
            want = type(f.default)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
            elif not isinstance(v, want) or isinstance(v, bool):
                bad(f"{f.name} must be {want.__name__}, got {v!r}")
        if self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            bad(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            bad(f"lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            bad(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}
