"""The task-vector merge, one tensor at a time: for every tensor name the inputs' copies
are read (lazily, from any object with ``keys() / shape(k) / dtype(k) / get(k)``: a
checkpoint opened by :func:`weightspace.checkpoint.open_checkpoint`, or
:class:`StateSource` for tensors in memory), merged by the recipe's method and handed to
``add(name, tensor)``; peak memory is one tensor per input plus the output.

Tensors that are never averaged:

* non-floating tensors (integer buffers such as BatchNorm's ``num_batches_tracked``) come
  from the base (the first input when the method takes no base);
* BatchNorm statistics (``*.running_mean``, ``*.running_var``) come from the base too; with
  ``bn: reset`` they are recomputed on the train split afterwards
  (:func:`weightspace.functional.recalibrated`), since statistics of a merged network are
  not the merge of its inputs' statistics;
* a tensor whose shape differs between inputs (a head per task) is refused with one line
  naming it, or with ``heads: base`` the base's copy is kept (and the output's record lists
  it): never silently averaged.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Callable

from .base import TaskVectorError
from .recipe import Recipe, layer_positions

if TYPE_CHECKING:
    import torch

BN_STATS = ("running_mean", "running_var")


class StateSource:
    """Tensors in memory behind the lazy reader's interface (aligned inputs, tests)."""

    def __init__(self, state: dict, path: str = "<memory>"):
        self.state, self.path = state, path

    def keys(self) -> list[str]:
        return sorted(self.state)

    def shape(self, name: str) -> tuple:
        return tuple(self.state[name].shape)

    def dtype(self, name: str):
        return self.state[name].dtype

    def get(self, name: str):
        return self.state[name]


