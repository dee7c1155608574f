"""Self-describing checkpoints: safetensors with the architecture reference in metadata.

Metadata keys: ``weightspace.arch`` (reference, enough to rebuild the module),
``weightspace.version`` and ``weightspace.meta`` (free-form JSON: seed, dataset, metrics).
Every layout users keep is read through :func:`open_checkpoint` (one file, Hub directories,
sharded indexes, ``torch.save`` files, DDP / Lightning / torch.compile wrappers; see
:mod:`weightspace.checkpoints`); everything is written through :class:`CheckpointWriter`,
atomically (temp + ``os.replace``) and bitwise reproducibly (sorted headers). Loading never
runs pickled code: ``torch.save`` files go through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .arch import build
from .checkpoints import (ARCH_KEY, META_KEY, PICKLE_SUFFIXES, READS, VERSION_KEY, WRITES,
                          CheckpointError)
from .checkpoints.reader import LazyCheckpoint, arch_from_config, open_checkpoint
from .checkpoints.writer import CheckpointWriter, is_single_file, model_card, parse_size


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None,
                 dtype: torch.dtype | None = None, **layout) -> None:
    """The one way tensors reach disk: streamed through :class:`CheckpointWriter` (sorted
    header, bitwise reproducible, atomic). A path ending in ``.safetensors`` is one file,
    any other a Hub directory (``layout``: ``max_shard_size``, ``config``, ``card``)."""
    with CheckpointWriter(path, metadata, dtype=dtype, single=is_single_file(path) or
                          not layout, **layout) as w:
        for k, v in tensors.items():
            w.add(k, v)


def checkpoint_metadata(arch: str, meta: dict | None = None) -> dict:
    """The safetensors metadata of a weightspace checkpoint."""
    return {ARCH_KEY: arch, VERSION_KEY: __version__,
            META_KEY: json.dumps(meta or {}, sort_keys=True)}


def save_checkpoint(path: str | Path, model: nn.Module | dict, arch: str,
                    meta: dict | None = None, dtypes: dict | None = None, **layout) -> None:
    """Write a model (or state dict, or ``(name, tensor)`` pairs: streamed) with its
    architecture reference and metadata;
    ``dtypes``: name -> dtype each floating tensor is cast to on write (kept: the inputs'
    precision), ``layout``: ``dtype`` (overrides), ``max_shard_size``, ``config``, ``card``
    for a directory ``path``."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    pairs = state.items() if hasattr(state, "items") else state  # or (name, tensor) pairs
    dtypes = dtypes or {}
    with CheckpointWriter(path, checkpoint_metadata(arch, meta), **layout) as w:
        for k, v in pairs:
            w.add(k, v, dtype=dtypes.get(k))


def canonical_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header keys sorted.

    safetensors writes the header from a hash map, so two saves of identical tensors and
    metadata can differ in key order; sorting makes checkpoints bitwise reproducible. Data
    offsets are relative to the end of the header, so only the header changes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as safetensors does
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def read_checkpoint(path: str | Path, arch: str | None = None, float32: bool = True):
    """``(state_dict, arch, meta)`` from a checkpoint in any layout (:func:`open_checkpoint`);
    ``arch`` for files that carry none (or to override the one they carry). Floating
    tensors come as float32 (arithmetic runs in float32; :func:`open_checkpoint` gives the
    stored precision) unless ``float32`` is false."""
    with open_checkpoint(path, arch) as ck:
        state = _state_of(ck)
        if float32:
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        return state, ck.arch, ck.meta


def _state_of(ck: LazyCheckpoint) -> dict:
    if not ck.arch:
        what = f"a {ck.path.suffix or 'torch.save'} state dict carries no architecture" \
            if ck.layout.kind == "torch" else \
            f"no '{ARCH_KEY}' in metadata and no config.json naming one"
        raise CheckpointError(f"{ck.path}: {what}; pass the architecture explicitly (--arch)")
    return ck.state_dict()


def fill_int_buffers(model: nn.Module, state: dict) -> list[str]:
    """Add the integer buffers ``state`` lacks (BN ``num_batches_tracked``: converted
    checkpoints often drop them) from ``model``, as ``load_state_dict`` would accept; returns
    the keys filled. Missing floating tensors are left for :func:`check_state` to refuse."""
    filled = [k for k, v in model.state_dict().items()
              if k not in state and not v.is_floating_point()]
    expected = model.state_dict()
    for k in filled:
        state[k] = expected[k].clone()
    return filled


def check_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Missing / unexpected keys, shape mismatches and non-finite values, naming the key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing key {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {unexpected[0]!r}"
                              + (f" (and {len(unexpected) - 1} more)"
                                 if len(unexpected) > 1 else ""))
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {list(v.shape)}, model "
                                  f"expects {list(expected[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: key {k!r} has non-finite values")


