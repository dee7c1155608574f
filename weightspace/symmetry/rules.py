"""How each traced op constrains the permutation of axes.

A rule receives the op's concrete arguments (tensors, ints), the axis labels of its tensor
arguments (same nesting, ``None`` for non-tensors) and the concrete result, and returns the
labels of the result. Rules *unify* axes that must move together and *fix* axes the op does
not allow to move. An op without a rule is opaque: everything it touches is fixed.

(Long by design: one small rule function per modelled op, the registry the CLI lists with
``spec --ops``; a rule is found by its op's name, not by reading the file.)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .axes import Axis, AxisGraph, _common_groups

Labels = list  # list[Axis], one per tensor dim

ELEMENTWISE = {
    "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "sigmoid_", "tanh", "hardswish",
    "hardsigmoid", "hardtanh", "leaky_relu", "elu", "selu", "celu", "mish", "softplus",
    "exp", "log", "sqrt", "rsqrt", "abs", "neg", "clamp", "clamp_min", "clamp_max", "clip",
    "dropout", "dropout1d", "dropout2d", "alpha_dropout", "contiguous", "clone", "detach",
    "float", "half", "double", "bfloat16", "to", "type", "type_as", "pow", "square", "erf",
    "sin", "cos", "softmax", "log_softmax", "normalize", "reciprocal", "sign", "floor",
    "ceil", "round", "logsigmoid", "softsign", "tanhshrink", "gelu_", "silu_", "hardswish_",
    "__rtruediv__", "nan_to_num", "requires_grad_", "stochastic_depth", "drop_path",
}
BINARY = {"add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "div",
          "div_", "truediv", "itruediv", "floordiv", "maximum", "minimum", "where", "addcmul",
          "lerp", "masked_fill", "fmod", "remainder"}
REDUCE = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp", "prod", "nansum",
          "nanmean"}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
           "reshape_as", "squeeze_", "unsqueeze_"}
SPATIAL = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
           "adaptive_max_pool1d", "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d",
           "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "interpolate", "upsample",
           "lp_pool2d", "lp_pool1d"}
NON_TENSOR = {"size", "dim", "numel", "getattr", "_assert", "eq", "ne", "lt", "le", "gt", "ge",
              "floordiv_int", "is_floating_point", "stride"}

ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Softmax,
    nn.LogSoftmax, nn.PReLU,
)
SPATIAL_MODULES = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
    nn.MaxPool2d, nn.MaxPool3d, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d,
)


class Ctx:
    """What a rule may use besides its arguments: the axis graph and parameter labels."""

    def __init__(self, graph: AxisGraph, param_labels: Callable[[str, torch.Tensor], Labels]):
        self.g = graph
        self.param = param_labels

    def fresh(self, shape, reason: str) -> Labels:
        return [self.g.new(s, reason, fixed=reason) for s in shape]

    def fix_all(self, labels, reason: str) -> None:
        for lab in _tensor_labels(labels):
            self.g.collapse(lab)
            for a in lab:
                self.g.fix(a, reason)

    def broadcast(self, outs: tuple[int, ...], labs: list[Labels], shapes) -> Labels:
        """Unify axes of operands that are broadcast together to shape ``outs``."""
        result = []
        n = len(outs)
        for d in range(n):
            same = []
            for lab, shp in zip(labs, shapes):
                k = d - (n - len(shp))
                if k >= 0 and shp[k] == outs[d] and outs[d] != 1:
                    same.append(lab[k])
            for other in same[1:]:
                self.g.unify(same[0], other)
            result.append(same[0] if same else self.g.new(outs[d], "broadcast",
                                                          fixed="broadcast"))
        return result


def is_labels(x) -> bool:
    """True for the labels of one tensor (a list of axes)."""
    return isinstance(x, list) and all(isinstance(a, Axis) for a in x)


def _tensor_labels(labels):
    """All per-tensor label lists inside a nested structure."""
    if is_labels(labels):
        return [labels]
    if isinstance(labels, (list, tuple)):
        return [lab for x in labels for lab in _tensor_labels(x)]
    if isinstance(labels, dict):
        return [lab for v in labels.values() for lab in _tensor_labels(v)]
    return []


def _tensor_args(args, labs):
    """(value, labels) for every tensor argument, in order (lists flattened)."""
    out = []
    for a, lab in zip(args, labs):
        if isinstance(a, torch.Tensor) and is_labels(lab):
            out.append((a, lab))
        elif isinstance(a, (list, tuple)) and isinstance(lab, (list, tuple)):
            out.extend((x, y) for x, y in zip(a, lab)
                       if isinstance(x, torch.Tensor) and is_labels(y))
    return out


def _dims(d, ndim):
    if d is None:
        return list(range(ndim))
    if isinstance(d, int):
        d = [d]
    return sorted(x % ndim for x in d)


# ----------------------------------------------------------------------------------------
# layers with parameters
# ----------------------------------------------------------------------------------------
def linear(c: Ctx, x: Labels, w: Labels, b: Labels | None) -> Labels:
    c.g.unify(x[-1], w[1])
    if b is not None:
        c.g.unify(b[0], w[0])
    return x[:-1] + [w[0]]


def conv(c: Ctx, x: Labels, w: Labels, b: Labels | None, groups: int, out_shape) -> Labels:
    for k in w[2:]:
        c.g.fix(k, "kernel")
    if groups == 1:
        c.g.unify(x[1], w[1])
    else:
        gvar = c.g.new(groups, "groups")
        c.g.unify(x[1], c.g.prod([gvar, w[1]]))
        co = c.g.new(w[0].size // groups, "group-out")
        c.g.unify(w[0], c.g.prod([gvar, co]))
    if b is not None:
        c.g.unify(b[0], w[0])
    return [x[0], w[0]] + c.fresh(out_shape[2:], "spatial")


def channel_affine(c: Ctx, x: Labels, *params: Labels | None, dim: int = 1) -> Labels:
    for p in params:
        if p is not None:
            c.g.unify(x[dim], p[0])
    return x


def layer_norm(c: Ctx, x: Labels, k: int, w: Labels | None, b: Labels | None) -> Labels:
    for p in (w, b):
        if p is not None:
            for i in range(k):
                c.g.unify(x[len(x) - k + i], p[i])
    return x


def group_norm(c: Ctx, x: Labels, groups: int, w, b) -> Labels:
    ch = x[1].size
    c.g.unify(x[1], c.g.prod([c.g.new(groups, "norm-groups"), c.g.new(ch // groups, "in-group")]))
    return channel_affine(c, x, w, b)


def embedding(c: Ctx, idx: Labels, w: Labels) -> Labels:
    c.g.fix(w[0], "vocabulary")
    return idx + [w[1]]


def matmul(c: Ctx, a: Labels, b: Labels, sa, sb) -> Labels:
    if len(a) == 1 and len(b) == 1:
        c.g.unify(a[0], b[0])
        return []
    if len(a) == 1:
        c.g.unify(a[0], b[-2])
        return b[:-2] + [b[-1]]
    if len(b) == 1:
        c.g.unify(a[-1], b[0])
        return a[:-1]
    c.g.unify(a[-1], b[-2])
    batch_shape = torch.broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    batch = c.broadcast(tuple(batch_shape), [a[:-2], b[:-2]], [sa[:-2], sb[:-2]])
    return batch + [a[-2], b[-1]]


def sdpa(c: Ctx, q, k, v, sq, sk, sv) -> Labels:
    c.g.unify(q[-1], k[-1])
    c.g.unify(k[-2], v[-2])
    c.g.tag(q[-1], "qk")
    c.g.tag(v[-1], "vo")
    if len(q) >= 3:
        c.g.tag(q[-3], "heads")
    batch_shape = torch.broadcast_shapes(tuple(sq[:-2]), tuple(sk[:-2]), tuple(sv[:-2]))
    batch = c.broadcast(tuple(batch_shape), [q[:-2], k[:-2], v[:-2]],
                        [sq[:-2], sk[:-2], sv[:-2]])
    return batch + [q[-2], v[-1]]


def multihead_attention(c: Ctx, m: nn.MultiheadAttention, prefix: str, args, labs):
    """``nn.MultiheadAttention``: fused in-projection, heads as a block structure."""
    if not m._qkv_same_embed_dim or m.bias_k is not None:
        return None
    w_in = c.param(prefix + "in_proj_weight", m.in_proj_weight)
    w_out = c.param(prefix + "out_proj.weight", m.out_proj.weight)
    for lab in labs[:3]:
        if lab is not None:
            c.g.unify(lab[-1], w_in[1])
    base = prefix.rstrip(".")
    heads = c.g.new(m.num_heads, base)
    hd = m.embed_dim // m.num_heads
    dqk, dv = c.g.new(hd, base), c.g.new(hd, base)
    qk, vo = c.g.prod([heads, dqk]), c.g.prod([heads, dv])
    for a, role in ((heads, "heads"), (dqk, "qk"), (dv, "vo")):
        c.g.tag(a, role)
    c.g.unify(w_in[0], c.g.cat([qk, qk, vo]))
    c.g.unify(w_out[1], vo)
    if m.in_proj_bias is not None:
        c.g.unify(c.param(prefix + "in_proj_bias", m.in_proj_bias)[0], w_in[0])
    if m.out_proj.bias is not None:
        c.g.unify(c.param(prefix + "out_proj.bias", m.out_proj.bias)[0], w_out[0])
    return labs[0][:-1] + [w_out[0]]


# ----------------------------------------------------------------------------------------
# shape ops
# ----------------------------------------------------------------------------------------
def reshape(c: Ctx, x: Labels, in_shape, out_shape) -> Labels:
    c.g.collapse(x)
    groups = _common_groups(list(in_shape), list(out_shape))
    if groups is None:
        c.fix_all(x, "reshape")
        return c.fresh(out_shape, "reshape")
    out = []
    for ga, gb in groups:
        ins = [x[i] for i in ga if in_shape[i] != 1]
        sizes = [out_shape[j] for j in gb if out_shape[j] != 1]
        merged = c.g.prod(ins) if ins else None
        parts = [] if not sizes else ([merged] if len(sizes) == 1 else c.g.split(merged, sizes))
        it = iter(parts)
        for j in gb:
            out.append(c.g.new(1, "broadcast", fixed="broadcast") if out_shape[j] == 1
                       else next(it))
    return out


def split_dim(c: Ctx, x: Labels, dim: int, sizes: list[int]) -> list[Labels]:
    """``chunk`` / ``split`` along ``dim``: the axis becomes a concatenation of parts."""
    c.g.collapse(x)
    a = c.g.find(x[dim])
    if c.g.is_fixed(a):
        parts = [c.g.new(s, "split", fixed=a.fixed or "split") for s in sizes]
    elif a.struct is not None and a.struct[0] == "cat" \
            and [p.size for p in a.struct[1]] == sizes:
        parts = list(a.struct[1])
    elif a.struct is None:
        parts = [c.g.new(s, f"{a.name}.part{i}") for i, s in enumerate(sizes)]
        a.struct = ("cat", parts)
    else:
        c.g.fix(a, "split not aligned with the axis structure")
        parts = [c.g.new(s, "split", fixed="split") for s in sizes]
    return [x[:dim] + [p] + x[dim + 1:] for p in parts]


def index(c: Ctx, x: Labels, shape, idx) -> Labels | None:
    """Basic indexing ``x[idx]`` with ints, slices, None and Ellipsis."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    if any(isinstance(i, (torch.Tensor, list)) for i in idx):
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (len(x) - n_real))
        else:
            expanded.append(i)
    labs, shp, out, d = list(x), list(shape), [], 0
    for i in expanded:
        if i is None:
            out.append(c.g.new(1, "broadcast", fixed="broadcast"))
            continue
        if isinstance(i, int):
            if c.g.selector_of(labs[d]) is not None:
                labs = c.g.select(labs, d, i)
                shp.pop(d)
            else:
                c.g.fix(labs[d], "indexed by a constant")
                labs.pop(d)
                shp.pop(d)
            continue
        if isinstance(i, slice):
            start, stop, step = i.indices(shp[d])
            if (start, stop, step) == (0, shp[d], 1):
                out.append(labs[d])
            else:
                out.append(_slice(c, labs[d], start, stop, step))
            d += 1
            continue
        return None
    out.extend(labs[d:])
    c.g.collapse(out)
    return out