def tensor_seed(seed: int, name: str) -> int:
    """A tensor's own seed: the draws of a tensor do not depend on which tensors came
    before it, so a merge is reproducible tensor by tensor."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") \
        & (2**63 - 1)


def _dtype(name: str | None):
    import torch
    return None if name is None else getattr(torch, name)


def check_sources(recipe: Recipe, sources: list, names: list[str] | None = None
                  ) -> tuple[list[str], int, list[str]]:
    """Before anything is read or written, from the headers: the tensor names (the same in
    every input), the index of the input that non-averaged tensors come from (the base, else
    the first) and the tensors whose shapes differ (refused unless ``heads: base``)."""
    names = names or [m.model for m in recipe.inputs]
    if len(sources) != len(recipe.inputs):
        raise TaskVectorError(f"{len(recipe.inputs)} inputs but {len(sources)} sources")
    ref = 0
    if recipe.base_model is not None:
        ref = next(i for i, m in enumerate(recipe.inputs) if m.model == recipe.base_model)
    keys = list(sources[ref].keys())
    keyset = set(keys)
    for s, n in zip(sources, names):
        ks = set(s.keys())
        if ks != keyset:
            missing, extra = sorted(keyset - ks), sorted(ks - keyset)
            what = f"has no tensor {missing[0]!r}" if missing else \
                f"has tensor {extra[0]!r}, which {names[ref]} lacks"
            raise TaskVectorError(f"{n} {what}: different architectures")
    differ = []
    for key in keys:
        shapes = [s.shape(key) for s in sources]
        if len(set(shapes)) > 1:
            if recipe.heads != "base":
                detail = ", ".join(f"{list(sh)} in {n}" for sh, n in zip(shapes, names))
                raise TaskVectorError(f"tensor {key!r} has different shapes ({detail}): a "
                                      f"head per task cannot be averaged; give heads: base "
                                      f"to keep the base's, or merge without it")
            differ.append(key)
    return keys, ref, differ


def merge_sources(recipe: Recipe, sources: list, add: Callable[[str, torch.Tensor], None],
                  names: list[str] | None = None) -> dict:
    """Merge ``sources`` (one per ``recipe.inputs``, same order) tensor by tensor into
    ``add``; returns what was done to which tensors (``merged``, ``from_base``,
    ``heads_from_base``)."""
    import torch

    names = names or [m.model for m in recipe.inputs]
    keys, ref, differ = check_sources(recipe, sources, names)
    positions = layer_positions(keys)
    compute, out_dtype = _dtype(recipe.dtype), _dtype(recipe.out_dtype or recipe.dtype)
    method = recipe.method
    report = {"merged": 0, "from_base": [], "heads_from_base": differ}
    differ = set(differ)
    for key in keys:
        if key in differ:
            add(key, sources[ref].get(key))
            continue
        if not sources[ref].dtype(key).is_floating_point or key.rsplit(".", 1)[-1] in BN_STATS:
            report["from_base"].append(key)
            add(key, sources[ref].get(key))
            continue
        tensors = [s.get(key) for s in sources]
        for x, n in zip(tensors, names):
            if not x.is_floating_point():
                raise TaskVectorError(f"{n}: tensor {key!r} is {x.dtype}, not floating "
                                      f"point like in {names[ref]}")
            if not bool(torch.isfinite(x).all()):
                raise TaskVectorError(f"{n}: tensor {key!r} holds non-finite values")
        work = compute or _promoted(tensors)
        tensors = [x.to(work) for x in tensors]
        shared, per_input = recipe.resolve(key, positions[key])
        gen = torch.Generator(device=tensors[0].device).manual_seed(
            tensor_seed(recipe.seed, key)) if method.random else None
        out = method.fn(tensors, recipe.base_index, shared, per_input, gen)
        add(key, out.to(out_dtype) if out_dtype is not None else out)
        report["merged"] += 1
        del tensors, out
    return report


def _promoted(tensors: list):
    import torch
    dt = tensors[0].dtype
    for x in tensors[1:]:
        dt = torch.promote_types(dt, x.dtype)
    return dt


def merge_states(recipe: Recipe, states: list[dict]) -> tuple[dict, dict]:
    """The merged state dict of in-memory ``states`` (one per ``recipe.inputs``) and the
    report: the library function for scripts whose models are already loaded."""
    out = {}
    rep = merge_sources(recipe, [StateSource(s) for s in states],
                        lambda k, v: out.__setitem__(k, v))
    return out, rep


def merge_tensor(method: str, tensors: list, base: int | None = None, seed: int = 0,
                 name: str = "tensor", **params) -> torch.Tensor:
    """One tensor merged with ``method``: the pure-tensor entry (tests, scripts). A
    per-model parameter is a scalar for every model or a list with one value per tensor
    (the base's entry ignored where the parameter is not the base's); the other
    parameters take the method's defaults."""
    import torch

    from .base import REQUIRED, get_tv_method
    from .recipe import _check_value

    m = get_tv_method(method)
    if m.base == "required" and base is None:
        raise TaskVectorError(f"merge method {method!r} needs a base (base=index)")
    unknown = sorted(set(params) - {p.name for p in m.params})
    if unknown:
        raise TaskVectorError(f"merge method {method!r} has no parameter {unknown[0]!r}")
    shared, per_input = {}, [{} for _ in tensors]
    for p in m.params:
        v = params.get(p.name, p.default)
        if p.scope == "shared":
            if v is REQUIRED:
                raise TaskVectorError(f"merge method {method!r} needs {p.name!r}")
            _check_value(p, v, p.name)
            shared[p.name] = v
            continue
        vals = list(v) if isinstance(v, (list, tuple)) else [v] * len(tensors)
        if len(vals) != len(tensors):
            raise TaskVectorError(f"{p.name}: {len(vals)} values for {len(tensors)} tensors")
        for i, x in enumerate(vals):
            if p.scope == "non_base" and i == base:
                continue
            if x is REQUIRED:
                raise TaskVectorError(f"merge method {method!r} needs {p.name!r}")
            _check_value(p, x, p.name)
            per_input[i][p.name] = x
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise TaskVectorError(f"{name}: tensors of different shapes {sorted(shapes)}")
    n = len(tensors)
    if n < m.min_inputs or (m.max_inputs is not None and n > m.max_inputs):
        raise TaskVectorError(f"merge method {method!r} takes "
                              f"{m.min_inputs}..{m.max_inputs or 'any'} tensors, got {n}")
    gen = torch.Generator().manual_seed(tensor_seed(seed, name)) if m.random else None
    work = _promoted(tensors)
    return m.fn([t.to(work) for t in tensors], base if m.base == "required" else None,
                shared, per_input, gen)
