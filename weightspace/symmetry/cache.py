"""The verified spec a zoo already carries, instead of discovering it again.

Discovery traces the model and verification runs it under random permutations, a cost
every verb that reads a zoo would pay (docs/results.md). A canonical zoo keeps the verified spec it was canonicalized with (``spec.json``,
written by ``canonicalize``); :func:`zoo_spec` reads it back when it is for the same
architecture, was written by this weightspace version (the canonicalization record's),
passed verification and fits the models' parameter shapes, and discovers the spec
otherwise.
Nothing is written into the zoo (a verb that reads a zoo leaves it untouched). The file
is data only (JSON, checked by :meth:`Spec.from_dict`), never code.
"""
from __future__ import annotations

import json
from pathlib import Path

from .structure import Spec, SpecError

FILE = "spec.json"


def read_zoo_spec(zoo_root, arch: str, state: dict | None = None) -> Spec | None:
    """The verified spec of ``arch`` kept in ``zoo_root``, or None."""
    from .. import __version__
    root = Path(zoo_root)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        d = json.loads((root / FILE).read_text())
        record = manifest.get("canonicalization") if isinstance(manifest, dict) else None
        if not (isinstance(record, dict) and isinstance(d, dict)
                and record.get("weightspace_version") == __version__
                and d.get("arch") == arch and d.get("verified") is True):
            return None
        spec = Spec.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError, SpecError):
        return None
    if state is not None and any(k not in state or tuple(state[k].shape) != tuple(s)
                                 for k, s in spec.shapes.items()):
        return None
    spec.verified, spec.max_abs_diff = True, d.get("max_abs_diff")
    return spec


def zoo_spec(zoo_root, arch: str, ref: str | None = None, state: dict | None = None) -> Spec:
    """The verified spec of the zoo's architecture ``arch``: the one ``zoo_root`` keeps
    (:func:`read_zoo_spec`), else discovered and verified on ``ref`` (a checkpoint of the
    zoo; default: ``arch`` itself)."""
    from . import spec as discover_spec
    kept = read_zoo_spec(zoo_root, arch, state)
    return kept if kept is not None else discover_spec(ref or arch)
