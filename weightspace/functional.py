"""Small shared pieces for working with state dicts as data: checks, distances, BN reset."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call

from .errors import WeightspaceError


class StateError(WeightspaceError):
    """State dicts that do not fit each other (architecture, width) or hold bad values."""


def check_compatible(states: list[dict], names: list[str] | None = None) -> None:
    """Same keys, same shapes, finite values; the error names the first tensor at fault."""
    names = names or [f"model {i}" for i in range(len(states))]
    ref, ref_name = states[0], names[0]
    for s, name in zip(states, names):
        for k, v in s.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise StateError(f"{name}: tensor {k!r} holds non-finite values")
    for s, name in zip(states[1:], names[1:]):
        for k in ref:
            if k not in s:
                raise StateError(f"{name} has no tensor {k!r} (which {ref_name} has): "
                                 f"different architectures")
            if tuple(s[k].shape) != tuple(ref[k].shape):
                raise StateError(f"tensor {k!r} has shape {list(ref[k].shape)} in {ref_name} "
                                 f"but {list(s[k].shape)} in {name}: different architectures "
                                 f"or widths")
        extra = [k for k in s if k not in ref]
        if extra:
            raise StateError(f"{name} has tensor {extra[0]!r}, which {ref_name} lacks: "
                             f"different architectures")


def lerp_states(a: dict, b: dict, t: float) -> dict:
    """``(1 - t) a + t b`` for floating tensors; integer buffers come from ``a``."""
    return {k: torch.lerp(v, b[k].to(v.dtype), t) if v.is_floating_point() else v.clone()
            for k, v in a.items()}


def mean_states(states: list[dict]) -> dict:
    first = states[0]
    return {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point()
            else v.clone() for k, v in first.items()}


def scratch(model: nn.Module) -> nn.Module:
    """A private copy to load weights into: ``model.state_dict()`` tensors share storage
    with the module, so loading into the caller's model would overwrite its states."""
    return copy.deepcopy(model)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics on ``x`` (a train-split sample)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for lo in range(0, len(x), batch_size):
        model(x[lo:lo + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)
    return model


def recalibrated(model: nn.Module, state: dict, x: torch.Tensor) -> dict:
    """``state`` with every BatchNorm's running statistics recomputed on ``x`` (a sample of
    the train split, never test): the step every interpolated, merged or generated model
    needs before it is evaluated. ``model`` serves as scratch (it ends up holding the
    result); a model without BatchNorm returns ``state`` as it is."""
    if not has_batchnorm(model):
        return state
    model.load_state_dict(state)
    reset_bn(model, x)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: dict | None = None,
             batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (with ``state`` if given) in eval mode."""
    was = model.training
    model.eval()
    tot, correct = 0.0, 0
    for lo in range(0, len(y), batch_size):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        out = model(xb) if state is None else functional_call(model, state, (xb,))
        tot += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was)
    n = max(len(y), 1)
    loss = tot / n
    return (loss if math.isfinite(loss) else float("inf")), correct / n


def train_step(model: nn.Module, state: dict, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, batch_size: int, gen: torch.Generator) -> float:
    """One optimizer step on the cross-entropy of ``model`` run with ``state`` (whose
    tensors carry the gradient path) on a random batch of (x, y)."""
    idx = torch.randint(len(y), (batch_size,), generator=gen)
    loss = nn.functional.cross_entropy(functional_call(model, state, (x[idx],)), y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
