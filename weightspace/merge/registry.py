"""The registry of merge methods: one entry per method, each in a file of its own.

A merge method decides how the models are permuted before they are averaged:
``fn(spec, model, states, data, seed, report, **options) -> [perms per model]`` (it may
add entries to ``report``). Averaging and the post-processing (BN reset / REPAIR) are the
same for every method and live in :func:`weightspace.merge.merging.merge`. Adding a method
is one new file that calls :func:`register_merge_method`, plus its import in
``merging.py``'s explicit list.
"""
from __future__ import annotations

from ..registry import Method, Option, Registry
from .lmc import LMCError


_METHODS: Registry[Method] = Registry("merge method", LMCError)


def register_merge_method(name: str, summary: str, needs_data: bool = False,
                          options: tuple[Option, ...] = ()):
    """Decorator: register ``fn`` as the merge method ``name``."""
    return _METHODS.decorator(name, lambda fn: Method(name, fn, summary, needs_data,
                                                      tuple(options)))


list_merge_methods = _METHODS.names  # registered names, in registration order
get_merge_method = _METHODS.get
