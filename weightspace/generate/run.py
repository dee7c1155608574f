"""The whole generation path in one call: canonicalize -> fit -> sample -> audit.

``run_generation(zoo, out)`` writes ``out/canonical`` (only when the zoo's manifest has no
``canonicalization`` record: weight matching to the barycenter), ``out/generator``,
``out/samples`` and ``out/report``. Each stage is resumable: a stage whose outputs are
complete is skipped with a note (after checking they were made from the same inputs and
settings), an interrupted fit resumes from its ``state.safetensors`` as ``fit`` does, and
when a stage runs again the later stages' outputs, now out of date, are removed and redone.
Every setting not passed is the best recipe's default (see ``config.default_*``).
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..arch import build
from ..checkpoint import atomic_write_text, check_state, read_checkpoint
from ..errors import check_output, make_dir
from ..results import Result
from ..zoo.store import Zoo, ZooError, finished
from .config import (AUTO, OFF, FlowSettings, GenerateError, SampleSettings,
                     describe_defaults, solver_name)
from .fit import FitResult, check_fit_args, fit_generator
from .sample import SampleResult, check_n, sample_zoo

STAGES = ("canonicalize", "fit", "sample", "audit")


def _same_dir(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


_OLD_SAMPLE_ARGS = {"sample_steps": "steps", "method": "method", "guidance": "guidance",
                    "mix": "mix", "sample_condition": "condition"}


def _sampling(sampling: SampleSettings | None, overrides: dict) -> SampleSettings:
    """The sampling settings: ``sampling``, or built from the keyword arguments this
    function took before :class:`SampleSettings` (``sample_steps``, ``method``,
    ``guidance``, ``mix``, ``sample_condition``), which are taken out of ``overrides``."""
    old = {new: overrides.pop(k) for k, new in _OLD_SAMPLE_ARGS.items() if k in overrides}
    if sampling is not None and old:
        raise GenerateError(f"pass the sampling settings either as sampling= or as "
                            f"{', '.join(sorted(old))}, not both")
    return sampling if sampling is not None else SampleSettings(**old)


def _finished_fit(gen: Path, canon: Path, s: FlowSettings, pca, condition) -> dict | None:
    """The config of a generator in ``gen`` that finished training on ``canon`` with these
    settings; None if there is none (or it is unfinished: ``fit`` resumes it)."""
    try:
        cfg = json.loads((gen / "config.json").read_text())
        step = json.loads((gen / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(cfg, dict) or not (gen / "generator.safetensors").is_file() \
            or "train_seconds" not in cfg or step != (cfg.get("train") or {}).get("steps"):
        return None
    why = None
    if not isinstance(cfg.get("zoo"), str) or not _same_dir(cfg["zoo"], canon):
        why = f"on {cfg.get('zoo')!r}, not {canon}"
    elif cfg.get("train") != s.to_dict():
        why = "with other training settings"
    elif pca is not None and (cfg.get("encoding") or {}).get("pca") != pca:
        why = f"with pca={not pca}"
    elif condition not in (AUTO,) and ((cfg.get("condition") or {}).get("name")
                                       != (None if condition == OFF else condition)):
        why = "with another condition"
    if why:
        raise GenerateError(f"{gen} holds a generator fitted {why}; use another output directory or "
                            f"remove {gen}")
    return cfg


def _finished_samples(smp: Path, gen: Path, n, seed, ss: SampleSettings) -> dict | None:
    """The manifest of samples in ``smp`` drawn from ``gen`` with these settings; None if
    sampling has not finished there."""
    if not Zoo(smp).exists():
        return None
    m = Zoo(smp).read()
    st = m.get("settings") or {}
    want = {"n": n, "seed": seed}
    if not ss.solver_auto:  # else the solver was chosen on validation
        want["method"], want["steps"] = ss.solver
    if ss.guidance is not None and ss.guidance != AUTO:
        want["guidance"] = ss.guidance
    if ss.mix is not None and ss.mix != AUTO:
        want["mix"] = ss.mix
    if not isinstance(st.get("generated_from"), str) or not _same_dir(st["generated_from"],
                                                                      gen):
        raise GenerateError(f"{smp} holds samples of another generator ({st.get('generated_from')!r})"
                            f"; use another output directory or remove {smp}")
    diff = [k for k, v in want.items() if st.get(k) != v]
    if diff:
        raise GenerateError(f"{smp} holds samples drawn with other settings ({', '.join(diff)}); "
                            f"use another output directory or remove {smp}")
    return m


@dataclass
class RunResult(Result):
    """The whole path's outputs (directories, the report), one note per stage, and each
    stage's own result."""
    out: str
    canonical: str
    generator: str
    samples: str
    report: str
    stages: dict
    canonicalize: dict | None
    fit: FitResult
    sample: SampleResult
    audit: dict
    seconds: float


