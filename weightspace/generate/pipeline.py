"""Fit a generator on a (canonical) zoo, and sample a zoo of new networks from it.

A generator directory holds ``config.json`` (zoo, arch, dataset, encoding signature,
training settings, time), ``encoding.safetensors``, ``generator.safetensors`` (the EMA
velocity field) and ``state.safetensors`` + ``state.json`` (raw weights, optimizer, step:
what an interrupted ``fit`` resumes from). A sample directory is an ordinary zoo
(``manifest.json`` + ``models/<id>.safetensors``) that ``zoo eval``, ``lmc`` and ``merge``
read directly.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .. import __version__
from ..arch import build
from ..checkpoint import (atomic_write_text, check_state, read_checkpoint, save_checkpoint,
                          save_tensors)
from ..errors import WeightspaceError, check_output
from ..parallel import shard
from ..zoo.datasets import load_dataset
from ..zoo.store import FORMAT, FORMAT_VERSION, Zoo, ZooError, finished
from ..zoo.train import metrics, recalibrate
from .encoding import Encoding, EncodingError
from .config import (ACC_TOLERANCE, AUTO, DEFAULT_SOLVER, GUIDANCE_GRID, METHODS, MIX_GRID,
                     OFF, PASS_BUDGET, SOLVER_GRID, Condition, FlowSettings, check_mix,
                     default_condition, default_pca, default_record, default_sampling, passes,
                     solver_name)
from .flow import check_velocity_config, make_velocity, sample, train_flow
from .novelty import errors, max_iou

MAX_SAMPLES = 100_000


def scan_zoo(zoo_dir, visit=None) -> tuple[dict, list[dict], str, dict]:
    """(manifest, finished entries, arch, the first model's state dict) of a zoo or canonical
    zoo, reading one checkpoint at a time: every floating tensor must be finite and every
    model of one architecture. ``visit(i, state, arch)`` sees each state dict while it is
    the one in memory, so a caller that keeps nothing holds one model at a time."""
    zoo = Zoo(zoo_dir)
    m = zoo.read()
    entries = finished(m)
    if not entries:
        raise ZooError(f"{zoo_dir}: the zoo has no finished models")
    arch = first = None
    for i, e in enumerate(entries):
        path = zoo.model_path(e["id"])
        state, a, _ = read_checkpoint(path)
        for k, v in state.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ZooError(f"{path}: tensor {k!r} holds non-finite values (NaN or Inf); "
                               f"remove or retrain model {e['id']}")
        if arch is None:
            arch, first = a, state
        elif a != arch:
            raise ZooError(f"{zoo_dir}: models of several architectures ({sorted({arch, a})}); "
                           f"a generator needs one")
        if visit is not None:
            visit(i, state, arch)
    return m, entries, arch, first


def load_zoo_states(zoo_dir) -> tuple[dict, list[dict], list[dict], str]:
    """(manifest, finished entries, their state dicts, arch) of a zoo or canonical zoo
    (:func:`scan_zoo`'s checks, every state dict kept)."""
    states: list[dict] = []
    m, entries, arch, _ = scan_zoo(zoo_dir, lambda i, st, a: states.append(st))
    return m, entries, states, arch


def _flat(prefix: str, d: dict, out: dict, meta: dict) -> None:
    """Optimizer state dict -> tensors + JSON (no pickling)."""
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, dict):
            _flat(key, v, out, meta)
        else:
            meta[key] = v


def _unflat(prefix: str, tensors: dict, meta: dict) -> dict:
    out: dict = {}
    for src in (tensors, meta):
        for k, v in src.items():
            if not k.startswith(prefix + "/"):
                continue
            parts = k[len(prefix) + 1:].split("/")
            d = out
            for p in parts[:-1]:
                d = d.setdefault(int(p) if p.isdigit() else p, {})
            d[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = v
    return out


def condition_values(entries: list[dict], name: str, where: str = "") -> torch.Tensor:
    """One number per model for the condition ``name``: a metric (not a test one: the
    generator must not be steered by the test split) or a hyperparameter of the zoo."""
    if name.startswith("test"):
        raise EncodingError(f"cannot condition on {name!r}: test metrics are for evaluation "
                            f"only (use a val_ or train_ metric)")
    vals = []
    for e in entries:
        v = (e.get("metrics") or {}).get(name, (e.get("hparams") or {}).get(name))
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise EncodingError(f"{where}model {e['id']} has no numeric metric or "
                                f"hyperparameter {name!r} to condition on")
        vals.append(float(v))
    return torch.tensor(vals, dtype=torch.float64)


def fit_generator(zoo_dir, out_dir, settings: FlowSettings | None = None, *,
                  pca: bool | None = None, condition: str | None = AUTO,
                  progress: bool = True, checkpoint_every: int = 500,
                  until: int | None = None, **overrides) -> dict:
    """Encode the zoo, train (or resume) the flow, save the generator; returns a summary.

    ``settings`` (or its fields as keyword ``overrides``: ``steps=``, ``width=``,
    ``velocity="transformer"``, ...) is the training recipe; a transformer velocity models
    per-layer tokens of the full encoding (large models; not with ``pca``). ``condition``
    names a per-model metric or hyperparameter the field is conditioned on (with
    classifier-free dropout ``p_uncond``); ``sample_zoo(condition=value, guidance=w)``
    steers by it.

    Not passed, both follow the best recipe measured (README, digits MLP demo: PCA code,
    ``val_acc`` condition, sampling chosen on validation, midpoint x5 w=3 there: test acc
    0.947 vs the zoo's 0.957):
    ``pca=None`` is a PCA code whenever the zoo has fewer models than parameters
    (:func:`~weightspace.generate.config.default_pca`); ``condition="auto"`` is ``val_acc``
    when every finished model has it (:func:`~weightspace.generate.config.default_condition`).
    ``pca=False`` / ``condition=None`` (or ``"none"``) turn them off. Each default taken is
    in the summary's and ``config.json``'s ``"defaults"`` (value and why)."""
    t0 = time.perf_counter()
    out = check_output(out_dir, "dir")
    s = replace(settings or FlowSettings(), **overrides)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise EncodingError(f"checkpoint_every must be a positive integer, got "
                            f"{checkpoint_every!r}")
    if s.velocity == "transformer" and pca:
        raise EncodingError("the transformer velocity models per-layer tokens of the full "
                            "encoding; use it without --pca")
    if pca is not None and not isinstance(pca, bool):
        raise EncodingError(f"pca must be True, False or None (automatic), got {pca!r}")
    if condition is not None and (not isinstance(condition, str) or not condition):
        raise EncodingError(f"condition must be a metric name, 'auto' or 'none', got "
                            f"{condition!r}")
    # one model in memory at a time (the checks, the zoo's validation errors); the
    # encoding streams the checkpoints again, tensor by tensor
    val_errors = _ValErrors(Zoo(zoo_dir).read())
    m, entries, arch, first = scan_zoo(zoo_dir, val_errors.add)
    # the samples will be built as this architecture: refuse now what cannot be built
    # (user code without --allow-code) or does not fit the zoo's tensors
    check_state(build(arch), first, str(Zoo(zoo_dir).model_path(entries[0]["id"])))
    zoo_err = val_errors.result()
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
    cond = cn = None
    if condition is not None:
        raw = condition_values(entries, condition, f"{zoo_dir}: ")
        cn = Condition.fit(condition, raw)
        cond = cn.normalise(raw).float()
    # streamed from the checkpoints, tensor by tensor (memory ~ N^2 + one tensor across
    # the zoo); the PCA basis lives on disk next to the generator
    out.mkdir(parents=True, exist_ok=True)
    enc = Encoding.fit_streaming(arch, [Zoo(zoo_dir).model_path(e["id"]) for e in entries],
                                 pca=pca, workdir=out)
    full, worst = [], [0.0]

    def roundtrip(i, state, _):  # every model decodes back to itself (one at a time)
        c = enc.zoo_codes[i] if pca else enc.encode(state)
        if not pca:
            full.append(c)
        dec = enc.decode(c)
        worst[0] = max([worst[0], *(float((dec[k] - state[k]).abs().max()) for k in enc.keys)])
    scan_zoo(zoo_dir, roundtrip)
    codes = enc.zoo_codes if pca else torch.stack(full)
    err = worst[0]
    vcfg = s.velocity_config(codes.shape[1], [math.prod(sh) for sh in enc.shapes])
    check_velocity_config(vcfg, "generator settings")
    cfg = {"format": "weightspace.generator", "version": 1, "weightspace_version": __version__,
           "zoo": str(zoo_dir), "arch": arch, "dataset": m.get("dataset", {}),
           "canonicalization": (m.get("canonicalization") or {}).get("method"),
           "models": len(entries), "encoding": json.loads(enc.signature()),
           "train": s.to_dict(), "condition": cn and cn.to_dict(),
           "max_roundtrip_error": err, "defaults": defaults}
    state = _resume_state(out, cfg) if (out / "state.json").is_file() else None
    main = shard().is_main  # under accelerate: one writer, one progress bar
    out.mkdir(parents=True, exist_ok=True)
    if main:
        enc.save(out / "encoding.safetensors")
        if zoo_err is not None:
            save_tensors(out / ZOO_ERRORS, {"errors": zoo_err.to(torch.uint8)})
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=1))
    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=s.steps, initial=state["step"] if state else 0, desc="generator",
                   mininterval=0.5)

    def on_step(step, loss):
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    def on_checkpoint(st):
        tensors, meta = {}, {}
        _flat("model", st["model"], tensors, meta)
        _flat("ema", st["ema"], tensors, meta)
        opt = dict(st["opt"])
        groups = opt.pop("param_groups")
        _flat("opt", opt, tensors, meta)
        save_tensors(out / "state.safetensors", tensors)
        atomic_write_text(out / "state.json", json.dumps(
            {"step": st["step"], "meta": meta, "param_groups": groups}))
        save_tensors(out / "generator.safetensors", st["ema"],
                      {"weightspace.velocity": json.dumps(st["config"])})

    t1 = time.perf_counter()
    model, _ = train_flow(codes, s, velocity=vcfg, cond=cond, state=state, on_step=on_step,
                          on_checkpoint=on_checkpoint, checkpoint_every=checkpoint_every,
                          until=until)
    if bar is not None:
        bar.close()
    cfg["train_seconds"] = time.perf_counter() - t1
    if main:
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=1))
    return {"out": str(out), "models": len(entries), "dim": codes.shape[1],
            "train_seconds": cfg["train_seconds"], "seconds": time.perf_counter() - t0,
            "max_roundtrip_error": err, "pca": pca, "condition": condition,
            "resumed_from": state["step"] if state else None, "defaults": defaults}


