"""The registry of alignment methods: one entry per method, each in a file of its own.

A method is a function ``fn(spec, A, B, *, model, data, seed, **options) -> (perms,
MatchReport)`` registered with what the rest of the product needs to know about it:
whether it reads data (``needs_data``: ``model`` and ``data`` are then given), whether it
works in weight space alone (``weight_space``: it can align to a barycenter, which is not a
model one can run), and its options (name, type, default, help) from which the CLI builds
its flags. Adding a method is one new file that calls :func:`register_align_method`, plus
its name in ``methods.py``'s explicit list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import WeightspaceError
from ..registry import Method, Option, Registry

if TYPE_CHECKING:  # this module stays free of torch: the CLI reads it to build --help
    from ..symmetry.structure import Perms, Spec
    from .matching import MatchReport


class AlignError(WeightspaceError):
    """An alignment request that cannot run (unknown method or option, missing data)."""


@dataclass(frozen=True)
class AlignMethod(Method):
    weight_space: bool = True  # aligns to a target that is not a runnable model
    warm_start: bool = False   # takes ``init=`` permutations to start from


_METHODS: Registry[AlignMethod] = Registry("alignment method", AlignError,
                                            methods="weightspace.canonicalize.methods")


def register_align_method(name: str, summary: str, needs_data: bool = False,
                          weight_space: bool = True, options: tuple[Option, ...] = (),
                          warm_start: bool = False):
    """Decorator: register ``fn`` as the alignment method ``name``."""
    return _METHODS.decorator(name, lambda fn: AlignMethod(
        name, fn, summary, needs_data, tuple(options), weight_space, warm_start))


list_align_methods = _METHODS.names  # registered names, in registration order
get_align_method = _METHODS.get


def align(spec: Spec, A: dict, B: dict, method: str = "wm", model=None, data=None,
          seed: int = 0, device=None, **options) -> tuple[Perms, MatchReport]:
    """Permutations of B's groups that bring B into A's basin, and a report.

    ``data`` (a :class:`weightspace.zoo.Dataset`) and ``model`` (an instance of the
    architecture) are needed by methods that read data (``am``, ``ste``); ``options`` are
    the method's own (see :func:`get_align_method`). ``device`` (``"cpu"``, ``"cuda"``,
    ``"auto"``) moves the inputs there first; None works where they are."""
    m = get_align_method(method)
    names = {o.name for o in m.options}
    unknown = sorted(set(options) - names - ({"init"} if m.warm_start else set()))
    if unknown:
        raise AlignError(f"method {method!r} takes no option {unknown[0]!r} (options: "
                         f"{', '.join(sorted(names)) or 'none'})")
    if device is not None:
        from ..device import placed
        A, B, model, data = placed(device, A, B, model, data)
    if m.needs_data:
        if model is None or data is None:
            raise AlignError(f"method {method!r} needs data (a dataset and the model)")
        return m.fn(spec, A, B, model=model, data=data, seed=seed, **options)
    return m.fn(spec, A, B, seed=seed, **options)