class _Stages:
    """The run directory's stages and their notes: each stage says what it does, is
    skipped when its outputs are complete (checked against the inputs), and clears the
    out-of-date outputs of later stages when it runs again."""

    def __init__(self, out: Path, log):
        self.out, self.log, self.notes, self.stale = out, log, {}, False
        self.canon, self.gen = out / "canonical", out / "generator"
        self.smp, self.rep = out / "samples", out / "report"

    def note(self, i: int, name: str, text: str, key: str | None = None) -> None:
        self.notes[key or name] = text
        self.log(f"[{i}/{len(STAGES)}] {name}: {text}")

    def begin(self, i: int, name: str, text: str) -> None:
        """A stage starts: say so, and make sure the run directory exists."""
        self.log(f"[{i}/{len(STAGES)}] {name}: {text}")
        make_dir(self.out)

    def done(self, i: int, name: str, t: float, details: str = "") -> None:
        """A stage finished: its time and ``details``; later stages are now out of date."""
        self.note(i, name, f"done in {time.perf_counter() - t:.1f} s{details}")
        self.stale = True

    def fresh(self, path: Path, why: str) -> float:
        """A stage's clock; its outputs go when an earlier stage has just run again."""
        if self.stale:
            self.clear(path, why)
        return time.perf_counter()

    def clear(self, path: Path, why: str) -> None:
        if path.exists():
            shutil.rmtree(path)
            self.log(f"      removed out-of-date {path} ({why})")


# The canonicalizations `generate run` chooses among by default (the mixability probe on
# validation data, :func:`~weightspace.merge.probe.choose_canonicalization`): the zoo as it
# is (a shared-initialisation zoo), weight matching and activation matching to the
# barycenter (TransFusion too where the spec has attention heads). STE trains per pair and
# is left to an explicit choice. The probe aligns with at most PROBE_ROUNDS rounds, and the
# canonical zoo it measured best is the one written (not aligned again).
RUN_CANDIDATES = ("none", "wm", "am")
PROBE_ROUNDS = 3
CHOICE = "canonicalization.json"


def _choose_method(st: _Stages, zoo_dir, method: str, seed: int, data_root,
                   keep: dict) -> dict:
    """The canonicalization to use: ``method`` if given, else the probe's choice, kept in
    ``canonicalization.json`` so that a rerun reuses it (``keep`` receives the probe's
    canonical zoo of the chosen method)."""
    path = st.out / CHOICE
    if method != AUTO:
        return {"chosen": method, "rule": "given"}
    if path.is_file():
        try:
            rec = json.loads(path.read_text())
            if isinstance(rec, dict) and isinstance(rec.get("chosen"), str) and \
                    _same_dir(rec.get("zoo", ""), zoo_dir):
                return rec
        except ValueError:
            pass
    from ..canonicalize.methods import ALIGN_METHODS
    from ..merge.probe import choose_canonicalization
    st.begin(1, "canonicalize", "choosing the canonicalization by the mixability probe "
                                f"({', '.join(RUN_CANDIDATES)}, on validation data)")
    cands = RUN_CANDIDATES + (("transfusion",) if "transfusion" in ALIGN_METHODS and
                              _has_heads(zoo_dir) else ())
    rec = choose_canonicalization(zoo_dir, cands, seed=seed, data_root=data_root,
                                  max_rounds=PROBE_ROUNDS, log=lambda s: st.log(f"      {s}"),
                                  keep=keep)
    rec["zoo"] = str(zoo_dir)
    atomic_write_text(path, json.dumps(rec, indent=1))
    return rec


def _has_heads(zoo_dir) -> bool:
    from ..merge.probe import has_heads
    from ..symmetry.cache import zoo_spec
    zoo = Zoo(zoo_dir)
    e = finished(zoo.read())[0]
    state, arch, _ = read_checkpoint(zoo.model_path(e["id"]))
    return has_heads(zoo_spec(zoo.root, arch, str(zoo.model_path(e["id"])), state))


