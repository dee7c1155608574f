"""Canonicalize a whole zoo: every model into one basin, stored so each original is recoverable.

* ``reference=ID`` aligns every model to that model (any method).
* ``reference="barycenter"`` with ``am``: the barycenter of the aligned models' *features*
  (:mod:`.feature_barycenter`); the weight-space mean is a poor model whose activations
  make a drifting target.
* ``reference="barycenter"`` with another method that reads data (``ste``): the
  barycenter is a model one can run only once BatchNorm is recalibrated, so each round
  takes the mean of the currently aligned zoo, recalibrates its BatchNorm on train data
  (:func:`data_barycenter_perms`), and aligns every model to that mean model by the
  method (activations of the mean model on train data); repeat until no permutation
  changes (at most ``max_rounds``).
* ``reference="barycenter"`` (MergeMany-style, weight-space methods): starting from every
  model aligned to the first one, every model is matched to the mean of all the *others*
  (given the current aligned zoo); repeat until the
  summed squared L2 distance to the barycenter stops decreasing (relative change of the RMS
  distance below ``tol``; the best round is kept).
  Given the current barycenter the per-model matches are independent, so under
  ``accelerate launch`` they are sharded across processes with results identical to one
  process. Within a process, weight matching on a plain spec matches the whole shard at
  once (:mod:`.batched`: stacked costs, one batch of LAPs per step); every model of a round
  visits the groups in one order, so a model's result does not depend on its shard.

The output is a new zoo directory (the input is never touched): the same manifest with a
``canonicalization`` record, ``models/<id>.safetensors`` holding the permuted weights (same
function), ``perms/<id>.safetensors`` holding the permutation applied to each model and
``spec.json``; :func:`restore` applies the inverse and returns the original bitwise.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import __version__
from ..checkpoint import atomic_write_text, read_checkpoint, save_checkpoint, save_tensors
from ..device import placed, resolve_device
from ..errors import safe_name
from ..functional import check_compatible, mean_states
from ..parallel import LOCAL, Progress, Shard, gather_perms, shard as current_shard
from ..symmetry import apply, identity_perms, invert
from ..symmetry.cache import zoo_spec
from ..symmetry.structure import Spec, parse_member
from ..zoo.datasets import load_dataset
from ..zoo.store import Zoo, ZooError, finished
from .batched import LapCarry, batched_weight_matching, stacked_apply, supports
from .feature_barycenter import feature_barycenter_perms
from .matching import l2_distance
from .methods import METHODS, WEIGHT_SPACE_METHODS, align, get_align_method
from .restarts import align_with_restarts


def _sq_to(states: list[dict], center: dict) -> float:
    return sum(l2_distance(s, center) ** 2 for s in states)


def canonicalize_zoo(zoo_dir, out_dir, method: str = "wm", reference: str = "barycenter",
                     data_root=None, seed: int = 0, max_rounds: int = 20, tol: float = 1e-3,
                     force: bool = False, progress: bool = True, restarts: int = 1,
                     device="auto", **method_kw) -> dict:
    """Write the canonicalized copy of ``zoo_dir`` to ``out_dir``; returns a report.

    ``restarts`` > 1: the barycenter from that many seeds, the one with the lowest RMS
    distance kept; with ``reference=ID`` each model's match is the best of that many (lowest
    train midpoint loss when the method reads data, else lowest L2). ``device``: where
    the matching runs (:mod:`weightspace.device`; ``"auto"``: CUDA when there is one)."""
    dst = Zoo(out_dir)
    if Path(out_dir).resolve() == Path(zoo_dir).resolve():
        raise ZooError("`out_dir` must differ from the input zoo (the input is never modified)")
    if dst.exists() and not force:
        raise ZooError(f"{out_dir} already holds a zoo; pass `force=True` to replace it")
    c = canonical_states(zoo_dir, method, reference, data_root, seed, max_rounds, tol,
                         progress, restarts, device, **method_kw)
    return write_canonical(c, zoo_dir, out_dir, force)


def write_canonical(c: Canonical, zoo_dir, out_dir, force: bool = False) -> dict:
    """Write a zoo canonicalized in memory (:func:`canonical_states` of ``zoo_dir``, e.g.
    the one the mixability probe measured) to ``out_dir``; returns its report."""
    src, dst = Zoo(zoo_dir), Zoo(out_dir)
    if c.report["main_process"]:
        _write(src, dst, c.manifest, c.entries, c.loaded, c.states, c.perms, c.spec,
               c.report, force)
    current_shard().wait()
    return c.report


@dataclass
class Canonical:
    """A zoo canonicalized in memory: its manifest and finished entries, the checkpoints as
    read (``loaded``: state, arch, meta), the aligned ``states`` (on the device), the
    permutation of each model, the spec, the model and data the method used (None when it
    reads none), and the report."""

    manifest: dict
    entries: list[dict]
    loaded: list
    states: list[dict]
    perms: dict
    spec: Spec
    model: object
    data: object
    report: dict


def canonical_states(zoo_dir, method: str = "wm", reference: str = "barycenter",
                     data_root=None, seed: int = 0, max_rounds: int = 20, tol: float = 1e-3,
                     progress: bool = True, restarts: int = 1, device="auto",
                     **method_kw) -> Canonical:
    """:func:`canonicalize_zoo` without writing: the zoo's finished models permuted into
    one basin, in memory (the mixability probe reads them)."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ZooError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    src = Zoo(zoo_dir)
    manifest = src.read()
    entries = finished(manifest)
    if len(entries) < 2:
        raise ZooError(f"{zoo_dir}: need at least two finished models, found {len(entries)}")
    ids = [e["id"] for e in entries]
    if reference != "barycenter" and reference not in ids:
        raise ZooError(f"`reference` {reference!r}: no finished model with that id in "
                       f"{zoo_dir} (ids: {', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''})")
    dev = resolve_device(device)
    loaded = [read_checkpoint(src.model_path(i)) for i in ids]
    states = [s for s, _, _ in loaded]
    check_compatible(states, [str(src.model_path(i)) for i in ids])
    spec = zoo_spec(src.root, loaded[0][1], str(src.model_path(ids[0])), states[0])
    model = None
    data = None
    if get_align_method(method).needs_data:
        from ..arch import build
        model = build(loaded[0][1])
        ds = manifest.get("dataset", {})
        data = load_dataset(ds.get("name", ""), data_root or ds.get("data_root"))
    states, model, data = placed(dev, states, model, data)
    sh = current_shard()
    before_center = mean_states(states)
    l2_before = _sq_to(states, before_center)
    t_match = time.perf_counter()
    if reference == "barycenter" and method == "am":
        runs = [feature_barycenter_perms(spec, model, states, data, seed + 7919 * k,
                                         max_rounds, progress, sh, **method_kw)
                for k in range(restarts)]
        perms, rounds, history = min(runs, key=lambda r: min(r[2]))
        if restarts > 1:
            history = {"kept": history, "restart_rms": [min(r[2]) for r in runs]}
    elif reference == "barycenter" and method not in WEIGHT_SPACE_METHODS:
        runs = [data_barycenter_perms(spec, model, states, data, method, seed + 7919 * k,
                                      max_rounds, progress, sh, **method_kw)
                for k in range(restarts)]
        perms, rounds, history = min(runs, key=lambda r: min(r[2]))
        if restarts > 1:
            history = {"kept": history, "restart_rms": [min(r[2]) for r in runs]}
    elif reference == "barycenter":
        runs = [barycenter_perms(spec, states, method, seed + 7919 * k, max_rounds, tol,
                                 progress, sh, **method_kw) for k in range(restarts)]
        perms, rounds, history = min(runs, key=lambda r: min(r[2]))
        if restarts > 1:
            history = {"kept": history, "restart_rms": [min(r[2]) for r in runs]}
    else:
        r = ids.index(reference)
        mine = {}
        bar = Progress(len(ids), progress and sh.is_main, desc=f"align to {reference}")
        for i in sh.mine(len(ids)):
            if i == r:
                continue
            mine[i], _, _, _ = align_with_restarts(spec, states[r], states[i], method,
                                                   restarts, model=model, data=data,
                                                   seed=seed + i, **method_kw)
            bar.step(1, 1, torch.tensor(0.0))
        bar.close()
        perms = gather_perms(sh, mine)
        perms[r] = identity_perms(spec)
        rounds, history = 1, []
    t_match = time.perf_counter() - t_match
    aligned = [apply(spec, perms[i], s) for i, s in enumerate(states)]
    after_center = mean_states(aligned)
    l2_after = _sq_to(aligned, after_center)
    report = {"method": method, "reference": reference, "models": len(ids), "rounds": rounds,
              "l2_to_barycenter_before": (l2_before / len(ids)) ** 0.5,
              "l2_to_barycenter_after": (l2_after / len(ids)) ** 0.5,
              "history": history, "seconds": time.perf_counter() - t0,
              "matching_seconds": t_match,
              "device": str(dev), "main_process": sh.is_main}
    return Canonical(manifest, entries, loaded, aligned, perms, spec, model, data, report)


