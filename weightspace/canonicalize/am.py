"""``am`` — activation matching (Ainsworth et al. 2022): forward hooks on the modules whose
output features are a group's units collect statistics on train-split data; one LAP per
group on the cross-correlation (``pearson=True``: the Pearson correlation). Groups no module
exposes (per-block attention dims, units only a functional op produces) are then matched by
weight matching with the activation-matched groups held fixed."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .registry import Option, register_align_method
from .wm import MAX_ITER

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    import torch
    from torch import nn

    from ..symmetry.structure import Perms, Spec
    from .matching import MatchReport

EXAMPLES = 2048


def _group_features(model, state, hooks, x, batch_size) -> list[dict[str, torch.Tensor]]:
    """Per batch: group -> [rows, units] features (all of the group's modules stacked)."""
    import torch

    from ..features import feature_batches
    targets = [t for items in hooks.values() for t in items]
    return [{g: torch.cat([batch[name] for name, _ in items], 0) for g, items in hooks.items()}
            for batch in feature_batches(model, state, targets, x, batch_size)]


def activation_matching(spec: Spec, model: nn.Module, A: dict, B: dict, x: torch.Tensor,
                        pearson: bool = False, batch_size: int = 512, seed: int = 0,
                        max_iter: int = 100) -> tuple[Perms, MatchReport]:
    import torch

    from ..features import feature_modules
    from ..symmetry.structure import identity_perms
    from .assignment import parallel_map
    from .matching import WeightMatcher, families, lap, method_report
    t0 = time.perf_counter()
    hooks = feature_modules(spec, model)
    sa = _group_features(model, A, hooks, x, batch_size)
    sb = _group_features(model, B, hooks, x, batch_size)
    perms = identity_perms(spec)
    costs = {}
    for g in hooks:
        n = spec.group(g).size
        s_ab = torch.zeros(n, n, dtype=torch.float64)
        s_a = torch.zeros(n, dtype=torch.float64)
        s_b = torch.zeros(n, dtype=torch.float64)
        s_aa = torch.zeros(n, dtype=torch.float64)
        s_bb = torch.zeros(n, dtype=torch.float64)
        cnt = 0
        for ba, bb in zip(sa, sb):
            a, b = ba[g].cpu(), bb[g].cpu()
            s_ab += a.T @ b
            s_a += a.sum(0)
            s_b += b.sum(0)
            s_aa += (a * a).sum(0)
            s_bb += (b * b).sum(0)
            cnt += len(a)
        if pearson:
            cov = s_ab / cnt - torch.outer(s_a / cnt, s_b / cnt)
            sd_a = (s_aa / cnt - (s_a / cnt) ** 2).clamp_min(1e-12).sqrt()
            sd_b = (s_bb / cnt - (s_b / cnt) ** 2).clamp_min(1e-12).sqrt()
            cost = cov / torch.outer(sd_a, sd_b)
        else:
            cost = s_ab / cnt
        costs[g] = cost
    perms.update(zip(costs, parallel_map(lap, list(costs.values()))))  # independent LAPs
    done = set(costs)
    rest = [f for f in families(spec) if f.top not in done]
    notes = [f"activation statistics on {len(x)} train examples for {len(done)} group(s)"]
    info = {}
    if rest:
        notes.append(f"{len(rest)} group famil(ies) without a feature module (e.g. "
                     f"{rest[0].top}) matched by weight matching")
        perms, info = WeightMatcher(spec, A, B).run(perms, max_iter=max_iter, seed=seed,
                                                    fixed=done)
    info.setdefault("iterations", 1)
    return perms, method_report("am", t0, spec, A, B, perms, info, notes)


@register_align_method(
    "am", "activation matching: correlate hidden units on train data", needs_data=True,
    weight_space=False,
    options=(MAX_ITER, Option("pearson", bool, False, "am: Pearson correlation"),
             Option("examples", int, EXAMPLES, "am: train examples for the statistics")))
def am(spec: Spec, A: dict, B: dict, model: nn.Module, data, seed: int = 0,
       max_iter: int = 100, pearson: bool = False, examples: int = EXAMPLES
       ) -> tuple[Perms, MatchReport]:
    return activation_matching(spec, model, A, B, data["train"][0][:examples],
                               pearson=pearson, seed=seed, max_iter=max_iter)
