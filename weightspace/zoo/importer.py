"""``weightspace zoo import``: a zoo from checkpoints trained elsewhere.

Users often hold networks trained by their own scripts: safetensors files, Hub
directories (sharded or not), or plain PyTorch state dicts saved with ``torch.save``
(loaded with ``weights_only=True``; given ``arch`` when nothing names it). Each model is
stored in the precision it came in. Importing validates every file against the architecture (keys,
shapes, finite values; missing integer buffers filled as ``load_state_dict`` would), writes
self-describing checkpoints and a manifest, and, when a dataset is known, the train / val /
test metrics that canonicalization, conditioning and the audit read. The sources are never
modified; ids come from the file names, made into safe path components.
"""
from __future__ import annotations

import re
from pathlib import Path

from .. import __version__
from ..checkpoint import load_model, save_checkpoint
from ..errors import check_output
from ..functional import check_compatible
from .datasets import check_fits, load_dataset
from .store import FORMAT, FORMAT_VERSION, Zoo, ZooError, summarise
from .train import metrics


def model_ids(paths: list[Path]) -> list[str]:
    """One safe, unique id per file, from its name (``run 3/model.pt`` -> ``model``)."""
    ids, seen = [], set()
    for i, p in enumerate(paths):
        base = re.sub(r"[^A-Za-z0-9_.+=-]", "_", Path(p).stem).lstrip(".")[:100] or f"m{i:04d}"
        mid, k = base, 1
        while mid in seen:
            k += 1
            mid = f"{base}-{k}"
        seen.add(mid)
        ids.append(mid)
    return ids


def import_zoo(paths, out, arch: str | None = None, dataset: str | None = None,
               data_root=None, device: str = "cpu") -> dict:
    """Write the zoo ``out`` holding the checkpoints ``paths``; returns a summary.

    ``arch`` is needed for files that carry none (``.pt``) and overrides the others';
    ``dataset`` (default: the one the first checkpoint records, if any) adds metrics."""
    check_output(out, "dir")
    zoo = Zoo(out)
    if zoo.exists():
        raise ZooError(f"{out} already holds a zoo; import into a new directory")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ZooError("give at least one checkpoint to import")
    models = [load_model(p, arch=arch) for p in paths]
    states = [m.state_dict() for m in models]
    check_compatible(states, [str(p) for p in paths])
    ref = models[0].weightspace_arch
    name = dataset or models[0].weightspace_meta.get("dataset")
    data = None
    if name:
        data = load_dataset(name, data_root)
        check_fits(models[0], data, ref)
    ms = metrics(ref, states, data, device) if data is not None else [{} for _ in states]
    entries = []
    with zoo.writer_lock():
        for mid, path, model, state, m in zip(model_ids(paths), paths, models, states, ms):
            meta = {**model.weightspace_meta, "metrics": m,
                    "dataset": data.name if data is not None else name,
                    "imported_from": str(path)}
            save_checkpoint(zoo.model_path(mid), state, ref, meta,
                            dtypes=getattr(model, "weightspace_dtypes", None))
            entries.append({"id": mid, "status": "done", "file": f"models/{mid}.safetensors",
                            "source": str(path), "metrics": m,
                            **({"seed": model.weightspace_meta["seed"]}
                               if isinstance(model.weightspace_meta.get("seed"), int) else {})})
        manifest = {"format": FORMAT, "version": FORMAT_VERSION,
                    "weightspace_version": __version__, "arch": ref,
                    "dataset": ({**data.describe(),
                                 **({"data_root": str(data_root)} if data_root else {})}
                                if data is not None else {}),
                    "settings": {"imported": True}, "models": entries,
                    "summary": summarise(entries)}
        zoo.write(manifest)
    notes = [n for m in models for n in getattr(m, "weightspace_notes", ())]
    return {"out": str(out), "models": len(entries), "arch": ref,
            "dataset": data.name if data is not None else None, "notes": notes,
            **manifest["summary"]}
