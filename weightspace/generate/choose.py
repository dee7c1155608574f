"""The sampling settings chosen on the validation split: every combination of ODE solver,
guidance weight and mix within the pass budget (:func:`candidates`), each measured on a
few networks (:func:`sweep_samples`) for validation accuracy and novelty, and the rule that
picks one (:func:`choose_by_bound`: the most novel setting whose accuracy is within the
target of the zoo's with confidence; :func:`choose_setting` without the zoo's errors). The
test split never chooses."""
from __future__ import annotations

import math
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
                   z: float = CONFIDENCE_Z, networks: int | None = None
                   ) -> tuple[float, float]:
    """(difference, lower bound): the mean accuracy of the networks of ``wrong`` [M, n]
    minus the zoo's (``zoo_wrong`` [N, n]) on the same n examples, and its one-sided lower
    confidence bound. Paired by example (both err on the hard ones), so the bound is
    ``mean(d) - z * std(d) / sqrt(n)`` with ``d`` the per-example difference of the share
    of networks that are right.

    ``networks`` (> M): the bound these settings would get measured on that many networks
    with the same per-example accuracies. The variance of ``d`` is the examples' own plus
    the binomial noise of sampling M networks per example (``p (1 - p) / M``, estimated
    without bias from the shares); the second shrinks as ``M / networks``. A screen on few
    networks ranks settings by this projection, so that a novel setting, whose networks
    disagree more, is not dropped for noise that measuring it fully would remove."""
    right = 1 - wrong.double().mean(0)
    d = right - (1 - zoo_wrong.double().mean(0))
    n, m = d.numel(), wrong.shape[0]
    if n < 2:
        return float(d.mean()), float("-inf")
    var = float(d.var(unbiased=True))
    if networks is not None and networks > m > 1:
        noise = float((right * (1 - right)).mean()) / (m - 1)  # unbiased p (1 - p) / M
        var = max(var - noise * (1 - m / networks), 0.0)
    return float(d.mean()), float(d.mean()) - z * (var / n) ** 0.5


def order_by_bound(diff: dict, lower: dict, novelty: dict, limit: float,
                   target: float = ACC_TARGET, cost=None) -> list:
    """Every setting, in the order :func:`choose_by_bound` prefers them: the accurate and
    novel enough first (most novel first), then the accurate ones (most novel first), then
    the rest (highest lower bound first); ties go to the higher lower bound, then the
    smaller ``cost(key)``."""
    pos = cost or (lambda k: k)

    def key(k):
        if lower[k] >= -target:
            return (0 if novelty[k] <= limit else 1, novelty[k], -lower[k], pos(k))
        return (2, -lower[k], novelty[k], pos(k))
    return sorted(diff, key=key)


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
    k = order_by_bound(diff, lower, novelty, limit, target, cost)[0]
    if lower[k] < -target:
        return k, (f"nothing accurate (accuracy lower bound within {target:g} of the zoo's): "
                   f"the highest lower bound")
    if novelty[k] > limit:
        return k, (f"nothing both accurate and novel enough (novelty <= {limit:.3f}): the "
                   f"most novel accurate one")
    return k, (f"the most novel on validation among those accurate (accuracy lower bound "
               f"within {target:g} of the zoo's) and novel enough (novelty <= {limit:.3f})")


def undecided(diff: dict, lower: dict, novelty: dict, limit: float, examples: int,
              target: float = ACC_TARGET) -> dict | None:
    """Why no setting is both accurate and novel enough (None when one is), for the user:
    is it the validation split, too small to show a novel setting accurate, or are the
    novel settings less accurate than the target allows?

    The bound's half-width ``diff - lower`` shrinks as ``1 / sqrt(examples)`` (``z * std /
    sqrt(n)`` with the per-example spread unchanged), so a novel-enough setting whose
    difference is above ``-target`` would be shown accurate on about ``examples * (width /
    (diff + target)) ** 2`` examples. Of the novel-enough settings, the one that needs the
    fewest; when every one is below ``-target`` already, the most accurate of them
    (``examples_needed`` None: more data would not make it accurate)."""
    novel = [k for k in diff if novelty[k] <= limit]
    if any(lower[k] >= -target for k in novel):
        return None
    if not novel:
        return {"setting": None, "examples": examples, "examples_needed": None}
    need = {k: math.ceil(examples * ((diff[k] - lower[k]) / (diff[k] + target)) ** 2)
            for k in novel if diff[k] + target > 0}
    k = min(need, key=lambda k: (need[k], novelty[k])) if need else \
        max(novel, key=lambda k: (diff[k], -novelty[k]))
    return {"setting": k, "diff": diff[k], "lower": lower[k], "novelty": novelty[k],
            "examples": examples, "examples_needed": need.get(k)}