def _slice(c: Ctx, a, start, stop, step):
    r = c.g.find(a)
    size = len(range(start, stop, step))
    if c.g.is_fixed(r):
        return c.g.new(size, "sliced", fixed=r.fixed or "sliced")
    if step == 1 and r.struct is not None and r.struct[0] == "cat":
        bounds, off = [], 0
        for p in r.struct[1]:
            bounds.append((off, off + p.size, p))
            off += p.size
        inside = [p for lo, hi, p in bounds if lo >= start and hi <= stop]
        if sum(p.size for p in inside) == size and inside:
            return c.g.cat(inside)
    c.g.fix(r, "sliced")
    return c.g.new(size, "sliced", fixed="sliced")


def reduce(c: Ctx, x: Labels, dims, keepdim: bool) -> Labels:
    c.g.collapse(x)
    red = set(_dims(dims, len(x)))
    out = []
    for i, a in enumerate(x):
        if i not in red:
            out.append(a)
        elif keepdim:
            out.append(c.g.new(1, "broadcast", fixed="broadcast"))
    return out


def pad(c: Ctx, x: Labels, widths) -> Labels:
    out = list(x)
    for k in range(len(widths) // 2):
        lo, hi = widths[2 * k], widths[2 * k + 1]
        d = len(x) - 1 - k
        if lo or hi:
            if lo < 0 or hi < 0:
                c.g.fix(x[d], "cropped")
                out[d] = c.g.new(x[d].size + lo + hi, "cropped", fixed="cropped")
                continue
            parts = ([c.g.new(lo, "padding", fixed="padding")] if lo else []) + [x[d]] + \
                    ([c.g.new(hi, "padding", fixed="padding")] if hi else [])
            out[d] = c.g.cat(parts)
    return out


def expand(c: Ctx, x: Labels, in_shape, out_shape) -> Labels:
    c.g.collapse(x)
    lead = len(out_shape) - len(in_shape)
    out = c.fresh(out_shape[:lead], "broadcast")
    for i, (si, so) in enumerate(zip(in_shape, out_shape[lead:])):
        if si == so:
            out.append(x[i])
        else:
            out.append(c.g.new(so, "broadcast", fixed="broadcast"))
    return out


def repeat(c: Ctx, x: Labels, reps) -> Labels:
    c.g.collapse(x)
    lead = len(reps) - len(x)
    out = c.fresh([reps[i] for i in range(lead)], "broadcast")
    for a, r in zip(x, reps[lead:]):
        out.append(a if r == 1 else c.g.cat([a] * r))
    return out


def permute(x: Labels, order) -> Labels:
    return [x[i % len(x)] for i in order]


def transpose(x: Labels, d0: int, d1: int) -> Labels:
    out = list(x)
    d0, d1 = d0 % len(x), d1 % len(x)
    out[d0], out[d1] = out[d1], out[d0]
    return out


def movedim(x: Labels, src, dst) -> Labels:
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    n = len(x)
    src, dst = [s % n for s in src], [d % n for d in dst]
    rest = [i for i in range(n) if i not in src]
    order = [None] * n
    for s, d in zip(src, dst):
        order[d] = s
    it = iter(rest)
    order = [o if o is not None else next(it) for o in order]
    return permute(x, order)


def cat(c: Ctx, labs: list[Labels], dim: int) -> Labels:
    for lab in labs:
        c.g.collapse(lab)
    n = len(labs[0])
    dim %= n
    out = []
    for d in range(n):
        if d == dim:
            out.append(c.g.cat([lab[d] for lab in labs]))
        else:
            for lab in labs[1:]:
                c.g.unify(labs[0][d], lab[d])
            out.append(labs[0][d])
    return out


def stack(c: Ctx, labs: list[Labels], dim: int) -> Labels:
    for lab in labs:
        c.g.collapse(lab)
        for a, b in zip(labs[0], lab):
            c.g.unify(a, b)
    dim %= len(labs[0]) + 1
    return labs[0][:dim] + [c.g.new(len(labs), "stack", fixed="selector")] + labs[0][dim:]


def spatial(c: Ctx, x: Labels, out_shape) -> Labels:
    c.g.collapse(x)
    return x[:2] + c.fresh(out_shape[2:], "spatial")


def einsum(c: Ctx, eq: str, labs: list[Labels], out_shape) -> Labels | None:
    """``torch.einsum`` without ellipsis: letters shared between operands are unified."""
    if "..." in eq or "->" not in eq:
        return None
    lhs, rhs = eq.replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != len(labs):
        return None
    seen = {}
    for term, lab in zip(terms, labs):
        c.g.collapse(lab)
        for ch, a in zip(term, lab):
            if a.size == 1:
                continue
            if ch in seen:
                c.g.unify(seen[ch], a)
            else:
                seen[ch] = a
    return [seen.get(ch) or c.g.new(s, "broadcast", fixed="broadcast")
            for ch, s in zip(rhs, out_shape)]


def _int(v, default):
    return default if v is None else int(v)


def module_rule(c: Ctx, m: nn.Module, prefix: str, args, labs, out):
    """Labels of a leaf module's output; ``None`` if the module is opaque."""
    x = labs[0] if labs else None
    p = (lambda name: None if getattr(m, name, None) is None
         else c.param(prefix + name, getattr(m, name)))
    if isinstance(m, nn.MultiheadAttention):
        res = multihead_attention(c, m, prefix, args, labs)
        if res is None:
            return None
        w = out[1] if isinstance(out, tuple) else None
        return (res, None if w is None else c.fresh(w.shape, "attention weights"))
    if x is None:
        return None
    c.g.collapse(x)
    if isinstance(m, nn.Linear):
        return linear(c, x, p("weight"), p("bias"))
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and type(m).forward in (
            nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward):
        return conv(c, x, p("weight"), p("bias"), m.groups, out.shape)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return channel_affine(c, x, p("weight"), p("bias"), p("running_mean"), p("running_var"))
    if isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward:
        return layer_norm(c, x, len(m.normalized_shape), p("weight"), p("bias"))
    if isinstance(m, nn.GroupNorm) and type(m).forward is nn.GroupNorm.forward:
        return group_norm(c, x, m.num_groups, p("weight"), p("bias"))
    if isinstance(m, nn.Embedding) and type(m).forward is nn.Embedding.forward:
        return embedding(c, x, p("weight"))
    if isinstance(m, nn.PReLU):
        w = p("weight")
        if w is not None and w[0].size > 1:
            c.g.unify(x[1], w[0])
        return x
    if isinstance(m, ELEMENTWISE_MODULES):
        return x
    if isinstance(m, (nn.Flatten, nn.Unflatten)):
        return reshape(c, x, args[0].shape, out.shape)
    if isinstance(m, SPATIAL_MODULES):
        return spatial(c, x, out.shape)
    return None


class Call:
    """One traced function / method call as an op rule sees it: the context, the op's
    name, its concrete arguments and result, and the axis labels of its tensor arguments
    (``labs`` positional, ``klabs`` by keyword)."""

    __slots__ = ("c", "name", "args", "kwargs", "labs", "klabs", "out")

    def __init__(self, c: Ctx, name: str, args, kwargs, labs, klabs, out):
        self.c, self.name, self.args, self.kwargs = c, name, args, kwargs
        self.labs, self.klabs, self.out = labs, klabs, out

    @property
    def t0(self):
        """The first argument (the tensor a method is called on)."""
        return self.args[0] if self.args else None

    @property
    def x(self):
        """The labels of the first argument."""
        return self.labs[0] if self.labs else None

    def arg(self, i: int, key: str, default=None):
        """Argument ``i`` if given positionally, else keyword ``key``."""
        return self.args[i] if len(self.args) > i else self.kwargs.get(key, default)

    def larg(self, i: int, key: str):
        """The labels of argument ``i`` / keyword ``key``."""
        return self.labs[i] if len(self.labs) > i else self.klabs.get(key)


OP_RULES: dict[str, Callable[[Call], object]] = {}


def op_rule(*names: str):
    """Register the rule of the ops ``names`` (function or method names as torch.fx records
    them). One rule per name: a second registration is a programming error."""
    def deco(fn):
        for n in names:
            if n in OP_RULES:
                raise ValueError(f"op {n!r} already has the rule {OP_RULES[n].__name__}")
            OP_RULES[n] = fn
        return fn
    return deco


def list_op_rules() -> dict[str, str]:
    """Every modelled op and the first line of its rule's docstring (``spec --ops``)."""
    return {n: (OP_RULES[n].__doc__ or OP_RULES[n].__name__).strip().splitlines()[0]
            for n in sorted(OP_RULES)}


def function_rule(c: Ctx, name: str, args, kwargs, labs, klabs, out):
    """Labels of a function / method call's output; ``None`` if the op is opaque (it has no
    rule, or its rule does not apply to these arguments)."""
    if name in NON_TENSOR and not isinstance(out, torch.Tensor):
        return None
    rule = OP_RULES.get(name)
    return None if rule is None else rule(Call(c, name, args, kwargs, labs, klabs, out))


@op_rule("getattr")
def _getattr_rule(o: Call):
    """``x.T`` / ``x.mT``: reversed / last two axes swapped."""
    if not isinstance(o.out, torch.Tensor) or o.x is None or o.args[1] not in ("T", "mT"):
        return None
    return o.x[::-1] if o.args[1] == "T" else transpose(o.x, -1, -2)


@op_rule("permute")
def _permute_rule(o: Call):
    """Axes reordered."""
    order = o.args[1:] if len(o.args) > 2 or isinstance(o.arg(1, "dims"), int) \
        else o.arg(1, "dims")
    return permute(o.x, list(order))


@op_rule("transpose", "swapaxes", "swapdims")
def _transpose_rule(o: Call):
    """Two axes swapped."""
    return transpose(o.x, o.arg(1, "dim0"), o.arg(2, "dim1"))


@op_rule("t")
def _t_rule(o: Call):
    """Matrix transpose: axes reversed."""
    return o.x[::-1]


@op_rule("movedim", "moveaxis")
def _movedim_rule(o: Call):
    """Axes moved to new positions."""
    return movedim(o.x, o.arg(1, "source"), o.arg(2, "destination"))


@op_rule("getitem")
def _getitem_rule(o: Call):
    """Basic indexing of a tensor, or picking one labels entry of a tuple result."""
    if isinstance(o.t0, torch.Tensor):
        return index(o.c, o.x, o.t0.shape, o.args[1])
    if isinstance(o.x, (list, tuple)) and isinstance(o.args[1], int):
        return o.x[o.args[1]]
    return None


@op_rule("unbind")
def _unbind_rule(o: Call):
    """Split into slices along an axis (per-block selection, or that axis fixed)."""
    x, g = o.x, o.c.g
    dim = o.arg(1, "dim", 0) % len(x)
    if g.selector_of(x[dim]) is not None:
        return tuple(g.select(x, dim, i) for i in range(o.t0.shape[dim]))
    g.fix(x[dim], "indexed by a constant")
    return tuple(x[:dim] + x[dim + 1:] for _ in range(o.t0.shape[dim]))


@op_rule(*ELEMENTWISE)
def _elementwise_rule(o: Call):
    """Elementwise: every axis moves freely, the output keeps the input's labels."""
    if not isinstance(o.out, torch.Tensor) or o.x is None:
        return None
    o.c.g.collapse(o.x)
    return o.x


@op_rule(*BINARY)
def _binary_rule(o: Call):
    """Broadcasting elementwise op of several tensors: axes broadcast together unify."""
    tens = _tensor_args(o.args, o.labs) + [(v, o.klabs[k]) for k, v in o.kwargs.items()
                                           if isinstance(v, torch.Tensor) and k in o.klabs]
    if not tens or not isinstance(o.out, torch.Tensor):
        return None
    for _, lab in tens:
        o.c.g.collapse(lab)
    return o.c.broadcast(tuple(o.out.shape), [lab for _, lab in tens],
                         [tuple(v.shape) for v, _ in tens])


@op_rule(*RESHAPE)
def _reshape_rule(o: Call):
    """Reshape: axes that survive keep their labels, merged / split axes join blocks."""
    return reshape(o.c, o.x, o.t0.shape, o.out.shape)


@op_rule("expand", "expand_as", "broadcast_to")
def _expand_rule(o: Call):
    """Broadcast to a larger shape: new axes are fresh, size-1 axes grow."""
    return expand(o.c, o.x, o.t0.shape, o.out.shape)


@op_rule("repeat")
def _repeat_rule(o: Call):
    """Tiling: repeated axes are fixed."""
    reps = o.args[1:] if len(o.args) > 2 or isinstance(o.args[1], int) else o.args[1]
    return repeat(o.c, o.x, list(reps))


@op_rule(*REDUCE)
def _reduce_rule(o: Call):
    """Reduction over axes: reduced axes collapse (permuting them does not matter)."""
    return reduce(o.c, o.x, o.arg(1, "dim"), bool(o.arg(2, "keepdim", False)))


@op_rule("max", "min")
def _arg_reduce_rule(o: Call):
    """``max`` / ``min`` along a dim (values and indices): the indexed axis is fixed."""
    if not isinstance(o.out, tuple) or o.arg(1, "dim") is None:
        return None
    o.c.g.fix(o.x[o.arg(1, "dim") % len(o.x)], "arg-reduction")
    r = reduce(o.c, o.x, o.arg(1, "dim"), bool(o.arg(2, "keepdim", False)))
    return (r, list(r))


@op_rule("norm", "vector_norm")
def _norm_rule(o: Call):
    """A norm over axes: a reduction."""
    if not isinstance(o.out, torch.Tensor):
        return None
    return reduce(o.c, o.x, o.arg(2, "dim"), bool(o.arg(3, "keepdim", False)))


@op_rule("chunk", "split", "tensor_split", "split_with_sizes")
def _split_rule(o: Call):
    """Cut along an axis: that axis becomes a concatenation of parts."""
    dim = o.arg(2, "dim", 0) % len(o.x)
    return tuple(split_dim(o.c, o.x, dim, [t.shape[dim] for t in o.out]))


@op_rule("cat", "concat", "concatenate")
def _cat_rule(o: Call):
    """Concatenation: the joined axis is a block of the parts' axes."""
    tensors = o.arg(0, "tensors")
    return cat(o.c, list(o.larg(0, "tensors")), o.arg(1, "dim", 0) % tensors[0].dim())


@op_rule("stack")
def _stack_rule(o: Call):
    """Stacking: the parts' axes unify, the new axis is fixed."""
    return stack(o.c, list(o.larg(0, "tensors")), o.arg(1, "dim", 0))


@op_rule("matmul", "bmm", "mm", "__matmul__")
def _matmul_rule(o: Call):
    """Matrix product: the contracted axes unify."""
    return matmul(o.c, o.x, o.labs[1], o.t0.shape, o.args[1].shape)


@op_rule("linear")
def _linear_rule(o: Call):
    """``F.linear``: input features unify with the weight's columns, outputs with its rows."""
    return linear(o.c, o.x, o.larg(1, "weight"), o.larg(2, "bias"))


@op_rule("conv1d", "conv2d", "conv3d")
def _conv_rule(o: Call):
    """``F.conv*``: channels like a linear layer (grouped: per-group blocks)."""
    return conv(o.c, o.x, o.larg(1, "weight"), o.larg(2, "bias"),
                _int(o.arg(6, "groups"), 1), o.out.shape)


@op_rule("batch_norm")
def _batch_norm_rule(o: Call):
    """``F.batch_norm``: per-channel statistics and affine move with the channels."""
    return channel_affine(o.c, o.x, o.larg(1, "running_mean"), o.larg(2, "running_var"),
                          o.larg(3, "weight"), o.larg(4, "bias"))


@op_rule("layer_norm", "rms_norm")
def _layer_norm_rule(o: Call):
    """``F.layer_norm`` / ``F.rms_norm``: normalised axes collapse, affine moves with them."""
    shape = o.arg(1, "normalized_shape")
    k = 1 if isinstance(shape, int) else len(shape)
    bias = o.larg(3, "bias") if o.name == "layer_norm" else None
    return layer_norm(o.c, o.x, k, o.larg(2, "weight"), bias)


@op_rule("group_norm")
def _group_norm_rule(o: Call):
    """``F.group_norm``: channels permute within groups' blocks only."""
    return group_norm(o.c, o.x, int(o.arg(1, "num_groups")), o.larg(2, "weight"),
                      o.larg(3, "bias"))


@op_rule("embedding")
def _embedding_rule(o: Call):
    """``F.embedding``: the output features are the table's columns; the vocabulary is
    fixed."""
    return embedding(o.c, o.x, o.larg(1, "weight"))


@op_rule("scaled_dot_product_attention")
def _sdpa_rule(o: Call):
    """Attention: heads as a block; query/key and value dimensions permute per head."""
    mask = o.larg(3, "attn_mask")
    if mask is not None:
        o.c.fix_all(mask, "attention mask")
    return sdpa(o.c, o.x, o.labs[1], o.labs[2], o.t0.shape, o.args[1].shape, o.args[2].shape)


@op_rule("einsum")
def _einsum_rule(o: Call):
    """``torch.einsum`` without ellipsis: letters shared between operands unify."""
    olabs = list(o.labs[1:]) if len(o.args) > 2 or isinstance(o.args[1], torch.Tensor) \
        else o.labs[1]
    return einsum(o.c, o.args[0], list(olabs), o.out.shape)


@op_rule("pad")
def _pad_rule(o: Call):
    """``F.pad``: padded axes are fixed."""
    return pad(o.c, o.x, list(o.arg(1, "pad")))


@op_rule(*SPATIAL)
def _spatial_rule(o: Call):
    """Pooling / resizing: channels move freely, spatial axes are fixed."""
    return spatial(o.c, o.x, o.out.shape)