def _batched_path(spec: Spec, method: str, batched: bool, kw: dict) -> bool:
    """Whether a shard's matches run as one batched weight matching."""
    return batched and method == "wm" and supports(spec) and set(kw) <= {"max_iter"}


def _stacked(states: list[dict]) -> dict[str, torch.Tensor]:
    """The zoo as one [N, ...] tensor per key."""
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}


def _match_shard(spec: Spec, targets: dict[int, dict], states, method, inits: dict, seed: int,
                 batched: bool, laps: LapCarry | None = None, **kw) -> dict:
    """Align ``states[i]`` to ``targets[i]`` for every ``i`` of this process's shard: one
    batched weight matching of all of them when the spec allows it (every model visits the
    groups in the order drawn from ``seed``), else one :func:`align` per model (seed
    ``seed + i``)."""
    ids = sorted(targets)
    if not ids:
        return {}
    if _batched_path(spec, method, batched, kw):
        out = batched_weight_matching(spec, [targets[i] for i in ids], [states[i] for i in ids],
                                      init=[inits[i] for i in ids] if inits else None,
                                      seed=seed, carry=laps, ids=ids, **kw)
        return dict(zip(ids, out))
    mine = {}
    for i in ids:
        extra = {"init": inits[i]} if inits and get_align_method(method).warm_start else {}
        mine[i], _ = align(spec, targets[i], states[i], method, seed=seed + i, **extra, **kw)
    return mine


