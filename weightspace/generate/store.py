"""The generator directory and the zoo it is fitted on, as files.

A generator directory holds ``config.json`` (zoo, arch, dataset, encoding signature,
training settings, defaults taken, time), ``encoding.safetensors``,
``generator.safetensors`` (the EMA velocity field), ``zoo_val_errors.safetensors`` (where
each zoo model errs on the validation split, for novelty without the zoo) and
``state.safetensors`` + ``state.json`` (raw weights, optimizer, step: what an interrupted
fit resumes from; optimizer state is flattened to tensors + JSON, never pickled).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checkpoint import atomic_write_text, read_checkpoint, save_tensors
from ..zoo.store import Zoo, ZooError, finished
from .config import Condition, EncodingError, FlowSettings, GenerateError
from .encoding import Encoding
from .flow import check_velocity_config, make_velocity

CONFIG, ENCODING, GENERATOR = "config.json", "encoding.safetensors", "generator.safetensors"
STATE, STATE_JSON, ZOO_ERRORS = "state.safetensors", "state.json", "zoo_val_errors.safetensors"
FORMAT, VERSION = "weightspace.generator", 1


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


def flatten_state(prefix: str, d: dict, out: dict, meta: dict) -> None:
    """Optimizer state dict -> tensors + JSON (no pickling)."""
    for k, v in d.items():
        key = f"{prefix}/{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, dict):
            flatten_state(key, v, out, meta)
        else:
            meta[key] = v


def unflatten_state(prefix: str, tensors: dict, meta: dict) -> dict:
    """The inverse of :func:`flatten_state`."""
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


def save_training_state(out: Path, st: dict) -> None:
    """What an interrupted fit resumes from (model, EMA, optimizer, step), and the EMA
    velocity field as the generator so far."""
    tensors, meta = {}, {}
    flatten_state("model", st["model"], tensors, meta)
    flatten_state("ema", st["ema"], tensors, meta)
    opt = dict(st["opt"])
    groups = opt.pop("param_groups")
    flatten_state("opt", opt, tensors, meta)
    save_tensors(out / STATE, tensors)
    atomic_write_text(out / STATE_JSON, json.dumps(
        {"step": st["step"], "meta": meta, "param_groups": groups}))
    save_tensors(out / GENERATOR, st["ema"], {"weightspace.velocity": json.dumps(st["config"])})


def write_config(out: Path, cfg: dict) -> None:
    atomic_write_text(out / CONFIG, json.dumps(cfg, indent=1))


def resume_state(out: Path, cfg: dict) -> dict:
    """The training state an interrupted fit in ``out`` left, if it was fitted with the same
    settings; a damaged or foreign state is refused with the file named."""
    try:
        old = json.loads((out / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise GenerateError(f"{out / 'config.json'}: cannot resume ({e})") from None
    if not isinstance(old, dict) or any(old.get(k) != cfg[k]
                                        for k in ("encoding", "train", "zoo", "condition")):
        raise GenerateError(f"{out} holds a generator fitted with other settings; use "
                            f"another output directory")
    try:
        st = load_file(str(out / STATE))
        sm = json.loads((out / STATE_JSON).read_text())
        state = {"model": unflatten_state("model", st, {}), "ema": unflatten_state("ema", st, {}),
                 "opt": unflatten_state("opt", st, sm["meta"]), "step": int(sm["step"])}
        state["opt"]["param_groups"] = sm["param_groups"]
    except Exception as e:  # any damage to the state files: refuse, do not half-resume
        raise GenerateError(f"{out}: cannot resume from state.safetensors / state.json "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                            f"remove them to start over") from None
    if not 0 <= state["step"] <= cfg["train"]["steps"]:
        raise GenerateError(f"{out / 'state.json'}: step {state['step']} is outside "
                            f"[0, {cfg['train']['steps']}]")
    return state


def check_generator_config(cfg, where) -> dict:
    """``config.json`` of a generator directory, checked once when read: format, version,
    the fields sampling uses (architecture, dataset, encoding, condition normalisation)."""
    def bad(msg):
        raise GenerateError(f"{where}: {msg}")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        bad("not a weightspace generator config (field 'format')")
    if not isinstance(cfg.get("version"), int) or isinstance(cfg["version"], bool) \
            or cfg["version"] > VERSION:
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
    except (TypeError, GenerateError) as e:
        bad(f"field 'train': {e}")
    return cfg


def load_generator(gen_dir) -> tuple[dict, Encoding, torch.nn.Module]:
    gen = Path(gen_dir)
    if not gen.is_dir():
        raise GenerateError(f"{gen}: no such generator directory")
    try:
        cfg = json.loads((gen / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise GenerateError(f"{gen}: not a generator directory ({e})") from None
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
        raise GenerateError(f"{gen}: no generator.safetensors (fit not finished?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            vcfg = json.loads((f.metadata() or {})["weightspace.velocity"])
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise GenerateError(f"{path}: not a generator file (no readable "
                            f"'weightspace.velocity' metadata: {e})") from None
    check_velocity_config(vcfg, str(path))
    if vcfg.get("dim") != enc.dim:
        raise EncodingError(f"{gen}: generator dimension {vcfg['dim']} != encoding {enc.dim}")
    try:
        model = make_velocity(vcfg)
        model.load_state_dict(load_file(str(path)))
    except (TypeError, ValueError, RuntimeError, SafetensorError) as e:
        raise GenerateError(f"{path}: not a velocity field this version reads "
                            f"({str(e).splitlines()[0]})") from None
    return cfg, enc, model.eval()


def load_zoo_errors(gen: Path, n_val: int):
    """The zoo's validation errors a generator keeps, or None (an older generator, or a
    dataset whose validation split changed)."""
    try:
        err = load_file(str(gen / ZOO_ERRORS))["errors"].bool()
    except (OSError, KeyError, SafetensorError):
        return None
    return err if err.dim() == 2 and err.shape[1] == n_val else None