def _resume_state(out: Path, cfg: dict) -> dict:
    """The training state an interrupted fit in ``out`` left, if it was fitted with the same
    settings; a damaged or foreign state is refused with the file named."""
    try:
        old = json.loads((out / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise EncodingError(f"{out / 'config.json'}: cannot resume ({e})") from None
    if not isinstance(old, dict) or any(old.get(k) != cfg[k]
                                        for k in ("encoding", "train", "zoo", "condition")):
        raise EncodingError(f"{out} holds a generator fitted with other settings; use "
                            f"another --out")
    try:
        st = load_file(str(out / "state.safetensors"))
        sm = json.loads((out / "state.json").read_text())
        state = {"model": _unflat("model", st, {}), "ema": _unflat("ema", st, {}),
                 "opt": _unflat("opt", st, sm["meta"]), "step": int(sm["step"])}
        state["opt"]["param_groups"] = sm["param_groups"]
    except Exception as e:  # any damage to the state files: refuse, do not half-resume
        raise EncodingError(f"{out}: cannot resume from state.safetensors / state.json "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            f"remove them to start over") from None
    if not 0 <= state["step"] <= cfg["train"]["steps"]:
        raise EncodingError(f"{out / 'state.json'}: step {state['step']} is outside "
                            f"[0, {cfg['train']['steps']}]")
    return state


def check_generator_config(cfg, where) -> dict:
    """``config.json`` of a generator directory, checked once when read: format, version,
    the fields sampling uses (architecture, dataset, encoding, condition normalisation)."""
    def bad(msg):
        raise EncodingError(f"{where}: {msg}")
    if not isinstance(cfg, dict) or cfg.get("format") != "weightspace.generator":
        bad("not a weightspace generator config (field 'format')")
    if not isinstance(cfg.get("version"), int) or isinstance(cfg["version"], bool) \
            or cfg["version"] > 1:
        bad(f"field 'version' must be an integer this weightspace reads (1), got "
            f"{cfg.get('version')!r}")
    for key, kind in (("arch", str), ("dataset", dict), ("encoding", dict), ("train", dict)):
        if not isinstance(cfg.get(key), kind):
            bad(f"field {key!r} must be a {'string' if kind is str else 'JSON object'}")
    if not isinstance(cfg["dataset"].get("name"), str):
        bad("field 'dataset.name' must be a string")
    root = cfg["dataset"].get("data_root")
    if root is not None and not isinstance(root, str):
        bad("field 'dataset.data_root' must be a string")
    Condition.from_dict(cfg.get("condition"), f"{where}: field 'condition'")
    if not isinstance(cfg.get("defaults", {}), dict):
        bad("field 'defaults' must be a JSON object")
    try:
        FlowSettings(**cfg["train"])
    except TypeError as e:
        bad(f"field 'train': {e}")
    except EncodingError as e:
        bad(f"field 'train': {e}")
    return cfg


def load_generator(gen_dir) -> tuple[dict, Encoding, torch.nn.Module]:
    gen = Path(gen_dir)
    if not gen.is_dir():
        raise EncodingError(f"{gen}: no such generator directory")
    try:
        cfg = json.loads((gen / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise EncodingError(f"{gen}: not a generator directory ({e})") from None
    check_generator_config(cfg, gen / "config.json")
    enc = Encoding.load(gen / "encoding.safetensors")
    if enc.arch != cfg["arch"]:
        raise EncodingError(f"{gen}: encoding.safetensors is for {enc.arch!r} but config.json "
                            f"names {cfg['arch']!r}")
    if json.loads(enc.signature()) != cfg.get("encoding"):
        raise EncodingError(f"{gen}: encoding.safetensors does not match config.json "
                            f"(a generator directory from a different encoding)")
    from safetensors import safe_open
    path = gen / "generator.safetensors"
    if not path.is_file():
        raise EncodingError(f"{gen}: no generator.safetensors (fit not finished?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            vcfg = json.loads((f.metadata() or {})["weightspace.velocity"])
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise EncodingError(f"{path}: not a generator file (no readable "
                            f"'weightspace.velocity' metadata: {e})") from None
    check_velocity_config(vcfg, str(path))
    if vcfg.get("dim") != enc.dim:
        raise EncodingError(f"{gen}: generator dimension {vcfg['dim']} != encoding {enc.dim}")
    try:
        model = make_velocity(vcfg)
        model.load_state_dict(load_file(str(path)))
    except (TypeError, ValueError, RuntimeError, SafetensorError) as e:
        raise EncodingError(f"{path}: not a velocity field this version reads "
                            f"({str(e).splitlines()[0]})") from None
    return cfg, enc, model.eval()


NOVELTY_SLACK = 0.05  # samples may be this much less novel than independently trained nets
ZOO_ERRORS = "zoo_val_errors.safetensors"


class _ValErrors:
    """[N, n_val] bool: where each zoo model errs on the validation split (kept with the
    generator, so that sampling can measure novelty without the zoo), gathered while the
    zoo is read: models are evaluated in groups of ``chunk`` and then dropped. ``result()``
    is None when the zoo's dataset cannot be loaded."""

    def __init__(self, manifest: dict, chunk: int = 16):
        ds = manifest.get("dataset") or {}
        try:
            self.data = load_dataset(ds.get("name", ""), ds.get("data_root"))["val"]
        except WeightspaceError:
            self.data = None
        self.chunk, self.pending, self.rows, self.arch = chunk, [], [], None

    def add(self, i: int, state: dict, arch: str) -> None:
        if self.data is None:
            return
        self.arch = arch
        self.pending.append(state)
        if len(self.pending) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.rows.append(errors(self.arch, self.pending, *self.data))
            self.pending = []

    def result(self) -> torch.Tensor | None:
        if self.data is None:
            return None
        self._flush()
        return torch.cat(self.rows)


def _smaller_first(key) -> tuple:
    return tuple(-x for x in key) if isinstance(key, tuple) else (-key,)


def choose_guidance(acc: dict, novelty: dict | None, limit: float | None, cost=None,
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


def _averaged(codes: torch.Tensor, k: int) -> torch.Tensor:
    """``k * m`` flow samples -> ``m`` codes: network ``i`` averages samples ``i, i + m,
    ...`` (so the first ``k * m`` draws of a larger batch give the same networks)."""
    return codes.view(k, len(codes) // k, -1).mean(0)


def _by_guidance(sweep: dict | None, chosen: Setting) -> dict | None:
    """Validation accuracy by guidance weight at the chosen solver and mix (summaries)."""
    return sweep and {str(s.guidance): a for s, a in sweep.items()
                      if (s.method, s.steps, s.mix) == (chosen.method, chosen.steps,
                                                        chosen.mix)}


def _load_zoo_errors(gen: Path, n_val: int):
    """The zoo's validation errors a generator keeps, or None (an older generator, or a
    dataset whose validation split changed)."""
    try:
        err = load_file(str(gen / ZOO_ERRORS))["errors"].bool()
    except (OSError, KeyError, SafetensorError):
        return None
    return err if err.dim() == 2 and err.shape[1] == n_val else None


CALIBRATION = 2048  # train examples that BatchNorm statistics of samples are computed on
SWEEP_SAMPLES = 100  # networks per setting while choosing (at most)
SWEEP_NUMBERS = 100_000_000  # ... and at most this many decoded weights per setting, so that
# models above 1M parameters are measured on fewer networks (at least SWEEP_MIN_SAMPLES):
# decoding dominates the choice there (0.19 s per timm resnet18, ~45 settings)
SWEEP_MIN_SAMPLES = 16
SWEEP_CALIBRATION = 512  # the same while choosing the sampling settings (the same val acc
# to 0.3 points on the ResNet-20 zoo, 4x faster)


def sweep_samples(n: int, numbers: int) -> int:
    """Networks per setting while choosing the sampling settings, for ``n`` requested
    networks of ``numbers`` weights each."""
    per = min(SWEEP_SAMPLES, max(SWEEP_MIN_SAMPLES, SWEEP_NUMBERS // max(1, numbers)))
    return min(n, per)


def _bn_fix(states: list[dict], arch: str, data, examples: int = CALIBRATION) -> list[dict]:
    """BatchNorm statistics of sampled models recomputed on the train split."""
    return recalibrate(arch, states, data["train"][0][:examples])


def sample_zoo(gen_dir, out_dir, n: int, steps: int | None = None, method: str | None = None,
               seed: int = 0, data_root=None, condition: float | str | None = AUTO,
               guidance: float | str | None = None, mix: int | str | None = None) -> dict:
    """Sample ``n`` networks into a new zoo directory (with val/test metrics).

    The sampling settings are the ODE solver (``method``, ``steps``), the classifier-free
    guidance weight ``guidance`` and ``mix`` K (each network is the average of K flow
    samples, in the code). Each one not passed (``None``, or ``"auto"`` for guidance and
    mix) is chosen on the validation split, jointly, from :data:`SOLVER_GRID`,
    :data:`GUIDANCE_GRID` and :data:`MIX_GRID`, among the combinations of at most
    :data:`PASS_BUDGET` velocity-network passes per network: among those whose validation
    novelty is within the zoo's leave-one-out novelty + NOVELTY_SLACK, the most novel of
    those within :data:`ACC_TOLERANCE` of the best validation accuracy
    (:func:`choose_guidance`), measured on :func:`sweep_samples` networks per setting
    (:data:`SWEEP_SAMPLES`, fewer for models above 1M parameters). The test split is
    never used to choose. Passing one of ``method`` / ``steps`` fixes the solver (the
    other from :data:`DEFAULT_SOLVER`).

    ``condition`` steers a conditional generator: a value in the units of the zoo metric or
    hyperparameter it was fitted on, or ``"max"`` / ``"min"`` / ``"mean"`` of the zoo's
    values; ``None`` (or ``"none"``) samples unconditionally (guidance is then 1). Not
    passed: the zoo's best value (see :func:`~weightspace.generate.config.default_sampling`).
    Each default taken is in the summary's and the manifest's ``"defaults"``, with the
    value chosen."""
    if not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
        raise ZooError(f"the number of samples must be in [1, {MAX_SAMPLES}], got {n!r}")
    solver_auto = steps is None and method is None
    steps = DEFAULT_SOLVER[1] if steps is None else steps
    method = DEFAULT_SOLVER[0] if method is None else method
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise EncodingError(f"ODE steps must be in [1, 10000], got {steps!r}")
    if method not in METHODS:
        raise EncodingError(f"unknown ODE method {method!r}; methods: {', '.join(METHODS)}")
    check_output(out_dir, "dir")
    if Zoo(out_dir).exists():
        raise ZooError(f"{out_dir} already holds a zoo; choose another --out")
    cfg, enc, model = load_generator(gen_dir)
    cn, c = Condition.from_dict(cfg.get("condition")), None
    defaults, recipe = {}, default_sampling(cn)
    if isinstance(condition, str) and condition == AUTO:
        condition, why = recipe["condition"]
        defaults["condition"] = default_record(OFF if condition is None else condition,
                                                 why)
    elif isinstance(condition, str) and condition == OFF:
        condition = None
    if guidance is None:
        guidance, why = recipe["guidance"] if condition is not None else \
            (1.0, "no condition to steer by")
        defaults["guidance"] = default_record(guidance, why)
    if solver_auto:
        defaults["solver"] = default_record(AUTO, "ODE solver and steps chosen on the "
                                                  "validation split with the other settings")
    if mix is None:
        mix = AUTO
        defaults["mix"] = default_record(mix, "samples averaged per network, chosen on the "
                                              "validation split with the other settings")
    check_mix(mix)
    if condition is not None:
        if cn is None:
            raise EncodingError(f"{gen_dir}: the generator was fitted without a condition")
        condition = cn.target(condition)
        c = cn.normalise(condition)
    data = load_dataset(cfg["dataset"].get("name", ""), data_root or
                        cfg["dataset"].get("data_root"))
    arch = cfg["arch"]
    if guidance == AUTO and c is None:
        raise EncodingError("--guidance auto needs --condition (guidance steers by it)")
    if isinstance(guidance, str) and guidance != AUTO:
        try:
            guidance = float(guidance)
        except ValueError:
            raise EncodingError(f"--guidance must be a number or auto; got {guidance!r}") \
                from None

    def draw(st: Setting, count: int):
        return sample(model, count, st.steps, st.method, seed=seed, cond=c,
                      guidance=st.guidance)

    options = candidates(SOLVER_GRID if solver_auto else ((method, steps),),
                         GUIDANCE_GRID if guidance == AUTO else (guidance,),
                         MIX_GRID if mix == AUTO else (mix,), c is not None)
    chosen, sweep, sweep_record = options[0], None, None
    if len(options) > 1:
        sweep, novelty = {}, {}
        zoo_err = _load_zoo_errors(Path(gen_dir), len(data["val"][1]))
        groups: dict = {}
        for o in options:  # one draw per (solver, weight); each mix averages its prefix
            groups.setdefault(o._replace(mix=1), []).append(o.mix)
        n_sweep = sweep_samples(n, sum(math.prod(sh) for sh in enc.shapes))
        for base, ks in groups.items():
            every, _ = draw(base, n_sweep * max(ks))
            for k in ks:  # the first n_sweep * k draws, averaged k at a time
                codes = _averaged(every[:n_sweep * k], k)
                drawn = _bn_fix([enc.decode(x) for x in codes], arch, data,
                                SWEEP_CALIBRATION)
                wrong = errors(arch, drawn, *data["val"])
                o = base._replace(mix=k)
                sweep[o] = 1.0 - float(wrong.float().mean())
                if zoo_err is not None:
                    novelty[o] = float(max_iou(wrong, zoo_err).mean())
        limit = None if zoo_err is None else \
            float(max_iou(zoo_err, zoo_err, leave_one_out=True).mean()) + NOVELTY_SLACK
        chosen, rule = choose_guidance(
            sweep, novelty or None, limit,
            cost=lambda o: (o.passes(c is not None) or 0, o.guidance, o.mix))
        sweep_record = {"rule": rule, "novelty_limit": limit, "pass_budget": PASS_BUDGET,
                        "accuracy_tolerance": ACC_TOLERANCE, "networks_per_setting": n_sweep,
                        "grid": [{"method": o.method, "steps": o.steps, "guidance": o.guidance,
                                  "mix": o.mix, "passes": o.passes(c is not None),
                                  "val_acc": a, "val_novelty": novelty.get(o)}
                                 for o, a in sweep.items()]}
    method, steps, guidance, mix = chosen
    for name, value in (("guidance", guidance), ("mix", mix),
                        ("solver", solver_name(method, steps))):
        if name in defaults and defaults[name]["value"] == AUTO:
            defaults[name]["chosen"] = value
    t = time.perf_counter()  # the chosen setting is sampled again: this is the timed run
    codes, nfe = draw(chosen, n * mix)
    codes = _averaged(codes, mix)
    t_sample = time.perf_counter() - t
    # network passes per generated network: guided evaluations run cond + uncond, and
    # each network averages ``mix`` samples
    n_passes = nfe * (2 if c is not None and guidance != 1.0 else 1) * mix
    zoo = Zoo(out_dir)
    entries, ms = [], []
    # decoded, recalibrated, measured and written a group at a time (all at once for
    # models up to 1M parameters), so large models are never all in memory
    group = max(1, SWEEP_NUMBERS // max(1, sum(math.prod(sh) for sh in enc.shapes)))
    for lo in range(0, n, group):
        t = time.perf_counter()
        states = [enc.decode(x) for x in codes[lo:lo + group]]
        t_sample += time.perf_counter() - t          # drawing and decoding are timed
        states = _bn_fix(states, arch, data)
        ms += metrics(arch, states, data, "cpu", splits=("val", "test"))
        for i, s in enumerate(states, start=lo):
            mid = f"g{i:04d}"
            save_checkpoint(zoo.model_path(mid), s, arch,
                            {"dataset": data.name, "metrics": ms[i],
                             "generated": {"generator": str(gen_dir), "seed": seed,
                                           "index": i, "method": method, "steps": steps,
                                           "condition": condition, "guidance": guidance,
                                           "mix": mix}})
            entries.append({"id": mid, "seed": seed, "index": i, "status": "done",
                            "file": f"models/{mid}.safetensors", "metrics": ms[i]})
    zoo.write({"format": FORMAT, "version": FORMAT_VERSION, "weightspace_version": __version__,
               "arch": arch, "dataset": cfg["dataset"], "models": entries,
               "settings": {"generated_from": str(gen_dir), "n": n, "steps": steps,
                            "method": method, "seed": seed, "condition": condition,
                            "guidance": guidance, "mix": mix,
                            "condition_name": cn.name if cn else None,
                            "guidance_val_acc": _by_guidance(sweep, chosen),
                            "guidance_choice": sweep_record,
                            "defaults": defaults},
               "generation": {"nfe": nfe, "network_passes": n_passes, "seconds": t_sample,
                              "seconds_per_model": t_sample / n}})
    return {"out": str(out_dir), "n": n, "nfe": nfe, "network_passes": n_passes,
            "seconds": t_sample, "condition": condition, "method": method, "steps": steps,
            "guidance": guidance, "mix": mix, "guidance_val_acc": _by_guidance(sweep, chosen),
            "guidance_choice": sweep_record,
            "mean_test_acc": sum(m["test_acc"] for m in ms) / n, "defaults": defaults}
