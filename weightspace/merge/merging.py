"""Merging many models: a registered method permutes them, then they are averaged, with an
optional BN reset / REPAIR.

The methods (one file each, listed in :mod:`.methods`): ``mean`` (plain average),
``mergemany`` (MergeMany) and ``ste`` (multi-model STE). ``post="repair"`` rescales the
merged model's units to the mean of the (aligned) endpoints' statistics; ``post="reset"``
recomputes BN statistics; both on the train split.
"""
from __future__ import annotations

import time

from torch import nn

from ..device import placed
from ..features import feature_stats
from ..canonicalize import l2_distance
from ..functional import check_compatible, loss_acc, mean_states, recalibrate_state, scratch
from ..symmetry.structure import Spec, apply
from ..evaluation import CALIBRATION_EXAMPLES
from .mergemany import mergemany_perms
from .methods import MERGE_METHODS, METHODS  # noqa: F401 (METHODS: the old name)
from .registry import POST, MergeError, get_merge_method
from .repair import BN_ONLY_NOTE, bn_only, repair, repairable
from .ste import ste_perms


def merge(spec: Spec, model: nn.Module, states: list[dict], method: str = "mergemany",
          post: str = "none", data=None, seed: int = 0, names=None, restarts: int = 1,
          device=None, **options) -> tuple[dict, dict]:
    """The merged state dict and a report (``options`` are the method's own).

    ``restarts`` > 1 runs the method from that many seeds and keeps the merge with the
    lowest loss on a train subset when data is given (after the post-processing), else the
    one whose aligned models are closest to their mean. ``device`` (``"cpu"``, ``"cuda"``,
    ``"auto"``) moves the models and data there first; None works where they are."""
    model = scratch(model)
    model, states, data = placed(device, model, list(states), data)
    t0 = time.perf_counter()
    m = get_merge_method(method)
    if post not in POST:
        raise MergeError(f"unknown post-processing {post!r}; choices: {', '.join(POST)}")
    unknown = sorted(set(options) - {o.name for o in m.options})
    if unknown:
        raise MergeError(f"merge method {method!r} takes no option {unknown[0]!r}")
    if len(states) < 1:
        raise MergeError("nothing to merge")
    check_compatible(states, names)
    if (m.needs_data or post != "none") and data is None:
        raise MergeError(f"method {method!r} / post-processing {post!r} needs data (a dataset)")
    if not isinstance(restarts, int) or restarts < 1:
        raise MergeError(f"restarts must be a positive integer, got {restarts!r}")
    best = None
    runs = []
    for k in range(restarts):
        report = {"method": method, "post": post, "models": len(states)}
        if post == "repair" and bn_only(spec, model):
            report["notes"] = [BN_ONLY_NOTE]
        perms = m.fn(spec, model, states, data, seed + k, report, **options)
        aligned = [apply(spec, p, s) for p, s in zip(perms, states)]
        merged = _post(spec, model, aligned, post, data)
        score = _score(model, merged, aligned, data) if restarts > 1 else 0.0
        runs.append({"seed": seed + k, "score": score})
        if best is None or score < best[0]:
            best = (score, merged, report, k)
    _, merged, report, k = best
    if restarts > 1:
        report["restarts"] = [{**r, "kept": i == k} for i, r in enumerate(runs)]
        report["restart_score"] = "train loss" if data is not None else "sum sq. distance"
    report["seconds"] = time.perf_counter() - t0
    return merged, report


def _post(spec: Spec, model, aligned: list[dict], post: str, data) -> dict:
    """The mean of the aligned models, then REPAIR or a BN reset on the train split."""
    merged = mean_states(aligned)
    if post == "repair":
        calib = data["train"][0][:CALIBRATION_EXAMPLES]
        targets = repairable(spec, model)
        stats = [feature_stats(model, s, targets, calib) for s in aligned]
        return repair(spec, model, merged, stats, [1 / len(aligned)] * len(aligned), calib)
    if post == "reset":
        return recalibrate_state(model, merged, data["train"][0][:CALIBRATION_EXAMPLES])
    return merged


def _score(model, merged: dict, aligned: list[dict], data) -> float:
    """Lower is better: the merged model's loss on a train subset (BN recalibrate_state there
    when it has BN and no post-processing did it), else the aligned models' summed squared
    distance to their mean (never validation or test)."""
    if data is not None:
        x, y = (t[:CALIBRATION_EXAMPLES] for t in data["train"])
        return loss_acc(model, x, y, state=recalibrate_state(model, merged, x))[0]
    return sum(l2_distance(s, merged) ** 2 for s in aligned)


__all__ = ["MERGE_METHODS", "METHODS", "POST", "merge", "mergemany_perms", "ste_perms"]
