"""The registry of task-vector merge methods: mergekit's names, parameters and semantics.

Unlike the permutation merges of :mod:`weightspace.merge.registry` (which build a model and
decide how to permute it), a task-vector method is a pure function of one tensor's inputs:
``fn(tensors, base, shared, per_input, generator) -> tensor``, where ``tensors`` holds every
input's copy of one tensor in recipe order, ``base`` is the base's index in it (None when
the method takes no base), ``shared`` the method's shared parameters and ``per_input`` one
dict of per-model parameters per input, all already resolved for this tensor (filters,
gradients). Nothing here imports torch: the CLI reads the registry to build ``--help``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import MergeError
from ...registry import Registry

REQUIRED = object()  # a parameter without a default


class TaskVectorError(MergeError):
    """A task-vector merge that cannot run: unknown method or parameter, a bad value, a
    missing base, inputs that do not fit each other."""


@dataclass(frozen=True)
class Param:
    """One parameter, as mergekit declares it: ``scope`` is ``shared`` (one value per
    tensor), ``input`` (one per input model, the base included) or ``non_base`` (one per
    model other than the base). ``check(value)`` returns an error text or None."""

    name: str
    type: type
    scope: str
    default: object = REQUIRED
    help: str = ""
    check: Callable[[object], str | None] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class TaskVectorMethod:
    """``base``: ``required`` (task vectors are taken against it) or ``ignored`` (the base,
    when a recipe names one, is one more input); ``min_inputs`` / ``max_inputs`` count every
    input, the base included; ``random``: the method draws (seeded per tensor)."""

    name: str
    fn: Callable
    summary: str
    params: tuple[Param, ...]
    base: str = "required"
    min_inputs: int = 1
    max_inputs: int | None = None
    random: bool = False

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


_METHODS: Registry[TaskVectorMethod] = Registry(
    "task-vector merge method", TaskVectorError,
    methods="weightspace.merge.taskvector.methods")


def register_tv_method(name: str, summary: str, params: tuple[Param, ...], **kw):
    """Decorator: register ``fn`` as the task-vector method ``name``."""
    return _METHODS.decorator(name, lambda fn: TaskVectorMethod(name, fn, summary,
                                                                tuple(params), **kw))


list_tv_methods = _METHODS.names
get_tv_method = _METHODS.get


def density_check(v) -> str | None:
    return None if 0 < v <= 1 else f"must be in (0, 1], got {v}"


def fraction_check(v) -> str | None:
    return None if 0 <= v <= 1 else f"must be in [0, 1], got {v}"


# The parameters mergekit's generalized task arithmetic declares (``normalize`` and
# ``rescale`` defaults differ per method).
def gta_params(normalize: bool, rescale: bool, gamma: bool = False,
               epsilon: bool = False) -> tuple[Param, ...]:
    ps = [Param("weight", float, "non_base", help="the model's task-vector weight"),
          Param("normalize", bool, "shared", normalize,
                "divide the mixed task vector by the sum of the weights (that agree)"),
          Param("lambda", float, "shared", 1.0, "scale of the mixed task vector"),
          Param("int8_mask", bool, "shared", False, "mergekit's mask dtype (no effect)"),
          Param("rescale", bool, "shared", rescale,
                "after sparsifying, rescale a task vector to its L1 norm"),
          Param("density", float, "non_base", 1.0, "fraction of each task vector kept",
                density_check)]
    if gamma:
        ps.append(Param("gamma", float, "non_base", 0.01,
                        "fraction of the largest entries removed", fraction_check))
    if epsilon:
        ps.append(Param("epsilon", float, "non_base", 0.15, "della: keep probabilities "
                        "range over density +/- epsilon by magnitude rank", fraction_check))
    return tuple(ps)
