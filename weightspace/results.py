"""Typed results: what a verb's function returns, the CLI prints and the JSON files keep.

A result is a dataclass with ``to_json()`` / ``from_json()``. Reading a key as from a dict
(``r["out"]``, ``r.get("out")``) still works, for callers written against the dicts these
functions returned before; new code should use the attributes.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass
class Result:
    """Base of the typed results (see the module docstring)."""

    def to_json(self) -> dict:
        """A JSON-ready dict of the fields (paths as strings)."""
        return _plain(asdict(self))

    @classmethod
    def from_json(cls, d: dict):
        """The result back from :meth:`to_json`'s dict; fields it lacks take their
        defaults, keys it does not know are ignored (files of other versions)."""
        names = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            from .errors import WeightspaceError
            raise WeightspaceError(f"a {cls.__name__} needs field(s) {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    # the mapping view, for callers of the dict results
    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def get(self, key: str, default=None):
        return getattr(self, key, default)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]
