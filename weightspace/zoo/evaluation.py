"""``weightspace zoo eval``: every finished model of a zoo evaluated again from its file."""
from __future__ import annotations

import statistics

import torch

from ..checkpoint import read_checkpoint
from .datasets import load_dataset
from .store import Zoo, ZooError, finished
from .train import evaluate


def evaluate_zoo(zoo_dir, split: str = "test", data_root=None, device=None) -> dict:
    """Validation and ``split`` loss / accuracy of every finished model, recomputed from its
    checkpoint (models of one architecture evaluated together), with means and stds."""
    zoo = Zoo(zoo_dir)
    m = zoo.read()
    entries = finished(m)
    if not entries:
        raise ZooError(f"{zoo_dir}: no finished models to evaluate")
    ds = m.get("dataset") or {}
    data = load_dataset(ds.get("name", ""), data_root or ds.get("data_root"))
    splits = list(dict.fromkeys(["val", split]))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    by_arch: dict[str, list] = {}
    for e in entries:
        state, arch, _ = read_checkpoint(zoo.model_path(e["id"]))
        by_arch.setdefault(arch, []).append((e, state))
    results = {}
    for arch, items in by_arch.items():
        states = [s for _, s in items]
        for sp in splits:
            x, y = data[sp]
            losses, accs = evaluate(arch, states, x.to(device), y.to(device))
            for (e, _), lo, a in zip(items, losses, accs):
                results.setdefault(e["id"], {"id": e["id"], "seed": e.get("seed")})
                results[e["id"]].update({f"{sp}_acc": a, f"{sp}_loss": lo})
    models = [results[e["id"]] for e in entries]
    out = {"zoo": str(zoo_dir), "dataset": data.name, "splits": splits, "models": models}
    for sp in splits:
        out[f"mean_{sp}_acc"] = statistics.fmean(r[f"{sp}_acc"] for r in models)
        out[f"std_{sp}_acc"] = statistics.pstdev(r[f"{sp}_acc"] for r in models)
    return out
