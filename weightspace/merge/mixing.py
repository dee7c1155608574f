"""Weighted mixtures of N models with the statistic correction, and the mixability probe.

A generator that samples affine mixtures of canonical zoo models can only be accurate and
new where *mixtures* are accurate. :func:`mix` makes one mixture ``sum_i w_i theta_i``
(weights summing to 1) and corrects its hidden units' statistics:

* ``bn``: BatchNorm statistics recomputed on train data (the BN reset);
* ``repair``: every correctable unit's mean and std on train data set to the weighted mix
  of the endpoints' (REPAIR, Jordan et al. 2022, from two endpoints to N weighted ones),
  folded into the weights (:func:`.repair.repair`), for LayerNorm, GroupNorm and no-norm
  nets (on a BatchNorm net REPAIR is the BN reset);
* ``auto``: ``bn`` for nets with BatchNorm, ``repair`` for nets with other correctable
  modules, else ``none``.

:func:`mixability` measures how much random means of 2 and 4 canonical models lose against
the single models on validation data, with the correction samples will get, and says in one
line what to do when they lose more than the accuracy target; :func:`choose_canonicalization`
runs it per alignment method and keeps the best.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import WeightspaceError
from ..features import feature_stats
from ..evaluation import CALIBRATION_EXAMPLES, has_batchnorm, loss_acc, recalibrate_state
from ..functional import scratch
from ..symmetry.structure import Spec
from .repair import repair, repairable

CORRECTIONS = ("auto", "bn", "repair", "none")
# The generator's accuracy target: samples within 1 point of the zoo's accuracy (issue 24).
# Mixtures that lose more than this against single models cannot give such samples.
MIX_TARGET = 0.01
SIZES = (2, 4)  # models per mixture the probe draws
DRAWS = 3       # random mixtures per size


class MixError(WeightspaceError):
    """A mixture that cannot be made (weights, models, correction)."""


def resolve_correction(model: nn.Module, spec: Spec | None, correction: str = "auto") -> str:
    """``bn`` / ``repair`` / ``none``: what ``correction`` (``auto``: by the net's
    normalisation) means for ``model``."""
    if correction not in CORRECTIONS:
        raise MixError(f"correction must be one of {', '.join(CORRECTIONS)}, got "
                       f"{correction!r}")
    if correction != "auto":
        return correction
    if has_batchnorm(model):
        return "bn"
    return "repair" if spec is not None and repairable(spec, model) else "none"


def _calibration(data) -> torch.Tensor:
    """Train inputs to calibrate on: a Dataset's train split (its first
    CALIBRATION_EXAMPLES) or a tensor."""
    if isinstance(data, torch.Tensor):
        return data
    try:
        return data["train"][0][:CALIBRATION_EXAMPLES]
    except (KeyError, TypeError, IndexError):
        raise MixError("data must be a dataset with a train split or a tensor of train "
                       "inputs") from None


def endpoint_stats(spec: Spec, model: nn.Module, states: list[dict], x: torch.Tensor
                   ) -> list[dict]:
    """Per model: ``{module: (mean, std)}`` of every REPAIR-correctable unit on ``x``."""
    targets = repairable(spec, model)
    return [feature_stats(model, s, targets, x) for s in states]


def mix(models_or_states: list, weights: list[float], spec: Spec | None = None,
        correction: str = "auto", data=None, model: nn.Module | None = None,
        stats: list[dict] | None = None) -> dict:
    """The state dict ``sum_i weights[i] * models[i]`` with its statistics corrected.

    ``models_or_states``: ``nn.Module`` s or state dicts of one architecture (state dicts
    need ``model``, an instance of it); ``weights``: one per model, summing to 1 (an affine
    combination); ``correction``: ``auto`` / ``bn`` / ``repair`` / ``none`` (module
    docstring); ``data``: a dataset (its train split) or a tensor of train inputs, needed
    by ``bn`` and ``repair``; ``spec``: the symmetry spec, needed by ``repair`` (which
    units it corrects); ``stats``: the endpoints' statistics (:func:`endpoint_stats`) when
    the caller already has them. Integer buffers come from the first model."""
    items = list(models_or_states)
    if not items:
        raise MixError("models_or_states must hold at least one model")
    if len(weights) != len(items):
        raise MixError(f"weights must be one per model ({len(items)}), got {len(weights)}")
    w = [float(v) for v in weights]
    if not all(math.isfinite(v) for v in w) or abs(sum(w) - 1.0) > 1e-6:
        raise MixError(f"weights must be finite and sum to 1, got sum {sum(w):.6g}")
    if isinstance(items[0], nn.Module):
        model = model or items[0]
        states = [m.state_dict() for m in items]
    else:
        states = items
        if model is None and correction != "none":
            raise MixError("model (an instance of the architecture) is needed to correct "
                           "a mixture of state dicts")
    first = states[0]
    mixed = {k: sum(wi * s[k].to(torch.float64) for wi, s in zip(w, states)).to(v.dtype)
             if v.is_floating_point() else v.clone() for k, v in first.items()}
    if correction == "none":
        return mixed
    how = resolve_correction(model, spec, correction)
    if how == "none":
        return mixed
    if data is None:
        raise MixError(f"correction {how!r} needs train data (data=)")
    x = _calibration(data)
    if how == "bn":
        return recalibrate_state(scratch(model), mixed, x)
    if spec is None:
        raise MixError("correction 'repair' needs the symmetry spec (spec=)")
    stats = stats if stats is not None else endpoint_stats(spec, model, states, x)
    if len(stats) != len(states):
        raise MixError(f"stats must be one per model ({len(states)}), got {len(stats)}")
    return repair(spec, model, mixed, stats, w, x)


# ---------------------------------------------------------------------- the probe
@dataclass
class MixabilityReport:
    """Validation accuracy of single canonical models and of random means of ``sizes``
    of them (``mixtures[str(k)]``: one accuracy per draw), with the ``verdict``."""

    method: str
    correction: str
    singles: list[float]
    mixtures: dict[str, list[float]]
    target: float = MIX_TARGET
    draws: int = DRAWS
    seed: int = 0
    examples: int = 0
    verdict: str = ""        # "mixable" or "not mixable"
    advice: str | None = None  # the one plain line when not mixable
    notes: list[str] = field(default_factory=list)

    @property
    def single_mean(self) -> float:
        return statistics.fmean(self.singles)

    @property
    def single_min(self) -> float:
        return min(self.singles)

    def mixture_mean(self, k: int | str) -> float:
        return statistics.fmean(self.mixtures[str(k)])

    @property
    def loss(self) -> float:
        """What the worst mixture size loses against the single models' mean accuracy."""
        return self.single_mean - min(self.mixture_mean(k) for k in self.mixtures)

    @property
    def score(self) -> float:
        """Mean validation accuracy of the mixtures (all sizes): higher is more mixable."""
        return statistics.fmean(self.mixture_mean(k) for k in self.mixtures)

    def to_dict(self) -> dict:
        """The fields and the derived numbers (singles' mean / min, loss, score)."""
        return {**asdict(self), "single_mean": self.single_mean, "single_min": self.single_min,
                "loss": self.loss, "score": self.score}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "MixabilityReport":
        try:
            return cls.from_dict(json.loads(text))
        except ValueError as e:
            raise MixError(f"not a mixability report ({e})") from None

    @classmethod
    def from_dict(cls, d: dict) -> "MixabilityReport":
        """The report back from :meth:`to_dict` (derived numbers are recomputed)."""
        try:
            names = {f for f in cls.__dataclass_fields__}
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, AttributeError) as e:
            raise MixError(f"not a mixability report ({e})") from None

    def table(self) -> list[str]:
        """The lines a command prints: singles, each mixture size, the verdict."""
        rows = [f"mixability of {len(self.singles)} canonical models ({self.method}, "
                f"correction {self.correction}, {self.examples} validation examples, "
                f"{self.draws} draws per size, seed {self.seed})",
                f"  single models   mean {self.single_mean:.4f}  min {self.single_min:.4f}"]
        for k, accs in self.mixtures.items():
            rows.append(f"  mean of {k:<7} mean {statistics.fmean(accs):.4f}  min "
                        f"{min(accs):.4f}  ({', '.join(f'{a:.4f}' for a in accs)})")
        rows.append(f"verdict: {self.verdict} (mixtures lose {self.loss:+.4f} against "
                    f"single models; target {self.target:g})")
        if self.advice:
            rows.append(self.advice)
        return rows


