"""The merge methods, listed explicitly (one file each): ``mean`` (plain average),
``mergemany`` (MergeMany) and ``ste`` (multi-model STE). To add a method: write a file that
registers it with :func:`~.registry.register_merge_method` and import it here."""
from __future__ import annotations

from . import mean, mergemany, ste
from .registry import get_merge_method, list_merge_methods

MODULES = (mean, mergemany, ste)  # the method files; each registers its method
METHODS = tuple(n for mod in MODULES for n in list_merge_methods()
                if get_merge_method(n).fn.__module__ == mod.__name__)

__all__ = ["METHODS", "MODULES"]
