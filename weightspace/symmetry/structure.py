"""The permutation spec: groups of hidden units and how they act on parameter axes.

A *group* is one permutation of ``size`` elements. A group with a ``parent`` is per-block:
each of the parent's blocks (e.g. each attention head) has its own permutation, so its
permutation tensor has shape ``[parent.size, size]``. Convention: after permuting,
``new[i] = old[perm[i]]``; for a per-block child under parent ``p``,
``new[(i, j)] = old[(p[i], perm[i, j])]``.

How a group acts on a parameter axis is that axis's *layout*, a small tree:
``("group", name)``, ``("fixed", size)``, ``("prod", children)`` (row-major product, e.g.
heads x head-dims or channels x spatial after ``flatten``) and ``("cat", children)``
(concatenation, e.g. the q/k/v blocks of a fused projection or DenseNet's features).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch

from ..errors import WeightspaceError


class SpecError(WeightspaceError):
    """A spec that is malformed, does not fit the model, or fails verification."""


@dataclass
class Group:
    name: str
    size: int
    members: list[str]           # "param:axis" strings whose layout involves this group
    parent: str | None = None    # per-block under this group (heads -> dims within a head)


@dataclass
class FixedAxes:
    reason: str
    size: int
    members: list[str]


@dataclass
class Spec:
    groups: list[Group]
    layouts: dict[str, tuple]                 # "param:axis" -> layout tree
    shapes: dict[str, tuple[int, ...]]        # param -> shape, for every param in layouts
    fixed: list[FixedAxes] = field(default_factory=list)
    permutable_fraction: float = 0.0
    verified: bool | None = None
    max_abs_diff: float | None = None
    failures: list[str] = field(default_factory=list)
    arch: str | None = None                   # the reference it was discovered on, if known
    input_shape: list[int] | None = None      # the example input it was discovered on

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise SpecError(f"no group named {name!r}")

    @property
    def group_sizes(self) -> dict[str, int]:
        return {g.name: g.size for g in self.groups}

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["layouts"] = {k: _layout_to_json(v) for k, v in self.layouts.items()
                        if v[0] != "group"}
        d["shapes"] = {k: list(v) for k, v in self.shapes.items()}
        return d

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        try:
            groups = [Group(g["name"], int(g["size"]), list(g["members"]), g.get("parent"))
                      for g in d["groups"]]
            shapes = {k: tuple(int(s) for s in v) for k, v in d["shapes"].items()}
            layouts = {}
            for g in groups:  # plain memberships come from the groups' member lists
                for m in g.members:
                    layouts[m] = ("group", g.name)
            for k, v in d.get("layouts", {}).items():  # structured axes
                layouts[k] = _layout_from_json(v)
            fixed = [FixedAxes(f["reason"], int(f["size"]), list(f["members"]))
                     for f in d.get("fixed", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"malformed spec: {type(e).__name__}: {e}") from None
        spec = cls(groups, layouts, shapes, fixed, float(d.get("permutable_fraction", 0.0)),
                   arch=d.get("arch"), input_shape=d.get("input_shape"))
        spec.check()
        return spec

    @classmethod
    def from_json(cls, text: str) -> "Spec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SpecError(f"spec is not valid JSON: {e}") from None

    def check(self) -> None:
        """Internal consistency: names, sizes of layouts against parameter shapes."""
        sizes = self.group_sizes
        if len(sizes) != len(self.groups):
            raise SpecError("spec has duplicate group names")
        for g in self.groups:
            if g.parent is not None and g.parent not in sizes:
                raise SpecError(f"group {g.name!r}: unknown parent {g.parent!r}")
        for member, layout in self.layouts.items():
            key, axis = parse_member(member)
            if key not in self.shapes:
                raise SpecError(f"member {member!r}: no shape recorded for {key!r}")
            shape = self.shapes[key]
            if not 0 <= axis < len(shape):
                raise SpecError(f"member {member!r}: axis out of range for shape {shape}")
            n = layout_size(layout, sizes)
            if n != shape[axis]:
                raise SpecError(f"member {member!r}: layout has size {n} but {key} has "
                                f"shape {list(shape)}")


def permutable_fraction(spec: Spec) -> float:
    """Share of hidden units that some group permutes.

    Hidden units are the groups' elements plus fixed axes whose reason is not structural
    (inputs, logits, kernels, token positions are not hidden units).
    """
    from .axes import STRUCTURAL
    perm = sum(g.size for g in spec.groups)
    blocked = sum(f.size for f in spec.fixed if not f.reason.startswith(STRUCTURAL)
                  and not f.reason.startswith("not used"))
    return perm / (perm + blocked) if perm + blocked else 0.0


def parse_member(member: str) -> tuple[str, int]:
    key, _, axis = member.rpartition(":")
    if not key or not axis.isdigit():
        raise SpecError(f"member {member!r} is not of the form 'param:axis'")
    return key, int(axis)


def _layout_to_json(layout):
    kind, val = layout
    if kind in ("prod", "cat"):
        return {kind: [_layout_to_json(c) for c in val]}
    return {kind: val}


def _layout_from_json(obj):
    if not isinstance(obj, dict) or len(obj) != 1:
        raise SpecError(f"bad layout {obj!r}: expected one of group/fixed/prod/cat")
    (kind, val), = obj.items()
    if kind in ("prod", "cat"):
        return (kind, tuple(_layout_from_json(c) for c in val))
    if kind == "group":
        return ("group", str(val))
    if kind == "fixed":
        return ("fixed", int(val))
    raise SpecError(f"bad layout kind {kind!r}")


def layout_size(layout, sizes: dict[str, int]) -> int:
    kind, val = layout
    if kind == "fixed":
        return val
    if kind == "group":
        if val not in sizes:
            raise SpecError(f"layout refers to unknown group {val!r}")
        return sizes[val]
    out = 1 if kind == "prod" else 0
    for c in val:
        out = out * layout_size(c, sizes) if kind == "prod" else out + layout_size(c, sizes)
    return out


def layout_groups(layout) -> list[str]:
    kind, val = layout
    if kind == "group":
        return [val]
    if kind in ("prod", "cat"):
        return [n for c in val for n in layout_groups(c)]
    return []


# ----------------------------------------------------------------------------------------
# permutations
# ----------------------------------------------------------------------------------------
Perms = dict  # group name -> LongTensor [size] or [parent.size, size]


def identity_perms(spec: Spec) -> Perms:
    sizes = spec.group_sizes
    return {g.name: (torch.arange(g.size) if g.parent is None
                     else torch.arange(g.size).repeat(sizes[g.parent], 1))
            for g in spec.groups}


def random_perms(spec: Spec, seed: int = 0) -> Perms:
    """An independent uniformly random permutation for every group (per block if nested)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = spec.group_sizes
    out = {}
    for g in spec.groups:
        if g.parent is None:
            out[g.name] = torch.randperm(g.size, generator=gen)
        else:
            out[g.name] = torch.stack([torch.randperm(g.size, generator=gen)
                                       for _ in range(sizes[g.parent])])
    return out


