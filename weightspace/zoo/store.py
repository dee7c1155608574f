"""A zoo on disk: ``ZOO_DIR/manifest.json`` + ``ZOO_DIR/models/<id>.safetensors``.

The manifest is the index (settings, dataset, one entry per model with its seed,
hyperparameters, metrics and status); every checkpoint is self-describing on its own (its
metadata repeats the entry's id, seed, hyperparameters and metrics), so a model whose file
landed but whose manifest update did not (a ``kill -9`` in between) is recovered from the
file. Every write is atomic (temp file + rename): the manifest is valid JSON at any moment.

One writer at a time: ``writer_lock()`` holds an ``flock`` on ``ZOO_DIR/.lock`` (released by
the kernel even when the process is killed). Processes of one ``accelerate launch`` share
the writer's lock and serialise manifest updates through ``ZOO_DIR/.manifest.lock``.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
from pathlib import Path
from typing import Callable, Iterator

from ..checkpoint import CheckpointError, atomic_write_text, load_model, read_checkpoint
from ..errors import WeightspaceError, disown, make_dir, safe_name

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None

FORMAT = "weightspace.zoo"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ZooError(WeightspaceError):
    """A zoo directory that cannot be read, is busy, or does not match a command."""


def _field(m: dict, key: str, kinds, where) -> None:
    if key in m and m[key] is not None and (not isinstance(m[key], kinds)
                                            or isinstance(m[key], bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
        raise ZooError(f"{where}: field {key!r} must be {names}, got {type(m[key]).__name__}")


def check_manifest(m, where) -> None:
    """The manifest's schema, checked once when it is read, so that no later code meets a
    string where it expects an object: format and integer version, a list of model
    entries, each an object with a unique, path-safe ``id`` (ids become file names)."""
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ZooError(f"{where}: not a weightspace zoo manifest "
                       f"(format {m.get('format') if isinstance(m, dict) else None!r})")
    version = m.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ZooError(f"{where}: field 'version' must be a non-negative integer, got "
                       f"{version!r}")
    if version > FORMAT_VERSION:
        raise ZooError(f"{where}: zoo format version {version} is newer than this "
                       f"weightspace understands ({FORMAT_VERSION})")
    if not isinstance(m.get("models"), list):
        raise ZooError(f"{where}: field 'models' must be a list")
    for key, kinds in (("arch", str), ("dataset", dict), ("settings", dict),
                       ("summary", dict), ("canonicalization", dict), ("settings_hash", str)):
        _field(m, key, kinds, where)
    if isinstance(m.get("dataset"), dict):
        _field(m["dataset"], "name", str, f"{where}: dataset")
        _field(m["dataset"], "data_root", str, f"{where}: dataset")
    seen = set()
    for i, e in enumerate(m["models"]):
        at = f"{where}: models[{i}]"
        if not isinstance(e, dict):
            raise ZooError(f"{at} must be an object, got {type(e).__name__}")
        try:
            safe_name(e.get("id"), f"{at}.id")
        except WeightspaceError as err:
            raise ZooError(str(err)) from None
        if e["id"] in seen:
            raise ZooError(f"{at}: duplicate id {e['id']!r}")
        seen.add(e["id"])
        for key, kinds in (("status", str), ("metrics", dict), ("hparams", dict),
                           ("arch", str), ("seed", int)):
            _field(e, key, kinds, at)


def finished(manifest: dict) -> list[dict]:
    """The entries of the models that trained to the end (``status == "done"``)."""
    return [e for e in manifest["models"] if e.get("status") == "done"]


def summarise(entries: list[dict]) -> dict:
    """The manifest's summary: counts and mean / std accuracy per split of finished models."""
    done = finished({"models": entries})
    s = {"total": len(entries), "done": len(done),
         "diverged": sum(e.get("status") == "diverged" for e in entries),
         "failed": sum(e.get("status") == "failed" for e in entries)}  # near chance
    for split in ("train", "val", "test"):
        accs = [e["metrics"][f"{split}_acc"] for e in done
                if f"{split}_acc" in e.get("metrics", {})]
        if accs:
            s[f"mean_{split}_acc"] = statistics.fmean(accs)
            s[f"std_{split}_acc"] = statistics.pstdev(accs)
    return s


class Zoo:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def model_path(self, model_id: str) -> Path:
        return self.root / "models" / f"{self._id(model_id)}.safetensors"

    def snapshot_path(self, model_id: str, epoch: int) -> Path:
        return self.root / "checkpoints" / self._id(model_id) / f"epoch{epoch:04d}.safetensors"

    def _id(self, model_id: str) -> str:
        try:
            return safe_name(model_id, f"{self.root}: model id")
        except WeightspaceError as e:
            raise ZooError(str(e)) from None

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # ------------------------------------------------------------------ manifest
    def read(self) -> dict:
        if not self.manifest_path.is_file():
            raise ZooError(f"{self.root} is not a zoo (no {MANIFEST})")
        try:
            m = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ZooError(f"{self.manifest_path}: not valid JSON ({e})") from None
        check_manifest(m, self.manifest_path)
        return m

    def write(self, manifest: dict) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1) + "\n")

    def update(self, fn: Callable[[dict], None]) -> dict:
        """Read-modify-write the manifest under the manifest lock."""
        with self._flock(".manifest.lock", blocking=True):
            m = self.read()
            fn(m)
            self.write(m)
            return m

    def models(self, status: str | None = "done") -> list[dict]:
        m = self.read()
        return finished(m) if status == "done" else \
            [e for e in m["models"] if status is None or e.get("status") == status]

    def entry(self, model_id: str) -> dict:
        for e in self.read()["models"]:
            if e["id"] == model_id:
                return e
        raise ZooError(f"{self.root}: no model with id {model_id!r}")

    def load(self, model_id: str):
        """The model ``model_id`` as an ``nn.Module`` (architecture from its metadata)."""
        return load_model(self.model_path(model_id))

    def recover(self, model_id: str, settings_hash: str) -> dict | None:
        """The zoo metadata of a finished checkpoint of this zoo, or None."""
        path = self.model_path(model_id)
        if not path.is_file():
            return None
        try:
            _, _, meta = read_checkpoint(path)
        except CheckpointError:
            return None
        zoo = meta.get("zoo", {})
        return meta if zoo.get("settings_hash") == settings_hash else None

    def clean_temp(self) -> None:
        """Remove temp files a killed writer left behind (``.<name>.<random>.tmp``)."""
        for d in (self.root, self.root / "models", *self.root.glob("checkpoints/*")):
            for p in d.glob(".*.tmp") if d.is_dir() else ():
                with contextlib.suppress(OSError):
                    p.unlink()

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Exclusive right to write this zoo; refuses at once if another process holds it."""
        with self._flock(".lock", blocking=False):
            yield

    @contextlib.contextmanager
    def _flock(self, name: str, blocking: bool) -> Iterator[None]:
        make_dir(self.root)
        path = self.root / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    disown(self.root)  # the holder writes there: a failure here keeps it
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                    raise ZooError(f"{self.root} is being written by another process "
                                   f"(pid {holder}); wait for it to finish or use another "
                                   f"`out_dir`") from None
                if not blocking:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock
