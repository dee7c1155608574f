"""Where the work runs: ``--device cpu|cuda|auto`` for alignment, zoos, barriers and merges.

A library function given tensors works where they are. The verbs (and their Python
functions: :func:`~weightspace.canonicalize.align_checkpoints` and the others) take a
``device``: ``"auto"`` (the default) is this process's CUDA device when one is there (under
``accelerate launch``, the rank's own) and the CPU otherwise; ``"cpu"``, ``"cuda"`` and
``"cuda:N"`` ask for one. The models, state dicts and data are moved there once; cost
matrices, interpolation and evaluation run there; linear assignment problems are always
solved on the CPU (scipy's exact solver, faster than any GPU assignment measured at the
sizes of hidden layers), and files are always written from CPU tensors.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from .errors import WeightspaceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(WeightspaceError):
    """A device that does not exist here."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``name`` asks for, checked to exist on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        from .parallel import dist_state
        return dist_state().device
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"`device` {name!r}: not a device (choices: "
                          f"{', '.join(DEVICE_CHOICES)}, or cuda:N)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"`device` {name!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise DeviceError(f"`device` {name}: no CUDA device is available on this machine "
                          f"(use `device` cpu or auto)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"`device` {name}: this machine has {torch.cuda.device_count()} "
                          f"CUDA device(s)")
    # with its index, so that tensors already there compare equal and are not copied again
    return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())


def placed(device, *objs) -> tuple:
    """``objs`` moved to ``device`` (see :func:`to_device`); as they are when ``device`` is
    None (a library function then works where its inputs are)."""
    return objs if device is None else to_device(objs, resolve_device(device))


def to_device(obj, device: torch.device | None):
    """``obj`` with its tensors on ``device`` (None: as it is): a tensor, a state dict, a
    list / tuple of them, a :class:`~weightspace.zoo.Dataset` (a copy with its splits moved)
    or a module (a moved copy; the caller's module is never changed)."""
    if device is None or obj is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, nn.Module):
        here = next(iter(obj.parameters()), next(iter(obj.buffers()), None))
        if here is not None and here.device == device:
            return obj
        return copy.deepcopy(obj).to(device)
    if dataclasses.is_dataclass(obj) and hasattr(obj, "splits"):
        return dataclasses.replace(obj, splits={k: to_device(v, device)
                                                for k, v in obj.splits.items()})
    return obj


__all__ = ["DEVICE_CHOICES", "DeviceError", "placed", "resolve_device", "to_device"]
