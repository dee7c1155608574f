"""The alignment methods besides plain weight matching, and ``align`` which picks one.

* ``am`` — activation matching: forward hooks on the modules whose output features are a
  group's units collect statistics on train-split data; one LAP per group on the
  cross-correlation (``pearson=True``: the Pearson correlation). Groups no module exposes
  (per-block attention dims, units only a functional op produces) are then matched by
  weight matching with the activation-matched groups held fixed.
* ``ste`` — the straight-through estimator (Ainsworth et al. 2022; Ito et al. 2024): learn a
  proxy of A whose weight-matching projection of B minimises the loss of the midpoint
  ``(A + P(B)) / 2``; each step warm-starts weight matching from the previous permutation;
  the permutation with the lowest midpoint loss on the *validation* split is kept (the
  plain weight-matching solution is the first candidate, so STE is never worse on it).
* ``transfusion`` — head-aware matching for attention (after Rinaldi et al. 2025): heads are
  paired by a permutation-invariant descriptor (the singular values of each head's blocks
  of Q, K, V and O), then the dimensions inside each paired head are matched; the residual
  stream is left at identity (``residual="identity"``) or weight-matched (``"wm"``).
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.func import functional_call

from ..errors import WeightspaceError
from ..functional import has_batchnorm, loss_acc, reset_bn, scratch, train_step
from ..symmetry.structure import Perms, Spec, apply, identity_perms
from .matching import (MatchReport, WeightMatcher, families, l2_distance, lap,
                       weight_matching)

METHODS = ("wm", "am", "ste", "transfusion")
_FEATURE_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding)
_FEATURE_DIM1 = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


class AlignError(WeightspaceError):
    """An alignment request that cannot run (unknown method, missing data)."""


def _report(method, t0, spec, A, B, perms, info, notes=()) -> MatchReport:
    return MatchReport(method, time.perf_counter() - t0, info.get("iterations", 0),
                       l2_distance(A, B), l2_distance(A, apply(spec, perms, B)),
                       info.get("objective_history", [0.0])[-1],
                       info.get("objective_history", [0.0])[0],
                       info.get("objective_history", []), info.get("changes", 0), list(notes))


# ------------------------------------------------------------------------ activation matching
def _feature_modules(spec: Spec, model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """group -> [(module name, feature dim)] for modules whose outputs are its units."""
    mods = dict(model.named_modules())
    out: dict[str, list[tuple[str, int]]] = {}
    for g in spec.groups:
        if g.parent is not None:
            continue
        for member in g.members:
            if spec.layouts.get(member) != ("group", g.name) or not member.endswith(
                    (".weight:0", ".bias:0")):
                continue
            name = member.rsplit(".", 1)[0]
            m = mods.get(name)
            dim = -1 if isinstance(m, _FEATURE_LAST) else 1 if isinstance(m, _FEATURE_DIM1) \
                else None
            if dim is not None and (name, dim) not in out.get(g.name, []):
                out.setdefault(g.name, []).append((name, dim))
    return out


@torch.no_grad()
def _activation_stats(model, state, hooks, x, batch_size):
    feats: dict[str, list] = {}
    mods = dict(model.named_modules())
    handles = []
    for g, items in hooks.items():
        for name, dim in items:
            def hook(_m, _i, out, g=g, dim=dim):
                a = out.movedim(dim, -1).reshape(-1, out.shape[dim]).double()
                feats.setdefault(g, []).append(a)
            handles.append(mods[name].register_forward_hook(hook))
    try:
        model.eval()
        outs = []
        for lo in range(0, len(x), batch_size):
            feats.clear()
            functional_call(model, state, (x[lo:lo + batch_size],))
            outs.append({g: torch.cat(v, 0) for g, v in feats.items()})
    finally:
        for h in handles:
            h.remove()
    return outs


def activation_matching(spec: Spec, model: nn.Module, A: dict, B: dict, x: torch.Tensor,
                        pearson: bool = False, batch_size: int = 512, seed: int = 0,
                        max_iter: int = 100) -> tuple[Perms, MatchReport]:
    t0 = time.perf_counter()
    hooks = _feature_modules(spec, model)
    sa = _activation_stats(model, A, hooks, x, batch_size)
    sb = _activation_stats(model, B, hooks, x, batch_size)
    perms = identity_perms(spec)
    done = set()
    for g in hooks:
        n = spec.group(g).size
        s_ab = torch.zeros(n, n, dtype=torch.float64)
        s_a = torch.zeros(n, dtype=torch.float64)
        s_b = torch.zeros(n, dtype=torch.float64)
        s_aa = torch.zeros(n, dtype=torch.float64)
        s_bb = torch.zeros(n, dtype=torch.float64)
        cnt = 0
        for ba, bb in zip(sa, sb):
            a, b = ba[g].cpu(), bb[g].cpu()
            s_ab += a.T @ b
            s_a += a.sum(0)
            s_b += b.sum(0)
            s_aa += (a * a).sum(0)
            s_bb += (b * b).sum(0)
            cnt += len(a)
        if pearson:
            cov = s_ab / cnt - torch.outer(s_a / cnt, s_b / cnt)
            sd_a = (s_aa / cnt - (s_a / cnt) ** 2).clamp_min(1e-12).sqrt()
            sd_b = (s_bb / cnt - (s_b / cnt) ** 2).clamp_min(1e-12).sqrt()
            cost = cov / torch.outer(sd_a, sd_b)
        else:
            cost = s_ab / cnt
        perms[g] = lap(cost)
        done.add(g)
    rest = [f for f in families(spec) if f.top not in done]
    notes = [f"activation statistics on {len(x)} train examples for {len(done)} group(s)"]
    info = {}
    if rest:
        notes.append(f"{len(rest)} group famil(ies) without a feature module (e.g. "
                     f"{rest[0].top}) matched by weight matching")
        perms, info = WeightMatcher(spec, A, B).run(perms, max_iter=max_iter, seed=seed,
                                                    fixed=done)
    info.setdefault("iterations", 1)
    return perms, _report("am", t0, spec, A, B, perms, info, notes)


# ------------------------------------------------------------------------ STE
def _midpoint_loss(model, spec, A, B, perms, x, y, calib) -> float:
    mid = {k: (v + w) / 2 if v.is_floating_point() else v
           for (k, v), w in zip(A.items(), apply(spec, perms, B).values())}
    if calib is not None:
        model.load_state_dict(mid)
        reset_bn(model, calib)
        mid = model.state_dict()
    return loss_acc(model, x, y, state=mid)[0]


def ste_matching(spec: Spec, model: nn.Module, A: dict, B: dict, train, val,
                 steps: int = 300, lr: float = 1e-3, batch_size: int = 128,
                 eval_every: int = 50, seed: int = 0) -> tuple[Perms, MatchReport]:
    t0 = time.perf_counter()
    model = scratch(model)  # the midpoint evaluation loads weights into it
    x, y = train
    xv, yv = val
    gen = torch.Generator().manual_seed(seed)
    params = {k for k, _ in model.named_parameters()}
    calib = x[torch.randperm(len(x), generator=gen)[:1024]] if has_batchnorm(model) else None
    wm = WeightMatcher(spec, A, B)
    perms, info = wm.run(seed=seed)
    best = (_midpoint_loss(model, spec, A, B, perms, xv, yv, calib), perms, 0)
    proxy = {k: A[k].detach().clone().float().requires_grad_() for k in params}
    opt = torch.optim.Adam(list(proxy.values()), lr=lr)
    model.train()
    wm_iters = info["iterations"]
    for step in range(1, steps + 1):
        m = WeightMatcher(spec, {k: v.detach() for k, v in proxy.items()} | {
            k: v for k, v in A.items() if k not in proxy}, B, fams=wm.fams)
        perms, inf = m.run(perms, seed=seed + step)
        wm_iters += inf["iterations"]
        bp = apply(spec, perms, B)
        mid = {k: (A[k] + bp[k]) / 2 + (proxy[k] - proxy[k].detach()) if k in proxy
               else (A[k] + bp[k]) / 2 if A[k].is_floating_point() else A[k] for k in A}
        train_step(model, mid, opt, x, y, batch_size, gen)
        if step % eval_every == 0 or step == steps:
            v = _midpoint_loss(model, spec, A, B, perms, xv, yv, calib)
            if v < best[0]:
                best = (v, {k: p.clone() for k, p in perms.items()}, step)
    model.eval()
    notes = [f"{steps} STE steps (lr {lr}, batch {batch_size}); best validation midpoint loss "
             f"{best[0]:.4f} at step {best[2]} (step 0 = weight matching)"]
    rep = _report("ste", t0, spec, A, B, best[1],
                  {"iterations": steps, "objective_history": [wm.objective(best[1])]}, notes)
    rep.notes.append(f"{wm_iters} weight-matching sweeps in all")
    return best[1], rep


# ------------------------------------------------------------------------ TransFusion
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
    return perms, _report("transfusion", t0, spec, A, B, perms, info, notes)


# ------------------------------------------------------------------------ dispatch
def align(spec: Spec, A: dict, B: dict, method: str = "wm", model: nn.Module | None = None,
          data=None, seed: int = 0, **kw) -> tuple[Perms, MatchReport]:
    """Permutations of B's groups that bring B into A's basin, and a report.

    ``data`` (a :class:`weightspace.zoo.Dataset`) and ``model`` (an instance of the
    architecture) are needed by ``am`` and ``ste``.
    """
    if method not in METHODS:
        raise AlignError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if method == "wm":
        return weight_matching(spec, A, B, seed=seed, **kw)
    if method == "transfusion":
        return transfusion_matching(spec, A, B, seed=seed, **kw)
    if model is None or data is None:
        raise AlignError(f"method {method!r} needs data: pass a dataset (--dataset)")
    if method == "am":
        x = data["train"][0][:kw.pop("examples", 2048)]
        return activation_matching(spec, model, A, B, x, seed=seed, **kw)
    return ste_matching(spec, model, A, B, data["train"], data["val"], seed=seed, **kw)


__all__ = ["METHODS", "align", "activation_matching", "ste_matching", "transfusion_matching",
           "residual_families"]
