"""Axis variables: a union-find over tensor axes with product / concatenation structure.

Every axis of every traced tensor (and of every parameter) is labelled with an :class:`Axis`.
Ops *unify* the axes that must be permuted together (a residual ``add`` unifies the two
channel axes; ``linear`` unifies its input's last axis with ``weight``'s axis 1). An axis
may be refined into a structure:

* ``prod``: a row-major product of sub-axes (``flatten`` of channels x spatial, heads x dims);
* ``cat``: a concatenation of sub-axes (``torch.cat``, the q/k/v blocks of a fused ``qkv``).

An axis class that meets something that cannot be permuted (the model input, its output,
a convolution kernel, an op we do not model) is *fixed*, with a reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# Reasons that describe an axis that is not a hidden unit at all (so it does not count
# against the "permutable fraction" of a model).
STRUCTURAL = ("input", "output", "kernel", "spatial", "token", "vocabulary", "batch",
              "broadcast", "selector")


class Axis:
    """One axis variable (a node of the union-find)."""

    __slots__ = ("id", "size", "parent", "struct", "fixed", "name")

    def __init__(self, uid: int, size: int, name: str):
        self.id = uid
        self.size = size
        self.parent: Axis | None = None
        self.struct: tuple[str, list[Axis]] | None = None
        self.fixed: str | None = None
        self.name = name

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Axis({self.id},{self.size},{self.name!r})"


@dataclass
class Selector:
    """A split of one axis into ``(k, rest...)`` whose leading dim may later be indexed.

    Until used, the leading dim (``sel``) selects one of ``k`` alternatives, each with its
    own sub-axes (the q, k and v blocks of a fused qkv projection). Indexing it picks one
    alternative; any other use collapses the alternatives into one shared product.
    """

    source: Axis
    sel: Axis
    holders: list[Axis]
    alts: list[list[Axis]]
    source_was_leaf: bool
    collapsed: bool = False


@dataclass
class AxisGraph:
    """The union-find plus the bookkeeping of selectors."""

    nodes: list[Axis] = field(default_factory=list)
    selectors: dict[int, Selector] = field(default_factory=dict)  # by sel / holder node id
    roles: dict[int, str] = field(default_factory=dict)  # node id -> "heads" | "qk" | "vo"

    def tag(self, a: Axis, role: str) -> None:
        """Remember the role of an axis (used to name groups, e.g. attention heads)."""
        self.roles.setdefault(a.id, role)

    def class_roles(self) -> dict[int, str]:
        """Role of each union-find class (by root id) that has one."""
        out: dict[int, str] = {}
        for n in self.nodes:
            if n.id in self.roles:
                out.setdefault(self.find(n).id, self.roles[n.id])
        return out

    # -- creation ---------------------------------------------------------------------
    def new(self, size: int, name: str = "", fixed: str | None = None) -> Axis:
        a = Axis(len(self.nodes), int(size), name)
        a.fixed = fixed
        self.nodes.append(a)
        return a

    def prod(self, parts: list[Axis], name: str = "") -> Axis:
        """An axis that is the row-major product of ``parts`` (size-1 parts dropped)."""
        parts = [p for p in parts if p.size != 1]
        if len(parts) == 1:
            return parts[0]
        a = self.new(math.prod(p.size for p in parts), name)
        if parts:
            a.struct = ("prod", parts)
        return a

    def cat(self, parts: list[Axis], name: str = "") -> Axis:
        parts = [p for p in parts if p.size != 0]
        if len(parts) == 1:
            return parts[0]
        a = self.new(sum(p.size for p in parts), name)
        a.struct = ("cat", parts)
        return a

    # -- union-find ---------------------------------------------------------------------
    def find(self, a: Axis) -> Axis:
        root = a
        while root.parent is not None:
            root = root.parent
        while a.parent is not None:
            a.parent, a = root, a.parent
        return root

    def fix(self, a: Axis, reason: str) -> None:
        """Fix ``a`` (and everything inside its structure) with ``reason``."""
        stack = [a]
        while stack:
            r = self.find(stack.pop())
            if r.fixed is not None:
                continue
            r.fixed = reason
            if r.struct is not None:
                stack.extend(r.struct[1])

    def is_fixed(self, a: Axis) -> bool:
        r = self.find(a)
        if r.fixed is not None:
            return True
        if r.struct is not None:
            return all(self.is_fixed(c) for c in r.struct[1])
        return False

    def unify(self, a: Axis, b: Axis) -> None:
        """Declare that ``a`` and ``b`` are permuted by the same permutation."""
        ra, rb = self.find(a), self.find(b)
        if ra is rb:
            return
        if ra.size != rb.size:
            self.fix(ra, f"size mismatch {ra.size} vs {rb.size}")
            self.fix(rb, f"size mismatch {ra.size} vs {rb.size}")
            return
        sa, sb = ra.struct, rb.struct
        # keep the older node as root: its name is the more natural one
        if rb.id < ra.id:
            ra, rb, sa, sb = rb, ra, sb, sa
        rb.parent = ra
        fixed = ra.fixed or rb.fixed
        if sa is None and sb is not None:
            ra.struct = sb
        elif sa is not None and sb is not None:
            if not self._unify_structs(sa, sb):
                # incompatible refinements: keep one, fix the other's contents
                self.fix(ra, "incompatible reshapes of one axis")
                for c in sb[1]:
                    self.fix(c, "incompatible reshapes of one axis")
        if fixed is not None:
            ra.fixed = None
            self.fix(ra, fixed)

    def _unify_structs(self, sa, sb) -> bool:
        ka, pa = sa
        kb, pb = sb
        if ka == kb and [p.size for p in pa] == [p.size for p in pb]:
            for x, y in zip(pa, pb):
                self.unify(x, y)
            return True
        # a prod against a finer prod (or leaf lists of the same total): align greedily
        la, lb = self._leaves(sa), self._leaves(sb)
        if ka == kb == "prod":
            groups = _common_groups([p.size for p in la], [p.size for p in lb])
            if groups is not None:
                for ga, gb in groups:
                    xa = [la[i] for i in ga]
                    xb = [lb[i] for i in gb]
                    if len(xa) == 1 and len(xb) == 1:
                        self.unify(xa[0], xb[0])
                    elif len(xa) == 1:
                        self.unify(xa[0], self.prod(xb))
                    elif len(xb) == 1:
                        self.unify(xb[0], self.prod(xa))
                    else:
                        return False
                return True
        return False

    def _leaves(self, s) -> list[Axis]:
        kind, parts = s
        out = []
        for p in parts:
            r = self.find(p)
            if r.struct is not None and r.struct[0] == kind:
                out.extend(self._leaves(r.struct))
            else:
                out.append(p)
        return out

    # -- splitting an axis into several dims (reshape / view / unflatten) -----------------
    def split(self, a: Axis, sizes: list[int], name: str = "") -> list[Axis]:
        """Labels for the dims ``sizes`` that an axis ``a`` is reshaped into."""
        r = self.find(a)
        if len(sizes) == 1:
            return [a]
        if r.fixed is not None:
            return [self.new(s, name, fixed=r.fixed) for s in sizes]
        if r.struct is not None and r.struct[0] == "prod":
            leaves = self._leaves(r.struct)
            groups = _common_groups([p.size for p in leaves], sizes)
            if groups is not None and all(len(gb) == 1 for _, gb in groups):
                return [self.prod([leaves[i] for i in ga]) for ga, _ in groups]
        if r.struct is not None and r.struct[0] == "cat":
            parts = r.struct[1]
            if len(parts) == sizes[0] and all(p.size == parts[0].size for p in parts):
                alts = [self.split(p, sizes[1:], name) for p in parts]
                return self._selector(r, sizes, alts, name, leaf=False)
            self.fix(r, "reshape across a concatenation")
            return [self.new(s, name, fixed="reshape across a concatenation") for s in sizes]
        if r.struct is not None:
            self.fix(r, "reshape not aligned with the axis structure")
            return [self.new(s, name, fixed="reshape not aligned with the axis structure")
                    for s in sizes]
        alts = [[self.new(s, f"{r.name}[{i}].{j}") for j, s in enumerate(sizes[1:])]
                for i in range(sizes[0])]
        r.struct = ("cat", [self.prod(alt) for alt in alts])
        return self._selector(r, sizes, alts, name, leaf=True)

    def _selector(self, source: Axis, sizes, alts, name, leaf: bool) -> list[Axis]:
        sel = self.new(sizes[0], f"{source.name}.split")
        holders = [self.new(s, f"{source.name}.split.{j}") for j, s in enumerate(sizes[1:])]
        rec = Selector(source, sel, holders, alts, leaf)
        for h in [sel, *holders]:
            self.selectors[h.id] = rec
        return [sel, *holders]

    def selector_of(self, a: Axis) -> Selector | None:
        rec = self.selectors.get(a.id)
        return rec if rec is not None and not rec.collapsed else None

    def select(self, labels: list[Axis], dim: int, index: int) -> list[Axis]:
        """Labels after taking ``index`` along ``dim`` (which must be a selector dim)."""
        rec = self.selector_of(labels[dim])
        out = []
        for i, a in enumerate(labels):
            if i == dim:
                continue
            if rec is not None and a.id in self.selectors and self.selectors[a.id] is rec:
                out.append(rec.alts[index][rec.holders.index(a)])
            else:
                out.append(a)
        return out

    def collapse(self, labels) -> None:
        """Resolve every pending selector among ``labels``: alternatives become one product."""
        for a in labels:
            rec = self.selector_of(a)
            if rec is None:
                continue
            rec.collapsed = True
            for alt in rec.alts[1:]:
                for x, y in zip(rec.alts[0], alt):
                    self.unify(x, y)
            for h, x in zip(rec.holders, rec.alts[0]):
                self.unify(h, x)
            src = self.find(rec.source)
            if rec.source_was_leaf and src.fixed is None:
                # identical blocks -> the block index itself is a permutable factor
                src.struct = ("prod", [rec.sel, *rec.alts[0]])
            else:
                self.fix(rec.sel, "selector")

    # -- results ------------------------------------------------------------------------
    def layout(self, a: Axis):
        """Resolved structure of ``a``: ("leaf", root) | ("prod"|"cat", [layouts])."""
        r = self.find(a)
        if r.struct is None:
            return ("leaf", r)
        kind, parts = r.struct
        out = []
        for p in parts:
            sub = self.layout(p)
            if sub[0] == kind:  # flatten nested products / concatenations
                out.extend(sub[1])
            else:
                out.append(sub)
        return (kind, out)


def _common_groups(a: list[int], b: list[int]):
    """Partition two size lists with equal products into aligned groups, or None."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ga, gb = [], []
        pa = pb = 1
        if i < len(a):
            ga.append(i)
            pa = a[i]
            i += 1
        if j < len(b):
            gb.append(j)
            pb = b[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                ga.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gb.append(j)
                pb *= b[j]
                j += 1
            else:
                return None
        groups.append((ga, gb))
    return groups
