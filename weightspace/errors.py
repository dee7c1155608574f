"""The one base class of every error weightspace raises about its input.

Each capability has its own subclass (``ArchError``, ``CheckpointError``, ``ZooError``, ...)
so scripts can catch what they expect; the CLI catches :class:`WeightspaceError` and prints
one line. Deriving from ``ValueError`` keeps ``except ValueError`` in older scripts working.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


class WeightspaceError(ValueError):
    """Bad input: a value, file, key or shape the library refuses, named in the message."""


class OutputError(WeightspaceError):
    """An output path that cannot be written as asked (a directory where a file is
    expected, a path under a regular file, an empty path)."""


_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}")


def safe_name(name, where: str) -> str:
    """``name`` if it is one harmless path component (letters, digits, ``_.+=-``, not
    starting with a dot, at most 128 characters), else a :class:`WeightspaceError` naming
    ``where`` it came from. Ids read from files become file names: ``../x`` or ``/etc/x``
    must never turn into a path outside the directory they belong to."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name):
        raise WeightspaceError(f"{where}: {name!r} is not a safe name (one path component of "
                               f"letters, digits and _.+=-, not starting with '.')")
    return name


def check_output(path, kind: str, flag: str = "`out`") -> Path:
    """Refuse, before any work, an output path that cannot become a ``kind`` ("file" or
    "dir"): empty, a directory where a file goes (or the reverse), a path under a regular
    file, or an unwritable parent. Creates nothing."""
    if path is None or not str(path).strip():
        raise OutputError(f"{flag} is empty; give a path")
    p = Path(path)
    if kind == "file":
        if p.is_dir() or str(path).endswith(os.sep):
            raise OutputError(f"{flag} {path}: is a directory; expected a file path")
        start = p.parent
    elif kind == "dir":
        if p.exists() and not p.is_dir():
            raise OutputError(f"{flag} {path}: exists and is not a directory")
        start = p
    else:  # pragma: no cover - programming error
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    anc = start
    while not anc.exists() and not anc.is_symlink() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"{flag} {path}: {anc} is a file, not a directory")
    if anc.is_dir() and not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {anc} is not writable")
    return p


_CREATED: set[str] = set()  # outputs this process created (see make_dir / created_here)


def _key(path) -> str:
    return os.path.abspath(os.fspath(path))


def make_dir(path) -> Path:
    """``mkdir -p path``, remembering whether this process created ``path`` itself (a
    directory another process made at the same moment is not this process's to remove)."""
    p = Path(path)
    if not p.is_dir():
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            p.mkdir()
            _CREATED.add(_key(p))
        except FileExistsError:
            if not p.is_dir():
                raise
    return p


def note_created(path) -> None:
    """Record that this process created the file ``path`` (an atomic write's target)."""
    _CREATED.add(_key(path))


def disown(path) -> None:
    """``path`` is another process's now (it holds the lock on it): never remove it here."""
    _CREATED.discard(_key(path))


def created_here(path) -> bool:
    """Whether this process created ``path`` (so a failed command may remove it)."""
    return _key(path) in _CREATED
