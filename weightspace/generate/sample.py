"""Sample a zoo of new networks from a generator: settle the sampling settings (the
recipe's defaults, or chosen on validation: :mod:`~weightspace.generate.choose`), draw the
codes, decode, recalibrate BatchNorm on train data, measure and write them as an ordinary
zoo (``manifest.json`` + ``models/<id>.safetensors``) that ``zoo eval``, ``lmc`` and
``merge`` read directly."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path


from .. import __version__
from ..checkpoint import save_checkpoint
from ..errors import check_output
from ..evaluation import CALIBRATION_EXAMPLES, errors, metrics, recalibrate
from ..results import Result
from ..zoo.datasets import load_dataset
from ..zoo.store import FORMAT, FORMAT_VERSION, Zoo
from .choose import (SWEEP_CALIBRATION, SWEEP_NUMBERS, Setting, averaged, by_guidance,
                     candidates, sweep, sweep_samples)
from .config import (AUTO, GUIDANCE_GRID, MIX_GRID, OFF, SOLVER_GRID, Condition,
                     GenerateError, SampleSettings, default_record, default_sampling,
                     solver_name)
from .flow import sample
from .store import load_generator, load_zoo_errors

MAX_SAMPLES = 100_000


@dataclass
class SampleResult(Result):
    """What :func:`sample_zoo` drew: where, how many, the settings used (with the
    validation sweep that chose them), the cost (ODE evaluations, velocity-network passes
    per network, seconds drawing and decoding), the mean test accuracy, the defaults."""
    out: str
    n: int
    method: str | None = None
    steps: int | None = None
    guidance: float | None = None
    mix: int = 1
    condition: float | None = None
    nfe: int | None = None
    network_passes: int | None = None
    seconds: float | None = None
    seconds_per_model: float | None = None
    guidance_val_acc: dict | None = None
    guidance_choice: dict | None = None
    mean_test_acc: float | None = None
    defaults: dict = field(default_factory=dict)
    skipped: bool = False


def check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise GenerateError(f"the number of samples must be in [1, {MAX_SAMPLES}], got {n!r}")


def recalibrated_states(states: list[dict], arch: str, data,
                        examples: int = CALIBRATION_EXAMPLES) -> list[dict]:
    """Sampled models with their BatchNorm statistics recomputed on the train split."""
    return recalibrate(arch, states, data["train"][0][:examples])


def _has_layer_norm(net) -> bool:
    """Whether ``net`` normalises with LayerNorm / GroupNorm (channel-first ones too)."""
    from torch import nn
    return any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "LayerNorm" in type(m).__name__
               for m in net.modules())


class Correction:
    """How samples' statistics are corrected before they are measured (``how``: ``bn``,
    ``repair`` or ``none``; see :class:`~.config.SampleSettings`).

    ``repair``: a PCA sample decodes to ``sum_i w_i zoo_i`` (``Encoding.zoo_weights``), an
    affine mixture of the canonical zoo; its units' statistics are set to the same mixture
    of the zoo models' per-unit statistics (measured once, on train data), with the weights
    clipped at zero and renormalised so that every target std is a positive mixture, and
    the correction is folded into the weights (:func:`~weightspace.merge.repair.repair`)."""

    def __init__(self, how: str, arch: str, data, enc, zoo_dir):
        self.how, self.arch, self.data, self.enc = how, arch, data, enc
        if how != "repair":
            return
        from ..arch import build
        from ..merge.mixing import endpoint_stats
        from ..symmetry.cache import zoo_spec
        from .store import load_zoo_states
        from ..merge.repair import repairable
        _, entries, states, _ = load_zoo_states(zoo_dir)
        self.net = build(arch)
        self.spec = zoo_spec(zoo_dir, arch, None, states[0])
        if not repairable(self.spec, self.net):
            self.how = "none"  # nothing REPAIR can correct in this net
            return
        self.x = data["train"][0][:CALIBRATION_EXAMPLES]
        self.stats = endpoint_stats(self.spec, self.net, states, self.x)

    @classmethod
    def resolve(cls, asked: str, arch: str, data, enc, zoo_dir):
        """The correction ``asked`` for (``auto``: by the net's normalisation), and why."""
        from ..arch import build
        from ..evaluation import has_batchnorm
        net = build(arch)
        if asked == "auto":
            if has_batchnorm(net):
                asked, why = "bn", "BatchNorm statistics recomputed on train data"
            elif enc.mix is None:
                asked, why = "none", "not a PCA code: no zoo weights to mix statistics by"
            elif not _has_layer_norm(net):
                asked, why = "none", ("no normalisation layer: REPAIR measured no better "
                                      "than none on the MLP demo (docs/results.md)")
            elif not Zoo(zoo_dir).exists():
                asked, why = "none", f"the zoo {zoo_dir} is not there to take statistics from"
            else:
                asked, why = "repair", ("LayerNorm / GroupNorm: REPAIR to the code's mixture "
                                        "of the zoo's statistics")
            return cls(asked, arch, data, enc, zoo_dir), why
        if asked == "repair" and enc.mix is None:
            raise GenerateError("correction 'repair' needs a PCA code (zoo weights)")
        return cls(asked, arch, data, enc, zoo_dir), "given"

    def __call__(self, states: list[dict], codes, examples: int = CALIBRATION_EXAMPLES
                 ) -> list[dict]:
        if self.how == "bn":
            return recalibrated_states(states, self.arch, self.data, examples)
        if self.how != "repair":
            return states
        from ..merge.repair import repair
        out = []
        for s, c in zip(states, codes):
            w = self.enc.zoo_weights(c).clamp_min(0)
            w = (w / w.sum()).tolist()
            out.append(repair(self.spec, self.net, s, self.stats, w, self.x[:examples]))
        return out


def resolve(ss: SampleSettings, cn: Condition | None):
    """(condition value, guidance, mix, defaults): the recipe's choice for each setting not
    passed (see :func:`~.config.default_sampling`), recorded with its reason."""
    defaults, recipe = {}, default_sampling(cn)
    condition, guidance, mix = ss.condition, ss.guidance, ss.mix
    if isinstance(condition, str) and condition == AUTO:
        condition, why = recipe["condition"]
        defaults["condition"] = default_record(OFF if condition is None else condition, why)
    elif isinstance(condition, str) and condition == OFF:
        condition = None
    if guidance is None:
        guidance, why = recipe["guidance"] if condition is not None else \
            (1.0, "no condition to steer by")
        defaults["guidance"] = default_record(guidance, why)
    if ss.solver_auto:
        defaults["solver"] = default_record(AUTO, "ODE solver and steps chosen on the "
                                                  "validation split with the other settings")
    if mix is None:
        mix = AUTO
        defaults["mix"] = default_record(mix, "samples averaged per network, chosen on the "
                                              "validation split with the other settings")
    if condition is not None and cn is None:
        raise GenerateError("the generator was fitted without a condition; sample it with "
                            "`condition`='none'")
    if guidance == AUTO and condition is None:
        raise GenerateError("`guidance` auto needs a `condition` (guidance steers by it)")
    return condition, guidance, mix, defaults


def _write(zoo: Zoo, codes, enc, arch, data, record: dict, correct: Correction
           ) -> tuple[list[dict], float]:
    """Decode, recalibrate, measure and write the networks a group at a time (all at once
    for models up to ``SWEEP_NUMBERS`` weights in all); returns (entries, decode seconds)."""
    n, entries, seconds = len(codes), [], 0.0
    group = max(1, SWEEP_NUMBERS // max(1, sum(math.prod(sh) for sh in enc.shapes)))
    for lo in range(0, n, group):
        t = time.perf_counter()
        states = [enc.decode(x) for x in codes[lo:lo + group]]
        seconds += time.perf_counter() - t          # drawing and decoding are timed
        states = correct(states, codes[lo:lo + group])
        ms = metrics(arch, states, data, "cpu", splits=("val", "test"))
        for i, (s, m) in enumerate(zip(states, ms), start=lo):
            mid = f"g{i:04d}"
            save_checkpoint(zoo.model_path(mid), s, arch,
                            {"dataset": data.name, "metrics": m,
                             "generated": {**record, "index": i}})
            entries.append({"id": mid, "seed": record["seed"], "index": i, "status": "done",
                            "file": f"models/{mid}.safetensors", "metrics": m})
    return entries, seconds


def _choose(options: list[Setting], draw, enc, arch: str, data, n: int, guided: bool,
            zoo_err, correct: Correction):
    """(chosen, validation accuracy by option, record): the only option, or the one
    :func:`~.choose.sweep` picks on the validation split."""
    if len(options) == 1:
        return options[0], None, None

    def measure(codes):
        drawn = correct([enc.decode(x) for x in codes], codes, SWEEP_CALIBRATION)
        return errors(arch, drawn, *data["val"])
    n_sweep = sweep_samples(n, sum(math.prod(sh) for sh in enc.shapes))
    return sweep(options, lambda st, k: draw(st, k)[0], measure, n_sweep, guided, zoo_err)


def sample_zoo(gen_dir, out_dir, n: int, steps: int | None = None, method: str | None = None,
               seed: int = 0, data_root=None, condition: float | str | None = AUTO,
               guidance: float | str | None = None, mix: int | str | None = None, *,
               settings: SampleSettings | None = None) -> SampleResult:
    """Sample ``n`` networks into a new zoo directory (with val/test metrics).

    The sampling settings (``settings``, or the same fields as arguments) are the ODE
    solver (``method``, ``steps``), the classifier-free guidance weight and ``mix`` K
    (each network is the average of K flow samples, in the code): see
    :class:`~.config.SampleSettings`. Each one not passed is chosen on the validation
    split, jointly, from :data:`~.config.SOLVER_GRID`, :data:`~.config.GUIDANCE_GRID` and
    :data:`~.config.MIX_GRID` within the pass budget, by :func:`~.choose.choose_setting`
    on :func:`~.choose.sweep_samples` networks per setting. The test split never chooses.
    ``condition`` steers a conditional generator (a value, ``"max"`` / ``"min"`` /
    ``"mean"``, or ``"none"``); not passed: the zoo's best value (the lowest of a loss,
    :func:`~.config.best_value`). Each default taken is in
    the result's and the manifest's ``defaults``, with the value chosen. (The settings are
    also separate parameters, as before :class:`~.config.SampleSettings`, so that existing
    callers keep working; that is why this function takes so many.)"""
    check_n(n)
    ss = settings or SampleSettings(method=method, steps=steps, guidance=guidance, mix=mix,
                                    condition=condition)
    check_output(out_dir, "dir")
    if Zoo(out_dir).exists():
        raise GenerateError(f"{out_dir} already holds a zoo; choose another `out`")
    cfg, enc, model = load_generator(gen_dir)
    cn = Condition.from_dict(cfg.get("condition"))
    condition, guidance, mix, defaults = resolve(ss, cn)
    c = None
    if condition is not None:
        condition = cn.target(condition)
        c = cn.normalise(condition)
    data = load_dataset(cfg["dataset"].get("name", ""), data_root or
                        cfg["dataset"].get("data_root"))
    arch = cfg["arch"]
    correct, why = Correction.resolve(ss.correction, arch, data, enc, cfg.get("zoo", ""))
    if ss.correction == AUTO:
        defaults["correction"] = default_record(AUTO, why) | {"chosen": correct.how}

    def draw(st: Setting, count: int):
        return sample(model, count, st.steps, st.method, seed=seed, cond=c,
                      guidance=st.guidance)

    options = candidates(SOLVER_GRID if ss.solver_auto else (ss.solver,),
                         GUIDANCE_GRID if guidance == AUTO else (guidance,),
                         MIX_GRID if mix == AUTO else (mix,), c is not None)
    chosen, val_acc, choice = _choose(options, draw, enc, arch, data, n, c is not None,
                                      load_zoo_errors(Path(gen_dir), len(data["val"][1])),
                                      correct)
    method, steps, guidance, mix = chosen
    for name, value in (("guidance", guidance), ("mix", mix),
                        ("solver", solver_name(method, steps))):
        if name in defaults and defaults[name]["value"] == AUTO:
            defaults[name]["chosen"] = value
    t = time.perf_counter()  # the chosen setting is sampled again: this is the timed run
    codes, nfe = draw(chosen, n * mix)
    codes = averaged(codes, mix)
    t_sample = time.perf_counter() - t
    # guided evaluations run cond + uncond, and each network averages ``mix`` samples
    n_passes = nfe * (2 if c is not None and guidance != 1.0 else 1) * mix
    record = {"generator": str(gen_dir), "seed": seed, "method": method, "steps": steps,
              "condition": condition, "guidance": guidance, "mix": mix,
              "correction": correct.how}
    zoo = Zoo(out_dir)
    entries, t_decode = _write(zoo, codes, enc, arch, data, record, correct)
    t_sample += t_decode
    res = SampleResult(out=str(out_dir), n=n, method=method, steps=steps, guidance=guidance,
                       mix=mix, condition=condition, nfe=nfe, network_passes=n_passes,
                       seconds=t_sample, seconds_per_model=t_sample / n,
                       guidance_val_acc=by_guidance(val_acc, chosen),
                       guidance_choice=choice,
                       mean_test_acc=sum(e["metrics"]["test_acc"] for e in entries) / n,
                       defaults=defaults)
    zoo.write({"format": FORMAT, "version": FORMAT_VERSION, "weightspace_version": __version__,
               "arch": arch, "dataset": cfg["dataset"], "models": entries,
               "settings": {"generated_from": str(gen_dir), "n": n, "steps": steps,
                            "method": method, "seed": seed, "condition": condition,
                            "guidance": guidance, "mix": mix, "correction": correct.how,
                            "condition_name": cn.name if cn else None,
                            "guidance_val_acc": res.guidance_val_acc,
                            "guidance_choice": choice, "defaults": defaults},
               "generation": {"nfe": nfe, "network_passes": n_passes, "seconds": t_sample,
                              "seconds_per_model": t_sample / n}})
    return res


__all__ = ["MAX_SAMPLES", "SampleResult", "sample_zoo"]
