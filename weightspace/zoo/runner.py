"""``weightspace zoo train``: plan a zoo, train the missing models, write checkpoints + manifest.

The plan is a pure function of the settings: every grid configuration (a product of the
grid's values, in file order) gets the seeds ``seed0 .. seed0 + models - 1``; the models of
one configuration are cut into chunks of ``chunk_size`` that train together (batched). A
chunk is the unit of work, so the bits of a model depend only on the command, never on how
many processes share the work: under ``accelerate launch`` chunk ``i`` goes to process
``i % num_processes`` and the zoo is identical to a single-process run.

Batched or not: ``batched=None`` (the default) times one training step of both paths on
the zoo's real shapes before anything trains and uses the faster (:func:`.train.choose_path`);
the decision and both timings go into the manifest under ``batching``, one record per
architecture and batch size, so a resumed zoo reuses it instead of measuring again. The
choice depends on the machine's speed, so a zoo that must be bit-identical across machines
should force one path (``batched=True`` / ``False``). Under ``accelerate launch`` process 0
decides and every process follows.

Resuming: a model is finished when the manifest says so, or when its checkpoint is on disk
with this zoo's settings hash in its metadata (the process was killed between the two
writes). Unfinished chunks train again from scratch; already-written models are kept.

(Over 400 lines: planning, resuming, batching decisions and sharding of one zoo run share
its manifest and are read together.)
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from .. import __version__
from ..arch import build, with_options
from ..checkpoint import save_checkpoint
from ..parallel import Progress, dist_state, shard
from .datasets import Dataset, check_fits, load_dataset
from .health import trained_status
from .spawn import check_spawn, init_setting, parent_start, shared_start
from .store import FORMAT, FORMAT_VERSION, Zoo, ZooError, summarise
from .train import (HParams, Start, TrainError, can_batch, choose_path, metrics,
                    snapshot_epochs, train_batched, train_sequential)

FINISHED = ("done", "diverged", "failed")  # failed: trained, but near chance (.health)


# ---------------------------------------------------------------------- grid and plan
def load_grid(path: str | os.PathLike) -> dict:
    """A hyperparameter grid from JSON or TOML: ``{"lr": [1e-3, 1e-2], "act": ["relu"]}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ZooError(f"`grid` {path}: cannot read ({e.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            grid = tomllib.loads(text)
        else:
            grid = json.loads(text)
    except ImportError:
        raise ZooError(f"`grid` {path}: TOML needs Python 3.11+; use JSON") from None
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError both are ValueErrors
        raise ZooError(f"`grid` {path}: cannot parse ({e})") from None
    return check_grid(grid, str(path))


def check_grid(grid, source: str = "grid") -> dict:
    if not isinstance(grid, dict) or not grid:
        raise ZooError(f"{source}: a grid is a non-empty object of name -> value or list")
    out = {}
    for k, v in grid.items():
        vals = v if isinstance(v, list) else [v]
        if not vals or any(isinstance(x, (dict, list)) or x is None for x in vals):
            raise ZooError(f"{source}: {k!r} must be a scalar or a non-empty list of scalars")
        out[k] = vals
    return out


def make_settings(arch: str, dataset: str, hp: HParams, grid: dict | None = None,
                  seed0: int = 0, checkpoints_per_model: int = 1,
                  init: dict | None = None) -> dict:
    """What defines a zoo's population (its identity; the model count may grow later).
    ``init``: where models begin (:func:`.spawn.init_setting`; None: independent seeds,
    recorded only when given so that older zoos keep their settings hash)."""
    if checkpoints_per_model < 1:
        raise ZooError(f"`checkpoints_per_model` must be >= 1, got {checkpoints_per_model}")
    out = {"arch": arch, "dataset": dataset, "hparams": hp.to_dict(),
           "grid": check_grid(grid) if grid else {}, "seed0": int(seed0),
           "checkpoints_per_model": int(checkpoints_per_model)}
    if init:
        out["init"] = dict(init)
    return out


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def configs(settings: dict) -> list[tuple[str, HParams, dict]]:
    """(arch, hparams, recorded hyperparameters) for every point of the grid."""
    grid = settings["grid"]
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        point = dict(zip(keys, values))
        train_part = {k: v for k, v in point.items() if k in HParams.keys()}
        arch_part = {k: v for k, v in point.items() if k not in HParams.keys()}
        try:
            hp = HParams(**{**settings["hparams"], **train_part})
        except TrainError as e:
            raise ZooError(f"grid point {point}: {e}") from None
        arch = with_options(settings["arch"], **arch_part)
        out.append((arch, hp, {**hp.to_dict(), **arch_part}))
    return out


def plan(settings: dict, models: int) -> list[dict]:
    """Manifest entries (status ``pending``) for ``models`` seeds of every configuration."""
    if models < 1:
        raise ZooError(f"`models` must be >= 1, got {models}")
    cfgs = configs(settings)
    entries = []
    for ci, (arch, _, recorded) in enumerate(cfgs):
        for seed in range(settings["seed0"], settings["seed0"] + models):
            mid = f"s{seed:04d}" if len(cfgs) == 1 else f"c{ci:02d}-s{seed:04d}"
            entries.append({"id": mid, "seed": seed, "config": ci, "arch": arch,
                            "hparams": recorded, "status": "pending",
                            "file": f"models/{mid}.safetensors",
                            **({"init": settings["init"]} if settings.get("init") else {})})
    return entries


def chunks(entries: list[dict], size: int | dict[int, int]) -> list[list[dict]]:
    """Consecutive models of one configuration, at most ``size`` per chunk (one size, or a
    size per configuration index)."""
    out = []
    for config, group in itertools.groupby(entries, key=lambda e: e["config"]):
        group = list(group)
        k = size if isinstance(size, int) else size[config]
        out += [group[i:i + k] for i in range(0, len(group), k)]
    return out


def batching_key(arch: str, hp: HParams) -> str:
    """What a batched-or-not decision depends on within one zoo (data shape is fixed)."""
    return f"{arch} batch_size={hp.batch_size}"


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def decide_batching(settings: dict, entries: list[dict], finished: set, cached: dict,
                    batched: bool | None, chunk_size: int, x, y, log=None) -> dict:
    """A batching record per configuration key that still has models to train.

    Forced (``batched`` True/False) records say so; automatic ones come from ``cached``
    (an earlier run of this zoo) or are measured now with :func:`choose_path`. ``log``
    receives the notes (default: standard error).
    """
    log = log or _note
    out: dict[str, dict] = {}
    for ci, (arch, hp, _) in enumerate(configs(settings)):
        todo = [e for e in entries if e["config"] == ci and e["id"] not in finished]
        key = batching_key(arch, hp)
        if not todo or key in out:
            continue
        n = min(chunk_size, sum(e["config"] == ci for e in entries))
        if batched is False:
            out[key] = {"path": "sequential", "reason": "forced (batched=False)", "models": n}
        elif batched is None and cached.get(key, {}).get("models") == n \
                and cached[key].get("reason", "").startswith("measured"):
            out[key] = cached[key]
        elif batched:
            why = can_batch(arch, x, y) if n > 1 else "one model per chunk"
            out[key] = {"path": "sequential" if why else "batched", "models": n,
                        "reason": f"forced (batched=True){'; ' + why if why else ''}"}
            if why:
                log(f"note: {arch} cannot train batched ({why}); training it one model at "
                    f"a time")
        else:
            out[key] = choose_path(arch, n, hp, x, y)
            log(f"note: {arch}: {out[key]['reason']}; training {out[key]['path']}")
    return out



# ---------------------------------------------------------------------- the job
def train_zoo(out, arch: str, dataset: str, hp: HParams, *, models: int, seed0: int = 0,
              grid: dict | None = None, checkpoints_per_model: int = 1, chunk_size: int = 32,
              batched: bool | None = None, force: bool = False, data_root=None,
              allow_code: bool = False, progress: bool = True, log=None,
              shared_init: int | None = None, spawn_epoch: int | None = None) -> dict:
    """Train (or finish) the zoo in ``out``; returns a summary of this run.

    ``batched``: None measures which path is faster (cached in the manifest), True forces
    batched training (where the architecture allows), False one model at a time. ``log``
    receives notes (default: standard error, never the standard output a --json reads).
    ``shared_init``: every model starts from this seed's initialisation (own data order
    and dropout); ``spawn_epoch`` K: every model branches from one parent trained K epochs
    (initialised from ``shared_init``, default ``seed0``). See :mod:`.spawn`.
    """
    if chunk_size < 1:
        raise ZooError(f"`chunk_size` must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    init = init_setting(seed0, shared_init, spawn_epoch)
    settings = make_settings(arch, dataset, hp, grid, seed0, checkpoints_per_model, init)
    entries = plan(settings, models)
    for ci, (_, chp, rec) in enumerate(configs(settings)):
        check_spawn(init, chp, f"configuration {ci} ({rec})" if settings["grid"] else "zoo")
    data = load_dataset(dataset, data_root)
    archs = sorted({e["arch"] for e in entries})
    for a in archs:  # every configuration builds and fits the data before anything is written
        check_fits(build(a, allow_code=allow_code), data, a)
    sh, device = shard(), dist_state().device
    zoo = Zoo(out)
    h = settings_hash(settings)
    x, y = (t.to(device) for t in data["train"])
    cfgs = configs(settings)
    with contextlib.ExitStack() as lock:
        err, decisions = None, {}
        if sh.is_main:
            try:
                lock.enter_context(zoo.writer_lock())
                _prepare(zoo, settings, h, entries, data, data_root, force)
                manifest = zoo.read()
                done = {e["id"] for e in manifest["models"] if e.get("status") in FINISHED}
                decisions = decide_batching(settings, entries, done,
                                            manifest.get("batching", {}), batched, chunk_size,
                                            x, y, log)
                zoo.update(lambda m: m.setdefault("batching", {}).update(decisions))
            except ZooError as e:
                err = str(e)
        err, decisions = sh.broadcast((err, decisions))
        if err:
            raise ZooError(err)
        finished = {e["id"] for e in zoo.read()["models"] if e.get("status") in FINISHED}
        path = {ci: decisions.get(batching_key(a, hp), {}).get("path", "sequential")
                for ci, (a, hp, _) in enumerate(cfgs)}
        sizes = {ci: chunk_size if p == "batched" else 1 for ci, p in path.items()}
        every = chunks(entries, sizes)
        work = [every[i] for i in sh.mine(len(every))
                if not all(e["id"] in finished for e in every[i])]
        starts = _starts(zoo, settings, h, cfgs, data, x, y, sh,
                         {c[0]["config"] for c in every
                          if not all(e["id"] in finished for e in c)})
        bar = Progress(sum(len(c) for c in work), progress and sh.is_main,
                       desc="zoo" if sh.count == 1 else f"zoo [process 0 of {sh.count}]")
        trained = 0
        try:
            for chunk in work:
                ci = chunk[0]["config"]
                _train_chunk(zoo, h, chunk, cfgs[ci][1], data, x, y, device,
                             path[ci] == "batched", finished, checkpoints_per_model, bar,
                             sh.index, starts.get(ci))
                trained += sum(e["id"] not in finished for e in chunk)
        finally:
            bar.close()
        sh.wait()
        summary = zoo.update(_summarise) if sh.is_main else {}
    seconds = time.perf_counter() - t0
    total_trained = sum(sh.gather(trained))
    return {"out": str(out), "trained": total_trained,
            "skipped": len(entries) - total_trained if sh.is_main else None,
            "seconds": seconds, **(summary.get("summary", {}) if summary else {})}


def _prepare(zoo: Zoo, settings: dict, h: str, entries: list[dict], data: Dataset,
             data_root, force: bool) -> None:
    """Create or check the manifest, recover finished files, drop stale temp files."""
    old = zoo.read() if zoo.exists() else None
    if old is not None and old.get("settings_hash") != h:
        if not force:
            diff = _diff(old.get("settings", {}), settings)
            raise ZooError(f"{zoo.root} holds a zoo made with different settings ({diff}); "
                           f"pass `force=True` to discard it and start over, or use another `out_dir`")
        _wipe(zoo)
        old = None
    zoo.clean_temp()
    known = {e["id"]: e for e in old["models"]} if old else {}
    models = [known.pop(e["id"], e) for e in entries] + list(known.values())
    for e in models:
        if e.get("status") not in FINISHED:
            meta = zoo.recover(e["id"], h)
            if meta is not None:  # the file landed, the manifest update did not
                m = meta.get("metrics", {})
                e.update(status=trained_status(m, data.num_classes), metrics=m)
    zoo.write({"format": FORMAT, "version": FORMAT_VERSION, "weightspace_version": __version__,
               "settings": settings, "settings_hash": h, "arch": settings["arch"],
               "dataset": {**data.describe(), **({"data_root": str(data_root)} if data_root else {})},
               "models": models, "batching": old.get("batching", {}) if old else {},
               "summary": old.get("summary", {}) if old else {}})


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    """The settings that differ, one ``name: old here vs new now`` each, nested settings
    named by their path (``hparams.lr``), on one line."""
    parts = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(_diff(a, b, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}: {a!r} here vs {b!r} now")
    return "; ".join(parts) or "unknown format"


def _wipe(zoo: Zoo) -> None:
    """--force: remove what a zoo consists of (and nothing else in the directory)."""
    for p in (zoo.root / "models").glob("*.safetensors"):
        p.unlink()
    shutil.rmtree(zoo.root / "checkpoints", ignore_errors=True)
    shutil.rmtree(zoo.root / "parents", ignore_errors=True)
    zoo.manifest_path.unlink(missing_ok=True)


def _starts(zoo: Zoo, settings: dict, h: str, cfgs, data: Dataset, x, y, sh,
            todo: set[int]) -> dict[int, Start]:
    """Where the models of each configuration with work left begin, by the zoo's ``init``
    setting (none: every seed its own initialisation). Spawn parents are trained (or read
    back) by the main process first; the others read them from disk."""
    init = settings.get("init")
    if not init:
        return {}
    if init["kind"] == "shared":
        return {ci: shared_start(cfgs[ci][0], init) for ci in todo}
    out = {}
    if sh.is_main:
        out = {ci: parent_start(zoo, ci, cfgs[ci][0], cfgs[ci][1], init, h, data.name, x, y)
               for ci in sorted(todo)}
    sh.wait()
    if not sh.is_main:
        out = {ci: parent_start(zoo, ci, cfgs[ci][0], cfgs[ci][1], init, h, data.name, x, y)
               for ci in sorted(todo)}
    return out


def _train_chunk(zoo: Zoo, h: str, chunk: list[dict], hp: HParams, data: Dataset, x, y,
                 device, batched: bool, finished: set, k: int, bar: Progress,
                 process: int = 0, start: Start | None = None) -> None:
    arch, seeds = chunk[0]["arch"], [e["seed"] for e in chunk]
    first = start.epoch if start is not None else 0
    steps = (hp.epochs - first) * math.ceil(len(y) / hp.batch_size)
    snaps: dict[str, list[dict]] = {e["id"]: [] for e in chunk}

    def on_snapshot(epoch, states):
        ms = metrics(arch, states, data, device, splits=("val",))
        for e, s, m in zip(chunk, states, ms):
            if e["id"] in finished:
                continue
            path = zoo.snapshot_path(e["id"], epoch)
            save_checkpoint(path, s, arch, _meta(e, h, data, hp, m, epoch))
            snaps[e["id"]].append({"epoch": epoch, "file": str(path.relative_to(zoo.root)),
                                   **m})

    t = time.perf_counter()
    kw = dict(on_step=lambda losses: bar.step(len(chunk) if batched else 1, steps, losses),
              on_snapshot=on_snapshot, snapshots=snapshot_epochs(hp.epochs, k))
    if batched:
        states = train_batched(arch, seeds, hp, x, y, **kw,
                               starts=None if start is None else [start] * len(seeds))
    else:
        states = [s for seed in seeds
                  for s in train_sequential(arch, seed, hp, x, y, **kw, start=start)]
    ms = metrics(arch, states, data, device)
    seconds = (time.perf_counter() - t) / len(chunk)
    results = {}
    for e, s, m in zip(chunk, states, ms):
        if e["id"] in finished:
            continue
        ok = all(torch.isfinite(v).all() for v in s.values() if v.is_floating_point())
        if ok:
            save_checkpoint(zoo.model_path(e["id"]), s, arch,
                            _meta(e, h, data, hp, m, hp.epochs))
        status = trained_status(m, data.num_classes) if ok else "diverged"
        results[e["id"]] = {"status": status, "metrics": m,
                            "checkpoints": snaps[e["id"]], "batched": batched,
                            "process": process, "seconds": round(seconds, 4)}

    def record(manifest):
        for e in manifest["models"]:
            if e["id"] in results:
                e.update(results[e["id"]])
    zoo.update(record)


def _meta(entry: dict, h: str, data: Dataset, hp: HParams, m: dict, epoch: int) -> dict:
    """Checkpoint metadata: deterministic (no times), enough to recover the manifest entry."""
    return {"seed": entry["seed"], "dataset": data.name, "metrics": m,
            "zoo": {"id": entry["id"], "settings_hash": h, "hparams": entry["hparams"],
                    "epoch": epoch, "of_epochs": hp.epochs,
                    **({"init": entry["init"]} if entry.get("init") else {})}}


def _summarise(manifest: dict) -> None:
    manifest["summary"] = summarise(manifest["models"])
