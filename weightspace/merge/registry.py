"""The registry of merge methods: one entry per method, each in a file of its own.

A merge method decides how the models are permuted before they are averaged:
``fn(spec, model, states, data, seed, report, **options) -> [perms per model]`` (it may
add entries to ``report``). Averaging and the post-processing (BN reset / REPAIR) are the
same for every method and live in :func:`weightspace.merge.merging.merge`. Adding a method
is one new file that calls :func:`register_merge_method`, plus its import in
``methods.py``'s explicit list. Like every registry this module stays free of torch: the
CLI reads it to build ``--help``.
"""
from __future__ import annotations

from ..errors import WeightspaceError
from ..registry import Method, Option, Registry

BN_MODES = ("reset", "repair", "none")  # what lmc does between the endpoints
POST = ("none", "reset", "repair")      # what merge does after averaging


class MergeError(WeightspaceError):
    """Bad arguments to an interpolation or merge."""


LMCError = MergeError  # the old name


_METHODS: Registry[Method] = Registry("merge method", MergeError,
                                      methods="weightspace.merge.methods")


def register_merge_method(name: str, summary: str, needs_data: bool = False,
                          options: tuple[Option, ...] = ()):
    """Decorator: register ``fn`` as the merge method ``name``."""
    return _METHODS.decorator(name, lambda fn: Method(name, fn, summary, needs_data,
                                                      tuple(options)))


list_merge_methods = _METHODS.names  # registered names, in registration order
get_merge_method = _METHODS.get
