"""Weight matching of many (A_b, B_b) pairs at once, for zoos of one architecture.

Canonicalizing a zoo to its barycenter solves N independent matchings per round. They share
the spec, so they can share the work: every tensor is stacked over the batch ([N, ...]),
the cost of a group is one batched matrix product per member, and the N assignment
problems of a step are solved together (:func:`~.assignment.lap_batch`). All matchings of
a call visit the groups in the same random order (from ``seed``); each keeps its own
acceptance rule (a step is taken only if it strictly raises *its* objective) and stops on
its own, exactly like :class:`~.matching.WeightMatcher` does for one pair, so a model's
result does not depend on which other models share its batch (sharding stays exact).

Supported specs: every permuted axis belongs to exactly one top-level group (plain
layouts: MLPs, CNNs, ResNets); :func:`supports` says whether a spec qualifies, otherwise
callers fall back to one :func:`~.matching.weight_matching` per pair.

Bookkeeping: ``Bp`` holds each B with *all* current permutations applied. For group ``g``
and member ``(key, axis)``, ``M = A_mat @ Bp_mat.T`` gives ``M[i, r] = <A[i], B_ex[p[r]]>``
where ``B_ex`` has every group but ``g`` applied; so the cost ``C[i, j] = <A[i], B_ex[j]>``
is ``M`` with its columns put back in place (``C[:, p] = M``): no re-gathering of B.
The small members of a group (biases, BatchNorm vectors) are stacked into one product.

Every (model, group) LAP starts warm from that model's last answer and column duals for the
group (:func:`~.assignment.lap_batch`); a :class:`LapCarry` keeps them from one call to the
next (the rounds of a barycenter), which changes how fast each LAP is solved, never its
answer.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from ..symmetry.structure import Perms, Spec, parse_member
from .assignment import lap_batch


def supports(spec: Spec) -> bool:
    """True when every layout is a single top-level group and no group acts on two axes
    of one tensor (the cases the batched coordinate descent handles exactly)."""
    if any(g.parent is not None for g in spec.groups):
        return False
    seen = set()
    for member, layout in spec.layouts.items():
        if layout[0] != "group":
            return False
        key, _ = parse_member(member)
        if (key, layout[1]) in seen:
            return False
        seen.add((key, layout[1]))
    return True


def _members(spec: Spec) -> dict[str, list[tuple[str, int]]]:
    """group -> [(tensor key, axis)] in a fixed order."""
    out: dict[str, list[tuple[str, int]]] = {g.name: [] for g in spec.groups}
    for member, layout in sorted(spec.layouts.items()):
        key, axis = parse_member(member)
        out[layout[1]].append((key, axis))
    return {g: m for g, m in out.items() if m}


def _take(t: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """``t`` [N, ...] with ``t[b]`` indexed by ``idx[b]`` along ``axis`` (of the model).

    One row gather: ``t`` seen as rows of the axes after ``axis`` (contiguous), one index
    per (model, leading position, unit); an element-wise gather with an expanded index
    reads one index per element and is several times slower."""
    ax = axis + 1
    nb, n = idx.shape
    pre = int(np.prod(t.shape[1:ax], dtype=np.int64))
    post = int(np.prod(t.shape[ax + 1:], dtype=np.int64))
    idx = idx.to(t.device)
    base = (torch.arange(nb, device=t.device)[:, None] * pre
            + torch.arange(pre, device=t.device)[None, :]) * t.shape[ax]      # [N, pre]
    rows = (base[:, :, None] + idx[:, None, :]).reshape(-1)                   # [N * pre * n]
    out = t.reshape(-1, post).index_select(0, rows)
    return out.view(*t.shape[:ax], n, *t.shape[ax + 1:])


def _mat(t: torch.Tensor, axis: int) -> torch.Tensor:
    """[N, n, rest]: the model axis ``axis`` first, the others flattened."""
    return t.movedim(axis + 1, 1).reshape(t.shape[0], t.shape[axis + 1], -1)


SMALL = 16  # members with at most this many entries per unit share one stacked product


class BatchedMatcher:
    """Coordinate descent of ``sum <A_b, P_b(B_b)>`` for a stack of pairs (plain specs).

    ``A`` and ``B`` map each permuted tensor's key to a stacked ``[N, ...]`` float tensor.
    """

    def __init__(self, spec: Spec, A: dict[str, torch.Tensor], B: dict[str, torch.Tensor]):
        if not supports(spec):
            raise ValueError("batched weight matching needs a spec of plain layouts")
        self.spec = spec
        self.members = _members(spec)
        keys = sorted({k for ms in self.members.values() for k, _ in ms})
        self.A = {k: A[k].float() for k in keys}
        self.B = {k: B[k].float() for k in keys}
        self.n = next(iter(self.A.values())).shape[0]
        on_key: dict[str, set[str]] = {}
        for g, ms in self.members.items():
            for key, _ in ms:
                on_key.setdefault(key, set()).add(g)
        # a group's cost depends on the groups sharing a tensor with it, never on itself
        self.neighbours = {g: sorted(set().union(*(on_key[k] for k, _ in ms)) - {g})
                           for g, ms in self.members.items()}
        # per group: the members one product each, and the small ones (rest <= SMALL)
        # stacked into one product with A's side built once
        self.big: dict[str, list[tuple[str, int]]] = {}
        self.small: dict[str, list[tuple[str, int]]] = {}
        self._a_small: dict[str, torch.Tensor] = {}
        self._a_mats: dict[tuple[str, int], torch.Tensor] = {}
        for g, ms in self.members.items():
            rest = {m: self.A[m[0]][0].numel() // self.A[m[0]].shape[m[1] + 1] for m in ms}
            self.small[g] = [m for m in ms if rest[m] <= SMALL]
            self.big[g] = [m for m in ms if rest[m] > SMALL]
            if len(self.small[g]) < 2:
                self.big[g], self.small[g] = ms, []
            else:
                self._a_small[g] = torch.cat([_mat(self.A[k], a) for k, a in self.small[g]], 2)

    def _a_mat(self, key: str, axis: int) -> torch.Tensor:
        """A's [N, n, rest] matrix of a member, built once (A never changes)."""
        hit = self._a_mats.get((key, axis))
        if hit is None:
            hit = self._a_mats[(key, axis)] = _mat(self.A[key], axis)
        return hit

    def _permuted(self, perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every B with every group's permutation applied."""
        out = dict(self.B)
        for g, ms in self.members.items():
            for key, axis in ms:
                out[key] = _take(out[key], axis, perms[g])
        return out

    def _cost(self, g: str, Bp: dict, perm: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), n, n] cost of group ``g`` for the batch members ``rows``."""
        m = None
        whole = len(rows) == self.n
        for key, axis in self.big[g]:
            a = self._a_mat(key, axis)
            a = a if whole else a[rows]
            b = _mat(Bp[key] if whole else Bp[key][rows], axis)
            prod = torch.bmm(a, b.transpose(1, 2))
            m = prod if m is None else m.add_(prod)
        if self.small[g]:
            a = self._a_small[g] if whole else self._a_small[g][rows]
            b = torch.cat([_mat(Bp[k] if whole else Bp[k][rows], ax) for k, ax in self.small[g]],
                          2)
            m = torch.bmm(a, b.transpose(1, 2)) if m is None else \
                m.baddbmm_(a, b.transpose(1, 2))
        cost = torch.empty_like(m)
        cost.scatter_(2, perm.to(m.device)[:, None, :].expand_as(m), m)   # C[:, :, p] = M
        return cost

    def objective(self, Bp: dict) -> torch.Tensor:
        """[N] float64 (on the CPU): ``sum <A_b, P_b(B_b)>``, each tensor's part one
        batched float32 dot product (the descent adds its steps' float64 gains to it and
        reads it only to scale its acceptance threshold, 1e-9 of it: the rounding matters
        only to a step whose gain is that close to the threshold)."""
        n = self.n
        return sum(torch.bmm(self.A[k].reshape(n, 1, -1), Bp[k].reshape(n, -1, 1)).reshape(n)
                   .double() for k in self.A).cpu()

    def run(self, perms: dict[str, torch.Tensor], max_iter: int = 100, seed: int = 0,
            lap_states: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
        """From ``perms`` (group -> [N, n]); returns the permutations and a report with
        per-model ``iterations`` and ``objective`` tensors. A group whose neighbours have not
        moved since it was last solved in a model is not solved again there (its costs, so
        its answer, are unchanged), as :class:`~.matching.WeightMatcher` does.
        ``lap_states`` (group -> (x, v) arrays [N, n], filled in here) warm-starts the LAPs
        from an earlier call's."""
        lap_states = {} if lap_states is None else lap_states
        for g in self.members:
            n_g = perms[g].shape[1]
            st = lap_states.get(g)
            if st is None or st[0].shape != (self.n, n_g):
                lap_states[g] = (np.full((self.n, n_g), -1, dtype=np.int64),
                                 np.full((self.n, n_g), np.nan))
        perms = {g: p.clone().long() for g, p in perms.items()}
        Bp = self._permuted(perms)
        obj = self.objective(Bp)
        rng = random.Random(seed)
        active = torch.ones(self.n, dtype=torch.bool)
        iters = torch.zeros(self.n, dtype=torch.long)
        groups = list(self.members)
        # dirty[g][b]: a neighbour of g moved in model b since g was last solved there
        dirty = {g: torch.ones(self.n, dtype=torch.bool) for g in groups}
        for _ in range(max_iter):
            if not active.any():
                break
            iters[active] += 1
            changed = torch.zeros(self.n, dtype=torch.bool)
            order = list(groups)
            rng.shuffle(order)
            for g in order:
                rows = (active & dirty[g]).nonzero().flatten()
                if len(rows) == 0:
                    continue  # the same costs as last time: the same answer
                dirty[g][rows] = False
                cur = perms[g][rows]
                cost = self._cost(g, Bp, cur, rows).double().cpu()  # LAPs run on the CPU
                xs, vs = lap_states[g]
                r_np = rows.numpy()
                x, v = xs[r_np], vs[r_np]
                new = lap_batch(cost, x, v)
                xs[r_np], vs[r_np] = x, v
                ar = torch.arange(cost.shape[1])
                old_v = cost.gather(2, cur[:, :, None]).squeeze(2).sum(1)
                delta = cost.gather(2, new[:, :, None]).squeeze(2).sum(1) - old_v
                take = (delta > 1e-9 * obj[rows].abs().clamp_min(1.0)) & (new != cur).any(1)
                if not take.any():
                    continue
                sel = rows[take]
                # rel[r]: where B_ex[new[r]] sits in the current Bp (Bp[s] = B_ex[cur[s]])
                inv = torch.empty_like(cur[take]).scatter_(
                    1, cur[take], ar.expand(len(sel), -1).contiguous())
                rel = inv.gather(1, new[take])
                for key, axis in self.members[g]:
                    Bp[key][sel] = _take(Bp[key][sel], axis, rel)
                perms[g][sel] = new[take]
                for h in self.neighbours[g]:
                    dirty[h][sel] = True
                obj[sel] += delta[take]
                changed[sel] = True
            active &= changed
        return perms, {"iterations": iters, "objective": obj}


