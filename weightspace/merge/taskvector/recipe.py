"""A task-vector merge as one typed, validated value: built from mergekit's YAML recipe or
from the CLI's flags (both go through :meth:`Recipe.from_dict`), saved with the output.

mergekit's keys: ``merge_method``, ``base_model``, ``models: [{model, parameters}]``,
``parameters``, ``dtype``, ``out_dtype``. Language-model keys (``tokenizer_source``,
``tokenizer``, ``chat_template``) are ignored with a note; ``slices`` / ``modules``
(layer-range merges) and any other key are refused. weightspace's own settings live under a
``weightspace:`` key (``seed``, ``align``, ``bn``, ``heads``, ``dataset``).

A parameter's value is a number or bool, a gradient (a list of numbers interpolated over the
model's layers), or conditionals (``[{filter: "substring", value: ...}, ...]``: the first
whose filter is in the tensor's name, ``*`` or absent wins), exactly as in mergekit. A
model's own setting wins over the recipe's ``parameters``, which win over the method's
default. A tensor's position ``t`` for gradients: layers are the distinct name prefixes up
to the first all-digit component (``blocks.3``, ``model.layers.3``, ``layer2.1``), in
natural order; layer ``k`` of ``L`` has ``t = k / (L - 1)`` (1 when ``L == 1``); a tensor
outside every layer (embeddings, final norm, head) has ``t = 0``: mergekit's rule for
transformer layers, extended to any model by name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .base import REQUIRED, TaskVectorError, TaskVectorMethod, get_tv_method

LM_KEYS = ("tokenizer_source", "tokenizer", "chat_template")
KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
        "weightspace")
DTYPES = ("float32", "float16", "bfloat16", "float64")
ALIGN = ("none", "wm", "am", "ste")
BN = ("base", "reset")        # BatchNorm statistics: from the base, or recomputed on train data
HEADS = ("refuse", "base")    # tensors whose shapes differ: refused, or the base's kept
WS_KEYS = {"seed": 0, "align": "none", "bn": "base", "heads": "refuse", "dataset": None}


@dataclass(frozen=True)
class ModelInput:
    model: str
    parameters: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A validated task-vector merge. ``inputs`` is mergekit's input order: the listed
    models, then the base when it is not listed."""

    merge_method: str
    models: tuple[ModelInput, ...]
    base_model: str | None = None
    parameters: dict = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int = 0
    align: str = "none"
    bn: str = "base"
    heads: str = "refuse"
    dataset: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def method(self) -> TaskVectorMethod:
        return get_tv_method(self.merge_method)

    @staticmethod
    def param_of(method: str, name: str):
        """``method``'s parameter ``name`` (None when it has none)."""
        return get_tv_method(method).param(name)

    @property
    def inputs(self) -> tuple[ModelInput, ...]:
        listed = tuple(self.models)
        if self.base_model is not None and all(m.model != self.base_model for m in listed):
            listed += (ModelInput(self.base_model),)
        return listed

    @property
    def base_index(self) -> int | None:
        if self.base_model is None or self.method.base == "ignored":
            return None
        return next(i for i, m in enumerate(self.inputs) if m.model == self.base_model)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict, source: str = "recipe") -> Recipe:
        """Validate ``d`` (mergekit's keys, see the module docstring) once."""
        if not isinstance(d, dict):
            raise TaskVectorError(f"{source}: expected a mapping of mergekit keys, got "
                                  f"{type(d).__name__}")
        notes = tuple(f"{source}: ignoring {k!r} (a language-model key; these merges have "
                      f"no tokenizer)" for k in LM_KEYS if k in d)
        for k in d:
            if k in ("slices", "modules"):
                raise TaskVectorError(f"{source}: {k!r} (layer-range merges) is not "
                                      f"supported; list whole models under 'models'")
            if k not in KEYS and k not in LM_KEYS:
                raise TaskVectorError(f"{source}: unknown key {k!r} (known: "
                                      f"{', '.join(KEYS + LM_KEYS)})")
        name = d.get("merge_method")
        if not isinstance(name, str):
            raise TaskVectorError(f"{source}: 'merge_method' must name a method")
        method = get_tv_method(name)
        models = d.get("models")
        if not isinstance(models, list) or not models:
            raise TaskVectorError(f"{source}: 'models' must be a non-empty list of "
                                  f"{{model, parameters}}")
        inputs = tuple(_model_input(m, i, source, method) for i, m in enumerate(models))
        base = d.get("base_model")
        if base is not None and not isinstance(base, str):
            raise TaskVectorError(f"{source}: 'base_model' must be a path")
        params = _settings(d.get("parameters"), f"{source}: parameters", method, "shared")
        ws = d.get("weightspace") or {}
        if not isinstance(ws, dict) or set(ws) - set(WS_KEYS):
            bad = sorted(set(ws) - set(WS_KEYS)) if isinstance(ws, dict) else ws
            raise TaskVectorError(f"{source}: 'weightspace' takes {', '.join(WS_KEYS)}; "
                                  f"got {bad}")
        ws = {**WS_KEYS, **ws}
        for key, choices in (("align", ALIGN), ("bn", BN), ("heads", HEADS)):
            if ws[key] not in choices:
                raise TaskVectorError(f"{source}: weightspace.{key} must be one of "
                                      f"{', '.join(choices)}, got {ws[key]!r}")
        if not isinstance(ws["seed"], int) or isinstance(ws["seed"], bool) or ws["seed"] < 0:
            raise TaskVectorError(f"{source}: weightspace.seed must be a non-negative "
                                  f"integer, got {ws['seed']!r}")
        for key in ("dtype", "out_dtype"):
            v = d.get(key)
            if v is not None and str(v).removeprefix("torch.") not in DTYPES:
                raise TaskVectorError(f"{source}: {key} must be one of {', '.join(DTYPES)}, "
                                      f"got {v!r}")
        r = cls(name, inputs, base, params,
                d.get("dtype") and str(d["dtype"]).removeprefix("torch."),
                d.get("out_dtype") and str(d["out_dtype"]).removeprefix("torch."),
                ws["seed"], ws["align"], ws["bn"], ws["heads"], ws["dataset"], notes)
        r._check_inputs(source)
        return r

    @classmethod
    def from_yaml(cls, path) -> Recipe:
        import yaml
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise TaskVectorError(f"{path}: not valid YAML ({' '.join(str(e).split())})") \
                from None
        r = cls.from_dict(d, str(path))
        return r.with_paths_from(path.parent)

    def with_paths_from(self, root: Path) -> Recipe:
        """Relative model paths resolved against ``root`` when they exist there (a recipe
        next to its checkpoints), else left as given (relative to the working directory)."""
        def fix(p):
            return str(root / p) if p and not Path(p).is_absolute() and \
                (root / p).exists() and not Path(p).exists() else p
        from dataclasses import replace
        return replace(self, models=tuple(ModelInput(fix(m.model), m.parameters)
                                          for m in self.models),
                       base_model=fix(self.base_model))

    def _check_inputs(self, source: str) -> None:
        m = self.method
        names = [x.model for x in self.models]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise TaskVectorError(f"{source}: model {dup!r} is listed twice")
        if m.base == "required" and self.base_model is None:
            raise TaskVectorError(f"{source}: merge method {m.name!r} needs a base model "
                                  f"(base_model)")
        n = len(self.inputs)
        if n < m.min_inputs or (m.max_inputs is not None and n > m.max_inputs):
            want = f"exactly {m.min_inputs}" if m.min_inputs == m.max_inputs else \
                f"at least {m.min_inputs}"
            raise TaskVectorError(f"{source}: merge method {m.name!r} takes {want} models, "
                                  f"the base included; got {n}")
        base = self.base_index
        for i, x in enumerate(self.inputs):  # a required parameter given nowhere
            for p in m.params:
                if p.scope == "shared" or not p.required or (p.scope == "non_base" and
                                                             i == base):
                    continue
                if p.name not in x.parameters and p.name not in self.parameters:
                    raise TaskVectorError(f"{source}: model {x.model!r} has no {p.name!r} "
                                          f"(give it under its parameters or the recipe's)")
        for p in m.params:
            if p.scope == "shared" and p.required and p.name not in self.parameters:
                raise TaskVectorError(f"{source}: merge method {m.name!r} needs the "
                                      f"parameter {p.name!r}")

    def to_dict(self) -> dict:
        """mergekit's keys (and the ``weightspace`` block): what ``from_dict`` reads."""
        d = {"merge_method": self.merge_method}
        if self.base_model is not None:
            d["base_model"] = self.base_model
        d["models"] = [{"model": m.model, **({"parameters": m.parameters}
                                             if m.parameters else {})} for m in self.models]
        if self.parameters:
            d["parameters"] = self.parameters
        for k in ("dtype", "out_dtype"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        d["weightspace"] = {k: getattr(self, k) for k in WS_KEYS}
        return d

    def defaults(self) -> dict:
        """The method's shared parameters this recipe leaves to their defaults."""
        return {p.name: p.default for p in self.method.params
                if p.scope == "shared" and not p.required and p.name not in self.parameters
                and not any(p.name in m.parameters for m in self.models)}

    # ------------------------------------------------------------------ per tensor
    def resolve(self, tensor: str, t: float) -> tuple[dict, list[dict]]:
        """``(shared, per_input)`` parameter values for one tensor at layer position ``t``."""
        m, base = self.method, self.base_index
        shared = {p.name: _value(p, [self.parameters], tensor, t, f"tensor {tensor!r}")
                  for p in m.params if p.scope == "shared"}
        per_input = []
        for i, x in enumerate(self.inputs):
            ps = [p for p in m.params if p.scope == "input" or
                  (p.scope == "non_base" and i != base)]
            per_input.append({p.name: _value(p, [x.parameters, self.parameters], tensor, t,
                                             f"model {x.model!r}, tensor {tensor!r}")
                              for p in ps})
        return shared, per_input


def _model_input(m, i: int, source: str, method: TaskVectorMethod) -> ModelInput:
    if isinstance(m, str):
        return ModelInput(m)
    if not isinstance(m, dict) or not isinstance(m.get("model"), str):
        raise TaskVectorError(f"{source}: models[{i}] must be {{model: PATH, parameters: "
                              f"{{...}}}}")
    extra = sorted(set(m) - {"model", "parameters"})
    if extra:
        raise TaskVectorError(f"{source}: models[{i}] has unknown key {extra[0]!r} (known: "
                              f"model, parameters)")
    return ModelInput(m["model"], _settings(m.get("parameters"), f"{source}: models[{i}] "
                                            f"parameters", method, "model"))


def _settings(d, where: str, method: TaskVectorMethod, level: str) -> dict:
    """Check a ``parameters`` mapping: known names, well-formed settings, values in range."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise TaskVectorError(f"{where}: expected a mapping, got {type(d).__name__}")
    for name, setting in d.items():
        p = method.param(name)
        if p is None:
            raise TaskVectorError(f"{where}: merge method {method.name!r} has no parameter "
                                  f"{name!r} (parameters: "
                                  f"{', '.join(q.name for q in method.params)})")
        if level == "model" and p.scope == "shared":
            raise TaskVectorError(f"{where}: {name!r} is one value for the whole merge; give "
                                  f"it under the recipe's parameters, not a model's")
        for v in _leaves(setting, f"{where}: {name}"):
            _check_value(p, v, f"{where}: {name}")
    return dict(d)


def _leaves(setting, where: str):
    """Every scalar a setting can evaluate to (gradient endpoints bound the rest)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return [setting]
    if isinstance(setting, list) and setting:
        if all(isinstance(e, (bool, int, float)) for e in setting):
            return setting
        if all(isinstance(e, dict) for e in setting):
            out = []
            for e in setting:
                if "value" not in e or set(e) - {"value", "filter"} or \
                        not isinstance(e.get("filter", ""), (str, type(None))):
                    raise TaskVectorError(f"{where}: a conditional is {{value: ..., filter: "
                                          f"'substring'}}, got {e!r}")
                out += _leaves(e["value"], where)
            return out
    raise TaskVectorError(f"{where}: expected a number, a list of numbers (a gradient) or "
                          f"[{{filter, value}}] conditionals, got {setting!r}")


def _check_value(p, v, where: str) -> None:
    if p.type is bool:
        if not isinstance(v, bool):
            raise TaskVectorError(f"{where}: expected true or false, got {v!r}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or \
            v in (float("inf"), float("-inf")):
        raise TaskVectorError(f"{where}: expected a finite number, got {v!r}")
    if p.check is not None and (msg := p.check(v)):
        raise TaskVectorError(f"{where} {msg}")


def evaluate(setting, tensor: str, t: float):
    """mergekit's ``evaluate_setting``: a scalar, a gradient at ``t``, or the first
    conditional whose filter matches ``tensor`` (None when none does)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float)):
        return setting
    if all(isinstance(e, (bool, int, float)) for e in setting):
        if any(isinstance(e, bool) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or (tensor and f in tensor):
            return evaluate(cond["value"], tensor, t)
    return None


def _value(p, levels: list[dict], tensor: str, t: float, where: str):
    for level in levels:
        if p.name in level:
            v = evaluate(level[p.name], tensor, t)
            if v is not None:
                return float(v) if p.type is float else v
    if p.default is REQUIRED:
        raise TaskVectorError(f"{where}: no value for the parameter {p.name!r} (no filter "
                              f"matches and there is no default)")
    return p.default


_LAYER = re.compile(r"^(.*?(?:^|\.)\d+)(?:\.|$)")


def layer_positions(names) -> dict[str, float]:
    """Each tensor name's ``t`` for gradients (see the module docstring)."""
    def prefix(name):
        m = _LAYER.match(name)
        return m.group(1) if m else None

    def natural(s):
        return [int(c) if c.isdigit() else c for c in re.split(r"(\d+)", s)]

    layers = sorted({p for n in names if (p := prefix(n)) is not None}, key=natural)
    index = {p: k for k, p in enumerate(layers)}
    n = len(layers)
    return {name: (0.0 if (p := prefix(name)) is None else
                   (index[p] / (n - 1) if n > 1 else 1.0)) for name in names}


PER_MODEL = ("weight", "density", "gamma")


def recipe_dict(method: str, models: list[str], base: str | None = None,
                parameters: dict | None = None, dtype: str | None = None,
                out_dtype: str | None = None, seed: int = 0, align: str = "none",
                bn: str = "base", heads: str = "refuse", dataset: str | None = None,
                **per_model) -> dict:
    """The recipe (mergekit's keys) that flags describe: ``per_model`` values (``weight``,
    ``density``, ``gamma``) are one number for every model (it goes to the recipe's
    ``parameters``) or a list with one per entry of ``models``; ``parameters`` holds the
    shared ones (``lambda``, ``normalize``, ``rescale``, ``t``, ``filter_wise``).
    :meth:`Recipe.from_dict` validates it like a YAML file."""
    shared = {k: v for k, v in (parameters or {}).items() if v is not None}
    entries = [{"model": m} for m in models]
    for name, v in per_model.items():
        if name not in PER_MODEL:
            raise TaskVectorError(f"unknown per-model parameter {name!r} (per-model: "
                                  f"{', '.join(PER_MODEL)})")
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            if len(v) == 1:
                v = v[0]
            elif len(v) != len(models):
                raise TaskVectorError(f"{name}: {len(v)} values for {len(models)} models "
                                      f"(give one, or one per model)")
            else:
                for e, x in zip(entries, v):
                    e.setdefault("parameters", {})[name] = x
                continue
        shared[name] = v
    d = {"merge_method": method, "models": entries}
    if base is not None:
        d["base_model"] = base
    if shared:
        d["parameters"] = shared
    for k, v in (("dtype", dtype), ("out_dtype", out_dtype)):
        if v is not None:
            d[k] = v
    d["weightspace"] = {"seed": seed, "align": align, "bn": bn, "heads": heads,
                        "dataset": dataset}
    return d
