"""Fit a generator on a (canonical) zoo: read and check the zoo one model at a time, take
the recipe's defaults for what was not passed, encode (a PCA code streamed from the
checkpoints, or the full encoding), train or resume the flow, and write the generator
directory (:mod:`~weightspace.generate.store`)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import __version__
from ..arch import build
from ..checkpoint import check_state, save_tensors
from ..errors import check_output, make_dir
from ..parallel import shard
from ..results import Result
from ..zoo.store import Zoo
from .config import (AUTO, OFF, Condition, FlowSettings, GenerateError, default_condition,
                     default_pca, default_record)
from .encoding import Encoding
from .flow import check_velocity_config, train_flow
from .novelty import ZooValErrors
from .store import (ENCODING, FORMAT, VERSION, ZOO_ERRORS, resume_state, save_training_state,
                    scan_zoo, write_config)


@dataclass
class FitResult(Result):
    """What :func:`fit_generator` did: where, on how many models, the code's size, times,
    the worst round-trip error of a zoo model, the defaults taken (value and why)."""
    out: str
    models: int
    dim: int
    train_seconds: float | None = None
    seconds: float | None = None
    max_roundtrip_error: float | None = None
    pca: bool | None = None
    condition: str | None = None
    resumed_from: int | None = None
    defaults: dict = field(default_factory=dict)
    mixability: dict | None = None
    skipped: bool = False


def probe_mixability(zoo_dir, show: bool, measured: dict | None = None) -> dict:
    """The zoo's mixability (:func:`~weightspace.merge.probe.probe_zoo`, the zoo as it is):
    samples are affine mixtures of its models, so this says before the fit whether they
    can be accurate. Printed to standard error when ``show``; the advice line (samples will
    be near-copies or inaccurate, and the lever to use) always is. A zoo the probe cannot
    measure (no dataset here, fewer than two models) gets ``{"skipped": why}``.
    ``measured``: the report of this zoo that the caller's probe already made (``generate
    run``'s choice of canonicalization), printed and kept instead of measuring again."""
    import sys

    from ..errors import WeightspaceError
    from ..merge.mixing import MixabilityReport
    from ..merge.probe import probe_zoo
    try:
        rep = MixabilityReport.from_dict(measured) if measured else probe_zoo(zoo_dir)
    except WeightspaceError as e:
        return {"skipped": str(e)}
    lines = rep.table() if show else ([rep.advice] if rep.advice else [])
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return rep.to_dict()


def condition_values(entries: list[dict], name: str, where: str = "") -> torch.Tensor:
    """One number per model for the condition ``name``: a metric (not a test one: the
    generator must not be steered by the test split) or a hyperparameter of the zoo."""
    if name.startswith("test"):
        raise GenerateError(f"cannot condition on {name!r}: test metrics are for evaluation "
                            f"only (use a val_ or train_ metric)")
    vals = []
    for e in entries:
        v = (e.get("metrics") or {}).get(name, (e.get("hparams") or {}).get(name))
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise GenerateError(f"{where}model {e['id']} has no numeric metric or "
                                f"hyperparameter {name!r} to condition on")
        vals.append(float(v))
    return torch.tensor(vals, dtype=torch.float64)


def check_fit_args(s: FlowSettings, pca, condition, checkpoint_every: int = 1) -> None:
    """Refuse bad fit arguments before any work (``fit_generator`` and ``run_generation``)."""
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
            or checkpoint_every < 1:
        raise GenerateError(f"`checkpoint_every` must be a positive integer, got "
                            f"{checkpoint_every!r}")
    if s.velocity == "transformer" and pca:
        raise GenerateError("the transformer velocity models per-layer tokens of the full "
                            "encoding; use it without `pca`")
    if pca is not None and not isinstance(pca, bool):
        raise GenerateError(f"`pca` must be True, False or None (automatic), got {pca!r}")
    if condition is not None and (not isinstance(condition, str) or not condition):
        raise GenerateError(f"`condition` must be a metric name, 'auto' or 'none', got "
                            f"{condition!r}")


def fit_defaults(s: FlowSettings, entries: list[dict], first: dict, pca, condition):
    """(pca, condition, defaults): the recipe's choice for each of ``pca`` (None) and
    ``condition`` ("auto") not passed, recorded with its reason."""
    defaults = {}
    if pca is None:
        numbers = sum(v.numel() for v in first.values() if v.is_floating_point())
        pca, why = default_pca(len(entries), numbers, s.velocity)
        defaults["pca"] = default_record(pca, why)
    if condition == AUTO:
        condition, why = default_condition(entries)
        defaults["condition"] = default_record(condition or OFF, why)
    elif condition == OFF:
        condition = None
    return pca, condition, defaults


def encode_zoo(zoo_dir, out: Path, arch: str, entries: list[dict], pca: bool):
    """(encoding, codes [N, dim], worst round-trip error): the encoding streamed from the
    checkpoints (the PCA basis on disk in ``out``), and every model decoded back to itself,
    one at a time."""
    zoo = Zoo(zoo_dir)
    enc = Encoding.fit_streaming(arch, [zoo.model_path(e["id"]) for e in entries], pca=pca,
                                 workdir=out)
    full, worst = [], [0.0]

    def roundtrip(i, state, _):
        c = enc.zoo_codes[i] if pca else enc.encode(state)
        if not pca:
            full.append(c)
        dec = enc.decode(c)
        worst[0] = max([worst[0], *(float((dec[k] - state[k]).abs().max()) for k in enc.keys)])
    scan_zoo(zoo_dir, roundtrip)
    return enc, (enc.zoo_codes if pca else torch.stack(full)), worst[0]