class LapCarry:
    """LAP warm starts per (model, group), kept from one batched call to the next (the
    rounds of a barycenter match the same models again, to moving targets)."""

    def __init__(self):
        self.kept: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def stack(self, ids: list, sizes: dict[str, int]) -> dict:
        """group -> (x, v) [len(ids), n] for the models ``ids`` (NaN duals: none kept)."""
        out = {}
        for g, n in sizes.items():
            x = np.full((len(ids), n), -1, dtype=np.int64)
            v = np.full((len(ids), n), np.nan)
            for r, i in enumerate(ids):
                if (i, g) in self.kept:
                    x[r], v[r] = self.kept[(i, g)]
            out[g] = (x, v)
        return out

    def keep(self, ids: list, states: dict) -> None:
        for g, (x, v) in states.items():
            for r, i in enumerate(ids):
                self.kept[(i, g)] = (x[r].copy(), v[r].copy())


def stacked_apply(spec: Spec, perms: dict[str, torch.Tensor],
                  stacked: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`~weightspace.symmetry.apply` for a stack of models of a plain spec: ``perms``
    maps each group to [N, n] (model ``b``'s permutation in row ``b``), ``stacked`` each
    key to [N, ...]; the same tensors as applying each model's permutations one model at
    a time (a gather copies values exactly), one gather per member."""
    out = dict(stacked)
    for member, layout in spec.layouts.items():
        key, axis = parse_member(member)
        if key in out:
            out[key] = _take(out[key], axis, perms[layout[1]])
    return out


def batched_weight_matching(spec: Spec, A: list[dict] | dict[str, torch.Tensor],
                            B: list[dict] | dict[str, torch.Tensor],
                            init: list[Perms] | None = None, max_iter: int = 100,
                            seed: int = 0, carry: LapCarry | None = None,
                            ids: list | None = None) -> list[Perms]:
    """Weight matching of ``B[b]`` to ``A[b]`` for every ``b`` at once (plain specs);
    ``A`` and ``B`` are lists of state dicts or already stacked (key -> [N, ...]).
    ``carry`` keeps the LAPs' warm starts for the next call, by model id (``ids``, one per
    pair; default the positions)."""
    keys = sorted({parse_member(m)[0] for m in spec.layouts})

    def stack(states) -> dict[str, torch.Tensor]:
        if isinstance(states, dict):
            return {k: states[k].float() for k in keys}
        return {k: torch.stack([s[k].float() for s in states]) for k in keys}
    m = BatchedMatcher(spec, stack(A), stack(B))
    nb = m.n
    sizes = spec.group_sizes
    start = {g: torch.stack([p[g] for p in init]) if init else
             torch.arange(sizes[g]).expand(nb, -1) for g in m.members}
    ids = list(range(nb)) if ids is None else list(ids)
    laps = carry.stack(ids, {g: sizes[g] for g in m.members}) if carry is not None else None
    perms, _ = m.run(start, max_iter=max_iter, seed=seed, lap_states=laps)
    if carry is not None:
        carry.keep(ids, laps)
    out = []
    for b in range(nb):
        full = {g.name: torch.arange(g.size) for g in spec.groups}
        full.update({g: p[b].clone() for g, p in perms.items()})
        out.append(full)
    return out


__all__ = ["BatchedMatcher", "LapCarry", "batched_weight_matching", "stacked_apply",
           "supports"]
