"""Permutation symmetry of a model: discovered with torch.fx, verified, applied, exported.

>>> spec = symmetry_of(model, torch.randn(1, 3, 32, 32))
>>> perms = random_perms(spec, seed=0)
>>> model.load_state_dict(apply(spec, perms, model.state_dict()))   # same function
"""
from __future__ import annotations

import torch
from torch import nn

from .discover import TraceError, discover, trace
from .structure import (FixedAxes, Group, Perms, Spec, SpecError, apply, identity_perms, invert,
                   layout_index, parse_member, random_perms)
from .verify import TOLERANCE, Verification, verify, verify_and_repair


def symmetry_of(model, example_input=None, check: bool = True, seed: int = 0, *,
                input_shape: tuple[int, ...] | None = None, allow_code: bool = False,
                arch: str | None = None) -> Spec:
    """The one entry point for the permutation symmetry of a model: its spec, discovered
    (torch.fx, :func:`discover`) and verified.

    ``model`` is an ``nn.Module`` (with ``example_input``), or an architecture reference or
    a checkpoint (file or Hub directory; ``arch`` for one that carries none), built here and
    run on a random input of ``input_shape`` (default: the architecture's). Verification
    applies an independent random permutation to every group and requires the outputs
    (eval mode, float32) to agree to ``TOLERANCE`` relative max abs difference; groups that
    fail are reported in ``spec.failures`` and fixed to identity."""
    if not isinstance(model, nn.Module):
        return _of_reference(str(model), input_shape, check, seed, allow_code, arch)
    if example_input is None:
        raise SpecError("a module's symmetry needs an `example_input`")
    spec = discover(model, example_input)
    if check:
        verify_and_repair(model, spec, example_input, seed=seed)
    return spec


def spec(ref: str, input_shape: tuple[int, ...] | None = None, check: bool = True,
         seed: int = 0, allow_code: bool = False, arch: str | None = None) -> Spec:
    """The spec of an architecture reference or a checkpoint (the CLI's ``spec``): the same
    as :func:`symmetry_of` on ``ref``, kept under the verb's name."""
    return _of_reference(ref, input_shape, check, seed, allow_code, arch)


def _of_reference(ref: str, input_shape, check: bool, seed: int, allow_code: bool,
                  arch: str | None) -> Spec:
    from pathlib import Path

    from ..arch import build, input_shape as default_shape
    if ref.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".index.json")) or \
            Path(ref).is_file() or Path(ref).is_dir():
        from ..checkpoint import load_model
        model = load_model(ref, arch=arch, allow_code=allow_code)
        arch = model.weightspace_arch
    else:
        model, arch = build(ref, allow_code=allow_code), ref
    shape = tuple(input_shape) if input_shape else default_shape(arch, model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as e:  # the model's own error: wrong rank, channels or size
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise SpecError(f"{arch} does not accept inputs of shape {list(shape)} ({msg})") \
            from None
    result = symmetry_of(model, x, check=check, seed=seed)
    result.input_shape = list(shape)
    result.arch = arch
    return result


def load_spec(text: str, model: nn.Module, example_input, seed: int = 0) -> Spec:
    """Import a (possibly hand-edited) JSON spec; it must pass verification on ``model``."""
    spec = Spec.from_json(text)
    state = model.state_dict()
    for key, shape in spec.shapes.items():
        if key not in state:
            raise SpecError(f"spec names {key!r}, which the model does not have")
        if tuple(state[key].shape) != tuple(shape):
            raise SpecError(f"spec shape {list(shape)} for {key!r} does not match the model's "
                            f"{list(state[key].shape)}")
    res = verify(model, spec, example_input, seed=seed)
    spec.verified, spec.max_abs_diff = res.ok, res.max_abs_diff
    if not res.ok:
        culprits = ", ".join(res.failed[:5]) or "a combination of groups"
        raise SpecError(f"spec fails verification: permuting changes the outputs by "
                        f"{res.max_abs_diff:.3g} (relative); culprit group(s): {culprits}")
    return spec


__all__ = [
    "spec", "symmetry_of", "load_spec", "discover", "trace", "verify", "verify_and_repair", "apply",
    "random_perms", "identity_perms", "invert", "layout_index", "parse_member", "Spec", "Group",
    "FixedAxes", "Perms", "SpecError", "TraceError", "Verification", "TOLERANCE",
]