def _advice(report: MixabilityReport, levers: list[str]) -> str:
    sizes = " / ".join(f"{report.mixture_mean(k):.2f}" for k in report.mixtures)
    return (f"mixtures of {' / '.join(report.mixtures)} canonical models reach {sizes} "
            f"validation accuracy against {report.single_mean:.2f} for single models: "
            f"generated samples, which mix canonical models, may be near-copies of zoo "
            f"models or inaccurate; for accurate mixtures use {', or '.join(levers)}")


def levers(method: str, correction: str, model: nn.Module, spec: Spec | None,
           init: str | None = None, tried: tuple[str, ...] = ()) -> list[str]:
    """What can make this zoo's mixtures accurate that is not already in use, nor
    measured no better (``tried``: the canonicalizations the caller compared)."""
    out = []
    if method not in ("am", "ste") and not {"am", "ste"} & set(tried):
        out.append("activation-matching canonicalization (method am)")
    if correction != "repair" and not has_batchnorm(model) and spec is not None \
            and repairable(spec, model):
        out.append("the REPAIR correction (correction repair)")
    if init not in ("shared", "spawn"):
        out.append("a shared-initialisation zoo (zoo train --shared-init)")
    return out or ["a zoo spawned later in training (zoo train --spawn-epoch K)"]


