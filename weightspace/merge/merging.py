"""Merging many models: a registered method permutes them, then they are averaged, with an
optional BN reset / REPAIR.

The methods (one file each, listed explicitly below): ``mean`` (plain average),
``mergemany`` (MergeMany) and ``ste`` (multi-model STE). ``post="repair"`` rescales the
merged model's units to the mean of the (aligned) endpoints' statistics; ``post="reset"``
recomputes BN statistics; both on the train split.
"""
from __future__ import annotations

import time

from torch import nn

from . import mean, mergemany, ste
from ..features import feature_stats
from ..functional import check_compatible, mean_states, recalibrated, scratch
from ..symmetry.structure import Spec, apply
from .lmc import CALIB, LMCError
from .mergemany import mergemany_perms
from .registry import get_merge_method, list_merge_methods
from .repair import repair, repairable
from .ste import ste_perms

MODULES = (mean, mergemany, ste)  # the method files; each registers its method
METHODS = tuple(n for mod in MODULES for n in list_merge_methods()
                if get_merge_method(n).fn.__module__ == mod.__name__)
POST = ("none", "reset", "repair")


def merge(spec: Spec, model: nn.Module, states: list[dict], method: str = "mergemany",
          post: str = "none", data=None, seed: int = 0, names=None, **options
          ) -> tuple[dict, dict]:
    """The merged state dict and a report (``options`` are the method's own)."""
    model = scratch(model)
    t0 = time.perf_counter()
    m = get_merge_method(method)
    if post not in POST:
        raise LMCError(f"unknown post-processing {post!r}; choices: {', '.join(POST)}")
    unknown = sorted(set(options) - {o.name for o in m.options})
    if unknown:
        raise LMCError(f"merge method {method!r} takes no option {unknown[0]!r}")
    if len(states) < 1:
        raise LMCError("nothing to merge")
    check_compatible(states, names)
    if (m.needs_data or post != "none") and data is None:
        raise LMCError(f"method {method!r} / post-processing {post!r} needs data (a dataset)")
    report = {"method": method, "post": post, "models": len(states)}
    perms = m.fn(spec, model, states, data, seed, report, **options)
    aligned = [apply(spec, p, s) for p, s in zip(perms, states)]
    merged = mean_states(aligned)
    if post == "repair":
        calib = data["train"][0][:CALIB]
        targets = repairable(spec, model)
        stats = [feature_stats(model, s, targets, calib) for s in aligned]
        merged = repair(spec, model, merged, stats, [1 / len(states)] * len(states), calib)
    elif post == "reset":
        merged = recalibrated(model, merged, data["train"][0][:CALIB])
    report["seconds"] = time.perf_counter() - t0
    return merged, report


__all__ = ["METHODS", "POST", "merge", "mergemany_perms", "ste_perms"]