def load_models(paths, arch: str | None = None) -> list[nn.Module]:
    """Several checkpoints of one architecture (same keys and shapes, finite values); each
    model keeps its notes (``weightspace_notes``)."""
    from .functional import check_compatible
    models = [load_model(p, arch=arch) for p in paths]
    check_compatible([m.state_dict() for m in models], [str(p) for p in paths])
    return models


def load_model(path: str | Path, arch: str | None = None, allow_code: bool = False) -> nn.Module:
    """Rebuild the module from the checkpoint's metadata (or ``arch``, or its directory's
    ``config.json``) and load validated weights (float32 where the file holds half
    precision: arithmetic runs in float32). The module keeps ``weightspace_arch``,
    ``weightspace_meta``, ``weightspace_notes`` (wrappers removed, buffers filled),
    ``weightspace_dtypes`` (each tensor's stored dtype, to write it back the same) and
    ``weightspace_config`` (the directory's ``config.json``, carried to outputs). User code
    only with ``allow_code`` or inside :func:`weightspace.arch.code_allowed`."""
    with open_checkpoint(path, arch, allow_code=allow_code) as ck:
        state, ref, meta = _state_of(ck), ck.arch, ck.meta
        dtypes = {k: ck.dtype(k) for k in ck.keys()}
        note, config = ck.wrapper_note, ck.config
    model = build(ref, allow_code=allow_code)
    filled = fill_int_buffers(model, state)
    check_state(model, state, str(path))
    model.load_state_dict(state)
    del state
    model.weightspace_arch = ref
    model.weightspace_meta = meta
    model.weightspace_dtypes = dtypes
    model.weightspace_config = config
    model.weightspace_notes = ([note] if note else []) + (
        [f"{path}: filled {len(filled)} missing integer buffer(s) "
         f"({filled[0]}{', ...' if len(filled) > 1 else ''}) from the "
         f"freshly built model, as load_state_dict would"] if filled else [])
    return model.eval()


__all__ = ["ARCH_KEY", "META_KEY", "VERSION_KEY", "PICKLE_SUFFIXES", "READS", "WRITES",
           "CheckpointError", "CheckpointWriter", "LazyCheckpoint", "open_checkpoint",
           "arch_from_config", "atomic_write", "atomic_write_text", "save_tensors",
           "save_checkpoint", "checkpoint_metadata", "canonical_safetensors",
           "read_checkpoint", "fill_int_buffers", "check_state", "load_models", "load_model",
           "model_card", "parse_size", "is_single_file", "DTYPES", "as_dtype",
           "check_checkpoint_out", "write_model", "peak_rss_mb"]


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def as_dtype(dtype) -> torch.dtype | None:
    """``None`` (keep the inputs' precision), a ``torch.dtype`` or one of :data:`DTYPES`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def check_checkpoint_out(out, dtype=None, max_shard_size=None) -> Path:
    """Refuse, before any work, an ``out`` no checkpoint can be written to (a file path
    ``.safetensors``, or a Hub directory that is new or holds only an earlier output) and
    a bad ``dtype`` / ``max_shard_size``."""
    from .checkpoints.writer import _replaceable
    from .errors import check_output
    as_dtype(dtype)
    if max_shard_size is not None:
        parse_size(max_shard_size)
    if is_single_file(out):
        return check_output(out, "file")
    p = check_output(out, "dir")
    if p.exists() and not _replaceable(p):
        raise CheckpointError(f"--out {out}: exists and holds files other than a "
                              f"checkpoint's; choose a new directory")
    return p


def write_model(out, state: dict, source: nn.Module, meta: dict, dtype=None,
                max_shard_size=None, card: str = "") -> dict:
    """A verb's output model: each tensor in ``source``'s stored precision (``dtype``
    overrides), the source directory's ``config.json`` carried over, a model card with
    ``card``; returns what was chosen (recorded in the verb's report)."""
    dtype = as_dtype(dtype)
    dtypes = getattr(source, "weightspace_dtypes", {}) if dtype is None else {}
    arch = source.weightspace_arch
    cfg = getattr(source, "weightspace_config", None)
    meta_md = checkpoint_metadata(arch, meta)
    save_checkpoint(out, state, arch, meta, dtypes=dtypes, dtype=dtype,
                    max_shard_size=max_shard_size, config=cfg,
                    card=model_card(Path(out).name, meta_md, card))
    return _choices(out, dtype, dtypes.values(), max_shard_size)


def _choices(out, dtype, stored, max_shard_size) -> dict:
    from .checkpoints.writer import default_max_shard_size
    kept = sorted({str(d).removeprefix("torch.") for d in stored if d.is_floating_point})
    rec = {"dtype": str(dtype).removeprefix("torch.") if dtype is not None
           else f"kept ({', '.join(kept) or 'float32'})"}
    if not is_single_file(out):
        rec["max_shard_size"] = max_shard_size if max_shard_size is not None \
            else f"{default_max_shard_size()} (default)"
    return rec


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (``ru_maxrss``)."""
    import resource
    import sys
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024