def barycenter_perms(spec: Spec, states: list[dict], method: str = "wm", seed: int = 0,
                     max_rounds: int = 20, tol: float = 1e-3, progress: bool = False,
                     shard: Shard = LOCAL, batched: bool = True, **kw):
    """MergeMany-style permutations of every model to the zoo's barycenter: (perms by model
    index, rounds, RMS distance to the barycenter per round). ``shard`` is this process's
    part of the matches (all of them by default); ``batched`` matches a process's whole
    part at once (weight matching on plain specs)."""
    n = len(states)
    bar = Progress(n * (max_rounds + 1), progress and shard.is_main, desc="barycenter")
    # Start from every model aligned to model 0: the blurry mean of unaligned models is a
    # poor first target (and permuted copies of one model become identical at once).
    items = shard.mine(n)
    laps = LapCarry()  # the batched LAPs' warm starts, carried from round to round
    mine = _match_shard(spec, {i: states[0] for i in items if i > 0}, states, method, {},
                        seed, batched, laps, **kw)
    bar.step(len(mine), 1, torch.tensor(0.0))
    perms = gather_perms(shard, mine)
    perms[0] = identity_perms(spec)
    best = None
    history = []
    rounds = 0
    # weight matching on a plain spec keeps the zoo stacked ([N, ...] per tensor): the
    # permutations, the mean and the targets of a round are a few whole-stack operations
    # (the same values as model by model) and the matching reads the stacks as they are
    stacked = _stacked(states) if _batched_path(spec, method, batched, kw) else None
    for rounds in range(1, max_rounds + 1):
        if stacked is None:
            aligned = [apply(spec, perms[i], s) for i, s in enumerate(states)]
            center = mean_states(aligned)
        else:
            al = stacked_apply(spec, {g: torch.stack([perms[i][g] for i in range(n)])
                                      for g in spec.group_sizes}, stacked)
            aligned = [{k: t[i] for k, t in al.items()} for i in range(n)]  # views
            center = {k: t.mean(0) if t.is_floating_point() else t[0].clone()
                      for k, t in al.items()}
        total = _sq_to(aligned, center)
        history.append((total / n) ** 0.5)
        if best is not None and total >= best[0]:
            break
        converged = best is not None and total > best[0] * (1 - tol) ** 2
        best = (total, {i: dict(p) for i, p in perms.items()})
        if converged or rounds == max_rounds:
            break
        if stacked is None:
            targets = {i: {k: (v * n - aligned[i][k]) / (n - 1) if v.is_floating_point()
                           else v for k, v in center.items()} for i in items}
            mine = _match_shard(spec, targets, states, method, perms, seed + 1000 * rounds,
                                batched, laps, **kw)
        else:
            rows = torch.tensor(list(items), dtype=torch.long)
            whole = list(items) == list(range(n))
            keys = {parse_member(m)[0] for m in spec.layouts}
            targets = {k: (center[k] * n - (al[k] if whole else al[k][rows])) / (n - 1)
                       for k in keys}
            mine_b = {k: stacked[k] if whole else stacked[k][rows] for k in keys}
            out = batched_weight_matching(spec, targets, mine_b,
                                          init=[perms[i] for i in items],
                                          seed=seed + 1000 * rounds, carry=laps,
                                          ids=list(items), **kw)
            mine = dict(zip(items, out))
        bar.step(len(mine), 1, torch.tensor(history[-1]))
        perms = gather_perms(shard, mine)
    bar.close()
    return best[1], rounds, history


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[g], b[g]) for g in a)


