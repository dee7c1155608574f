"""Small shared pieces for working with state dicts as data: checks, distances, BN reset."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from .errors import WeightspaceError
from .evaluation import has_batchnorm, loss_acc, recalibrate_state, reset_bn  # noqa: F401


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


# BatchNorm recalibration and evaluation live in :mod:`weightspace.evaluation`; the old
# names stay importable from here.
recalibrated = recalibrate_state


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
