"""``transfusion`` — head-aware matching for attention (after Rinaldi et al. 2025): heads
are paired by a permutation-invariant descriptor (the singular values of each head's blocks
of Q, K, V and O), then the dimensions inside each paired head are matched; the residual
stream is left at identity (``residual="identity"``) or weight-matched (``"wm"``)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .registry import Option, register_align_method
from .wm import MAX_ITER

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    import torch

    from ..symmetry.structure import Perms, Spec
    from .matching import MatchReport


def residual_families(fams) -> set[str]:
    """Families on the output axis of a parameter whose input axis is head-structured: the
    stream attention writes into."""
    head_keys = {(o.key, o.axis) for f in fams for o in f.occs if o.child is not None}
    keys_in = {k for k, _ in head_keys}
    out = set()
    for f in fams:
        for o in f.occs:
            if o.child is None and o.key in keys_in and (o.key, o.axis) not in head_keys:
                out.add(f.top)
    return out


def _head_descriptors(fam, state: dict) -> torch.Tensor:
    """[H, k]: sorted singular values of every head's block in every occurrence."""
    import torch
    parts = []
    for o in fam.occs:
        if o.child is None:
            continue
        t = state[o.key].float().movedim(o.axis, 0)
        h, d, _ = o.idx.shape
        blocks = t[o.idx.reshape(-1)].reshape(h, d, -1)
        parts.append(torch.linalg.svdvals(blocks))
    return torch.cat(parts, 1)


def transfusion_matching(spec: Spec, A: dict, B: dict, residual: str = "identity",
                         seed: int = 0, max_iter: int = 100) -> tuple[Perms, MatchReport]:
    import torch

    from .matching import WeightMatcher, lap, method_report
    t0 = time.perf_counter()
    wm = WeightMatcher(spec, A, B)
    headed = [f for f in wm.fams if f.children]
    pairing = {}
    for f in headed:
        da, db = _head_descriptors(f, A), _head_descriptors(f, B)
        pairing[f.top] = lap(-torch.cdist(da.double(), db.double()))
    fixed = residual_families(wm.fams) if residual == "identity" else set()
    perms, info = wm.run(max_iter=max_iter, seed=seed, fixed=fixed,
                         block_pairing=lambda f: pairing.get(f.top))
    notes = [f"{len(headed)} attention famil(ies) paired by singular-value descriptors",
             f"residual stream: {residual}" + (f" ({len(fixed)} group(s) fixed)" if fixed
                                               else "")]
    return perms, method_report("transfusion", t0, spec, A, B, perms, info, notes)


@register_align_method(
    "transfusion", "head-aware attention matching: heads paired first, then their dims",
    options=(MAX_ITER, Option("residual", str, "identity",
                              "transfusion: leave the residual stream at identity or "
                              "weight-match it", choices=("identity", "wm"))))
def transfusion(spec: Spec, A: dict, B: dict, seed: int = 0, max_iter: int = 100,
                residual: str = "identity") -> tuple[Perms, MatchReport]:
    return transfusion_matching(spec, A, B, residual=residual, seed=seed, max_iter=max_iter)
