"""Typed generator settings, validated once: the flow's training recipe with its velocity
network (:class:`FlowSettings`) and the condition with its normalisation
(:class:`Condition`). Both are saved in the generator's ``config.json`` and compared as a
whole when an interrupted fit resumes; both are rebuilt (and re-validated) when a
generator is read back. Plain Python (no torch): the CLI reads the defaults to build
``generate --help``."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from ..errors import WeightspaceError

if TYPE_CHECKING:
    import torch

VELOCITY_KINDS = ("mlp", "transformer")  # the classes: flow.VELOCITIES
ODE_SOLVERS = ("euler", "midpoint", "rk4", "dopri5")  # ODE solvers for sampling
METHODS = ODE_SOLVERS  # deprecated name (it meant three things in three subpackages)
MAX_MIX = 64  # flow samples averaged into one generated network, at most
# Velocity-network evaluations per ODE step of each fixed-step solver (dopri5: adaptive).
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}
DEFAULT_SOLVER = ("midpoint", 10)  # when only one of --method / --steps is passed
# The sampling settings `generate sample` chooses on the validation split when not passed
# (sample.sample_zoo): classifier-free guidance weight,
GUIDANCE_GRID = (1.0, 1.5, 2.0, 3.0)
# flow samples averaged into one network (in the code, so in the canonical weight space:
# decoding is affine), chosen on validation together with the guidance weight and the ODE
# solver. Averaging removes sampling noise that costs accuracy without pulling samples onto
# one zoo model (docs/results.md, "Sampling settings").
MIX_GRID = (1, 2, 4, 8, 16)
# ODE solvers swept with them. A few Euler steps land between zoo models rather than on one
# (the last step from t = 1 - h returns the flow's estimate of the mean of the zoo models
# compatible with a point at noise level ~h), and cost few passes: with them the budget
# below holds guidance and mixing (docs/results.md, "Sampling settings").
SOLVER_GRID = (("euler", 1), ("euler", 2), ("midpoint", 5))
PASS_BUDGET = 20  # velocity-network passes per generated network, for settings chosen
# Validation accuracies this close count as equal when choosing, and the more novel setting
# wins (docs/results.md, "Sampling settings").
ACC_TOLERANCE = 0.005
# The accuracy target of a generator: its samples' mean accuracy within this of the zoo's.
# The choice on validation accepts a setting when the one-sided lower confidence bound
# (z below) of its paired accuracy difference with the zoo, over the validation examples,
# is within the target: on a small validation split one example is a large step, and a
# setting that only looks accurate by that noise is not taken.
ACC_TARGET = 0.01
CONFIDENCE_Z = 1.645  # one-sided 95%


class GenerateError(WeightspaceError):
    """Bad generator settings, or a generator / zoo that cannot be used as asked."""


class EncodingError(GenerateError):
    """An encoding that does not fit the models or the generator it is used with."""


def passes(method: str, steps: int, guided: bool, mix: int) -> int | None:
    """Velocity-network passes per generated network: the solver's evaluations, twice
    when guided (conditional and unconditional), for each of the ``mix`` flow samples
    averaged into it. None for the adaptive dopri5."""
    per = EVALS_PER_STEP.get(method)
    return None if per is None else per * steps * (2 if guided else 1) * mix


def solver_name(method: str, steps: int) -> str:
    """``euler x2``: a fixed-step solver with its steps; the adaptive dopri5 by name."""
    return method if method not in EVALS_PER_STEP else f"{method} x{steps}"


def check_mix(mix) -> None:
    """``mix`` must be ``"auto"`` or a number of flow samples in [1, MAX_MIX]."""
    if mix != AUTO and (isinstance(mix, bool) or not isinstance(mix, int)
                          or not 1 <= mix <= MAX_MIX):
        raise GenerateError(f"`mix` must be auto or an integer in [1, {MAX_MIX}], got {mix!r}")


@dataclass(frozen=True)
class FlowSettings:
    """How the flow is trained: steps, batch, AdamW learning rate, the velocity network
    (``mlp`` over the code, or ``transformer`` over per-layer tokens of ``token`` numbers
    with ``heads`` heads), minibatch OT coupling, noise scale, EMA decay, seed, and the
    probability of dropping the condition (classifier-free guidance)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    velocity: str = "mlp"
    width: int = 512
    depth: int = 3
    token: int = 256
    heads: int = 4
    ot: bool = True
    sigma: float = 1.0
    ema: float = 0.999
    seed: int = 0
    p_uncond: float = 0.1

    def __post_init__(self):
        def bad(msg):
            raise GenerateError(f"generator setting {msg}")
        for f in fields(self):
            v, want = getattr(self, f.name), type(f.default)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
            elif not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
                bad(f"{f.name} must be {want.__name__}, got {v!r}")
        for name, lo, hi in (("steps", 1, 10**8), ("batch_size", 1, 10**6), ("width", 1, 65536),
                             ("depth", 1, 256), ("token", 1, 10**7), ("heads", 1, 4096),
                             ("seed", 0, 2**63 - 1)):
            if not lo <= getattr(self, name) <= hi:
                bad(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        for name, ok in (("lr", 0 < self.lr <= 100), ("sigma", 0 < self.sigma <= 1e3),
                         ("ema", 0 <= self.ema < 1), ("p_uncond", 0 <= self.p_uncond < 1)):
            if not (ok and math.isfinite(getattr(self, name))):
                bad(f"{name} is out of range: {getattr(self, name)}")
        if self.velocity not in VELOCITY_KINDS:
            bad(f"velocity must be one of {', '.join(VELOCITY_KINDS)}, got {self.velocity!r}")
        if self.velocity == "transformer" and self.width % self.heads:
            bad(f"width {self.width} is not divisible by heads {self.heads}")

    @classmethod
    def keys(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict:
        """The saved record (the token / heads of a transformer only)."""
        d = asdict(self)
        if self.velocity != "transformer":
            d.pop("token")
            d.pop("heads")
        return d

    def velocity_config(self, dim: int, sizes: list[int], cond: int = 0) -> dict:
        """The :func:`~weightspace.generate.flow.make_velocity` config for codes of ``dim``
        numbers (``sizes``: numbers per tensor, for per-layer tokens)."""
        if self.velocity == "transformer":
            return {"kind": "transformer", "dim": dim, "token": self.token,
                    "width": self.width, "depth": self.depth, "heads": self.heads,
                    "sizes": list(sizes), "cond": cond}
        return {"kind": "mlp", "dim": dim, "width": self.width, "depth": self.depth,
                "cond": cond}


@dataclass(frozen=True)
class Condition:
    """A per-model scalar the generator is conditioned on, with the zoo's statistics of it:
    training normalises by ``mean`` / ``std``; sampling resolves ``"max"`` / ``"min"`` /
    ``"mean"`` to the zoo's value."""

    name: str
    mean: float
    std: float
    min: float
    max: float

    def __post_init__(self):
        ok = isinstance(self.name, str) and all(
            isinstance(getattr(self, k), (int, float)) and not isinstance(getattr(self, k), bool)
            and math.isfinite(getattr(self, k)) for k in ("mean", "std", "min", "max"))
        if not ok or self.std <= 0:
            raise GenerateError("condition must have a name and finite mean, std > 0, min "
                                "and max")

    @classmethod
    def fit(cls, name: str, values: torch.Tensor) -> "Condition":
        v = values.double()
        return cls(name, float(v.mean()), float(v.std(unbiased=False)) or 1.0,
                   float(v.min()), float(v.max()))

    @classmethod
    def from_dict(cls, d, where: str = "condition") -> "Condition | None":
        if d is None:
            return None
        if not isinstance(d, dict) or set(d) != {"name", "mean", "std", "min", "max"}:
            raise GenerateError(f"{where}: must be null or an object with name, mean, std > 0, "
                                f"min and max")
        try:
            return cls(**d)
        except GenerateError as e:
            raise GenerateError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def normalise(self, values):
        return (values - self.mean) / self.std

    def target(self, value: float | str) -> float:
        """A value in the condition's own units: a number, or the zoo's max / min / mean."""
        if isinstance(value, str):
            if value in ("max", "min", "mean"):
                return getattr(self, value)
            try:
                value = float(value)
            except ValueError:
                raise GenerateError(f"`condition` must be a number, max, min or mean; got "
                                    f"{value!r}") from None
        if not math.isfinite(value):
            raise GenerateError(f"`condition` must be finite, got {value}")
        return float(value)


# ---------------------------------------------------------------- the best recipe by default
# What `generate fit` / `generate sample` do when a setting is not passed: the project's
# own measurements (docs/results.md, "Generator defaults") chose them. Every default taken
# is recorded with its reason (``config.json`` "defaults", the sample manifest's settings
# "defaults") and printed.
AUTO = "auto"
OFF = "none"
EVIDENCE = "docs/results.md#generator-defaults"  # where the measurements behind them are
DEFAULT_CONDITIONS = ("val_acc", "train_loss")  # the first every finished model has


def lower_is_better(name: str) -> bool:
    """Whether the zoo's best value of a condition is its lowest (losses and errors)."""
    return name.endswith(("loss", "err", "error"))


def best_value(name: str) -> str:
    """``"min"`` or ``"max"``: the zoo's best value of the condition ``name``."""
    return "min" if lower_is_better(name) else "max"


def default_pca(models: int, numbers: int, velocity: str) -> tuple[bool, str]:
    """A PCA code whenever the zoo has fewer models than encoded numbers (the code is then
    smaller than the weights and exact on every training model), unless the velocity is the
    transformer (it models per-layer tokens of the full encoding)."""
    if velocity == "transformer":
        return False, "the transformer velocity models the full encoding"
    if models < numbers:
        return True, f"{models} models < {numbers} parameters"
    return False, f"{models} models >= {numbers} parameters: the code would be no smaller"


def default_condition(entries: list[dict], names: tuple[str, ...] = DEFAULT_CONDITIONS
                      ) -> tuple[str | None, str]:
    """The first of ``names`` every finished model has a numeric value of that is not the
    same for all (a constant condition steers nothing): ``val_acc``, else ``train_loss``.

    ``val_acc`` is measured on the validation split the sampling settings are chosen on, so
    a generator steered to its best value reads higher against the zoo there than on test
    (+0.70 points on average over 12 held-out zoos, up to 2.3 on ResNet-20); steered by
    ``train_loss`` the gap is +0.10, yet fewer zoos meet every target (4 of 12 against 6:
    the honest choice more often keeps near-copies). docs/results.md, "The condition and
    the validation split"."""
    why = []
    for name in names:
        vals = [(e.get("metrics") or {}).get(name) for e in entries]
        if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               and math.isfinite(v) for v in vals):
            why.append(f"not every finished model has a numeric {name}")
        elif len(set(vals)) < 2:
            why.append(f"{name} is the same for every model")
        else:
            return name, "; ".join(why + [f"every finished model has {name}"])
    return None, "; ".join(why)


def default_sampling(cond: "Condition | None") -> dict:
    """How a generator is sampled when nothing is passed: at the zoo's best value of its
    condition, with the guidance weight chosen on validation, as the recipe was measured;
    an unconditional generator plainly (guidance 1)."""
    if cond is None:
        return {"condition": (None, "the generator is unconditional"),
                "guidance": (1.0, "the generator is unconditional")}
    best = best_value(cond.name)
    return {"condition": (best, f"the zoo's best {cond.name}, its {best}imum"),
            "guidance": (AUTO, "weight chosen on the validation split")}


def default_record(value, why: str) -> dict:
    """What ``config.json`` / the sample manifest keep for one default taken."""
    return {"value": value, "why": why, "evidence": EVIDENCE}


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def describe_defaults(defaults: dict) -> str:
    """One line for a summary: ``defaults: pca=True (why); condition=val_acc (why) [...]``."""
    if not defaults:
        return "defaults: none taken (every setting was passed)"
    return "defaults: " + "; ".join(
        f"{k}={d['value']}" + (f" -> {_show(d['chosen'])}" if "chosen" in d else "") +
        f" ({d['why']})" for k, d in defaults.items()) + \
        f" [measured best: {EVIDENCE}; pass the option to turn a default off]"


MAX_ODE_STEPS = 10_000


@dataclass(frozen=True)
class SampleSettings:
    """How networks are drawn from a generator, validated once (the CLI, ``run_generation``
    and ``sample_zoo`` all build one): the ODE solver (``method``, ``steps``), the
    classifier-free guidance weight, ``mix`` (flow samples averaged into one network) and
    the ``condition`` value.

    ``None`` means "the recipe's default": the solver, guidance and mix are then chosen on
    the validation split (``"auto"`` asks for that explicitly for guidance and mix);
    passing one of ``method`` / ``steps`` fixes the solver, the other from
    :data:`DEFAULT_SOLVER`. ``condition`` is a number in the units of the zoo metric the
    generator was fitted on, ``"max"`` / ``"min"`` / ``"mean"``, ``"none"`` (unconditional)
    or ``"auto"`` (the recipe's: the zoo's best value). ``correction`` is how each sample's
    statistics are corrected before it is measured and written: ``bn`` (BatchNorm
    recalibrated on train data), ``repair`` (every correctable unit set REPAIR-style to the
    mixture of the zoo models' statistics that the sample's code weights imply, folded
    into the weights), ``none``, or ``auto`` (``bn`` for BatchNorm nets, ``repair`` for
    LayerNorm / GroupNorm nets, ``none`` for nets without normalisation, where REPAIR
    measured no better on the MLP demo)."""

    method: str | None = None
    steps: int | None = None
    guidance: float | str | None = None
    mix: int | str | None = None
    condition: float | str | None = AUTO
    correction: str = AUTO

    def __post_init__(self):
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(
                self.steps, int) or not 1 <= self.steps <= MAX_ODE_STEPS):
            raise GenerateError(f"`steps` must be an integer in [1, {MAX_ODE_STEPS}], got "
                                f"{self.steps!r}")
        if self.method is not None and self.method not in ODE_SOLVERS:
            raise GenerateError(f"unknown ODE method {self.method!r}; methods: "
                                f"{', '.join(ODE_SOLVERS)}")
        g = self.guidance
        if isinstance(g, str) and g != AUTO:
            try:
                g = float(g)
            except ValueError:
                raise GenerateError(f"`guidance` must be a number or auto; got {g!r}") from None
        if g is not None and g != AUTO and (isinstance(g, bool) or not isinstance(
                g, (int, float)) or not math.isfinite(g)):
            raise GenerateError(f"`guidance` must be a finite number or auto; got {g!r}")
        object.__setattr__(self, "guidance", g if g is None or g == AUTO else float(g))
        if self.mix is not None:
            check_mix(self.mix)
        if self.correction not in (AUTO, "bn", "repair", "none"):
            raise GenerateError(f"`correction` must be auto, bn, repair or none; got "
                                f"{self.correction!r}")
        c = self.condition
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float, str))
                              or (isinstance(c, float) and not math.isfinite(c))):
            raise GenerateError(f"`condition` must be a number, max, min, mean, auto or none; "
                                f"got {c!r}")

    @property
    def solver_auto(self) -> bool:
        """Neither ``method`` nor ``steps`` passed: the solver is chosen on validation."""
        return self.method is None and self.steps is None

    @property
    def solver(self) -> tuple[str, int]:
        """(method, steps) with the missing one from :data:`DEFAULT_SOLVER`."""
        return (DEFAULT_SOLVER[0] if self.method is None else self.method,
                DEFAULT_SOLVER[1] if self.steps is None else self.steps)

    def to_dict(self) -> dict:
        return asdict(self)

