"""Check a spec the only way that counts: permuted weights must compute the same function.

Weights and BN statistics are first perturbed (fixed seed) so that zero-initialised
branches (layer scale, zero-init residual BN) and identity statistics cannot hide a wrong
group. A group that fails is reported and set to identity (it becomes fixed), never dropped.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .structure import (FixedAxes, Perms, Spec, apply, identity_perms, permutable_fraction,
                   random_perms)

TOLERANCE = 1e-5


@dataclass
class Verification:
    ok: bool
    max_abs_diff: float          # max |f(x) - f_perm(x)| / max |f(x)|
    failed: list[str]            # groups that changed the function on their own


def _randomize(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point() or t.numel() == 0:
                continue
            noise = torch.randn(t.shape, generator=gen).to(t)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen).to(t) * 1.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            else:
                std = float(t.std()) if t.numel() > 1 else 0.0
                t.add_(noise * (0.5 * std if std > 0 else 0.1))


def _outputs(model: nn.Module, inputs) -> torch.Tensor:
    out = model(*inputs)
    flat = []

    def walk(o):
        if isinstance(o, torch.Tensor):
            flat.append(o.detach().reshape(-1).double())
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)
    walk(out)
    return torch.cat(flat) if flat else torch.zeros(0)


class _Checker:
    """Holds one perturbed copy of the model and its reference output."""

    def __init__(self, model: nn.Module, example_input, seed: int):
        self.model = copy.deepcopy(model).eval()
        _randomize(self.model, seed)
        self.inputs = example_input if isinstance(example_input, (tuple, list)) \
            else (example_input,)
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with torch.no_grad():
            self.ref = _outputs(self.model, self.inputs)
        self.scale = float(self.ref.abs().max()) if self.ref.numel() else 1.0

    def diff(self, spec: Spec, perms: Perms) -> float:
        self.model.load_state_dict(apply(spec, perms, self.state))
        with torch.no_grad():
            out = _outputs(self.model, self.inputs)
        self.model.load_state_dict(self.state)
        if out.shape != self.ref.shape:
            return float("inf")
        d = float((out - self.ref).abs().max()) if out.numel() else 0.0
        return d / max(self.scale, 1e-12)


def _only(spec: Spec, perms: Perms, names: set[str]) -> Perms:
    ident = identity_perms(spec)
    return {k: (perms[k] if k in names else ident[k]) for k in ident}


def verify(model: nn.Module, spec: Spec, example_input, seed: int = 0,
           tol: float = TOLERANCE) -> Verification:
    """Apply a random permutation to every group at once; find culprits if outputs change."""
    chk = _Checker(model, example_input, seed)
    perms = random_perms(spec, seed + 1)
    d = chk.diff(spec, perms)
    if d <= tol:
        return Verification(True, d, [])
    failed = [g.name for g in spec.groups if chk.diff(spec, _only(spec, perms, {g.name})) > tol]
    return Verification(False, d, failed)


def verify_and_repair(model: nn.Module, spec: Spec, example_input, seed: int = 0,
                      tol: float = TOLERANCE) -> Spec:
    """Verify ``spec``; per-block groups that fail become shared, other failures identity."""
    chk = _Checker(model, example_input, seed)
    perms = random_perms(spec, seed + 1)
    d = chk.diff(spec, perms)
    failures = []
    if d > tol:
        for g in list(spec.groups):
            if chk.diff(spec, _only(spec, perms, {g.name, *_kids(spec, g.name)})) <= tol:
                continue
            if g.parent is not None:  # try one shared permutation for all blocks
                g.parent = None
                p = random_perms(spec, seed + 2)
                if chk.diff(spec, _only(spec, p, {g.name})) <= tol:
                    failures.append(f"{g.name}: per-block permutation changed the outputs; "
                                    "using one permutation shared by all blocks")
                    continue
            failures.append(f"{g.name}: permuting it changed the outputs; fixed to identity")
            _fix_group(spec, g.name)
        perms = random_perms(spec, seed + 3)
        d = chk.diff(spec, perms)
    spec.verified = d <= tol
    spec.max_abs_diff = d
    spec.failures = failures
    return spec


def _kids(spec: Spec, name: str) -> list[str]:
    return [g.name for g in spec.groups if g.parent == name]


def _fix_group(spec: Spec, name: str) -> None:
    """Replace a group by a fixed axis of the same size in every layout."""
    group = spec.group(name)
    for kid in _kids(spec, name):
        spec.group(kid).parent = None

    def sub(layout):
        kind, val = layout
        if kind == "group":
            return ("fixed", group.size) if val == name else layout
        if kind in ("prod", "cat"):
            return (kind, tuple(sub(c) for c in val))
        return layout

    for member in list(spec.layouts):
        new = sub(spec.layouts[member])
        if _all_fixed(new):
            del spec.layouts[member]
        else:
            spec.layouts[member] = new
    spec.groups = [g for g in spec.groups if g.name != name]
    spec.fixed.append(FixedAxes("verification failed", group.size, list(group.members)))
    spec.permutable_fraction = permutable_fraction(spec)


def _all_fixed(layout) -> bool:
    kind, val = layout
    if kind == "group":
        return False
    if kind in ("prod", "cat"):
        return all(_all_fixed(c) for c in val)
    return True