def _canonicalize(st: _Stages, zoo_dir, manifest: dict, seed: int, data_root, progress,
                  method: str = AUTO):
    """Stage 1: the zoo as it is when its manifest records a canonicalization; else the
    canonicalization ``method`` (``auto``: the one the mixability probe measures best on
    validation data; ``none``: the zoo as it is) to the barycenter into ``canonical/``.
    Returns the canonicalize report (None when skipped), with the choice."""
    record = manifest.get("canonicalization")
    if isinstance(record, dict):
        st.canon = Path(zoo_dir)
        st.note(1, "canonicalize", f"skipped: {zoo_dir} is canonical already "
                                   f"({record.get('method')} to {record.get('reference')})")
        return None
    if Zoo(st.canon).exists():
        rec = Zoo(st.canon).read().get("canonicalization") or {}
        if not isinstance(rec.get("source"), str) or not _same_dir(rec["source"], zoo_dir):
            raise ZooError(f"{st.canon} holds the canonical zoo of {rec.get('source')!r}, not "
                           f"of {zoo_dir}; use another output directory or remove {st.canon}")
        st.note(1, "canonicalize", f"skipped: {st.canon} is done ({rec.get('method')} to "
                                   f"{rec.get('reference')})")
        return None
    t = time.perf_counter()
    probed: dict = {}
    choice = _choose_method(st, zoo_dir, method, seed, data_root, probed)
    chosen = choice["chosen"]
    if chosen == "none":
        st.canon = Path(zoo_dir)
        st.note(1, "canonicalize", f"the zoo as it is ({choice['rule']}: its mixtures are "
                                   f"the most accurate unaligned)")
        return {"choice": choice}
    st.begin(1, "canonicalize", f"{chosen} to the barycenter -> {st.canon} "
                                f"({choice['rule']})")
    from ..canonicalize.zoo import canonicalize_zoo, write_canonical
    if "canonical" in probed:  # the zoo the probe measured, written as it is
        rep = write_canonical(probed.pop("canonical"), zoo_dir, st.canon)
    else:  # given, or chosen by an earlier run: aligned as the probe aligns
        rep = canonicalize_zoo(zoo_dir, st.canon, chosen, "barycenter", data_root=data_root,
                               seed=seed, progress=progress,
                               max_rounds=PROBE_ROUNDS if method == AUTO else 20)
    st.done(1, "canonicalize", t, f" (RMS L2 to the barycenter "
                                  f"{rep['l2_to_barycenter_before']:.3f} -> "
                                  f"{rep['l2_to_barycenter_after']:.3f})")
    return {**rep, "choice": choice}


def _fit(st: _Stages, s: FlowSettings, pca, condition, progress,
         measured: dict | None = None) -> FitResult:
    """Stage 2: the generator in ``generator/`` (resumed when interrupted)."""
    t = st.fresh(st.gen, "the canonical zoo was rebuilt")
    cfg = _finished_fit(st.gen, st.canon, s, pca, condition)
    if cfg is not None:
        st.note(2, "fit", f"skipped: {st.gen} is fitted ({s.steps} steps)")
        return FitResult(out=str(st.gen), models=cfg.get("models"),
                         dim=(cfg.get("encoding") or {}).get("dim"),
                         train_seconds=cfg.get("train_seconds"),
                         defaults=cfg.get("defaults", {}), skipped=True)
    st.begin(2, "fit", f"{s.steps} steps on {st.canon} -> {st.gen}")
    fit = fit_generator(st.canon, st.gen, s, pca=pca, condition=condition, progress=progress,
                        probe=measured or True)
    resumed = f", resumed from step {fit.resumed_from}" if fit.resumed_from else ""
    st.done(2, "fit", t, f" ({fit.models} models, code dim {fit.dim}{resumed}); "
                         f"{describe_defaults(fit.defaults)}")
    return fit


def _sample(st: _Stages, n: int, seed: int, ss: SampleSettings, data_root) -> SampleResult:
    """Stage 3: ``n`` networks in ``samples/``."""
    t = st.fresh(st.smp, "the generator was refitted")
    m = _finished_samples(st.smp, st.gen, n, seed, ss)
    if m is not None:
        sm, g = m["settings"], m.get("generation") or {}
        st.note(3, "sample", f"skipped: {st.smp} holds {n} samples")
        return SampleResult(out=str(st.smp), n=n, condition=sm.get("condition"),
                            method=sm.get("method"), steps=sm.get("steps"),
                            guidance=sm.get("guidance"), mix=sm.get("mix", 1),
                            guidance_val_acc=sm.get("guidance_val_acc"),
                            guidance_choice=sm.get("guidance_choice"),
                            defaults=sm.get("defaults", {}), nfe=g.get("nfe"),
                            network_passes=g.get("network_passes"), seconds=g.get("seconds"),
                            seconds_per_model=g.get("seconds_per_model"), skipped=True)
    st.clear(st.smp, "left unfinished")  # model files of an interrupted sampling
    st.begin(3, "sample", f"{n} networks -> {st.smp}")
    res = sample_zoo(st.gen, st.smp, n, seed=seed, data_root=data_root, settings=ss)
    st.done(3, "sample", t, f" ({solver_name(res.method, res.steps)}, guidance "
                            f"{res.guidance:g}, mix {res.mix}, mean test acc "
                            f"{res.mean_test_acc:.4f}); {describe_defaults(res.defaults)}")
    why = (res.guidance_choice or {}).get("undecided")
    if why:
        st.note(3, "sample", why["message"], key="sample_choice")
    return res


