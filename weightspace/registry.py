"""A named registry of plug-ins (alignment methods, merge methods), timm-style.

One instance per kind of extension; entries keep their registration order; an unknown
name is an error of the kind's own type that lists what exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """One option of a method: its keyword, the CLI flag's type and help, the default."""

    name: str
    type: type
    default: object
    help: str
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Method:
    """A registered method: its function, a one-line summary, whether it reads data (then
    it is given the model and the dataset) and its options."""

    name: str
    fn: Callable
    summary: str
    needs_data: bool = False
    options: tuple[Option, ...] = ()


class Registry(Generic[T]):
    """``methods``: the module that imports every built-in method file; it is imported
    before the first lookup, so a registry is complete whichever module was imported
    first (packages import their parts lazily)."""

    def __init__(self, kind: str, error: type[Exception], methods: str | None = None):
        self.kind, self.error, self._entries = kind, error, {}
        self._methods = methods

    def _load(self) -> None:
        if self._methods is not None:
            import importlib
            module, self._methods = self._methods, None
            importlib.import_module(module)

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def decorator(self, name: str, make: Callable[[Callable], T]):
        """A decorator that registers ``make(fn)`` under ``name`` and returns ``fn``."""
        def deco(fn):
            self.add(name, make(fn))
            return fn
        return deco

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; choices: "
                             f"{', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)
