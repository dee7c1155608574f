"""Activation matching of a whole zoo to its barycenter *in feature space*.

The weight-space mean of a zoo is a poor model (its mixtures are what alignment is meant to
make accurate), so matching every model's activations to the mean model's drifts: on a
ResNet-20 zoo, mixtures of the canonical models lost accuracy with every such round. The
barycenter here is instead the mean of the aligned models' features (each model's
features, its units permuted, averaged over the zoo, on the same train inputs). Round 1
matches every model to model 0's features (the zoo aligned to one model); each later round
matches every model to the mean of the previous round's aligned features, until no
permutation changes or after ``max_rounds`` rounds.

A permuted model's features are its features permuted, so one forward pass per model per
round gives both its match to the current barycenter and its share of the next one. Under
several processes each process matches its own models, and every process then sums all
models' permuted features in model order (float64), so the barycenter, and with it every
permutation, is the same for any number of processes.
"""
from __future__ import annotations

import torch

from ..functional import mean_states
from ..parallel import LOCAL, Progress, Shard, gather_perms
from ..symmetry import apply, identity_perms
from ..symmetry.structure import Spec
from .am import EXAMPLES, _group_features, cross_costs, solve_costs
from .matching import l2_distance

BATCH = 512


def _permuted(features: list[dict], perms: dict) -> list[dict]:
    return [{g: b[:, perms[g]] for g, b in batch.items()} for batch in features]


def _add(total: list[dict] | None, features: list[dict]) -> list[dict]:
    if total is None:
        return [{g: b.clone() for g, b in batch.items()} for batch in features]
    for t, batch in zip(total, features):
        for g, b in batch.items():
            t[g] += b
    return total


def feature_barycenter_perms(spec: Spec, model, states: list[dict], data, seed: int = 0,
                             max_rounds: int = 20, progress: bool = False,
                             shard: Shard = LOCAL, pearson: bool = False,
                             examples: int = EXAMPLES, max_iter: int = 100):
    """(perms by model index, rounds, RMS weight distance to the barycenter per round) of
    activation matching to the zoo's feature barycenter (module docstring). ``examples``
    train inputs; ``pearson`` / ``max_iter`` as in :func:`.am.activation_matching`."""
    from ..features import feature_modules
    n = len(states)
    x = data["train"][0][:examples]
    hooks = feature_modules(spec, model)
    one = shard.count == 1
    bar = Progress(n * max_rounds, progress and shard.is_main, desc="barycenter")

    def features(i: int) -> list[dict]:
        return _group_features(model, states[i], hooks, x, BATCH)

    center = features(0)
    reference = states[0]  # weights for groups no module exposes (weight-matched)
    perms: dict[int, dict] = {}
    history, rounds = [], 0
    for rounds in range(1, max_rounds + 1):
        total, mine = None, {}
        for i in shard.mine(n):
            f = features(i) if i or rounds > 1 else center
            costs = cross_costs(spec, hooks, center, f, pearson)
            mine[i], _, _ = solve_costs(spec, costs, reference, states[i],
                                        seed + 1000 * rounds + i, max_iter)
            if i == 0 and rounds == 1:
                mine[i] = identity_perms(spec)  # model 0 is round 1's reference
            if one:
                total = _add(total, _permuted(f, mine[i]))
            bar.step(1, 1, torch.tensor(0.0))
        new = gather_perms(shard, mine)
        if not one:  # every process sums every model's features, in model order
            for i in range(n):
                total = _add(total, _permuted(features(i), new[i]))
        aligned = [apply(spec, new[i], s) for i, s in enumerate(states)]
        reference = mean_states(aligned)
        history.append((sum(l2_distance(s, reference) ** 2 for s in aligned) / n) ** 0.5)
        fixed = rounds > 1 and all(torch.equal(new[i][g], perms[i][g])
                                   for i in range(n) for g in new[i])
        perms = new
        if fixed:
            break
        center = [{g: b / n for g, b in batch.items()} for batch in total]
    bar.close()
    return perms, rounds, history


__all__ = ["feature_barycenter_perms"]
