"""Merging out of core: the plain mean, one tensor per input in memory at a time.

Every input is opened lazily (:func:`weightspace.checkpoint.open_checkpoint`) and checked
against the architecture's keys and shapes (built on the meta device, so no model is ever
materialised); each output tensor is the float32 mean of the inputs' (exactly what the
in-memory ``merge`` computes, :func:`weightspace.functional.mean_states`), cast once on
write to the first input's precision (or ``dtype``) and streamed to the writer.
"""
from __future__ import annotations

import time

import torch

from ..checkpoint import (CheckpointError, CheckpointWriter, as_dtype, checkpoint_metadata,
                          model_card, open_checkpoint, peak_rss_mb)
from ..checkpoints.reader import expected_shapes
from ..functional import StateError, mean_states


def stream_mean(paths, out, arch: str | None = None, dtype=None, max_shard_size=None) -> dict:
    """Write the mean of the checkpoints ``paths`` to ``out``; returns the merge report."""
    from ..checkpoint import _choices
    from .files import merge_card
    if not paths:
        raise StateError("nothing to merge")
    t0 = time.perf_counter()
    dtype = as_dtype(dtype)
    cks = [open_checkpoint(p, arch) for p in paths]
    try:
        first = cks[0]
        if not first.arch:
            raise CheckpointError(f"{first.path}: no architecture in its metadata or "
                                  f"config.json; pass the architecture explicitly (--arch)")
        ref = first.arch
        expected = expected_shapes(ref)
        for ck in cks:
            _check_keys(ck, expected)
        meta = {"merged": {"sources": [str(p) for p in paths], "method": "mean",
                           "post": "none"}, "dataset": first.meta.get("dataset")}
        md = checkpoint_metadata(ref, meta)
        stored = {}
        notes = [ck.wrapper_note for ck in cks if ck.wrapper_note]
        with CheckpointWriter(out, md, dtype=dtype, max_shard_size=max_shard_size,
                              config=first.config,
                              card=model_card(str(out).rstrip("/").split("/")[-1], md,
                                              merge_card(paths, "mean", "none", {}))) as w:
            for k, (shape, kind) in expected.items():
                if k not in first:  # an integer buffer converted checkpoints drop
                    w.add(k, torch.zeros(shape, dtype=kind))
                    notes.append(f"{first.path}: filled missing integer buffer {k!r} with 0")
                    continue
                ts = [ck.get(k) for ck in cks]
                for t, p in zip(ts, paths):
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        raise StateError(f"{p}: tensor {k!r} holds non-finite values")
                stored[k] = first.dtype(k)
                if ts[0].is_floating_point():
                    merged = mean_states([{k: t.to(torch.float32)} for t in ts])[k]
                else:
                    merged = ts[0]
                w.add(k, merged, dtype=stored[k])
                del ts, merged
    finally:
        for ck in cks:
            ck.close()
    return {"method": "mean", "post": "none", "models": len(paths), "streamed": True,
            "seconds": time.perf_counter() - t0, "out": str(out), "device": "cpu",
            "dataset": meta["dataset"], **_choices(out, dtype, stored.values(), max_shard_size),
            "load_notes": notes, "peak_rss_mb": peak_rss_mb()}


def _check_keys(ck, expected: dict) -> None:
    """Keys and shapes against the architecture, naming the first at fault."""
    for k, (shape, kind) in expected.items():
        if k not in ck:
            if kind.is_floating_point:
                raise CheckpointError(f"{ck.path}: missing key {k!r}")
            continue
        if tuple(ck.shape(k)) != tuple(shape):
            raise CheckpointError(f"{ck.path}: key {k!r} has shape {list(ck.shape(k))}, model "
                                  f"expects {list(shape)}")
    extra = [k for k in ck.keys() if k not in expected]
    if extra:
        raise CheckpointError(f"{ck.path}: unexpected key {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
