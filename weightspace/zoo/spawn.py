"""Shared-initialisation zoos, spawning, and training continued from a saved state.

A zoo's ``init`` setting says where its models begin:

* independent (the default, no ``init`` key): model ``s`` starts from seed ``s``'s
  initialisation;
* ``{"kind": "shared", "seed": S}``: every model starts from seed ``S``'s initialisation
  and keeps its own data order and dropout (drawn from its own seed);
* ``{"kind": "spawn", "seed": S, "spawn_epoch": K}``: one *parent* (seed ``S``'s
  initialisation and data order) trains ``K`` epochs of the recipe; every model branches
  from it, weights and optimizer state, and trains the remaining epochs with its own data
  order and dropout (Frankle et al. 2020, "Linear mode connectivity and the lottery
  ticket hypothesis"). The parent is kept in ``ZOO/parents/`` so a resumed zoo branches
  from the same one.

Mixtures of models that share an initialisation are far more accurate than mixtures of
independent ones, which is what a generator that samples mixtures needs (issue 24).

A state to continue from is a :class:`~.train.Start`: weights, epochs done, optimizer state.
:func:`save_start` / :func:`load_start` keep one on disk (the checkpoint, and its optimizer
state next to it as ``<name>.optim.safetensors``); :func:`continue_training` continues a
zoo model (or any checkpoint the zoo wrote) from its file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..checkpoint import CheckpointError, read_checkpoint, save_checkpoint, save_tensors
from .hparams import HParams
from .store import Zoo, ZooError
from .train import Start, init_model, train_sequential_from

INIT_KINDS = ("independent", "shared", "spawn")
_SEP = "::"  # optimizer tensors are stored as "<parameter>::<field>"


def init_setting(seed0: int, shared_init: int | None, spawn_epoch: int | None) -> dict | None:
    """The zoo's ``init`` setting (None: independent seeds, the settings of older zoos)."""
    if spawn_epoch is not None:
        if spawn_epoch < 1:
            raise ZooError(f"spawn_epoch must be >= 1, got {spawn_epoch}")
        return {"kind": "spawn", "seed": int(seed0 if shared_init is None else shared_init),
                "spawn_epoch": int(spawn_epoch)}
    if shared_init is not None:
        if shared_init < 0:
            raise ZooError(f"shared_init must be a seed >= 0, got {shared_init}")
        return {"kind": "shared", "seed": int(shared_init)}
    return None


def check_spawn(init: dict | None, hp: HParams, where: str) -> None:
    """A spawn epoch must leave epochs to train after the branch."""
    if init and init["kind"] == "spawn" and init["spawn_epoch"] >= hp.epochs:
        raise ZooError(f"{where}: spawn_epoch {init['spawn_epoch']} must be below the "
                       f"recipe's epochs ({hp.epochs}): the models branch from the parent "
                       f"and train the remaining epochs")