def data_barycenter_perms(spec: Spec, model, states: list[dict], data, method: str = "am",
                          seed: int = 0, max_rounds: int = 20, progress: bool = False,
                          shard: Shard = LOCAL, **kw):
    """Permutations of every model to the zoo's barycenter by a method that reads data
    (``am``, ``ste``): (perms by model index, rounds, RMS distance to the barycenter per
    round). Every model is first aligned to model 0; then each round takes the mean of the
    aligned zoo, recalibrates its BatchNorm statistics on train data (a runnable mean
    model whose features are the mean's), and aligns every model to it, until no model's
    permutations change (a fixed point) or after ``max_rounds`` rounds; the last round's
    permutations are kept."""
    from ..evaluation import recalibrate_state
    from ..functional import scratch
    n = len(states)
    items = shard.mine(n)
    calib = data["train"][0][:2048]
    net = scratch(model)
    bar = Progress(n * (max_rounds + 1), progress and shard.is_main, desc="barycenter")

    def match(targets: dict[int, dict], round_seed: int) -> dict:
        mine = {}
        for i in sorted(targets):
            mine[i], _ = align(spec, targets[i], states[i], method, model=model, data=data,
                               seed=round_seed + i, **kw)
            bar.step(1, 1, torch.tensor(0.0))
        return gather_perms(shard, mine)

    perms = match({i: states[0] for i in items if i > 0}, seed)
    perms[0] = identity_perms(spec)
    history, rounds = [], 0
    for rounds in range(1, max_rounds + 1):
        aligned = [apply(spec, perms[i], s) for i, s in enumerate(states)]
        center = mean_states(aligned)
        history.append((_sq_to(aligned, center) / n) ** 0.5)
        if rounds == max_rounds:
            break
        center = recalibrate_state(net, center, calib)
        new = match({i: center for i in items}, seed + 1000 * rounds)
        if all(_same(new[i], perms[i]) for i in range(n)):
            break  # a fixed point: the next round would give the same permutations
        perms = new
    bar.close()
    return perms, rounds, history


def _write(src: Zoo, dst: Zoo, manifest, entries, loaded, aligned, perms, spec, report, force):
    with dst.writer_lock():
        if force and dst.exists():
            dst.manifest_path.unlink()
            for sub in ("models", "perms"):
                shutil.rmtree(dst.root / sub, ignore_errors=True)
        atomic_write_text(dst.root / "spec.json", spec.to_json())
        for e, (state, arch, meta), new, i in zip(entries, loaded, aligned, range(len(entries))):
            meta = {**meta, "canonical": {"method": report["method"],
                                          "reference": report["reference"],
                                          "source": str(src.model_path(e["id"]))}}
            save_checkpoint(dst.model_path(e["id"]), new, arch, meta)
            save_tensors(dst.root / "perms" / f"{e['id']}.safetensors", perms[i],
                         {"weightspace.perms_of": e["id"]})
        out = {**manifest, "models": entries,
               "canonicalization": {**report, "source": str(src.root), "spec": "spec.json",
                                    "perms": "perms/<id>.safetensors",
                                    "weightspace_version": __version__}}
        dst.write(out)


def restore(canon_dir, model_id: str) -> dict:
    """The original state dict of ``model_id`` from a canonicalized zoo (bitwise)."""
    root = Path(canon_dir)
    spec = Spec.from_json((root / "spec.json").read_text())
    perms = load_file(str(root / "perms" / f"{safe_name(model_id, 'model id')}.safetensors"))
    state, _, _ = read_checkpoint(Zoo(root).model_path(model_id))
    return apply(spec, invert(spec, perms), state)


__all__ = ["Canonical", "barycenter_perms", "canonical_states", "canonicalize_zoo",
           "data_barycenter_perms", "restore", "write_canonical"]