def _subsets(n: int, k: int, draws: int, gen: torch.Generator) -> list[list[int]]:
    """``draws`` random k-subsets of range(n), distinct while there are enough of them."""
    out, seen = [], set()
    total = math.comb(n, k)
    while len(out) < draws:
        idx = sorted(torch.randperm(n, generator=gen)[:k].tolist())
        if tuple(idx) in seen and len(seen) < total:
            continue
        seen.add(tuple(idx))
        out.append(idx)
    return out


@torch.no_grad()
def mixability(states: list[dict], model: nn.Module, spec: Spec | None, data_val,
               data_train, correction: str = "auto", draws: int = DRAWS, seed: int = 0,
               sizes: tuple[int, ...] = SIZES, target: float = MIX_TARGET,
               method: str = "given", init: str | None = None,
               tried: tuple[str, ...] = ()) -> MixabilityReport:
    """Validation accuracy of random equal-weight means of ``sizes`` models of the
    canonical ``states`` (``draws`` each, distinct models, drawn from ``seed``), corrected
    as samples will be (:func:`mix`), against the single models'.

    ``data_val``: ``(x, y)`` validation split (never test); ``data_train``: train inputs
    or a dataset (the correction calibrates there); ``method``: how the states were
    canonicalized (for the report and the advice); ``init``: the zoo's initialisation
    kind, if known; ``tried``: canonicalizations measured against this one (the advice
    does not suggest them). The verdict is ``not mixable`` when the worst size's mean accuracy is
    more than ``target`` below the singles' mean; ``advice`` then says which lever to use.
    """
    n = len(states)
    if n < 2:
        raise MixError(f"states must hold at least two models, got {n}")
    if draws < 1:
        raise MixError(f"draws must be >= 1, got {draws}")
    xv, yv = data_val
    net = scratch(model)
    how = resolve_correction(net, spec, correction)
    x = _calibration(data_train) if how != "none" else None
    stats = endpoint_stats(spec, net, states, x) if how == "repair" else None
    singles = [loss_acc(net, xv, yv, state=s)[1] for s in states]
    gen = torch.Generator().manual_seed(seed)
    mixtures = {}
    notes = []
    for k in sizes:
        if k > n:
            notes.append(f"mean of {k} skipped: the zoo has {n} models")
            continue
        accs = []
        for idx in _subsets(n, k, draws, gen):
            mixed = mix([states[i] for i in idx], [1.0 / k] * k, spec, how, x, net,
                        [stats[i] for i in idx] if stats is not None else None)
            accs.append(loss_acc(net, xv, yv, state=mixed)[1])
        mixtures[str(k)] = accs
    if not mixtures:
        raise MixError(f"no mixture size in {tuple(sizes)} fits {n} models")
    rep = MixabilityReport(method, how, singles, mixtures, target, draws, seed, len(yv),
                           notes=notes)
    ok = rep.loss <= target
    rep.verdict = "mixable" if ok else "not mixable"
    if not ok:
        rep.advice = _advice(rep, levers(method, how, net, spec, init, tried))
    return rep


__all__ = ["CORRECTIONS", "MIX_TARGET", "MixError", "MixabilityReport", "endpoint_stats",
           "levers", "mix", "mixability", "resolve_correction"]
