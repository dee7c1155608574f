"""Discover a model's permutation symmetry by tracing it with ``torch.fx``.

The traced graph is run once on an example input (shape propagation with concrete values);
every op's rule (``rules.py``) unifies or fixes the axes of its operands. What is left is a
partition of the parameters' axes into permutation groups, which ``verify.py`` then checks.
"""
from __future__ import annotations

import sys
from collections import defaultdict

import torch
import torch.fx as fx
from torch import nn

from ..errors import WeightspaceError
from . import rules
from .axes import AxisGraph
from .structure import FixedAxes, Group, Spec, permutable_fraction


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that knows timm's untraceable modules and functions."""

    def __init__(self):
        fns, mods = (), ()
        try:  # only when timm is loaded (a timm model was built): importing it costs seconds
            if "timm" not in sys.modules:
                raise ImportError
            from timm.layers import _fx as timm_fx
            fns = tuple(timm_fx.get_notrace_functions())
            mods = tuple(timm_fx.get_notrace_modules())
        except Exception:  # timm missing or changed: plain fx still works for most models
            pass
        super().__init__(autowrap_functions=fns)
        self._leaf_types = mods

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        if isinstance(m, nn.MultiheadAttention):
            return True
        return super().is_leaf_module(m, qualname)


class TraceError(WeightspaceError, RuntimeError):
    """The model could not be traced symbolically."""


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types; say which model and why in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {msg}") from None
    return fx.GraphModule(tracer.root, graph)


