"""Restarts: the same alignment from several seeds of the random group order, the best kept.

Weight matching is coordinate descent: the basin it ends in depends on the order in which
it visits the groups. ``restarts=K`` runs seeds ``seed .. seed + K - 1`` and keeps, when
data is given, the permutation whose midpoint ``(A + P(B)) / 2`` has the lowest loss on a
*train* subset (BatchNorm recalibrate_state on the same subset), else the one with the highest
matching objective (equivalently the lowest L2 distance to A). Validation and test are
never used to choose.
"""
from __future__ import annotations

from ..device import placed
from ..functional import lerp_states, loss_acc, recalibrate_state, scratch
from ..symmetry.structure import Perms, Spec, apply
from .matching import MatchReport
from .registry import AlignError, align

TRAIN_SUBSET = 2048


def midpoint_train_loss(spec: Spec, model, A: dict, B: dict, perms: Perms, data) -> float:
    """Loss of ``(A + P(B)) / 2`` on the first examples of the train split."""
    x, y = (t[:TRAIN_SUBSET] for t in data["train"])
    net = scratch(model)
    mid = recalibrate_state(net, lerp_states(A, apply(spec, perms, B), 0.5), x)
    return loss_acc(net, x, y, state=mid)[0]


def align_with_restarts(spec: Spec, A: dict, B: dict, method: str = "wm", restarts: int = 1,
                        model=None, data=None, seed: int = 0, device=None, **options
                        ) -> tuple[Perms, MatchReport, list[dict], list[Perms]]:
    """The best of ``restarts`` alignments (see the module docstring), its report, one
    record per restart (seed, L2 after, objective, train midpoint loss when data is given,
    and which one was kept) and every restart's permutations. ``device``: see
    :func:`~.registry.align`."""
    if not isinstance(restarts, int) or restarts < 1:
        raise AlignError(f"restarts must be a positive integer, got {restarts!r}")
    A, B, model, data = placed(device, A, B, model, data)
    runs = []
    for k in range(restarts):
        perms, rep = align(spec, A, B, method, model=model, data=data, seed=seed + k,
                           **options)
        rec = {"seed": seed + k, "l2_after": rep.l2_after, "objective": rep.objective}
        if restarts > 1 and data is not None and model is not None:
            rec["train_midpoint_loss"] = midpoint_train_loss(spec, model, A, B, perms, data)
        runs.append((rec, perms, rep))
    if restarts > 1 and "train_midpoint_loss" in runs[0][0]:
        best = min(range(restarts), key=lambda i: (runs[i][0]["train_midpoint_loss"], i))
    else:
        best = min(range(restarts), key=lambda i: (runs[i][0]["l2_after"], i))
    for i, (rec, _, _) in enumerate(runs):
        rec["kept"] = i == best
    _, perms, rep = runs[best]
    if restarts > 1:
        how = "lowest train midpoint loss" if "train_midpoint_loss" in runs[0][0] \
            else "lowest L2 distance to A (highest objective)"
        rep.notes.append(f"best of {restarts} restarts by {how}: seed {seed + best}")
    return perms, rep, [r for r, _, _ in runs], [p for _, p, _ in runs]