def optim_path(path: str | Path) -> Path:
    """Where a checkpoint's optimizer state lives: next to it."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".optim.safetensors")


def save_start(path: str | Path, start: Start, arch: str, meta: dict) -> None:
    """Write ``start``: the checkpoint (``meta["zoo"]["epoch"]`` = its epoch) and, when it
    has one, its optimizer state, optimizer first (a checkpoint on disk means both are)."""
    if start.optimizer is not None:
        flat = {f"{name}{_SEP}{field}": v for name, fields in start.optimizer.items()
                for field, v in fields.items()}
        save_tensors(optim_path(path), flat, {"weightspace.optimizer_of": Path(path).name})
    zoo = {**meta.get("zoo", {}), "epoch": start.epoch}
    save_checkpoint(path, start.state, arch, {**meta, "zoo": zoo})


def load_start(path: str | Path) -> tuple[Start, str, dict]:
    """``(Start, arch, meta)`` from a checkpoint the zoo wrote: weights, the epoch its
    metadata records (0 if none), and the optimizer state if saved next to it (else None:
    training continues with a fresh optimizer)."""
    state, arch, meta = read_checkpoint(path)
    epoch = meta.get("zoo", {}).get("epoch", 0) if isinstance(meta.get("zoo"), dict) else 0
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CheckpointError(f"{path}: metadata zoo.epoch must be an integer >= 0, got "
                              f"{epoch!r}")
    opt = None
    op = optim_path(path)
    if op.is_file():
        opt = {}
        try:
            flat = load_file(str(op))
        except Exception as e:  # noqa: BLE001 - a damaged file: one line naming it
            raise CheckpointError(f"{op}: not a readable optimizer state ({e})") from None
        for key, v in flat.items():
            name, _, field = key.rpartition(_SEP)
            if not name or name not in state:
                raise CheckpointError(f"{op}: tensor {key!r} names no parameter of {path}")
            opt.setdefault(name, {})[field] = v
    return Start(state, epoch, opt), arch, meta


def continue_training(path: str | Path, data, until: int | None = None,
                      hp: HParams | None = None, seed: int | None = None,
                      device="cpu") -> Start:
    """Continue the model saved at ``path`` (a zoo checkpoint: a model, a snapshot or a
    parent) up to epoch ``until`` of its recipe (default: the last), one model at a time.

    The recipe (``hp``) and the seed of its data order (``seed``) default to those its
    metadata records; its data order and learning-rate schedule continue from the epoch
    it was saved at, its optimizer from the state saved next to it (a fresh one if none).
    ``data`` is the :class:`~.datasets.Dataset`. Returns the new :class:`Start`."""
    start, arch, meta = load_start(path)
    zoo = meta.get("zoo", {}) if isinstance(meta.get("zoo"), dict) else {}
    if hp is None:
        rec = zoo.get("hparams", {})
        if not isinstance(rec, dict):
            raise CheckpointError(f"{path}: metadata zoo.hparams must be an object")
        hp = HParams(**{k: v for k, v in rec.items() if k in HParams.keys()})
    if seed is None:
        seed = meta.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise CheckpointError(f"{path}: its metadata records no seed; pass seed")
    x, y = (t.to(device) for t in data["train"])
    target = hp.epochs if until is None else until
    states, opts = train_sequential_from(arch, seed, hp, x, y, start=start, until=target)
    return Start(states[0], target, opts[0])


def parent_path(zoo: Zoo, config: int) -> Path:
    return zoo.root / "parents" / f"c{config:02d}.safetensors"


def parent_start(zoo: Zoo, config: int, arch: str, hp: HParams, init: dict, h: str,
                 data_name: str, x: torch.Tensor, y: torch.Tensor) -> Start:
    """The spawn parent of configuration ``config``: read back when this zoo (settings hash
    ``h``) already trained it, else trained now (sequentially, seed ``init["seed"]``, to
    ``init["spawn_epoch"]``) and saved."""
    path = parent_path(zoo, config)
    if path.is_file():
        try:
            start, _, meta = load_start(path)
            if meta.get("zoo", {}).get("settings_hash") == h and start.optimizer is not None \
                    and start.epoch == init["spawn_epoch"]:
                return start
        except CheckpointError:
            pass  # a damaged parent: train it again
    seed, k = init["seed"], init["spawn_epoch"]
    states, opts = train_sequential_from(arch, seed, hp, x, y, until=k)
    start = Start(states[0], k, opts[0])
    save_start(path, start, arch, {"seed": seed, "dataset": data_name,
                                   "zoo": {"id": f"parent-c{config:02d}", "settings_hash": h,
                                           "hparams": hp.to_dict(), "of_epochs": hp.epochs,
                                           "init": init}})
    return start


def shared_start(arch: str, init: dict) -> Start:
    """Where every model of a shared-initialisation zoo begins."""
    return Start(init_model(arch, init["seed"]).state_dict())


__all__ = ["INIT_KINDS", "continue_training", "init_setting", "load_start", "parent_start",
           "save_start", "shared_start"]