class _Labeler(fx.Interpreter):
    """Runs the graph and labels every tensor axis (see ``rules``)."""

    def __init__(self, gm: fx.GraphModule, state: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.g = AxisGraph()
        self.state = state
        self.members: dict[tuple[str, int], object] = {}
        self.params: dict[str, list] = {}
        self.labels: dict[fx.Node, object] = {}
        self.opaque: list[str] = []
        self.ctx = rules.Ctx(self.g, self.param_labels)

    def param_labels(self, key: str, tensor: torch.Tensor):
        if key not in self.params:
            in_state = key in self.state and self.state[key].shape == tensor.shape
            labs = []
            for ax, size in enumerate(tensor.shape):
                a = self.g.new(size, f"{key}:{ax}")
                if in_state:
                    self.members[(key, ax)] = a
                else:
                    self.g.fix(a, "constant tensor not in the state dict")
                labs.append(a)
            self.params[key] = labs
        return self.params[key]

    def _labels_of(self, arg):
        return fx.node.map_aggregate(arg, lambda x: self.labels.get(x)
                                     if isinstance(x, fx.Node) else None)

    def run_node(self, n: fx.Node):
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        out = getattr(self, n.op)(n.target, args, kwargs)
        labs = self._labels_of(n.args)
        klabs = self._labels_of(n.kwargs)
        result = None
        if n.op == "placeholder":
            if isinstance(out, torch.Tensor):
                result = self.ctx.fresh(out.shape, "input")
        elif n.op == "get_attr":
            if isinstance(out, torch.Tensor):
                result = self.param_labels(n.target, out)
        elif n.op == "output":
            self.ctx.fix_all(labs, "output")
        else:
            result = self._rule(n, args, kwargs, labs, klabs, out)
        if n.op != "output":
            self.labels[n] = result
        return out

    def _rule(self, n, args, kwargs, labs, klabs, out):
        c = self.ctx
        try:
            if n.op == "call_module":
                m = self.module.get_submodule(n.target)
                res = rules.module_rule(c, m, n.target + ".", args, labs, out)
                what = type(m).__name__
            else:
                name = n.target if isinstance(n.target, str) else getattr(
                    n.target, "__name__", str(n.target))
                res = rules.function_rule(c, name, args, kwargs, labs, klabs, out)
                what = name
        except (IndexError, TypeError, KeyError, AttributeError, ValueError):
            res, what = None, str(n.target)
        if res is not None and _consistent(res, out):
            return res
        if res is None and what in rules.NON_TENSOR and not _has_tensor(out):
            return None  # a shape / size query: constrains nothing
        has_tensor_in = bool(rules._tensor_labels(labs) or rules._tensor_labels(klabs))
        if res is None and not has_tensor_in and not _has_tensor(out):
            return None
        # opaque: everything it touches is fixed
        reason = f"op {what!r} not modelled"
        if has_tensor_in or _has_tensor(out):
            self.opaque.append(f"{n.name} ({what})")
        c.fix_all(labs, reason)
        c.fix_all(klabs, reason)
        if res is not None:
            c.fix_all(res, reason)
        if n.op == "call_module":
            for pname, p in self.module.get_submodule(n.target).named_parameters():
                for a in self.param_labels(f"{n.target}.{pname}", p):
                    self.g.fix(a, reason)
            for pname, b in self.module.get_submodule(n.target).named_buffers():
                for a in self.param_labels(f"{n.target}.{pname}", b):
                    self.g.fix(a, reason)
        return fx.node.map_aggregate(
            out, lambda v: c.fresh(v.shape, reason) if isinstance(v, torch.Tensor) else None)


def _has_tensor(out) -> bool:
    found = []
    fx.node.map_aggregate(out, lambda v: found.append(1) if isinstance(v, torch.Tensor) else None)
    return bool(found)


def _consistent(labels, out) -> bool:
    if isinstance(out, torch.Tensor):
        return rules.is_labels(labels) and len(labels) == out.dim() and all(
            a.size == s for a, s in zip(labels, out.shape))
    if isinstance(out, (tuple, list)) and isinstance(labels, (tuple, list)):
        return len(labels) == len(out) and all(
            lab is None or _consistent(lab, o) for lab, o in zip(labels, out))
    return labels is None or not _has_tensor(out)


def discover(model: nn.Module, example_input) -> Spec:
    """Unverified spec of ``model``: trace, label, and collect groups (see ``symmetry_of``)."""
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
        state = model.state_dict(keep_vars=True)
        lab = _Labeler(gm, state)
        inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
        with torch.no_grad():
            lab.run(*inputs)
    finally:
        model.train(was_training)
    return _build_spec(lab, {k: tuple(v.shape) for k, v in state.items()})


def _build_spec(lab: _Labeler, shapes: dict[str, tuple]) -> Spec:
    g = lab.g
    names: dict[int, str] = {}
    sizes: dict[str, int] = {}
    fixed: dict[int, FixedAxes] = {}
    taken: set[str] = set()
    roles = g.class_roles()

    def convert(layout):
        kind, val = layout
        if kind in ("prod", "cat"):
            parts = tuple(convert(c) for c in val)
            parts = tuple(p for p in parts if not (kind == "prod" and p == ("fixed", 1)))
            if kind == "prod" and len(parts) == 1:
                return parts[0]
            return (kind, parts)
        root = val
        if root.fixed is not None or root.size == 1:
            return ("fixed", root.size)
        if root.id not in names:
            names[root.id] = _unique(_pretty(root.name, roles.get(root.id)), taken)
            sizes[names[root.id]] = root.size
        return ("group", names[root.id])

    layouts, occurrences = {}, defaultdict(list)
    for (key, ax), a in sorted(lab.members.items()):
        raw = g.layout(a)
        layout = convert(raw)
        _collect_fixed(raw, f"{key}:{ax}", fixed)
        if layout[0] == "fixed":
            continue
        layouts[f"{key}:{ax}"] = layout
        _occurrences(layout, None, occurrences, f"{key}:{ax}")
    # unused parameters never met an op: they cannot be placed in any group
    used = {k for k, _ in lab.members}
    for key, shp in shapes.items():
        if key not in used and len(shp) > 0:
            for ax, n in enumerate(shp):
                fixed.setdefault(-len(fixed) - 1, FixedAxes("not used in the traced forward",
                                                            n, [f"{key}:{ax}"]))

    parents = _per_block_parents(occurrences)
    groups = []
    order = {name: rid for rid, name in names.items()}
    for name in sorted(occurrences, key=order.__getitem__):  # creation (graph) order
        members = sorted({m for m, _ in occurrences[name]}, key=_natural)
        groups.append(Group(name, sizes[name], members, parents.get(name)))
    fixed_list = sorted(fixed.values(), key=lambda f: _natural(f.members[0]))
    keys = sorted({m.rpartition(":")[0] for m in layouts}, key=_natural)  # stable JSON
    spec = Spec(groups, layouts, {k: shapes[k] for k in keys}, fixed_list)
    spec.permutable_fraction = permutable_fraction(spec)
    return spec


def _collect_fixed(layout, member: str, fixed: dict) -> None:
    kind, val = layout
    if kind in ("prod", "cat"):
        for c in val:
            _collect_fixed(c, member, fixed)
        return
    root = val
    if root.fixed is None or root.size == 1:
        return
    f = fixed.setdefault(root.id, FixedAxes(root.fixed, root.size, []))
    if member not in f.members:
        f.members.append(member)


def _occurrences(layout, prev, occ, member) -> None:
    """For each group: (member, the group immediately before it in a product or None)."""
    kind, val = layout
    if kind == "group":
        occ[val].append((member, prev))
    elif kind == "prod":
        before = None
        for c in val:
            _occurrences(c, before, occ, member)
            before = c[1] if c[0] == "group" else None
    elif kind == "cat":
        for c in val:
            _occurrences(c, None, occ, member)


def _per_block_parents(occ) -> dict[str, str]:
    """A group is per-block under P when, in every parameter, it directly follows P."""
    parents = {}
    for name, places in occ.items():
        prevs = {p for _, p in places}
        if len(prevs) == 1 and None not in prevs:
            parents[name] = prevs.pop()
    # no chains: a parent must not be per-block itself
    return {c: p for c, p in parents.items() if p not in parents}


def _pretty(name: str, role: str | None = None) -> str:
    """A readable group name: the module that creates the units, plus their role."""
    import re
    base = re.sub(r"\[\d+\]\.\d+$", "", name)
    base = re.sub(r"\.(in_proj_)?weight:\d+$|:\d+$|\.split.*$", "", base)
    return f"{base}.{role}" if role else base


def _unique(name: str, taken: set) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}#{k}"
    taken.add(out)
    return out


def _natural(s: str):
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
