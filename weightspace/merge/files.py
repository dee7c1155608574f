"""The verbs on checkpoint files: ``lmc`` of a pair, the barrier matrix of a zoo, ``merge``.

Each checks its output before any work, loads and validates the checkpoints, runs the
library function on state dicts and writes its results atomically; the CLI only parses and
prints.
"""
from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

from ..checkpoint import (atomic_write_text, check_checkpoint_out, load_model, load_models,
                          peak_rss_mb, write_model)
from ..device import placed, resolve_device
from ..errors import check_output
from ..functional import loss_acc
from ..symmetry import spec as discover_spec
from ..symmetry.cache import zoo_spec
from ..zoo.datasets import dataset_of
from ..zoo.store import Zoo, ZooError, finished
from .lmc import LMCError, heatmap, lmc, plot
from .merging import merge
from .registry import get_merge_method

LMC_FILES = ("lmc.json", "lmc.png")
MATRIX_FILES = ("barriers.json", "barriers_unaligned.png", "barriers_aligned.png")


def _report_dir(out_dir, names) -> Path:
    out = check_output(out_dir, "dir")
    for name in names:
        check_output(out / name, "file")
    return out


def lmc_checkpoints(a, b, out_dir, align: str = "wm", points: int = 25, bn: str = "reset",
                    arch: str | None = None, dataset: str | None = None, data_root=None,
                    seed: int = 0, restarts: int = 1, device="auto") -> dict:
    """Barriers of A and B before and after alignment, with diagnostics; writes
    ``lmc.json`` and ``lmc.png`` to ``out_dir`` and returns the result (summary first).
    ``device``: where the work runs (:mod:`weightspace.device`)."""
    out = _report_dir(out_dir, LMC_FILES)
    dev = resolve_device(device)
    ma, mb = load_models([a, b], arch)
    data = dataset_of(ma, dataset, data_root, why="barriers are measured on data")
    spec = discover_spec(ma.weightspace_arch)
    t = time.perf_counter()
    res = lmc(spec, ma, ma.state_dict(), mb.state_dict(), data, align, points, bn, seed=seed,
              restarts=restarts, device=dev)
    res["seconds"] = time.perf_counter() - t
    res["device"] = str(dev)
    res["a"], res["b"], res["dataset"] = str(a), str(b), data.name
    res["load_notes"] = [n for m in (ma, mb) for n in m.weightspace_notes]
    res["peak_rss_mb"] = peak_rss_mb()
    final = res.get("aligned", res["unaligned"])
    summary = {"loss_barrier": final["test_loss_barrier"],
               "acc_barrier": final["test_acc_barrier"],
               "train_loss_barrier": final["train_loss_barrier"],
               "train_acc_barrier": final["train_acc_barrier"],
               "loss_barrier_unaligned": res["unaligned"]["test_loss_barrier"],
               "acc_barrier_unaligned": res["unaligned"]["test_acc_barrier"],
               "t": final["t"], "test_loss": final["test_loss"], "test_acc": final["test_acc"]}
    res = {**summary, **res}
    atomic_write_text(out / "lmc.json", json.dumps(res, indent=1) + "\n")
    plot(res, out / "lmc.png")
    return res


def barrier_matrix(zoo_dir, out_dir, align: str = "wm", points: int = 25, bn: str = "reset",
                   pairs: int | str = "all", dataset: str | None = None, data_root=None,
                   seed: int = 0, restarts: int = 1, device="auto") -> dict:
    """The test-loss barrier of every pair of a zoo's finished models (or ``pairs`` random
    pairs), unaligned and aligned; writes ``barriers.json`` and heatmaps to ``out_dir``.
    ``device``: where the work runs (:mod:`weightspace.device`)."""
    out = _report_dir(out_dir, MATRIX_FILES)
    dev = resolve_device(device)
    zoo = Zoo(zoo_dir)
    ids = [e["id"] for e in finished(zoo.read())]
    if len(ids) < 2:
        raise ZooError(f"{zoo_dir}: need at least two finished models")
    todo = list(itertools.combinations(range(len(ids)), 2))
    if pairs != "all":
        if not isinstance(pairs, int) or pairs < 1:
            raise LMCError(f"pairs must be 'all' or a positive number, got {pairs!r}")
        todo = sorted(random.Random(seed).sample(todo, min(pairs, len(todo))))
    models = load_models([zoo.model_path(i) for i in ids])
    data = dataset_of(models[0], dataset, data_root, why="barriers are measured on data")
    spec = zoo_spec(zoo.root, models[0].weightspace_arch, str(zoo.model_path(ids[0])),
                    models[0].state_dict())
    net, data, states = placed(dev, models[0], data, [m.state_dict() for m in models])
    n = len(ids)
    before = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    after = [[0.0 if i == j else None for j in range(n)] for i in range(n)]
    t = time.perf_counter()
    for i, j in todo:
        res = lmc(spec, net, states[i], states[j], data, align, points, bn, seed=seed,
                  restarts=restarts)
        before[i][j] = before[j][i] = res["unaligned"]["test_loss_barrier"]
        if "aligned" in res:
            after[i][j] = after[j][i] = res["aligned"]["test_loss_barrier"]
    result = {"zoo": str(zoo_dir), "ids": ids, "pairs": [[ids[i], ids[j]] for i, j in todo],
              "align": align, "bn": bn, "points": points,
              "test_loss_barrier_unaligned": before,
              "test_loss_barrier_aligned": after if align != "none" else None,
              "seconds": time.perf_counter() - t, "device": str(dev),
              "peak_rss_mb": peak_rss_mb()}
    atomic_write_text(out / "barriers.json", json.dumps(result, indent=1) + "\n")
    heatmap(before, ids, out / "barriers_unaligned.png", "test loss barrier, unaligned")
    if align != "none":
        heatmap(after, ids, out / "barriers_aligned.png", f"test loss barrier, {align}")
    return result