def _progress(total: int, initial: int, show: bool):
    """(on_step callback, close) of a tqdm bar, or no-ops."""
    if not show:
        return (lambda step, loss: None), (lambda: None)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=initial, desc="generator", mininterval=0.5)

    def on_step(step, loss):
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
    return on_step, bar.close


def fit_generator(zoo_dir, out_dir, settings: FlowSettings | None = None, *,
                  pca: bool | None = None, condition: str | None = AUTO,
                  progress: bool = True, checkpoint_every: int = 500,
                  until: int | None = None, probe: bool | dict = True,
                  **overrides) -> FitResult:
    """Encode the zoo, train (or resume) the flow, save the generator.

    ``settings`` (or its fields as keyword ``overrides``: ``steps=``, ``width=``,
    ``velocity="transformer"``, ...) is the training recipe; a transformer velocity models
    per-layer tokens of the full encoding (large models; not with ``pca``). ``condition``
    names a per-model metric or hyperparameter the field is conditioned on (with
    classifier-free dropout ``p_uncond``); ``sample_zoo(condition=value, guidance=w)``
    steers by it. Not passed, both follow the measured recipe: ``pca=None`` is a PCA code
    whenever the zoo has fewer models than parameters (:func:`~.config.default_pca`);
    ``condition="auto"`` is ``val_acc`` when every finished model has it
    (:func:`~.config.default_condition`). ``pca=False`` / ``condition=None`` (or
    ``"none"``) turn them off. Each default taken is in the result's and ``config.json``'s
    ``defaults`` (value and why). ``probe`` measures the zoo's mixability first
    (:func:`probe_mixability`; recorded as ``mixability``; a dict: the report the caller
    measured on this zoo already). The parameters are the recipe's
    and the run's (resume, progress, checkpoints), validated together before any work."""
    t0 = time.perf_counter()
    out = check_output(out_dir, "dir")
    s = replace(settings or FlowSettings(), **overrides)
    check_fit_args(s, pca, condition, checkpoint_every)
    # one model in memory at a time (the checks, the zoo's validation errors)
    val_errors = ZooValErrors(Zoo(zoo_dir).read())
    m, entries, arch, first = scan_zoo(zoo_dir, val_errors.add)
    # the samples will be built as this architecture: refuse now what cannot be built
    # (user code without allow_code) or does not fit the zoo's tensors
    check_state(build(arch), first, str(Zoo(zoo_dir).model_path(entries[0]["id"])))
    zoo_err = val_errors.result()
    mixable = probe_mixability(zoo_dir, progress and shard().is_main,
                               probe if isinstance(probe, dict) else None) if probe else None
    pca, condition, defaults = fit_defaults(s, entries, first, pca, condition)
    cond = cn = None
    if condition is not None:
        raw = condition_values(entries, condition, f"{zoo_dir}: ")
        cn = Condition.fit(condition, raw)
        cond = cn.normalise(raw).float()
    make_dir(out)
    enc, codes, err = encode_zoo(zoo_dir, out, arch, entries, pca)
    vcfg = s.velocity_config(codes.shape[1], [math.prod(sh) for sh in enc.shapes])
    check_velocity_config(vcfg, "generator settings")
    cfg = {"format": FORMAT, "version": VERSION, "weightspace_version": __version__,
           "zoo": str(zoo_dir), "arch": arch, "dataset": m.get("dataset", {}),
           "canonicalization": (m.get("canonicalization") or {}).get("method"),
           "models": len(entries), "encoding": enc.signature_dict(),
           "train": s.to_dict(), "condition": cn and cn.to_dict(),
           "max_roundtrip_error": err, "defaults": defaults, "mixability": mixable}
    state = resume_state(out, cfg) if (out / "state.json").is_file() else None
    main = shard().is_main  # under accelerate: one writer, one progress bar
    if main:
        enc.save(out / ENCODING)
        if zoo_err is not None:
            save_tensors(out / ZOO_ERRORS, {"errors": zoo_err.to(torch.uint8)})
        write_config(out, cfg)
    on_step, close = _progress(s.steps, state["step"] if state else 0, progress and main)
    t1 = time.perf_counter()
    train_flow(codes, s, velocity=vcfg, cond=cond, state=state, on_step=on_step,
               on_checkpoint=lambda st: save_training_state(out, st),
               checkpoint_every=checkpoint_every, until=until)
    close()
    cfg["train_seconds"] = time.perf_counter() - t1
    if main:
        write_config(out, cfg)
    return FitResult(out=str(out), models=len(entries), dim=int(codes.shape[1]),
                     train_seconds=cfg["train_seconds"], seconds=time.perf_counter() - t0,
                     max_roundtrip_error=err, pca=pca, condition=condition,
                     resumed_from=state["step"] if state else None, defaults=defaults,
                     mixability=mixable)
