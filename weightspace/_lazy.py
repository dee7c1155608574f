"""Packages whose exports are imported on first use (PEP 562).

``weightspace VERB --help`` needs the registries (method names, options, defaults) and
nothing else; the algorithms behind them import torch, which costs seconds. A package
that calls :func:`lazy_package` in its ``__init__`` lists which submodule defines each
name it exports; the submodule is imported the first time the name is read. An exported
name that is also a submodule's name (``generate.audit``) stays the exported object, as
``from .audit import audit`` in an eager ``__init__`` would leave it.
"""
from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    def __getattr__(self, name: str):
        where = self.__dict__.get("_exports", {}).get(name)
        if where is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where}", self.__name__), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name: str, value) -> None:
        # importing submodule X binds package.X to it: an export of that name wins (it is
        # resolved from the mapping when first read)
        if isinstance(value, types.ModuleType) and name in self.__dict__.get("_exports", {}):
            return
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_exports", {})))


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make package ``name`` import ``exports[attr]`` (a submodule) when ``attr`` is read."""
    mod = sys.modules[name]
    mod.__dict__["_exports"] = dict(exports)
    mod.__dict__["__all__"] = sorted(exports)
    mod.__class__ = _LazyPackage
