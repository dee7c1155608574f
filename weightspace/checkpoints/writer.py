"""The one writer of checkpoints: tensors streamed to disk, committed atomically.

``out`` ending in ``.safetensors`` is one file; any other ``out`` is a directory in the Hub
layout (``model.safetensors``, or shards ``model-0000k-of-0000n.safetensors`` plus
``model.safetensors.index.json`` above ``max_shard_size``, with shard sizes and names from
``huggingface_hub``; ``config.json``; ``README.md``). :meth:`CheckpointWriter.add` appends
one tensor's bytes to a spool file; on commit each file is written with a sorted JSON
header and the data copied from the spool in a fixed order, so the bytes do not depend on
the order of ``add`` calls and no whole file is ever held in memory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import ARCH_KEY, CheckpointError
from .layouts import CONFIG, HUB_FILES

# safetensors lays data out by dtype, widest first (its Dtype enum, descending), then by
# name: every tensor stays aligned to its element size. The same order keeps our single
# files bitwise equal to safetensors' own (header keys sorted).
ST_NAMES = {torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32",
            torch.uint32: "U32", torch.int32: "I32", torch.bfloat16: "BF16",
            torch.float16: "F16", torch.uint16: "U16", torch.int16: "I16",
            torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int8: "I8",
            torch.uint8: "U8", torch.bool: "BOOL"}
_RANK = {name: i for i, name in enumerate(ST_NAMES.values())}
CHUNK = 1 << 24
CARD = "README.md"
INDEX = "model.safetensors.index.json"


def default_max_shard_size() -> str:
    from huggingface_hub.serialization._base import MAX_SHARD_SIZE
    return MAX_SHARD_SIZE


def parse_size(size) -> int:
    """Bytes from an int or a size such as ``"5GB"`` / ``"500MB"`` (huggingface_hub's units)."""
    if isinstance(size, bool):
        raise CheckpointError(f"max_shard_size must be a size like '5GB', got {size!r}")
    if isinstance(size, int):
        n = size
    else:
        from huggingface_hub.serialization._base import parse_size_to_int
        text = str(size).strip()
        try:
            n = int(text) if text.isdigit() else parse_size_to_int(text.upper())
        except ValueError:
            raise CheckpointError(f"max_shard_size must be a size like '5GB', '500MB' or a "
                                  f"number of bytes, got {size!r}") from None
    if n < 1:
        raise CheckpointError(f"max_shard_size must be positive, got {size!r}")
    return n


def is_single_file(out) -> bool:
    return str(out).endswith(".safetensors")


class CheckpointWriter:
    """Stream tensors into ``out``; commit atomically on a clean exit, leave nothing on an
    exception. ``dtype`` casts every floating tensor (else each keeps the dtype it is added
    with, or ``add``'s own ``dtype``); ``metadata`` goes into every safetensors header (and
    the index); ``config`` / ``card`` are a directory's ``config.json`` / ``README.md``
    (default: a config naming the architecture, a card listing the metadata); ``single``
    forces one file whatever the name (default: by the ``.safetensors`` suffix)."""

    def __init__(self, out, metadata: dict | None = None, dtype: torch.dtype | None = None,
                 max_shard_size: int | str | None = None, config: dict | None = None,
                 card: str | None = None, single: bool | None = None):
        self.out = Path(out)
        self.single = is_single_file(out) if single is None else single
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.dtype = dtype
        self.max_shard_size = parse_size(max_shard_size if max_shard_size is not None
                                         else default_max_shard_size())
        self.config, self.card = config, card
        if not self.single and self.out.exists() and not _replaceable(self.out):
            raise CheckpointError(f"{self.out}: exists and holds files other than a "
                                  f"checkpoint's; choose a new directory")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp",
                                          dir=self.out.parent))
        self._spool = open(self._tmp / ".spool", "w+b")
        self._entries: dict[str, tuple[str, list[int], int, int]] = {}
        self._done = False

    def add(self, name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        """Append one tensor (cast to the writer's ``dtype``, else ``dtype``, if floating)."""
        if name in self._entries:
            raise CheckpointError(f"{self.out}: tensor {name!r} added twice")
        t = tensor.detach()
        cast = self.dtype or dtype
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        t = t.to("cpu").contiguous()
        if t.dtype not in ST_NAMES:
            raise CheckpointError(f"{self.out}: tensor {name!r} has dtype {t.dtype}, which "
                                  f"safetensors cannot store")
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        start = self._spool.tell()
        self._spool.write(data)
        self._entries[name] = (ST_NAMES[t.dtype], list(t.shape), start, t.numel() *
                               t.element_size())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def abort(self) -> None:
        """Remove what this writer created; the previous ``out`` (if any) is untouched."""
        if not self._spool.closed:
            self._spool.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._done = True

    def commit(self) -> None:
        if self._done:
            return
        try:
            self._spool.flush()
            names = sorted(self._entries, key=lambda n: (_RANK[self._entries[n][0]], n))
            if self.single:
                self._write_file(self._tmp / "out.safetensors", names, self.metadata)
                os.replace(self._tmp / "out.safetensors", self.out)
            else:
                self._write_dir(names)
                _swap_in(self._tmp / "out", self.out)
        except BaseException:
            self.abort()
            raise
        self.abort()

    def _write_file(self, path: Path, names: list[str], metadata: dict) -> None:
        header = {n: {"dtype": self._entries[n][0], "shape": self._entries[n][1]}
                  for n in names}
        offset = 0
        for n in names:  # data in ``names`` order: offsets follow it
            size = self._entries[n][3]
            header[n]["data_offsets"] = [offset, offset + size]
            offset += size
        if metadata:
            header["__metadata__"] = metadata
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            for n in names:
                _, _, start, size = self._entries[n]
                self._spool.seek(start)
                while size:
                    block = self._spool.read(min(CHUNK, size))
                    f.write(block)
                    size -= len(block)
            f.flush()
            os.fsync(f.fileno())

    def _write_dir(self, names: list[str]) -> None:
        from huggingface_hub import split_state_dict_into_shards_factory
        from huggingface_hub.constants import SAFETENSORS_WEIGHTS_FILE_PATTERN
        d = self._tmp / "out"
        d.mkdir()
        split = split_state_dict_into_shards_factory(
            {n: (n,) for n in sorted(self._entries)},  # a str value would be skipped
            get_storage_size=lambda t: self._entries[t[0]][3],
            filename_pattern=SAFETENSORS_WEIGHTS_FILE_PATTERN, max_shard_size=self.max_shard_size)
        meta = {"format": "pt", **self.metadata}  # transformers requires "format"
        order = {n: i for i, n in enumerate(names)}
        for fname, members in split.filename_to_tensors.items():
            self._write_file(d / fname, sorted(members, key=order.get), meta)
        if split.is_sharded:
            index = {"metadata": {**self.metadata, **split.metadata},
                     "weight_map": dict(sorted(split.tensor_to_filename.items()))}
            (d / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        config = self.config if self.config is not None else config_for(
            self.metadata.get(ARCH_KEY))
        if config is not None:
            (d / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        card = self.card if self.card is not None else model_card(self.out.name, self.metadata)
        (d / CARD).write_text(card if card.endswith("\n") else card + "\n")


def _replaceable(d: Path) -> bool:
    """An existing ``out`` directory may be replaced only if it holds nothing but what this
    writer writes (an earlier run's output), never a user's other files."""
    if not d.is_dir():
        return False
    own = set(HUB_FILES) | {CONFIG, CARD, INDEX}
    return all(p.is_file() and (p.name in own or (p.name.startswith("model-") and
                                                 p.name.endswith(".safetensors")))
               for p in d.iterdir())


def _swap_in(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; an earlier output directory is moved aside first and
    removed only once the new one is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = new.parent / "old"
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old)


def config_for(arch: str | None) -> dict | None:
    """A ``config.json`` naming the architecture: timm's fields for ``timm:`` references
    (so timm reads the directory too), else ``weightspace_arch`` alone."""
    if not arch:
        return None
    cfg = {"weightspace_arch": arch}
    from ..arch import parse
    try:
        r = parse(arch)
    except Exception:  # an unparsable reference is still recorded as given
        return cfg
    if r.kind == "timm":
        cfg["architecture"] = r.name
        if "num_classes" in r.kwargs:
            cfg["num_classes"] = r.kwargs["num_classes"]
        if r.kwargs:
            cfg["model_args"] = dict(r.kwargs)
    return cfg


def model_card(title: str, metadata: dict, body: str = "") -> str:
    """A short README.md: what the checkpoint is, its architecture and how it was made."""
    from .. import __version__
    lines = [f"# {title}", "", f"Written by weightspace {__version__}.", ""]
    if metadata.get(ARCH_KEY):
        lines += [f"Architecture: `{metadata[ARCH_KEY]}`", ""]
    if body:
        lines += [body.rstrip(), ""]
    meta = metadata.get("weightspace.meta")
    if meta:
        try:
            meta = json.dumps(json.loads(meta), indent=1, sort_keys=True)
        except json.JSONDecodeError:
            pass
        lines += ["Metadata:", "", "```json", meta, "```", ""]
    return "\n".join(lines)