def invert(spec: Spec, perms: Perms) -> Perms:
    """Permutations that undo ``perms``: ``apply(spec, invert(spec, p), apply(spec, p, sd)) == sd``."""
    out = {}
    for g in spec.groups:
        p = perms[g.name]
        if g.parent is None:
            out[g.name] = torch.argsort(p)
        else:
            inv_parent = torch.argsort(perms[g.parent])
            out[g.name] = torch.argsort(p[inv_parent], dim=1)
    return out


def layout_index(layout, perms: Perms, parents: dict[str, str | None]) -> torch.Tensor:
    """Flat source index of every position along an axis with this layout."""
    kind, val = layout
    if kind == "fixed":
        return torch.arange(val)
    if kind == "group":
        p = perms[val]
        if p.dim() != 1:
            raise SpecError(f"group {val!r} is per-block but appears outside its parent's "
                            "product")
        return p
    if kind == "cat":
        parts, off = [], 0
        for c in val:
            idx = layout_index(c, perms, parents)
            parts.append(idx + off)
            off += idx.numel()
        return torch.cat(parts)
    # product: sum of per-factor source offsets, with per-block factors indexed by the
    # (new) position of their parent factor
    idxs, sizes = [], []
    for i, c in enumerate(val):
        if c[0] == "group" and parents.get(c[1]) is not None:
            if i == 0 or val[i - 1] != ("group", parents[c[1]]):
                raise SpecError(f"per-block group {c[1]!r} must follow its parent "
                                f"{parents[c[1]]!r} in a product")
            idxs.append(("block", perms[c[1]]))
            sizes.append(perms[c[1]].shape[1])
        else:
            idx = layout_index(c, perms, parents)
            idxs.append(("vec", idx))
            sizes.append(idx.numel())
    n = len(sizes)
    total = torch.zeros(sizes, dtype=torch.long)
    stride = 1
    for i in reversed(range(n)):
        kind_i, idx = idxs[i]
        shape = [1] * n
        if kind_i == "block":
            shape[i - 1], shape[i] = sizes[i - 1], sizes[i]
        else:
            shape[i] = sizes[i]
        total = total + idx.reshape(shape) * stride
        stride *= sizes[i]
    return total.reshape(-1)


