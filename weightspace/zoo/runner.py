"""``weightspace zoo train``: plan a zoo, train the missing models, write checkpoints + manifest.

The plan is a pure function of the settings: every grid configuration (a product of the
grid's values, in file order) gets the seeds ``seed0 .. seed0 + models - 1``; the models of
one configuration are cut into chunks of ``chunk_size`` that train together (batched). A
chunk is the unit of work, so the bits of a model depend only on the command, never on how
many processes share the work: under ``accelerate launch`` chunk ``i`` goes to process
``i % num_processes`` and the zoo is identical to a single-process run.

Resuming: a model is finished when the manifest says so, or when its checkpoint is on disk
with this zoo's settings hash in its metadata (the process was killed between the two
writes). Unfinished chunks train again from scratch; already-written models are kept.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from .. import __version__
from ..arch import build, with_options
from ..checkpoint import save_checkpoint
from .datasets import Dataset, check_fits, load_dataset
from .store import FORMAT, FORMAT_VERSION, Zoo, ZooError
from .train import (HParams, TrainError, can_batch, metrics, snapshot_epochs, train_batched,
                    train_sequential)

FINISHED = ("done", "diverged")


# ---------------------------------------------------------------------- grid and plan
def load_grid(path: str | os.PathLike) -> dict:
    """A hyperparameter grid from JSON or TOML: ``{"lr": [1e-3, 1e-2], "act": ["relu"]}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ZooError(f"--grid {path}: cannot read ({e.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            grid = tomllib.loads(text)
        else:
            grid = json.loads(text)
    except ImportError:
        raise ZooError(f"--grid {path}: TOML needs Python 3.11+; use JSON") from None
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError both are ValueErrors
        raise ZooError(f"--grid {path}: cannot parse ({e})") from None
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
                  seed0: int = 0, checkpoints_per_model: int = 1) -> dict:
    """What defines a zoo's population (its identity; the model count may grow later)."""
    if checkpoints_per_model < 1:
        raise ZooError(f"--checkpoints-per-model must be >= 1, got {checkpoints_per_model}")
    return {"arch": arch, "dataset": dataset, "hparams": hp.to_dict(),
            "grid": check_grid(grid) if grid else {}, "seed0": int(seed0),
            "checkpoints_per_model": int(checkpoints_per_model)}


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
        raise ZooError(f"--models must be >= 1, got {models}")
    cfgs = configs(settings)
    entries = []
    for ci, (arch, _, recorded) in enumerate(cfgs):
        for seed in range(settings["seed0"], settings["seed0"] + models):
            mid = f"s{seed:04d}" if len(cfgs) == 1 else f"c{ci:02d}-s{seed:04d}"
            entries.append({"id": mid, "seed": seed, "config": ci, "arch": arch,
                            "hparams": recorded, "status": "pending",
                            "file": f"models/{mid}.safetensors"})
    return entries


def chunks(entries: list[dict], size: int) -> list[list[dict]]:
    """Consecutive models of one configuration, at most ``size`` per chunk."""
    out = []
    for _, group in itertools.groupby(entries, key=lambda e: e["config"]):
        group = list(group)
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return out


# ---------------------------------------------------------------------- processes
def dist_state():
    """accelerate's process state: one process here, or one per ``accelerate launch`` rank."""
    from accelerate import PartialState
    cpu = (not torch.cuda.is_available()
           or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))
    return PartialState(cpu=cpu)


def _broadcast(state, obj):
    if state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


# ---------------------------------------------------------------------- progress
class Progress:
    """tqdm bar over models (fractional while a chunk trains), loss and models/min."""

    def __init__(self, total: int, enabled: bool, desc: str = "zoo"):
        self.bar = None
        self.start = time.perf_counter()
        self.done = 0.0
        self.calls = 0
        if enabled and total > 0:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit="model", dynamic_ncols=True,
                            mininterval=0.5,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} models "
                                       "[{elapsed}<{remaining}{postfix}]")

    def step(self, models: int, steps: int, losses: torch.Tensor):
        if self.bar is None:
            return
        self.done += models / steps
        self.calls += 1
        self.bar.update(models / steps)
        if self.calls % 25 == 1:  # reading the loss syncs a GPU: not every step
            rate = 60 * self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"loss {float(losses.float().nanmean()):.4f}, "
                                     f"{rate:.1f} models/min", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------- the job
