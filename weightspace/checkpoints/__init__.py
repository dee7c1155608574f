"""Checkpoints as users keep them: every layout read lazily, big outputs written streamed.

``layouts`` finds a checkpoint's files (one safetensors file, a Hub directory, a sharded
index, a ``torch.save`` file); ``reader`` opens them as one :class:`LazyCheckpoint`
(wrappers and prefixes removed, the architecture found); ``writer`` streams tensors into one
file or a Hub directory, atomically and bitwise reproducibly. :mod:`weightspace.checkpoint`
re-exports the public names; this package imports nothing heavy at import time.
"""
from __future__ import annotations

from ..errors import WeightspaceError

ARCH_KEY, VERSION_KEY, META_KEY = "weightspace.arch", "weightspace.version", "weightspace.meta"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

READS = ("a .safetensors file; a directory with model.safetensors, a sharded "
         "*.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json (the "
         "Hub layout; the architecture from a timm config.json); a .pt/.pth/.bin/.ckpt file "
         "(torch.load with weights_only=True); DDP / Lightning / torch.compile wrappers are "
         "removed")
WRITES = ("OUT.safetensors: one file; any other OUT: a Hub directory (model.safetensors, or "
          "shards and model.safetensors.index.json above --max-shard-size, config.json, "
          "README.md)")


class CheckpointError(WeightspaceError):
    """A checkpoint that cannot be read or does not fit its model."""
