"""Which files hold a checkpoint: one file, a Hub directory, or a sharded index.

A directory is read the way the Hub lays it out (``model.safetensors``, then
``model.safetensors.index.json``, then ``pytorch_model.bin`` / its index, as
``huggingface_hub`` and timm write them); an index's shard names must stay inside its
directory. Nothing here reads tensor data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import PICKLE_SUFFIXES, CheckpointError

# In the order a directory is searched (safetensors first: never unpickle when avoidable).
HUB_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")
CONFIG = "config.json"


@dataclass
class Layout:
    """``kind``: ``"safetensors"`` or ``"torch"``; ``files``: the weight files (one, or the
    shards in index order); ``weight_map``: tensor name -> shard file for an index."""
    path: Path
    kind: str
    files: list[Path]
    index: Path | None = None
    weight_map: dict[str, Path] = field(default_factory=dict)
    config: dict | None = None


def resolve(path) -> Layout:
    """The layout of ``path`` (file or directory); one clear error when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        found = _weights_in(path)
        layout = _file_layout(found)
    else:
        layout = _file_layout(path)
    layout.path = path
    cfg = (path if path.is_dir() else path.parent) / CONFIG
    if path.is_dir() and cfg.is_file():
        layout.config = _read_json(cfg, "a JSON object")
    return layout


def _weights_in(d: Path) -> Path:
    for name in HUB_FILES:
        if (d / name).is_file():
            return d / name
    indexes = sorted(d.glob("*.safetensors.index.json")) or sorted(d.glob("*.bin.index.json"))
    singles = sorted(d.glob("*.safetensors"))
    for group in (indexes, singles):
        if len(group) == 1:
            return group[0]
        if len(group) > 1:
            raise CheckpointError(f"{d}: holds several candidate weight files "
                                  f"({', '.join(p.name for p in group[:4])}); give one of them")
    raise CheckpointError(f"{d}: a directory with no weights (looked for "
                          f"{', '.join(HUB_FILES)} and *.safetensors)")


def _file_layout(path: Path) -> Layout:
    if path.name.endswith(".index.json"):
        return _index_layout(path)
    kind = "torch" if path.suffix in PICKLE_SUFFIXES else "safetensors"
    return Layout(path, kind, [path])


def _index_layout(index: Path) -> Layout:
    obj = _read_json(index, "a JSON object with a 'weight_map'")
    wm = obj.get("weight_map")
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index}: no 'weight_map' (tensor name -> shard file)")
    root = index.parent.resolve()
    weight_map, files = {}, []
    for name, shard in wm.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index}: tensor {name!r} maps to {shard!r}, not a file name")
        p = (index.parent / shard)
        if Path(shard).is_absolute() or root not in p.resolve().parents:
            raise CheckpointError(f"{index}: shard {shard!r} (for {name!r}) is outside "
                                  f"{index.parent}")
        if not p.is_file():
            raise CheckpointError(f"{index}: shard {shard!r} (named for tensor {name!r}) is "
                                  f"missing")
        if p not in files:
            files.append(p)
        weight_map[name] = p
    kind = "safetensors" if index.name.endswith(".safetensors.index.json") else "torch"
    return Layout(index, kind, files, index, weight_map)


def _read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected {what}")
    return obj