def merge_checkpoints(paths, out, method: str = "mergemany", post: str = "none",
                      arch: str | None = None, dataset: str | None = None, data_root=None,
                      seed: int = 0, restarts: int = 1, device="auto", dtype=None,
                      max_shard_size=None, stream: bool = True, **options) -> dict:
    """Merge the checkpoints ``paths`` (any layout) with ``method`` (its ``options``) and
    ``post`` (``none`` / ``reset`` / ``repair``), write the merged checkpoint to ``out`` (one
    ``.safetensors`` file or a Hub directory; the first input's precision unless ``dtype``),
    and report test accuracies when a dataset is known. ``mean`` without post-processing
    streams (``stream=False``: loads every model, as the other methods do): one tensor per
    input in memory at a time. ``device``: where the work runs
    (:mod:`weightspace.device`)."""
    check_checkpoint_out(out, dtype, max_shard_size)
    if stream and method == "mean" and post == "none" and not options:
        from .streaming import stream_mean
        rep = stream_mean(paths, out, arch, dtype, max_shard_size)
        return _endpoint_accs(rep, paths, out, arch, dataset, data_root)
    dev = resolve_device(device)
    models = load_models(paths, arch)
    data = dataset_of(models[0], dataset, data_root,
                      required=get_merge_method(method).needs_data or post != "none",
                      why=f"merge method {method!r} / post-processing {post!r} needs data")
    spec = discover_spec(models[0].weightspace_arch)
    net, data, states = placed(dev, models[0], data, [m.state_dict() for m in models])
    merged, rep = merge(spec, net, states, method, post, data, seed=seed,
                        names=[str(p) for p in paths], restarts=restarts, **options)
    if data is not None:
        x, y = data["test"]
        rep["endpoint_test_accs"] = [loss_acc(net, x, y, state=s)[1] for s in states]
        rep["merged_test_acc"] = loss_acc(net, x, y, state=merged)[1]
        rep["dataset"] = data.name
    else:
        rep["endpoint_test_accs"], rep["merged_test_acc"] = None, None
    meta = {"merged": {"sources": [str(p) for p in paths], "method": method, "post": post},
            "dataset": data.name if data is not None else None}
    rep.update(write_model(out, merged, models[0], meta, dtype, max_shard_size,
                           card=merge_card(paths, method, post, options)))
    rep["out"], rep["device"] = str(out), str(dev)
    rep["load_notes"] = [n for m in models for n in m.weightspace_notes]
    rep["peak_rss_mb"] = peak_rss_mb()
    return rep


def merge_card(paths, method: str, post: str, options: dict) -> str:
    """The model card's body for a merge: inputs, method, parameters."""
    lines = [f"Merged with `{method}` (post-processing: {post}) from:", ""]
    lines += [f"- `{p}`" for p in paths]
    if options:
        lines += ["", "Parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(options.items()))]
    return "\n".join(lines)


def _endpoint_accs(rep: dict, paths, out, arch, dataset, data_root) -> dict:
    """Test accuracy of each input and of the written merge, one model in memory at a time
    (skipped, as in the in-memory path, when no dataset is known)."""
    rep["endpoint_test_accs"], rep["merged_test_acc"] = None, None
    name = dataset or rep.get("dataset")
    if not name:
        return rep
    from ..zoo.datasets import load_dataset
    data = load_dataset(name, data_root)
    x, y = data["test"]
    accs = []
    for p in paths:
        accs.append(loss_acc(load_model(p, arch=arch), x, y)[1])
    rep["endpoint_test_accs"] = accs
    rep["merged_test_acc"] = loss_acc(load_model(out), x, y)[1]
    rep["dataset"] = data.name
    rep["peak_rss_mb"] = peak_rss_mb()
    return rep
