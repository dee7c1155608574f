"""Self-describing checkpoints: safetensors with the architecture reference in metadata.

Metadata keys: ``weightspace.arch`` (reference, enough to rebuild the module),
``weightspace.version`` and ``weightspace.meta`` (free-form JSON: seed, dataset, metrics).
Writes are atomic (temp file in the same directory + ``os.replace``) and bitwise
reproducible (the header's keys are sorted). Loading never runs
pickled code: ``.pt`` / ``.pth`` files go through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from . import __version__
from .arch import build
from .errors import WeightspaceError, make_dir, note_created

ARCH_KEY, VERSION_KEY, META_KEY = "weightspace.arch", "weightspace.version", "weightspace.meta"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(WeightspaceError):
    """A checkpoint that cannot be read or does not fit its model."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; nothing is left on failure."""
    path = Path(path)
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        new = not (path.exists() or path.is_symlink())
        os.replace(tmp, path)
        if new:
            note_created(path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_tensors(path: str | Path, tensors: dict, metadata: dict | None = None) -> None:
    """The one safetensors writer: CPU, contiguous tensors, sorted header (bitwise
    reproducible), written atomically (temp file + rename)."""
    blob = canonical_safetensors(save({k: v.detach().to("cpu").contiguous()
                                       for k, v in tensors.items()}, metadata=metadata))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def save_checkpoint(path: str | Path, model: nn.Module | dict, arch: str,
                    meta: dict | None = None) -> None:
    """Write a model (or state dict) with its architecture reference and metadata."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    save_tensors(path, state, {ARCH_KEY: arch, VERSION_KEY: __version__,
                               META_KEY: json.dumps(meta or {}, sort_keys=True)})


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


def read_checkpoint(path: str | Path, arch: str | None = None):
    """``(state_dict, arch, meta)`` from a safetensors file, or a ``.pt`` with ``arch`` given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix in PICKLE_SUFFIXES:
        return _read_torch(path, arch)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then the JSON header ("{"). Its first
    # byte can be 0x80, so test for safetensors before guessing a pickle / zip.
    looks_safetensors = head[8:9] == b"{" and \
        int.from_bytes(head[:8], "little") <= path.stat().st_size - 8
    if not looks_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path}: looks like a pickle / torch.save file, not safetensors; "
                              "rename it to .pt and pass its `arch` to load it safely")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    ref = arch or metadata.get(ARCH_KEY)
    if not ref:
        raise CheckpointError(f"{path}: no '{ARCH_KEY}' in metadata; pass the architecture "
                              "explicitly (`arch`)")
    try:
        meta = json.loads(metadata.get(META_KEY, "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: metadata '{META_KEY}' is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata '{META_KEY}' must be a JSON object, not "
                              f"{type(meta).__name__}")
    return state, ref, meta


def _read_torch(path: Path, arch: str | None):
    if not arch:
        raise CheckpointError(f"{path}: a {path.suffix} state dict carries no architecture; "
                              "pass its `arch`")
    try:
        with warnings.catch_warnings():  # protocol notes from the weights-only unpickler
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything that is not plain tensors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load safely with weights_only=True ({msg})") \
            from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return obj, arch, {}


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
    """Rebuild the module from the checkpoint's metadata (or ``arch``, which a ``.pt`` state
    dict needs) and load validated weights. User code only with ``allow_code`` or inside
    :func:`weightspace.arch.code_allowed`."""
    state, ref, meta = read_checkpoint(path, arch)
    model = build(ref, allow_code=allow_code)
    filled = fill_int_buffers(model, state)
    check_state(model, state, str(path))
    model.load_state_dict(state)
    model.weightspace_arch = ref
    model.weightspace_meta = meta
    model.weightspace_notes = [f"{path}: filled {len(filled)} missing integer buffer(s) "
                               f"({filled[0]}{', ...' if len(filled) > 1 else ''}) from the "
                               f"freshly built model, as load_state_dict would"] if filled else []
    return model.eval()
