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
from ..checkpoint import check_state, read_checkpoint
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


def run_generation(zoo_dir, out_dir, settings: FlowSettings | None = None, *,
                   sampling: SampleSettings | None = None, pca: bool | None = None,
                   condition: str | None = AUTO, n: int = 100, seed: int = 0,
                   ensemble: int = 10, data_root=None, progress: bool = True, log=None,
                   **overrides) -> RunResult:
    """Canonicalize (if needed), fit, sample ``n`` networks and audit them, under
    ``out_dir``; returns a :class:`RunResult`.

    ``settings`` / ``overrides`` (FlowSettings fields) / ``pca`` / ``condition`` are
    :func:`fit_generator`'s, ``sampling`` :func:`sample_zoo`'s, ``ensemble`` the audit's.
    Unset, each follows the measured recipe (the defaults of each stage, printed and
    recorded). ``log`` gets one line per stage (default: stderr when ``progress``). The
    parameters are the stages' own, passed through; they are validated before any work."""
    t0 = time.perf_counter()
    out = check_output(out_dir, "dir")
    ss = _sampling(sampling, overrides)
    s = replace(settings or FlowSettings(), **overrides)  # validated here, before work
    check_n(n)
    if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
        raise GenerateError(f"`ensemble` must be >= 1, got {ensemble!r}")
    check_fit_args(s, pca, condition)
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
    check_state(build(arch), state, str(first))  # user code only with --allow-code
    canon, gen, smp, rep = out / "canonical", out / "generator", out / "samples", out / "report"
    stages, stale = {}, False

    def note(i, name, text):
        stages[name] = text
        log(f"[{i}/{len(STAGES)}] {name}: {text}")

    def done(i, name, t, details=""):
        """A stage finished: its time and ``details``; later stages are now out of date."""
        note(i, name, f"done in {time.perf_counter() - t:.1f} s{details}")
        return True

    def fresh(path: Path, why: str) -> float:
        """A stage's clock; its outputs go when an earlier stage has just run again."""
        if stale:
            clear(path, why)
        return time.perf_counter()

    def begin(i, name, text):
        """A stage starts: say so, and make sure the run directory exists."""
        log(f"[{i}/{len(STAGES)}] {name}: {text}")
        make_dir(out)

    def clear(path: Path, why: str):
        if path.exists():
            shutil.rmtree(path)
            log(f"      removed out-of-date {path} ({why})")

    # 1. canonicalize -------------------------------------------------------------------
    t = time.perf_counter()
    record = manifest.get("canonicalization")
    canon_rep = None
    if isinstance(record, dict):
        canon = Path(zoo_dir)
        note(1, "canonicalize", f"skipped: {zoo_dir} is canonical already "
                                f"({record.get('method')} to {record.get('reference')})")
    elif Zoo(canon).exists():
        rec = Zoo(canon).read().get("canonicalization") or {}
        if not isinstance(rec.get("source"), str) or not _same_dir(rec["source"], zoo_dir):
            raise ZooError(f"{canon} holds the canonical zoo of {rec.get('source')!r}, not of "
                           f"{zoo_dir}; use another output directory or remove {canon}")
        note(1, "canonicalize", f"skipped: {canon} is done (wm to the barycenter)")
    else:
        begin(1, "canonicalize", f"weight matching to the barycenter -> {canon}")
        from ..canonicalize.zoo import canonicalize_zoo
        canon_rep = canonicalize_zoo(zoo_dir, canon, "wm", "barycenter", data_root=data_root,
                                     seed=seed, progress=progress)
        stale = done(1, "canonicalize", t, f" (RMS L2 to the barycenter "
                                           f"{canon_rep['l2_to_barycenter_before']:.3f} -> "
                                           f"{canon_rep['l2_to_barycenter_after']:.3f})")

    # 2. fit ----------------------------------------------------------------------------
    t = fresh(gen, "the canonical zoo was rebuilt")
    cfg = _finished_fit(gen, canon, s, pca, condition)
    if cfg is not None:
        fit = FitResult(out=str(gen), models=cfg.get("models"),
                        dim=(cfg.get("encoding") or {}).get("dim"),
                        train_seconds=cfg.get("train_seconds"),
                        defaults=cfg.get("defaults", {}), skipped=True)
        note(2, "fit", f"skipped: {gen} is fitted ({s.steps} steps)")
    else:
        begin(2, "fit", f"{s.steps} steps on {canon} -> {gen}")
        fit = fit_generator(canon, gen, s, pca=pca, condition=condition, progress=progress)
        resumed = f", resumed from step {fit['resumed_from']}" if fit["resumed_from"] else ""
        stale = done(2, "fit", t, f" ({fit['models']} models, code dim {fit['dim']}{resumed}); "
                                  f"{describe_defaults(fit['defaults'])}")

    # 3. sample -------------------------------------------------------------------------
    t = fresh(smp, "the generator was refitted")
    m = _finished_samples(smp, gen, n, seed, ss)
    if m is not None:
        st, g = m["settings"], m.get("generation") or {}
        smp_res = SampleResult(out=str(smp), n=n, condition=st.get("condition"),
                               method=st.get("method"), steps=st.get("steps"),
                               guidance=st.get("guidance"), mix=st.get("mix", 1),
                               guidance_val_acc=st.get("guidance_val_acc"),
                               guidance_choice=st.get("guidance_choice"),
                               defaults=st.get("defaults", {}), nfe=g.get("nfe"),
                               network_passes=g.get("network_passes"),
                               seconds=g.get("seconds"),
                               seconds_per_model=g.get("seconds_per_model"), skipped=True)
        note(3, "sample", f"skipped: {smp} holds {n} samples")
    else:
        clear(smp, "left unfinished")  # model files of an interrupted sampling
        begin(3, "sample", f"{n} networks -> {smp}")
        smp_res = sample_zoo(gen, smp, n, seed=seed, data_root=data_root, settings=ss)
        stale = done(3, "sample", t, f" ({solver_name(smp_res['method'], smp_res['steps'])}, "
                                     f"guidance {smp_res['guidance']:g}, "
                                     f"mix {smp_res['mix']}, mean test acc "
                                     f"{smp_res['mean_test_acc']:.4f}); "
                                     f"{describe_defaults(smp_res['defaults'])}")

    # 4. audit --------------------------------------------------------------------------
    t = fresh(rep, "the samples were redrawn")
    if (rep / "report.md").is_file() and (rep / "report.json").is_file():
        try:
            report = json.loads((rep / "report.json").read_text())
        except ValueError as e:
            raise ZooError(f"{rep / 'report.json'}: not valid JSON ({e}); remove {rep} to "
                           f"audit again") from None
        note(4, "audit", f"skipped: {rep} is written")
    else:
        begin(4, "audit", f"{smp} against {canon} -> {rep}")
        from .audit import audit
        report = audit(smp, canon, ensemble, seed=seed, data_root=data_root, out_dir=rep)
        done(4, "audit", t)
    return RunResult(out=str(out), canonical=str(canon), generator=str(gen),
                     samples=str(smp), report=str(rep / "report.md"), stages=stages,
                     canonicalize=canon_rep, fit=fit, sample=smp_res,
                     audit=report.to_json() if hasattr(report, "to_json") else report,
                     seconds=time.perf_counter() - t0)


__all__ = ["STAGES", "RunResult", "run_generation"]