def describe_undecided(u: dict, limit: float, target: float = ACC_TARGET) -> str:
    """One plain line from :func:`undecided`."""
    level = 50 * (1 + math.erf(CONFIDENCE_Z / 2 ** 0.5))  # the bound's one-sided level
    head = "no sampling setting was shown on validation to be both accurate (within " \
        f"{target * 100:g} point of the zoo with {level:.0f}% confidence) and novel (novelty " \
        f"<= {limit:.3f}): "
    if u["setting"] is None:
        return head + "none reached that novelty; samples will be near-copies of zoo models"
    s = u["setting"]
    name = f"{s.method} x{s.steps}, guidance {s.guidance:g}, mix {s.mix}" \
        if isinstance(s, Setting) else str(s)
    if u["examples_needed"] is None:
        return head + (f"the most accurate novel one ({name}) is {-u['diff'] * 100:.1f} "
                       f"points below the zoo: mixtures of these canonical models are not "
                       f"accurate enough (see the mixability probe), so samples will be "
                       f"near-copies or inaccurate")
    return head + (f"the closest novel one ({name}) is {u['diff'] * 100:+.1f} points from the "
                   f"zoo on average, but {u['examples']} validation examples cannot show it is "
                   f"within {target * 100:g} point (lower bound {u['lower'] * 100:+.1f}); about "
                   f"{u['examples_needed']} would (the dataset option `val_size=N` when the "
                   f"zoo is trained)")


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
SWEEP_SCREEN = 4  # the first stage measures every setting on 1 / SWEEP_SCREEN of the networks
SWEEP_FINALISTS = 6  # ... and the rule's first SWEEP_FINALISTS go on to all of them


