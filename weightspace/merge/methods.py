"""The merge methods, listed explicitly (one file each): ``mean`` (plain average),
``mergemany`` (MergeMany) and ``ste`` (multi-model STE). To add a method: write a file that
registers it with :func:`~.registry.register_merge_method` and import it here."""
from __future__ import annotations

from . import mean, mergemany, ste
from .registry import get_merge_method, list_merge_methods

MODULES = (mean, mergemany, ste)  # the method files; each registers its method
MERGE_METHODS = tuple(n for mod in MODULES for n in list_merge_methods()
                      if get_merge_method(n).fn.__module__ == mod.__name__)
METHODS = MERGE_METHODS  # the old name

__all__ = ["MERGE_METHODS", "METHODS", "MODULES"]
