"""How each traced op constrains the permutation of axes.

A rule receives the op's concrete arguments (tensors, ints), the axis labels of its tensor
arguments (same nesting, ``None`` for non-tensors) and the concrete result, and returns the
labels of the result. Rules *unify* axes that must move together and *fix* axes the op does
not allow to move. An op without a rule is opaque: everything it touches is fixed.
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


def function_rule(c: Ctx, name: str, args, kwargs, labs, klabs, out):
    """Labels of a function / method call's output; ``None`` if the op is opaque."""
    t0 = args[0] if args else None
    x = labs[0] if labs else None
    kw = kwargs

    def arg(i, key, default=None):
        if len(args) > i:
            return args[i]
        return kw.get(key, default)

    def larg(i, key):
        if len(labs) > i:
            return labs[i]
        return klabs.get(key)

    if name in NON_TENSOR and not isinstance(out, torch.Tensor):
        return None
    if name == "getattr" and isinstance(out, torch.Tensor):
        if args[1] in ("T", "mT") and x is not None:
            return x[::-1] if args[1] == "T" else transpose(x, -1, -2)
        return None
    if name in ("permute",):
        order = args[1:] if len(args) > 2 or isinstance(arg(1, "dims"), int) else arg(1, "dims")
        return permute(x, list(order))
    if name in ("transpose", "swapaxes", "swapdims"):
        return transpose(x, arg(1, "dim0"), arg(2, "dim1"))
    if name in ("t",):
        return x[::-1]
    if name in ("movedim", "moveaxis"):
        return movedim(x, arg(1, "source"), arg(2, "destination"))
    if name == "getitem":
        if isinstance(t0, torch.Tensor):
            return index(c, x, t0.shape, args[1])
        if isinstance(x, (list, tuple)) and isinstance(args[1], int):
            return x[args[1]]
        return None
    if name == "unbind":
        dim = arg(1, "dim", 0) % len(x)
        if c.g.selector_of(x[dim]) is not None:
            return tuple(c.g.select(x, dim, i) for i in range(t0.shape[dim]))
        c.g.fix(x[dim], "indexed by a constant")
        return tuple(x[:dim] + x[dim + 1:] for _ in range(t0.shape[dim]))
    if isinstance(out, torch.Tensor) and x is not None and name in ELEMENTWISE:
        c.g.collapse(x)
        return x
    if name in BINARY or name in ("where",):
        tens = _tensor_args(args, labs) + [(v, klabs[k]) for k, v in kw.items()
                                           if isinstance(v, torch.Tensor) and k in klabs]
        if not tens or not isinstance(out, torch.Tensor):
            return None
        for _, lab in tens:
            c.g.collapse(lab)
        return c.broadcast(tuple(out.shape), [lab for _, lab in tens],
                           [tuple(v.shape) for v, _ in tens])
    if name in RESHAPE:
        return reshape(c, x, t0.shape, out.shape)
    if name in ("expand", "expand_as", "broadcast_to"):
        return expand(c, x, t0.shape, out.shape)
    if name == "repeat":
        reps = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
        return repeat(c, x, list(reps))
    if name in REDUCE:
        return reduce(c, x, arg(1, "dim"), bool(arg(2, "keepdim", False)))
    if name in ("max", "min") and isinstance(out, tuple) and arg(1, "dim") is not None:
        c.g.fix(x[arg(1, "dim") % len(x)], "arg-reduction")
        r = reduce(c, x, arg(1, "dim"), bool(arg(2, "keepdim", False)))
        return (r, list(r))
    if name in ("norm", "vector_norm") and isinstance(out, torch.Tensor):
        return reduce(c, x, arg(2, "dim"), bool(arg(3, "keepdim", False)))
    if name in ("chunk", "split", "tensor_split", "split_with_sizes"):
        dim = arg(2, "dim", 0) % len(x)
        return tuple(split_dim(c, x, dim, [o.shape[dim] for o in out]))
    if name == "cat" or name == "concat" or name == "concatenate":
        tensors = arg(0, "tensors")
        labs_ = larg(0, "tensors")
        return cat(c, list(labs_), arg(1, "dim", 0) % tensors[0].dim())
    if name == "stack":
        return stack(c, list(larg(0, "tensors")), arg(1, "dim", 0))
    if name in ("matmul", "bmm", "mm", "__matmul__"):
        return matmul(c, x, labs[1], t0.shape, args[1].shape)
    if name == "linear":
        return linear(c, x, larg(1, "weight"), larg(2, "bias"))
    if name in ("conv1d", "conv2d", "conv3d"):
        return conv(c, x, larg(1, "weight"), larg(2, "bias"), _int(arg(6, "groups"), 1),
                    out.shape)
    if name == "batch_norm":
        return channel_affine(c, x, larg(1, "running_mean"), larg(2, "running_var"),
                              larg(3, "weight"), larg(4, "bias"))
    if name == "layer_norm":
        shape = arg(1, "normalized_shape")
        k = 1 if isinstance(shape, int) else len(shape)
        return layer_norm(c, x, k, larg(2, "weight"), larg(3, "bias"))
    if name == "rms_norm":
        shape = arg(1, "normalized_shape")
        k = 1 if isinstance(shape, int) else len(shape)
        return layer_norm(c, x, k, larg(2, "weight"), None)
    if name == "group_norm":
        return group_norm(c, x, int(arg(1, "num_groups")), larg(2, "weight"), larg(3, "bias"))
    if name == "embedding":
        return embedding(c, x, larg(1, "weight"))
    if name == "scaled_dot_product_attention":
        mask = larg(3, "attn_mask")
        if mask is not None:
            c.fix_all(mask, "attention mask")
        return sdpa(c, x, labs[1], labs[2], t0.shape, args[1].shape, args[2].shape)
    if name == "einsum":
        olabs = list(labs[1:]) if len(args) > 2 or isinstance(args[1], torch.Tensor) else labs[1]
        return einsum(c, args[0], list(olabs), out.shape)
    if name == "pad":
        return pad(c, x, list(arg(1, "pad")))
    if name in SPATIAL:
        return spatial(c, x, out.shape)
    if name in ("flatten",):
        return reshape(c, x, t0.shape, out.shape)
    return None
