"""Train many networks of one architecture: batched across seeds, or one at a time.

**Batched** (the default): the models of one chunk share architecture and hyperparameters
and train together in one process. Their parameters and buffers are stacked with
``torch.func.stack_module_state`` and one ``vmap``-ed ``functional_call`` runs all of them;
each model still has its own seed (initialisation), its own data order and its own
optimizer state. The optimizers used here (SGD, Adam, AdamW) act elementwise, so one
optimizer over the stacked tensors *is* one optimizer per model, and the summed loss gives
every model exactly the gradient of its own loss. BatchNorm statistics are stacked buffers
that ``vmap`` updates per model. Dropout draws independent masks per model.

**Sequential** (``batched=False``, or when a model cannot be batched): the same recipe, one
``nn.Module`` at a time. Both paths build every model from ``torch.manual_seed(seed)`` and
draw its data order from ``torch.Generator().manual_seed(seed)``, so a batched model and its
sequential twin differ only by floating-point summation order (and dropout masks).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..arch import build
from ..errors import WeightspaceError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine")
TRAIN_EVAL_MAX = 10_000  # train metrics are measured on at most this many train examples


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


def make_optimizer(params: list[torch.Tensor], hp: HParams) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW, fused where the device supports it (identical maths, fewer ops)."""
    impl = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    extra = {"momentum": hp.momentum} if hp.optimizer == "sgd" else {}
    return cls[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay, **extra, **impl)


def make_schedule(opt, hp: HParams, total_steps: int):
    if hp.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return None


def init_model(arch: str, seed: int) -> nn.Module:
    """The model a seed names: built right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return build(arch)


def snapshot_epochs(epochs: int, k: int) -> list[int]:
    """Epochs (1-based) at which to keep intermediate checkpoints, final epoch excluded."""
    return sorted({round(epochs * j / k) for j in range(1, k)} - {0, epochs})


# A callback gets (epoch, states) after each snapshot epoch; progress gets per-step losses.
SnapshotFn = Callable[[int, list[dict]], None]
StepFn = Callable[[torch.Tensor], None]


class _Order:
    """Per-model data order: one generator per seed, a fresh permutation per epoch."""

    def __init__(self, seeds: list[int], n: int, batch_size: int):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.n, self.bs = n, batch_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.bs)

    def epoch(self) -> torch.Tensor:  # [models, n]
        return torch.stack([torch.randperm(self.n, generator=g) for g in self.gens])


def train_batched(arch: str, seeds: list[int], hp: HParams, x: torch.Tensor, y: torch.Tensor,
                  on_step: StepFn | None = None, on_snapshot: SnapshotFn | None = None,
                  snapshots: list[int] = ()) -> list[dict]:
    """Train ``len(seeds)`` models together with ``vmap``; returns their state dicts."""
    device = x.device
    models = [init_model(arch, s) for s in seeds]
    params, buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta").train()
    del models

    def f(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    fwd = vmap(f, randomness="different")
    order = _Order(seeds, len(y), hp.batch_size)
    opt = make_optimizer(list(params.values()), hp)
    sched = make_schedule(opt, hp, hp.epochs * order.steps_per_epoch)
    torch.manual_seed(seeds[0])  # the stream dropout draws from
    n = len(seeds)
    for epoch in range(1, hp.epochs + 1):
        for idx in order.epoch().to(device).split(hp.batch_size, dim=1):
            out = fwd(params, buffers, x[idx])
            losses = F.cross_entropy(out.flatten(0, 1), y[idx].flatten(),
                                     reduction="none").view(n, -1).mean(1)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            if sched is not None:
                sched.step()
            if on_step is not None:
                on_step(losses.detach())
        if on_snapshot is not None and epoch in snapshots:
            on_snapshot(epoch, _unstack(params, buffers, n))
    return _unstack(params, buffers, n)


def _unstack(params: dict, buffers: dict, n: int) -> list[dict]:
    both = {**params, **buffers}
    return [{k: v[i].detach().to("cpu").clone() for k, v in both.items()} for i in range(n)]


def train_sequential(arch: str, seed: int, hp: HParams, x: torch.Tensor, y: torch.Tensor,
                     on_step: StepFn | None = None, on_snapshot: SnapshotFn | None = None,
                     snapshots: list[int] = ()) -> list[dict]:
    """Train one model as a plain ``nn.Module`` (same recipe as the batched path)."""
    model = init_model(arch, seed).to(x.device).train()
    order = _Order([seed], len(y), hp.batch_size)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], hp)
    sched = make_schedule(opt, hp, hp.epochs * order.steps_per_epoch)
    torch.manual_seed(seed)

    def state():
        return [{k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}]

    for epoch in range(1, hp.epochs + 1):
        for idx in order.epoch()[0].to(x.device).split(hp.batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if on_step is not None:
                on_step(loss.detach().view(1))
        if on_snapshot is not None and epoch in snapshots:
            on_snapshot(epoch, state())
    return state()


def can_batch(arch: str, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None if two models of ``arch`` train under ``vmap``; else the reason they cannot."""
    try:
        hp = HParams(epochs=1, batch_size=2)
        train_batched(arch, [0, 1], hp, x[:2], y[:2])
    except Exception as e:  # noqa: BLE001 - anything vmap cannot do means "sequential"
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


@torch.no_grad()
def evaluate(arch: str, states: list[dict], x: torch.Tensor, y: torch.Tensor,
             batch: int = 2048, batched: bool = True) -> tuple[list[float], list[float]]:
    """Loss and accuracy of each model (eval mode) on (x, y): vmap over models if it can."""
    device = x.device
    base = build(arch).to("meta").eval()
    n = len(states)
    loss_sum = torch.zeros(n, dtype=torch.float64)
    correct = torch.zeros(n, dtype=torch.long)
    stacked = None
    if batched and n > 1:
        try:
            stacked = {k: torch.stack([s[k] for s in states]).to(device) for k in states[0]}
            fwd = vmap(lambda s, xb: functional_call(base, s, (xb,)), in_dims=(0, None))
            fwd(stacked, x[:1])
        except Exception:  # noqa: BLE001 - fall back to one model at a time
            stacked = None
    for lo in range(0, len(y), batch):
        xb, yb = x[lo:lo + batch], y[lo:lo + batch]
        if stacked is not None:
            out = fwd(stacked, xb)                                   # [n, b, C]
        else:
            out = torch.stack([functional_call(base, {k: v.to(device) for k, v in s.items()},
                                               (xb,)) for s in states])
        ce = F.cross_entropy(out.flatten(0, 1).float(), yb.repeat(n), reduction="none")
        loss_sum += ce.view(n, -1).sum(1).double().cpu()
        correct += (out.argmax(-1) == yb).sum(1).cpu()
    m = max(len(y), 1)
    return (loss_sum / m).tolist(), (correct.double() / m).tolist()


def metrics(arch: str, states: list[dict], data, device, splits=("train", "val", "test"),
            batched: bool = True) -> list[dict]:
    """Per-model ``{split}_loss`` / ``{split}_acc`` (train on its first TRAIN_EVAL_MAX)."""
    out = [{} for _ in states]
    for split in splits:
        x, y = data[split]
        if split == "train":
            x, y = x[:TRAIN_EVAL_MAX], y[:TRAIN_EVAL_MAX]
        losses, accs = evaluate(arch, states, x.to(device), y.to(device), batched=batched)
        for o, lo, a in zip(out, losses, accs):
            o[f"{split}_loss"] = lo if math.isfinite(lo) else None
            o[f"{split}_acc"] = a
    return out
