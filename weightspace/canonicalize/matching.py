"""Weight matching (Git Re-Basin, Ainsworth et al. 2022) over any discovered symmetry spec.

Maximise ``sum_params <A, P(B)>`` over the spec's permutations by coordinate descent. The
unit of one step is a *family*: a top-level group together with its per-block children
(attention heads with the query/key and value/output dimensions inside each head). For a
family without children one step is one linear assignment problem (LAP) whose cost sums,
over every parameter axis the group acts on, the inner products of A's slices with B's
slices (all other groups' current permutations applied). For a family with children the
step is exact too: the best within-block assignment is solved for every pair of blocks
(one small LAP each), and the blocks are then paired by one LAP over those values.

Speed: the cost of a family is a sum of per-parameter contributions; each contribution
depends only on the permutations of the *other* groups acting on that parameter, so it is
cached with their version numbers and recomputed only when one of them changed. A sweep
after convergence costs almost nothing, and late sweeps touch only the neighbourhood of
what changed. Cost matrices are built with tensor ops on the models' device; the LAPs are
solved on the CPU by :func:`.assignment.solve`, warm-started from the family's previous
answer and column duals (a later sweep repairs the few rows that moved instead of solving
from scratch; every answer is exact, certified or solved by scipy). Consecutive families
of a sweep that share no parameter do not change each other's costs: their LAPs run side
by side on torch's thread budget (the solvers release the GIL) and are accepted in order,
so the steps are exactly the sequential ones.

(Over 400 lines: the weight-matching engine, its incremental costs and warm-started
solves are one algorithm.)
"""
from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..symmetry.structure import (Perms, Spec, apply, identity_perms, layout_groups,
                                  layout_index, parse_member)
from .assignment import LapState, lap, parallel_map, solve


@dataclass
class _Occ:
    key: str
    axis: int
    idx: torch.Tensor          # plain: [n, m]; nested: [H, d, m] positions along the axis
    child: str | None = None   # None: plain occurrence of the family's top group


@dataclass
class Family:
    top: str
    children: list[str]
    occs: list[_Occ] = field(default_factory=list)

    @property
    def groups(self) -> list[str]:
        return [self.top, *self.children]


@functools.lru_cache(maxsize=64)
def _arange(n: int) -> torch.Tensor:
    """``torch.arange(n)``, shared: the identity index, read and never written (the descent
    asks for the same few lengths thousands of times)."""
    return torch.arange(n)