def apply(spec: Spec, perms: Perms, state_dict: dict) -> dict:
    """A new state dict with every group's permutation applied to its members."""
    _check_perms(spec, perms)
    parents = {g.name: g.parent for g in spec.groups}
    sizes = spec.group_sizes
    out = dict(state_dict)
    cache: dict = {}
    for member, layout in spec.layouts.items():
        key, axis = parse_member(member)
        if key not in out:
            raise SpecError(f"state dict has no tensor {key!r} (spec member {member!r})")
        t = out[key]
        if t.dim() <= axis or t.shape[axis] != layout_size(layout, sizes):
            raise SpecError(f"{key}: shape {list(t.shape)} does not fit spec member {member!r}")
        if layout not in cache:
            cache[layout] = layout_index(layout, perms, parents)
        out[key] = t.index_select(axis, cache[layout].to(t.device))
    return out


def permuted_tensors(spec: Spec, perms: Perms, state_dict: dict):
    """``apply`` one tensor at a time: yields ``(key, tensor)`` in ``state_dict``'s order,
    so a writer can stream the permuted model without a second copy of it in memory."""
    _check_perms(spec, perms)
    parents = {g.name: g.parent for g in spec.groups}
    sizes = spec.group_sizes
    members: dict[str, list] = {}
    for member, layout in spec.layouts.items():
        key, axis = parse_member(member)
        if key not in state_dict:
            raise SpecError(f"state dict has no tensor {key!r} (spec member {member!r})")
        t = state_dict[key]
        if t.dim() <= axis or t.shape[axis] != layout_size(layout, sizes):
            raise SpecError(f"{key}: shape {list(t.shape)} does not fit spec member {member!r}")
        members.setdefault(key, []).append((axis, layout))
    cache: dict = {}
    for key, t in state_dict.items():
        for axis, layout in members.get(key, ()):
            if layout not in cache:
                cache[layout] = layout_index(layout, perms, parents)
            t = t.index_select(axis, cache[layout].to(t.device))
        yield key, t


def _check_perms(spec: Spec, perms: Perms) -> None:
    missing = [g.name for g in spec.groups if g.name not in perms]
    if missing:
        raise SpecError(f"no permutation given for group(s) {missing[:5]}")
    sizes = spec.group_sizes
    for g in spec.groups:
        want = (g.size,) if g.parent is None else (sizes[g.parent], g.size)
        if tuple(perms[g.name].shape) != want:
            raise SpecError(f"permutation for group {g.name!r} has shape "
                            f"{list(perms[g.name].shape)}, expected {list(want)}")
