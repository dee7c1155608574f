"""The sampling settings chosen on the validation split: every combination of ODE solver,
guidance weight and mix within the pass budget (:func:`candidates`), each measured on a
few networks (:func:`sweep_samples`) for validation accuracy and novelty, and the rule that
picks one (:func:`choose_by_bound`: the most novel setting whose accuracy is within the
target of the zoo's with confidence; :func:`choose_setting` without the zoo's errors). The
test split never chooses."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .config import ACC_TARGET, ACC_TOLERANCE, CONFIDENCE_Z, PASS_BUDGET, passes

NOVELTY_SLACK = 0.05  # samples may be this much less novel than independently trained nets


def _smaller_first(key) -> tuple:
    return tuple(-x for x in key) if isinstance(key, tuple) else (-key,)


def choose_setting(acc: dict, novelty: dict | None, limit: float | None, cost=None,
                    tolerance: float = ACC_TOLERANCE):
    """The sampling setting (a guidance weight, a ``(weight, mix)`` pair, or a
    :class:`Setting`) among those whose samples' validation novelty (mean max IoU of their
    errors with the zoo's) is at most ``limit`` (the zoo's leave-one-out novelty plus
    :data:`NOVELTY_SLACK`): of those within ``tolerance`` of the best validation accuracy
    there, the most novel (differences of accuracy that small are the validation split's
    noise; novelty is the harder target). If none is novel enough, the most novel one.
    Without novelty: the best validation accuracy. Ties go to the smaller ``cost(key)``
    (default: the smaller weight, then mix). Returns ``(key, rule)``. Validation only: the
    test split never chooses."""
    neg = (lambda k: tuple(-x for x in cost(k))) if cost else _smaller_first
    pos = cost or (lambda k: k)
    if novelty is None or limit is None:
        return max(acc, key=lambda k: (acc[k], *neg(k))), "best validation accuracy"
    ok = [k for k in acc if novelty[k] <= limit]
    if ok:
        best = max(acc[k] for k in ok)
        near = [k for k in ok if acc[k] >= best - tolerance]
        return min(near, key=lambda k: (novelty[k], -acc[k], pos(k))), \
            (f"the most novel on validation within {tolerance:g} of the best validation "
             f"accuracy ({best:.4f}) among those with validation novelty <= {limit:.3f}")
    return min(acc, key=lambda k: (novelty[k], pos(k))), \
        f"nothing reached validation novelty <= {limit:.3f}: the most novel"


def accuracy_bound(wrong: torch.Tensor, zoo_wrong: torch.Tensor,
                   z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """(difference, lower bound): the mean accuracy of the networks of ``wrong`` [M, n]
    minus the zoo's (``zoo_wrong`` [N, n]) on the same n examples, and its one-sided lower
    confidence bound. Paired by example (both err on the hard ones), so the bound is
    ``mean(d) - z * std(d) / sqrt(n)`` with ``d`` the per-example difference of the share
    of networks that are right."""
    d = (1 - wrong.double().mean(0)) - (1 - zoo_wrong.double().mean(0))
    n = d.numel()
    se = float(d.std(unbiased=True)) / n ** 0.5 if n > 1 else float("inf")
    return float(d.mean()), float(d.mean()) - z * se


def choose_by_bound(diff: dict, lower: dict, novelty: dict, limit: float,
                    target: float = ACC_TARGET, cost=None):
    """The setting to sample with, from validation measurements: ``diff[k]`` / ``lower[k]``
    the accuracy difference with the zoo and its lower confidence bound
    (:func:`accuracy_bound`), ``novelty[k]`` the mean max IoU of the samples' errors with
    the zoo's, ``limit`` the zoo's leave-one-out novelty plus :data:`NOVELTY_SLACK`.

    Accurate means ``lower >= -target``. Among the accurate settings that are novel enough
    (``novelty <= limit``), the most novel; if none is novel enough, the most novel
    accurate one; if none is accurate, the one with the highest lower bound. Ties go to the
    smaller ``cost(key)``. Returns ``(key, rule)``."""
    pos = cost or (lambda k: k)
    accurate = [k for k in diff if lower[k] >= -target]
    both = [k for k in accurate if novelty[k] <= limit]
    if both:
        return min(both, key=lambda k: (novelty[k], -lower[k], pos(k))), \
            (f"the most novel on validation among those accurate (accuracy lower bound "
             f"within {target:g} of the zoo's) and novel enough (novelty <= {limit:.3f})")
    if accurate:
        return min(accurate, key=lambda k: (novelty[k], -lower[k], pos(k))), \
            (f"nothing both accurate and novel enough (novelty <= {limit:.3f}): the most "
             f"novel accurate one")
    return min(diff, key=lambda k: (-lower[k], novelty[k], pos(k))), \
        (f"nothing accurate (accuracy lower bound within {target:g} of the zoo's): the "
         f"highest lower bound")


class Setting(NamedTuple):
    """One way of sampling: ODE solver and steps, guidance weight, flow samples averaged."""
    method: str
    steps: int
    guidance: float
    mix: int

    def passes(self, guided: bool) -> int | None:
        return passes(self.method, self.steps, guided and self.guidance != 1.0, self.mix)


def candidates(solvers, weights, mixes, guided: bool) -> list[Setting]:
    """Every combination, those within :data:`PASS_BUDGET` passes per network (or, if none
    is, the cheapest)."""
    every = [Setting(m, st, float(w), k) for m, st in solvers for w in weights for k in mixes]
    cost = {s: s.passes(guided) for s in every}
    within = [s for s in every if cost[s] is not None and cost[s] <= PASS_BUDGET]
    if within:
        return within
    known = [c for c in cost.values() if c is not None]
    return [s for s in every if not known or cost[s] == min(known)]


def averaged(codes: torch.Tensor, k: int) -> torch.Tensor:
    """``k * m`` flow samples -> ``m`` codes: network ``i`` averages samples ``i, i + m,
    ...`` (so the first ``k * m`` draws of a larger batch give the same networks)."""
    return codes.view(k, len(codes) // k, -1).mean(0)


def by_guidance(sweep: dict | None, chosen: Setting) -> dict | None:
    """Validation accuracy by guidance weight at the chosen solver and mix (summaries)."""
    return sweep and {str(s.guidance): a for s, a in sweep.items()
                      if (s.method, s.steps, s.mix) == (chosen.method, chosen.steps,
                                                        chosen.mix)}


SWEEP_SAMPLES = 100  # networks per setting while choosing (at most)
SWEEP_NUMBERS = 100_000_000  # ... and at most this many decoded weights per setting, so that
# models above 1M parameters are measured on fewer networks (at least SWEEP_MIN_SAMPLES):
# decoding dominates the choice there
SWEEP_MIN_SAMPLES = 16
SWEEP_CALIBRATION = 512  # train examples BatchNorm statistics are recomputed on while choosing


def sweep_samples(n: int, numbers: int) -> int:
    """Networks per setting while choosing the sampling settings, for ``n`` requested
    networks of ``numbers`` weights each."""
    per = min(SWEEP_SAMPLES, max(SWEEP_MIN_SAMPLES, SWEEP_NUMBERS // max(1, numbers)))
    return min(n, per)


def sweep(options: list[Setting], draw, measure, n_sweep: int, guided: bool,
          zoo_err: torch.Tensor | None):
    """Measure every option on ``n_sweep`` networks and choose one.

    ``draw(setting, count)`` returns ``count`` codes of one (solver, guidance) setting;
    each mix K averages the first ``n_sweep * K`` of one draw, so options differing only in
    mix share it. ``measure(codes)`` returns the [n_sweep, n_val] bool errors of the
    decoded networks. ``zoo_err`` [N, n_val] is where each zoo model errs (None: no
    novelty, the best accuracy wins). Returns ``(chosen, val_acc by option, record)``."""
    from .novelty import max_iou
    acc, novelty, diff, lower, groups = {}, {}, {}, {}, {}
    for o in options:
        groups.setdefault(o._replace(mix=1), []).append(o.mix)
    for base, ks in groups.items():
        every = draw(base, n_sweep * max(ks))
        for k in ks:
            wrong = measure(averaged(every[:n_sweep * k], k))
            o = base._replace(mix=k)
            acc[o] = 1.0 - float(wrong.float().mean())
            if zoo_err is not None:
                novelty[o] = float(max_iou(wrong, zoo_err).mean())
                diff[o], lower[o] = accuracy_bound(wrong, zoo_err)

    def cost(o):
        return (o.passes(guided) or 0, o.guidance, o.mix)
    if zoo_err is None:
        limit = None
        chosen, rule = choose_setting(acc, None, None, cost=cost)
    else:
        limit = float(max_iou(zoo_err, zoo_err, leave_one_out=True).mean()) + NOVELTY_SLACK
        chosen, rule = choose_by_bound(diff, lower, novelty, limit, cost=cost)
    record = {"rule": rule, "novelty_limit": limit, "pass_budget": PASS_BUDGET,
              "accuracy_target": ACC_TARGET, "confidence_z": CONFIDENCE_Z,
              "networks_per_setting": n_sweep,
              "zoo_val_acc": None if zoo_err is None else 1 - float(zoo_err.float().mean()),
              "grid": [{"method": o.method, "steps": o.steps, "guidance": o.guidance,
                        "mix": o.mix, "passes": o.passes(guided), "val_acc": a,
                        "val_acc_vs_zoo": diff.get(o), "val_acc_lower_bound": lower.get(o),
                        "val_novelty": novelty.get(o)} for o, a in acc.items()]}
    return chosen, acc, record


choose_guidance = choose_setting  # the old name