# ------------------------------------------------------------------------ layout geometry
def _leaves(layout, sizes: dict[str, int], parents: dict[str, str | None]):
    """(axis length, columns): one column per leaf of the layout tree, with the leaf's
    index at every position of the axis (-1 where the leaf does not apply) and, for a
    per-block group inside a product, the column of its parent."""
    kind, val = layout
    if kind == "fixed":
        return val, [{"name": None, "v": torch.arange(val), "parent": None}]
    if kind == "group":
        return sizes[val], [{"name": val, "v": torch.arange(sizes[val]), "parent": None}]
    parts = [_leaves(c, sizes, parents) for c in val]
    cols = []
    if kind == "cat":
        total = sum(n for n, _ in parts)
        off = 0
        for n, cs in parts:
            base = len(cols)
            for c in cs:
                full = torch.full((total,), -1, dtype=torch.long)
                full[off:off + n] = c["v"]
                cols.append({**c, "v": full,
                             "parent": None if c["parent"] is None else c["parent"] + base})
            off += n
        return total, cols
    lengths = [n for n, _ in parts]
    total = int(np.prod(lengths))
    pos = torch.arange(total)
    stride = total
    prev_group_col = None
    for (n, cs), child_layout in zip(parts, val):
        stride //= n
        factor = (pos // stride) % n
        base = len(cols)
        for c in cs:
            v = c["v"][factor]
            cols.append({**c, "v": torch.where(v >= 0, v, -1),
                         "parent": None if c["parent"] is None else c["parent"] + base})
        if child_layout[0] == "group":
            me = len(cols) - 1
            if parents.get(child_layout[1]) is not None and prev_group_col is not None \
                    and cols[prev_group_col]["name"] == parents[child_layout[1]]:
                cols[me]["parent"] = prev_group_col
            prev_group_col = me
        else:
            prev_group_col = None
    return total, cols


def _sorted_rows(keys: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """``rows`` sorted lexicographically by ``keys`` (first key most significant)."""
    order = np.lexsort([k[rows].numpy() for k in reversed(keys)] )
    return rows[torch.from_numpy(order)]


_FAMILIES: dict[tuple, list[Family]] = {}  # the last few specs' families, by content


def families(spec: Spec) -> list[Family]:
    """Group the spec's groups into families and locate every occurrence on every axis.

    The answer depends only on the spec's groups and layouts; the last few are kept by
    their content (a zoo or a benchmark matches many pairs of one architecture). The
    families are read, never changed, by their users."""
    key = (repr([(g.name, g.size, g.parent) for g in spec.groups]),
           repr(sorted(spec.layouts.items())))
    hit = _FAMILIES.get(key)
    if hit is None:
        hit = _FAMILIES[key] = _families(spec)
        while len(_FAMILIES) > 8:
            _FAMILIES.pop(next(iter(_FAMILIES)))
    return hit


def _families(spec: Spec) -> list[Family]:
    sizes = spec.group_sizes
    parents = {g.name: g.parent for g in spec.groups}
    fams = {g.name: Family(g.name, []) for g in spec.groups if g.parent is None}
    for g in spec.groups:
        if g.parent is not None:
            fams[g.parent].children.append(g.name)
    top_of = {g.name: (g.parent or g.name) for g in spec.groups}
    for member, layout in spec.layouts.items():
        key, axis = parse_member(member)
        n, cols = _leaves(layout, sizes, parents)
        pos = torch.arange(n)
        as_parent = {c["parent"] for c in cols if c["parent"] is not None}
        for ci, c in enumerate(cols):
            if c["name"] is None:
                continue
            fam = fams[top_of[c["name"]]]
            rows = pos[c["v"] >= 0]
            if c["parent"] is not None:      # nested: [H, d, m]
                p = cols[c["parent"]]
                rows = _sorted_rows([p["v"], c["v"], pos], rows)
                h, d = sizes[p["name"]], sizes[c["name"]]
                fam.occs.append(_Occ(key, axis, rows.view(h, d, -1), c["name"]))
            elif parents[c["name"]] is None and ci not in as_parent:
                rows = _sorted_rows([c["v"], pos], rows)
                fam.occs.append(_Occ(key, axis, rows.view(sizes[c["name"]], -1)))
            elif parents[c["name"]] is not None:
                raise ValueError(f"{member}: per-block group {c['name']} outside its "
                                 f"parent's product")
    return [f for f in fams.values() if f.occs]


def _columns_of(t: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``t[:, col]`` (a copy). A weight's columns are (unit, kernel position) pairs and a
    permutation moves whole units, so ``col`` is usually made of runs of ``r`` consecutive
    columns starting at multiples of ``r``: then the gather takes one index per run from
    ``t`` viewed as [rows, ncol / r, r] (several times faster than one index per column)."""
    n = len(col)
    if n > 1 and t.shape[1] > 1 and t.is_contiguous():
        step = col[1:] - col[:-1]
        breaks = (step != 1).nonzero()
        r = int(breaks[0]) + 1 if len(breaks) else n
        if r > 1 and n % r == 0 and t.shape[1] % r == 0:
            runs = col.view(-1, r)
            first = runs[:, 0]
            if bool((first % r == 0).all()) and torch.equal(
                    runs, first[:, None] + torch.arange(r, device=col.device)):
                return t.view(t.shape[0], -1, r).index_select(1, first // r).reshape(
                    t.shape[0], n)
    return t.index_select(1, col)


@dataclass
class MatchReport:
    method: str = "wm"
    seconds: float = 0.0
    iterations: int = 0
    l2_before: float = 0.0
    l2_after: float = 0.0
    objective: float = 0.0
    objective_before: float = 0.0
    objective_history: list[float] = field(default_factory=list)
    changes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class WeightMatcher:
    """Coordinate descent of the weight-matching objective for one (A, B) pair.

    ``A`` and ``B`` are state dicts (B is the model being permuted). ``run(block_pairing=)``
    lets another method (TransFusion) decide how a head family pairs its blocks.
    """

    def __init__(self, spec: Spec, A: dict, B: dict, device=None, fams=None):
        self.spec = spec
        self.fams = fams if fams is not None else families(spec)
        self.parents = {g.name: g.parent for g in spec.groups}
        self.device = torch.device(device) if device is not None else \
            next(iter(A.values())).device
        keys = sorted({o.key for f in self.fams for o in f.occs})
        # (detached: the costs need no gradient, and their buffers are written in place)
        self.A = {k: A[k].detach().to(self.device, torch.float32) for k in keys}
        self.B = {k: B[k].detach().to(self.device, torch.float32) for k in keys}
        self.axes: dict[str, list[tuple[int, tuple]]] = {}
        for member, layout in spec.layouts.items():
            key, axis = parse_member(member)
            self.axes.setdefault(key, []).append((axis, layout))
        self.key_groups = {k: set() for k in keys}
        for f in self.fams:
            for o in f.occs:
                self.key_groups[o.key] |= set(f.groups)
        for k in keys:
            for _, layout in self.axes.get(k, []):
                self.key_groups[k] |= set(layout_groups(layout))
        self.version = {g.name: 0 for g in spec.groups}
        self._cache: dict = {}
        self._mat: dict = {}
        self._plain: dict = {}
        self._scratch: dict = {}  # (use, shape, dtype) -> a temporary reused across calls
        self._solved: dict = {}
        self._lap: dict[str, LapState | None] = {}  # family -> warm start of its next LAP
        self._total: dict = {}  # family -> float64 sum of its plain contributions
        self.fam_keys = {f.top: sorted({o.key for o in f.occs}) for f in self.fams}
        self.quadratic = {f.top for f in self.fams if any(
            len({o.axis for o in f.occs if o.key == k}) > 1 for k in self.fam_keys[f.top])}

    # -- B with every group but ``skip`` applied (only the axes that need it) -------------
    def _local(self, perms: Perms, skip) -> Perms:
        return {g: (_arange(p.shape[-1]).expand_as(p) if g in skip else p)
                for g, p in perms.items()}

    def _sources(self, key: str, local: Perms, skip) -> dict[int, torch.Tensor]:
        """axis -> source index along it, for the axes some non-skipped group acts on."""
        out = {}
        for axis, layout in self.axes.get(key, []):
            names = layout_groups(layout)
            if names and not all(n in skip for n in names):
                idx = layout_index(layout, local, self.parents)
                if not torch.equal(idx, _arange(len(idx))):
                    out[axis] = idx
        return out

    def _permuted_b(self, key: str, perms: Perms, skip: set[str]) -> torch.Tensor:
        t = self.B[key]
        for axis, idx in self._sources(key, self._local(perms, skip), skip).items():
            t = t.index_select(axis, idx.to(t.device))
        return t

    def _matrix(self, t: torch.Tensor, o: _Occ, transposed: bool = False) -> torch.Tensor:
        """``t``'s slice of one occurrence as a [rows, m * rest] matrix (or its transpose,
        contiguous): a view where the layout allows, else one copy."""
        idx = o.idx.reshape(-1, o.idx.shape[-1])
        rows = idx.reshape(-1).to(self.device)
        whole = len(rows) == t.shape[o.axis] and \
            torch.equal(rows.cpu(), torch.arange(len(rows)))
        if whole and transposed and idx.shape[1] == 1:  # the axis last: one copy (or a view)
            return t.movedim(o.axis, -1).reshape(-1, len(rows)).contiguous()
        if whole:  # the axis itself, in order: a view on axis 0, else one transposing copy
            mat = t.movedim(o.axis, 0).reshape(idx.shape[0], -1)
        else:
            mat = t.index_select(o.axis, rows).movedim(o.axis, 0).reshape(idx.shape[0], -1)
        return mat.T.contiguous() if transposed else mat

    def _mats(self, key: str, oi: int, o: _Occ):
        """A's and B's slices of one occurrence as [rows, m * rest] matrices (built once:
        A never changes, and B's other permutations become one column gather)."""
        hit = self._mat.get((key, oi))
        if hit is None:
            hit = self._mat[(key, oi)] = (self._matrix(self.A[key], o),
                                          self._matrix(self.B[key], o))
        return hit

    def _plain_mats(self, key: str, oi: int, o: _Occ) -> list:
        """[A's matrix, its transpose (None until an update needs it), B's transpose,
        whether the tensor has one column per unit] of a plain occurrence, built once. The
        other groups' permutations move B's *columns*; on the transposes they are rows, and
        gathering whole contiguous rows is several times faster than gathering columns (the
        product with a transposed operand costs the same). A's few moved columns of a
        convolution are gathered one kernel block per unit instead (no transposed copy)."""
        hit = self._mat.get((key, oi))
        if hit is None:
            hit = self._mat[(key, oi)] = [self._matrix(self.A[key], o), None,
                                          self._matrix(self.B[key], o, transposed=True),
                                          self.A[key].dim() <= 2]
        return hit

    def _columns(self, key: str, o: _Occ, src: dict[int, torch.Tensor]):
        """Column index that applies the other groups' permutations to B's matrix (None:
        nothing to apply). Columns are (position in the occurrence row, rest of the axes)."""
        shape = self.B[key].shape
        idx = o.idx.reshape(-1, o.idx.shape[-1])
        m = idx.shape[1]
        sigma = None
        if o.axis in src:  # other groups on the same axis act within each row
            inv = torch.full((shape[o.axis],), -1, dtype=torch.long)
            inv[idx[0]] = torch.arange(m)
            sigma = inv[src[o.axis][idx[0]]]
            if (sigma < 0).any() or not torch.equal(src[o.axis][idx], idx[:, sigma]):
                raise ValueError(f"{key}: axis {o.axis} mixes a group's rows (unsupported "
                                 f"layout for weight matching)")
        others = [b for b in range(len(shape)) if b != o.axis]
        if sigma is None and not any(b in src for b in others):
            return None
        rest = torch.zeros(1, dtype=torch.long)
        for b in others:
            sb = src.get(b, _arange(shape[b]))
            rest = (rest[:, None] * shape[b] + sb[None, :]).reshape(-1)
        sigma = _arange(m) if sigma is None else sigma
        return (sigma[:, None] * len(rest) + rest[None, :]).reshape(-1)

    def _contribution(self, fam: Family, key: str, perms: Perms, total):
        """Bring the family's plain float64 sum ``total`` (None: not yet built) up to date
        for the tensor ``key`` and return it with the nested (per-block) costs of ``key``.
        Nothing is recomputed while the other groups acting on ``key`` keep their
        versions."""
        deps = tuple(sorted((g, self.version[g]) for g in self.key_groups[key]
                            if g not in fam.groups))
        hit = self._cache.get((fam.top, key))
        if hit is not None and hit[0] == deps:
            return total, hit[1]
        skip = set(fam.groups)
        src = self._sources(key, self._local(perms, skip), skip)
        nested = {}
        for oi, o in enumerate(fam.occs):
            if o.key != key:
                continue
            col = self._columns(key, o, src)
            if o.child is None:
                total = self._plain_update((fam.top, key, oi),
                                           self._plain_mats(key, (fam.top, oi), o), col, total)
            else:
                sa, sb = self._mats(key, (fam.top, oi), o)
                if col is not None:
                    sb = _columns_of(sb, col.to(sb.device))
                h, d, _ = o.idx.shape
                c = torch.einsum("ijr,hkr->ihjk", sa.view(h, d, -1), sb.view(h, d, -1))
                nested[o.child] = c if o.child not in nested else nested[o.child] + c
        self._cache[(fam.top, key)] = (deps, nested)
        return total, nested

    def _buf(self, use: str, shape, dtype, device) -> torch.Tensor:
        """A temporary of this shape, reused by every later call for the same ``use``:
        the cost updates make the same few large temporaries thousands of times, and a
        fresh one is fresh memory for the operating system to hand over page by page."""
        key = (use, tuple(shape), dtype, device)
        hit = self._scratch.get(key)
        if hit is None:
            hit = self._scratch[key] = torch.empty(shape, dtype=dtype, device=device)
        return hit

    def _as64(self, t: torch.Tensor) -> torch.Tensor:
        """``t.double()`` in a reused buffer (the same values: read it before the next
        call)."""
        return self._buf("f64", t.shape, torch.float64, t.device).copy_(t)

    def _plain_update(self, slot, mats, col, total):
        """Add the change of ``sa @ sb[:, col].T`` since this occurrence's last call to the
        family's float64 sum ``total`` (the whole product on the first call; None: start
        the sum) and return the sum. ``mats``: see :meth:`_plain_mats`.

        When only a few columns moved the change is ``sa[:, D] @ (sb[:, new D] - sb[:, old
        D]).T``: a neighbouring group whose permutation moved on a set S of its units moves
        the columns of S only, so the update costs ``|S| / n`` of the product (late sweeps
        of the descent move few units). The occurrence's own float32 product is kept,
        updated in place, only to take it out of the sum when a later call recomputes it
        whole; the sum itself takes each change once, in float64. The temporaries (the
        gathered rows, the change, its float64 copy) live in reused buffers."""
        sa, _, sb_t, _ = mats
        ncol = sb_t.shape[0]
        col = _arange(ncol) if col is None else col
        prev = self._plain.get(slot)
        if prev is not None:
            c_old, col_old = prev
            moved = (col != col_old).nonzero().flatten()
            if len(moved) == 0:
                return total
            if len(moved) * 2 < ncol:
                dev = sa.device
                d_new, d_old, m = (t.to(dev) for t in (col[moved], col_old[moved], moved))
                if not mats[3]:  # a kernel per unit: gather A's columns as blocks
                    a_m = _columns_of(sa, m)
                else:  # one column per unit: from A's transpose, built once
                    if mats[1] is None:
                        mats[1] = sa.T.contiguous()
                    a_m = mats[1].index_select(0, m).T
                shape = (len(moved), sb_t.shape[1])
                diff = torch.index_select(sb_t, 0, d_new,
                                          out=self._buf("rows", shape, sb_t.dtype, dev))
                diff.sub_(torch.index_select(sb_t, 0, d_old,
                                             out=self._buf("rows2", shape, sb_t.dtype, dev)))
                delta = torch.matmul(a_m, diff, out=self._buf("delta", c_old.shape,
                                                              c_old.dtype, dev))
                c_old.add_(delta)
                total.add_(self._as64(delta))  # (a mixed-dtype add_ is several times slower)
                self._plain[slot] = (c_old, col)
                return total
        if torch.equal(col, _arange(ncol)):
            c = sa @ sb_t
        else:
            gathered = torch.index_select(sb_t, 0, col.to(sb_t.device),
                                          out=self._buf("rows", sb_t.shape, sb_t.dtype,
                                                        sb_t.device))
            c = sa @ gathered
        if total is None:
            total = c.to(torch.float64, copy=True)
        else:
            total.add_(self._as64(c))
            if prev is not None:
                total.sub_(self._as64(prev[0]))
        self._plain[slot] = (c, col)
        return total

    def family_cost(self, fam: Family, perms: Perms):
        """(plain [n, n] float64 or None, {child: [H, H, d, d]}) summed over the family's
        params. The plain sum is the family's own buffer, kept across calls and updated
        only by the contributions whose other groups moved (biases, norms and the layers
        beside a group that did not move cost nothing; the LAP takes float64: one
        conversion, no re-summing): read it, do not change it."""
        total, nested = self._total.get(fam.top), {}
        for key in self.fam_keys[fam.top]:
            total, ns = self._contribution(fam, key, perms, total)
            for c, s in ns.items():
                nested[c] = s.clone() if c not in nested else nested[c].add_(s)
        self._total[fam.top] = total
        return total, nested

    @staticmethod
    def family_value(plain, nested, perms: Perms, fam: Family) -> float:
        top = perms[fam.top]
        ar = _arange(len(top))
        val = 0.0
        if plain is not None:
            val += float(plain[ar, top.to(plain.device)].sum())
        for c, s in nested.items():
            ch = perms[c].to(s.device)
            blocks = s[ar, top.to(s.device)]                       # [H, d, d]
            d = ch.shape[1]
            val += float(blocks[ar[:, None], torch.arange(d)[None, :], ch].sum())
        return val

    def solve_family(self, fam: Family, plain, nested, block_pairing=None):
        """The best permutations of a family given its costs (exact). A plain family's LAP
        starts warm from the family's last one (its assignment and duals)."""
        if not nested:
            perm, self._lap[fam.top] = solve(plain, self._lap.get(fam.top))
            return {fam.top: perm}
        h = next(iter(nested.values())).shape[0]
        outer = torch.zeros(h, h, dtype=torch.float64) if plain is None else \
            plain.detach().double().cpu().clone()
        inner: dict[str, torch.Tensor] = {}
        for c, s in nested.items():
            s_cpu = s.detach().double().cpu()
            d = s_cpu.shape[-1]
            assign = torch.empty(h, h, d, dtype=torch.long)
            for i in range(h):
                for j in range(h):
                    a = lap(s_cpu[i, j])
                    assign[i, j] = a
                    outer[i, j] += float(s_cpu[i, j][torch.arange(d), a].sum())
            inner[c] = assign
        top = lap(outer) if block_pairing is None else block_pairing
        out = {fam.top: top}
        for c, assign in inner.items():
            out[c] = assign[torch.arange(h), top]
        return out

    def run(self, perms: Perms | None = None, max_iter: int = 100, seed: int = 0,
            fixed: set[str] = frozenset(), block_pairing=None) -> tuple[Perms, dict]:
        """Coordinate descent from ``perms`` (identity by default); families in ``fixed``
        stay as they are; ``block_pairing(fam) -> perm`` may fix how blocks pair.

        A step is taken only if it strictly raises the objective, so the objective never
        decreases and the descent stops. A family acting on two axes of one tensor makes its
        step a linearisation; there the exact change is checked before accepting it."""
        perms = {k: v.clone() for k, v in (perms or identity_perms(self.spec)).items()}
        rng = random.Random(seed)
        objective = self.objective(perms)
        history, changes, it = [objective], 0, 0
        active = [f for f in self.fams if f.top not in fixed]
        for it in range(1, max_iter + 1):
            order = list(active)
            rng.shuffle(order)
            changed = False
            for run in self._independent_runs(order):
                steps = []  # (family, costs, value before, pairing) of those that need a solve
                for fam in run:
                    if self._solved.get(fam.top) == self._signature(fam):
                        continue  # nothing it depends on moved since it was last solved
                    plain, nested = self.family_cost(fam, perms)
                    pairing = block_pairing(fam) if block_pairing and nested else None
                    steps.append((fam, plain, nested, pairing,
                                  self.family_value(plain, nested, perms, fam)))
                # the families of a run share no parameter: their costs do not depend on one
                # another's steps, so they are solved side by side (the LAP releases the GIL)
                # and accepted in order, exactly as one after the other
                solved = parallel_map(lambda st: self.solve_family(st[0], st[1], st[2], st[3]),
                                      steps)
                for (fam, plain, nested, _, old), new_perms in zip(steps, solved):
                    trial = {**perms, **new_perms}
                    delta = self.family_value(plain, nested, trial, fam) - old
                    if fam.top in self.quadratic:
                        delta = sum(self._inner(k, trial) - self._inner(k, perms)
                                    for k in self.fam_keys[fam.top])
                    if delta > 1e-9 * max(1.0, abs(objective)) and any(
                            not torch.equal(new_perms[g], perms[g]) for g in new_perms):
                        perms = trial
                        objective += delta
                        for g in new_perms:
                            self.version[g] += 1
                        changed = True
                        changes += 1
                    self._solved[fam.top] = self._signature(fam)
            history.append(objective)
            if not changed:
                break
        return perms, {"iterations": it, "objective_history": history, "changes": changes}

    def _signature(self, fam: Family) -> tuple:
        """Versions of every group acting on the family's parameters."""
        return tuple(self.version[g] for k in self.fam_keys[fam.top]
                     for g in sorted(self.key_groups[k]))

    def _independent_runs(self, order: list[Family]) -> list[list[Family]]:
        """``order`` cut into runs of consecutive families that touch no common parameter
        (one acts on none of the others' tensors)."""
        runs: list[list[Family]] = []
        used: set[str] = set()
        for fam in order:
            keys = set(self.fam_keys[fam.top])
            if runs and not keys & used:
                runs[-1].append(fam)
            else:
                runs.append([fam])
                used = set()
            used |= keys
        return runs

    def _inner(self, key: str, perms: Perms) -> float:
        a, b = self.A[key], self._permuted_b(key, perms, set())
        return float(torch.dot(a.reshape(-1), b.reshape(-1)))  # no product tensor

    def objective(self, perms: Perms) -> float:
        """``sum <A, P(B)>`` over the parameters the spec permutes."""
        return sum(self._inner(k, perms) for k in self.A)


def l2_distance(A: dict, B: dict) -> float:
    """Euclidean distance over the floating-point tensors two state dicts share.

    Each tensor's difference is squared in place in one temporary, reused from tensor to
    tensor (a view of the same shape: the same sum as a fresh tensor; a fresh one per
    tensor is as much fresh memory as the model)."""
    tot, buf = 0.0, None
    for k, a in A.items():
        if a.is_floating_point() and k in B:
            a, b = a.detach().float(), B[k].detach().to(a.device).float()
            if buf is None or buf.numel() < a.numel() or buf.device != a.device:
                buf = torch.empty(a.numel(), dtype=torch.float32, device=a.device)
            d = torch.sub(a, b, out=buf[:a.numel()].view(a.shape))
            tot += float(d.mul_(d).sum())
    return tot ** 0.5


def weight_matching(spec: Spec, A: dict, B: dict, max_iter: int = 100, seed: int = 0,
                    init: Perms | None = None, device=None) -> tuple[Perms, MatchReport]:
    """Permutations of B's groups that maximise ``<A, P(B)>``, with a report."""
    t = time.perf_counter()
    perms, info = WeightMatcher(spec, A, B, device=device).run(init, max_iter=max_iter,
                                                                 seed=seed)
    return perms, method_report("wm", t, spec, A, B, perms, info)


def method_report(method: str, t0: float, spec: Spec, A: dict, B: dict, perms: Perms,
                  info: dict, notes=()) -> MatchReport:
    """The :class:`MatchReport` of a finished alignment (time since ``t0``, L2 before and
    after, the objective history a matcher recorded in ``info``)."""
    hist = info.get("objective_history", [])
    return MatchReport(method, time.perf_counter() - t0, info.get("iterations", 0),
                       l2_distance(A, B), l2_distance(A, apply(spec, perms, B)),
                       hist[-1] if hist else 0.0, hist[0] if hist else 0.0, hist,
                       info.get("changes", 0), list(notes))