def sweep_samples(n: int, numbers: int) -> int:
    """Networks per setting while choosing the sampling settings, for ``n`` requested
    networks of ``numbers`` weights each."""
    per = min(SWEEP_SAMPLES, max(SWEEP_MIN_SAMPLES, SWEEP_NUMBERS // max(1, numbers)))
    return min(n, per)


def sweep(options: list[Setting], draw, measure, n_sweep: int, guided: bool,
          zoo_err: torch.Tensor | None):
    """Measure the options on ``n_sweep`` networks each and choose one, in two stages:
    every option on the first ``n_sweep // SWEEP_SCREEN`` networks, then the rule's first
    :data:`SWEEP_FINALISTS` on all ``n_sweep``, the choice being made among those. The screen
    ranks by the bounds the options would get on all ``n_sweep`` networks
    (:func:`accuracy_bound` with ``networks``): the examples' noise, which both stages
    share, stays, and the few networks' own noise, which is widest for the most novel
    options, is taken out, so the screen ranks the options as the full count would, at a
    fraction of the cost.

    ``draw(setting, count)`` returns ``count`` codes of one (solver, guidance) setting, the
    same codes for the same count; each mix K averages the first ``n_sweep * K`` of one
    draw, so options differing only in mix share it. ``measure(codes)`` returns the
    [networks, n_val] bool errors of the decoded networks. ``zoo_err`` [N, n_val] is where
    each zoo model errs (None: no novelty, the best accuracy wins). Returns ``(chosen,
    val_acc by option, record)``."""
    from .novelty import max_iou
    groups, wrong = {}, {}
    for o in options:
        groups.setdefault(o._replace(mix=1), []).append(o.mix)
    screen = max(1, n_sweep // SWEEP_SCREEN) if len(options) > SWEEP_FINALISTS else n_sweep
    limit = None if zoo_err is None else \
        float(max_iou(zoo_err, zoo_err, leave_one_out=True).mean()) + NOVELTY_SLACK

    def nets(base, ks):
        every = draw(base, n_sweep * max(ks))
        return {base._replace(mix=k): averaged(every[:n_sweep * k], k) for k in ks}

    def summary(keys, networks=None):
        acc = {o: 1.0 - float(wrong[o].float().mean()) for o in keys}
        if zoo_err is None:
            return acc, None, None, None
        bounds = {o: accuracy_bound(wrong[o], zoo_err, networks=networks) for o in keys}
        novelty = {o: float(max_iou(wrong[o], zoo_err).mean()) for o in keys}
        return acc, {o: b[0] for o, b in bounds.items()}, \
            {o: b[1] for o, b in bounds.items()}, novelty

    def cost(o):
        return (o.passes(guided) or 0, o.guidance, o.mix)

    def ranked(keys):  # by the bounds the options would get on all n_sweep networks
        acc, diff, lower, novelty = summary(keys, n_sweep)
        if zoo_err is None:
            return sorted(keys, key=lambda o: (-acc[o], cost(o)))
        return order_by_bound(diff, lower, novelty, limit, cost=cost)

    for base, ks in groups.items():  # stage 1: every option on the screen's networks
        for o, codes in nets(base, ks).items():
            wrong[o] = measure(codes[:screen])
    finalists = list(options)
    if screen < n_sweep:  # stage 2: the rule's first on the rest of the networks
        finalists = ranked(options)[:SWEEP_FINALISTS]
        for base, ks in groups.items():
            if any(base._replace(mix=k) in finalists for k in ks):
                for o, codes in nets(base, ks).items():
                    if o in finalists:
                        wrong[o] = torch.cat([wrong[o], measure(codes[screen:])])
    s_acc, s_diff, s_lower, s_novelty = summary(options)  # each on what it was measured on

    def among(d):
        return {o: d[o] for o in finalists}
    if zoo_err is None:
        chosen, rule = choose_setting(among(s_acc), None, None, cost=cost)
    else:
        chosen, rule = choose_by_bound(among(s_diff), among(s_lower), among(s_novelty),
                                       limit, cost=cost)
    if screen < n_sweep:
        rule += (f"; among the {len(finalists)} settings the rule ranked first on "
                 f"{screen} networks each")
    why = None
    if zoo_err is not None:  # every option's bound as measured on all n_sweep networks
        bounds = {o: accuracy_bound(wrong[o], zoo_err, networks=n_sweep) for o in options}
        why = undecided({o: b[0] for o, b in bounds.items()},
                        {o: b[1] for o, b in bounds.items()}, s_novelty, limit,
                        zoo_err.shape[1])
    record = {"rule": rule, "novelty_limit": limit, "pass_budget": PASS_BUDGET,
              "accuracy_target": ACC_TARGET, "confidence_z": CONFIDENCE_Z,
              "networks_per_setting": n_sweep, "screen_networks": screen,
              "finalists": len(finalists),
              "undecided": why and {**why, "setting": why["setting"] and why["setting"]._asdict(),
                                    "message": describe_undecided(why, limit)},
              "zoo_val_acc": None if zoo_err is None else 1 - float(zoo_err.float().mean()),
              "grid": [{"method": o.method, "steps": o.steps, "guidance": o.guidance,
                        "mix": o.mix, "passes": o.passes(guided), "val_acc": a,
                        "networks": len(wrong[o]),
                        "val_acc_vs_zoo": s_diff and s_diff[o],
                        "val_acc_lower_bound": s_lower and s_lower[o],
                        "val_novelty": s_novelty and s_novelty[o]}
                       for o, a in s_acc.items()]}
    return chosen, s_acc, record


choose_guidance = choose_setting  # the old name