def _audit(st: _Stages, ensemble: int, seed: int, data_root) -> dict:
    """Stage 4: the audit in ``report/``."""
    t = st.fresh(st.rep, "the samples were redrawn")
    if (st.rep / "report.md").is_file() and (st.rep / "report.json").is_file():
        try:
            report = json.loads((st.rep / "report.json").read_text())
        except ValueError as e:
            raise ZooError(f"{st.rep / 'report.json'}: not valid JSON ({e}); remove "
                           f"{st.rep} to audit again") from None
        st.note(4, "audit", f"skipped: {st.rep} is written")
        return report
    st.begin(4, "audit", f"{st.smp} against {st.canon} -> {st.rep}")
    from .audit import audit
    report = audit(st.smp, st.canon, ensemble, seed=seed, data_root=data_root,
                   out_dir=st.rep).to_json()
    st.done(4, "audit", t)
    return report


def run_generation(zoo_dir, out_dir, settings: FlowSettings | None = None, *,
                   sampling: SampleSettings | None = None, pca: bool | None = None,
                   condition: str | None = AUTO, n: int = 100, seed: int = 0,
                   ensemble: int = 10, data_root=None, progress: bool = True, log=None,
                   canonicalize: str = AUTO, **overrides) -> RunResult:
    """Canonicalize (if needed), fit, sample ``n`` networks and audit them, under
    ``out_dir``; returns a :class:`RunResult`.

    ``settings`` / ``overrides`` (FlowSettings fields) / ``pca`` / ``condition`` are
    :func:`fit_generator`'s, ``sampling`` :func:`sample_zoo`'s, ``ensemble`` the audit's.
    Unset, each follows the measured recipe (the defaults of each stage, printed and
    recorded). ``canonicalize`` is how a zoo without a canonicalization record is
    canonicalized: ``auto`` (the method whose mixtures the probe measures most accurate on
    validation data, among :data:`RUN_CANDIDATES`), ``none`` (as it is) or a method. ``log`` gets one line per stage (default: stderr when ``progress``). The
    parameters are the stages' own, passed through; all are validated before any work."""
    t0 = time.perf_counter()
    out = check_output(out_dir, "dir")
    ss = _sampling(sampling, overrides)
    s = replace(settings or FlowSettings(), **overrides)  # validated here, before work
    check_n(n)
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise GenerateError(f"`ensemble` must be >= 1, got {ensemble!r}")
    check_fit_args(s, pca, condition)
    from ..canonicalize.methods import ALIGN_METHODS
    if canonicalize not in (AUTO, "none", *ALIGN_METHODS):
        raise GenerateError(f"`canonicalize` must be auto, none or one of "
                            f"{', '.join(ALIGN_METHODS)}; got {canonicalize!r}")
    if log is None:
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else \
            (lambda line: None)
    src = Zoo(zoo_dir)
    manifest = src.read()  # a bad zoo is refused before anything is written or printed
    entries = finished(manifest)
    if not entries:
        raise ZooError(f"{zoo_dir}: the zoo has no finished models")
    first = src.model_path(entries[0]["id"])
    state, arch, _ = read_checkpoint(first)
    check_state(build(arch), state, str(first))  # user code only with allow_code
    st = _Stages(out, log)
    canon_rep = _canonicalize(st, zoo_dir, manifest, seed, data_root, progress, canonicalize)
    # the mixability of the chosen canonical zoo, measured by the probe that chose it
    choice = (canon_rep or {}).get("choice") or {}
    fit = _fit(st, s, pca, condition, progress,
               (choice.get("reports") or {}).get(choice.get("chosen")))
    smp = _sample(st, n, seed, ss, data_root)
    report = _audit(st, ensemble, seed, data_root)
    return RunResult(out=str(out), canonical=str(st.canon), generator=str(st.gen),
                     samples=str(st.smp), report=str(st.rep / "report.md"), stages=st.notes,
                     canonicalize=canon_rep, fit=fit, sample=smp, audit=report,
                     seconds=time.perf_counter() - t0)


__all__ = ["STAGES", "RunResult", "run_generation"]