def train_zoo(out, arch: str, dataset: str, hp: HParams, *, models: int, seed0: int = 0,
              grid: dict | None = None, checkpoints_per_model: int = 1, chunk_size: int = 32,
              batched: bool = True, force: bool = False, data_root=None,
              allow_code: bool = False, progress: bool = True, log=print) -> dict:
    """Train (or finish) the zoo in ``out``; returns a summary of this run."""
    if chunk_size < 1:
        raise ZooError(f"--chunk-size must be >= 1, got {chunk_size}")
    t0 = time.perf_counter()
    settings = make_settings(arch, dataset, hp, grid, seed0, checkpoints_per_model)
    entries = plan(settings, models)
    data = load_dataset(dataset, data_root)
    archs = sorted({e["arch"] for e in entries})
    for a in archs:  # every configuration builds and fits the data before anything is written
        check_fits(build(a, allow_code=allow_code), data, a)
    state = dist_state()
    zoo = Zoo(out)
    h = settings_hash(settings)
    with contextlib.ExitStack() as lock:
        err = None
        if state.is_main_process:
            try:
                lock.enter_context(zoo.writer_lock())
                _prepare(zoo, settings, h, entries, data, data_root, force)
            except ZooError as e:
                err = str(e)
        err = _broadcast(state, err)
        if err:
            raise ZooError(err)
        finished = {e["id"] for e in zoo.read()["models"] if e.get("status") in FINISHED}
        work = [c for i, c in enumerate(chunks(entries, chunk_size if batched else 1))
                if i % state.num_processes == state.process_index
                and not all(e["id"] in finished for e in c)]
        bar = Progress(sum(len(c) for c in work), progress and state.is_main_process,
                       desc="zoo" if state.num_processes == 1 else
                       f"zoo [process 0 of {state.num_processes}]")
        x, y = (t.to(state.device) for t in data["train"])
        cfgs = configs(settings)
        reasons: dict[str, str | None] = {}
        trained = 0
        try:
            for chunk in work:
                a = chunk[0]["arch"]
                if batched and a not in reasons:
                    reasons[a] = can_batch(a, x, y)
                    if reasons[a]:
                        log(f"note: {a} cannot train batched ({reasons[a]}); training it "
                            f"one model at a time")
                use_batched = batched and not reasons.get(a)
                _train_chunk(zoo, h, chunk, cfgs[chunk[0]["config"]][1], data, x, y,
                             state.device, use_batched, finished, checkpoints_per_model, bar,
                             state.process_index)
                trained += sum(e["id"] not in finished for e in chunk)
        finally:
            bar.close()
        state.wait_for_everyone()
        summary = zoo.update(_summarise) if state.is_main_process else {}
    seconds = time.perf_counter() - t0
    total_trained = int(_broadcast_sum(state, trained))
    return {"out": str(out), "trained": total_trained,
            "skipped": len(entries) - total_trained if state.is_main_process else None,
            "seconds": seconds, **(summary.get("summary", {}) if summary else {})}


def _broadcast_sum(state, value: int) -> int:
    if state.num_processes == 1:
        return value
    from accelerate.utils import gather_object
    return sum(gather_object([value]))


def _prepare(zoo: Zoo, settings: dict, h: str, entries: list[dict], data: Dataset,
             data_root, force: bool) -> None:
    """Create or check the manifest, recover finished files, drop stale temp files."""
    old = zoo.read() if zoo.exists() else None
    if old is not None and old.get("settings_hash") != h:
        if not force:
            diff = _diff(old.get("settings", {}), settings)
            raise ZooError(f"{zoo.root} holds a zoo made with different settings ({diff}); "
                           f"pass --force to discard it and start over, or use another --out")
        _wipe(zoo)
        old = None
    zoo.clean_temp()
    known = {e["id"]: e for e in old["models"]} if old else {}
    models = [known.pop(e["id"], e) for e in entries] + list(known.values())
    for e in models:
        if e.get("status") not in FINISHED:
            meta = zoo.recover(e["id"], h)
            if meta is not None:  # the file landed, the manifest update did not
                e.update(status="done", metrics=meta.get("metrics", {}))
    zoo.write({"format": FORMAT, "version": FORMAT_VERSION, "weightspace_version": __version__,
               "settings": settings, "settings_hash": h, "arch": settings["arch"],
               "dataset": {**data.describe(), **({"data_root": str(data_root)} if data_root else {})},
               "models": models,
               "summary": old.get("summary", {}) if old else {}})


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} here vs {new.get(k)!r} now" for k in keys
             if old.get(k) != new.get(k)]
    return "; ".join(parts) or "unknown format"


def _wipe(zoo: Zoo) -> None:
    """--force: remove what a zoo consists of (and nothing else in the directory)."""
    for p in (zoo.root / "models").glob("*.safetensors"):
        p.unlink()
    shutil.rmtree(zoo.root / "checkpoints", ignore_errors=True)
    zoo.manifest_path.unlink(missing_ok=True)


def _train_chunk(zoo: Zoo, h: str, chunk: list[dict], hp: HParams, data: Dataset, x, y,
                 device, batched: bool, finished: set, k: int, bar: Progress,
                 process: int = 0) -> None:
    arch, seeds = chunk[0]["arch"], [e["seed"] for e in chunk]
    steps = hp.epochs * math.ceil(len(y) / hp.batch_size)
    snaps: dict[str, list[dict]] = {e["id"]: [] for e in chunk}

    def on_snapshot(epoch, states):
        ms = metrics(arch, states, data, device, splits=("val",), batched=batched)
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
        states = train_batched(arch, seeds, hp, x, y, **kw)
    else:
        states = [s for seed in seeds for s in train_sequential(arch, seed, hp, x, y, **kw)]
    ms = metrics(arch, states, data, device, batched=batched)
    seconds = (time.perf_counter() - t) / len(chunk)
    results = {}
    for e, s, m in zip(chunk, states, ms):
        if e["id"] in finished:
            continue
        ok = all(torch.isfinite(v).all() for v in s.values() if v.is_floating_point())
        if ok:
            save_checkpoint(zoo.model_path(e["id"]), s, arch,
                            _meta(e, h, data, hp, m, hp.epochs))
        results[e["id"]] = {"status": "done" if ok else "diverged", "metrics": m,
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
                    "epoch": epoch, "of_epochs": hp.epochs}}


def _summarise(manifest: dict) -> None:
    done = [e for e in manifest["models"] if e.get("status") == "done"]
    s = {"total": len(manifest["models"]), "done": len(done),
         "diverged": sum(e.get("status") == "diverged" for e in manifest["models"])}
    for split in ("train", "val", "test"):
        accs = [e["metrics"][f"{split}_acc"] for e in done if f"{split}_acc" in e["metrics"]]
        if accs:
            s[f"mean_{split}_acc"] = statistics.fmean(accs)
            s[f"std_{split}_acc"] = statistics.pstdev(accs)
    manifest["summary"] = s
