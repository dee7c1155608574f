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


def _group_batches(model, state, hooks, x, batch_size):
    """Per batch (a generator): group -> [rows, units] features (all of the group's
    modules stacked)."""
    import torch

    from ..features import feature_batches
    targets = [t for items in hooks.values() for t in items]
    for batch in feature_batches(model, state, targets, x, batch_size):
        yield {g: torch.cat([batch[name] for name, _ in items], 0)
               for g, items in hooks.items()}


def _group_features(model, state, hooks, x, batch_size) -> list[dict[str, torch.Tensor]]:
    """:func:`_group_batches` held in a list."""
    return list(_group_batches(model, state, hooks, x, batch_size))


def reference_features(spec: Spec, model: nn.Module, A: dict, x: torch.Tensor,
                       batch_size: int = 512) -> list[dict[str, torch.Tensor]]:
    """``A``'s features per batch of ``x`` (group -> [rows, units]): computed once and
    passed as ``a_features`` when many models are matched to one reference."""
    from ..features import feature_modules
    return _group_features(model, A, feature_modules(spec, model), x, batch_size)


def cross_costs(spec: Spec, hooks: dict, sa, sb, pearson: bool = False
                ) -> dict[str, torch.Tensor]:
    """Per group: the [units A, units B] cross-correlation (``pearson``: the Pearson
    correlation) of two models' features, from batches ``sa`` and ``sb`` (iterables of
    group -> [rows, units], the same inputs in the same order; ``sb`` may be a generator,
    so B's features are never all held at once). Sums in float64."""
    import torch

    def zeros(g, *shape):
        return torch.zeros(*shape, spec.group(g).size, dtype=torch.float64)

    # per group: s_ab, s_a, s_b, s_aa, s_bb, rows
    sums = {g: [zeros(g, spec.group(g).size), zeros(g), zeros(g), zeros(g), zeros(g), 0]
            for g in hooks}
    for ba, bb in zip(sa, sb):
        for g in hooks:
            a, b, s = ba[g].cpu(), bb[g].cpu(), sums[g]
            s[0] += a.T @ b
            s[5] += len(a)
            if pearson:
                s[1] += a.sum(0)
                s[2] += b.sum(0)
                s[3] += (a * a).sum(0)
                s[4] += (b * b).sum(0)
    costs = {}
    for g, (s_ab, s_a, s_b, s_aa, s_bb, rows) in sums.items():
        if pearson:
            cov = s_ab / rows - torch.outer(s_a / rows, s_b / rows)
            sd_a = (s_aa / rows - (s_a / rows) ** 2).clamp_min(1e-12).sqrt()
            sd_b = (s_bb / rows - (s_b / rows) ** 2).clamp_min(1e-12).sqrt()
            costs[g] = cov / torch.outer(sd_a, sd_b)
        else:
            costs[g] = s_ab / rows
    return costs


def solve_costs(spec: Spec, costs: dict, A: dict, B: dict, seed: int = 0,
                max_iter: int = 100) -> tuple[Perms, dict, list[str]]:
    """Permutations of B from the groups' activation costs (one LAP each); groups no
    module exposes are then matched by weight matching of ``B`` to ``A`` with the
    activation-matched groups held fixed. Returns (perms, matcher info, notes)."""
    from ..symmetry.structure import identity_perms
    from .assignment import parallel_map
    from .matching import WeightMatcher, families, lap
    perms = identity_perms(spec)
    perms.update(zip(costs, parallel_map(lap, list(costs.values()))))  # independent LAPs
    done = set(costs)
    rest = [f for f in families(spec) if f.top not in done]
    notes, info = [], {}
    if rest:
        notes.append(f"{len(rest)} group famil(ies) without a feature module (e.g. "
                     f"{rest[0].top}) matched by weight matching")
        perms, info = WeightMatcher(spec, A, B).run(perms, max_iter=max_iter, seed=seed,
                                                    fixed=done)
    info.setdefault("iterations", 1)
    return perms, info, notes


def activation_matching(spec: Spec, model: nn.Module, A: dict, B: dict, x: torch.Tensor,
                        pearson: bool = False, batch_size: int = 512, seed: int = 0,
                        max_iter: int = 100, a_features: list | None = None
                        ) -> tuple[Perms, MatchReport]:
    """``a_features``: :func:`reference_features` of ``A`` on the same ``x`` and
    ``batch_size`` when the caller already has them."""
    from ..features import feature_modules
    from .matching import method_report
    t0 = time.perf_counter()
    hooks = feature_modules(spec, model)
    sa = a_features if a_features is not None else _group_features(model, A, hooks, x,
                                                                   batch_size)
    sb = _group_batches(model, B, hooks, x, batch_size)
    costs = cross_costs(spec, hooks, sa, sb, pearson)
    perms, info, notes = solve_costs(spec, costs, A, B, seed, max_iter)
    notes.insert(0, f"activation statistics on {len(x)} train examples for {len(costs)} "
                    f"group(s)")
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
