"""``ste`` — the straight-through estimator (Ainsworth et al. 2022; Ito et al. 2024): learn
a proxy of A whose weight-matching projection of B minimises the loss of the midpoint
``(A + P(B)) / 2``; each step warm-starts weight matching from the previous permutation;
the permutation with the lowest midpoint loss on the *validation* split is kept (the plain
weight-matching solution is the first candidate, so STE is never worse on it)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .registry import Option, register_align_method

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    from torch import nn

    from ..symmetry.structure import Perms, Spec
    from .matching import MatchReport


def _midpoint_loss(model, spec, A, B, perms, x, y, calib) -> float:
    from ..functional import loss_acc, recalibrate_state
    from ..symmetry.structure import apply
    mid = {k: (v + w) / 2 if v.is_floating_point() else v
           for (k, v), w in zip(A.items(), apply(spec, perms, B).values())}
    if calib is not None:
        mid = recalibrate_state(model, mid, calib)
    return loss_acc(model, x, y, state=mid)[0]


def ste_matching(spec: Spec, model: nn.Module, A: dict, B: dict, train, val,
                 steps: int = 300, lr: float = 1e-3, batch_size: int = 128,
                 eval_every: int = 50, seed: int = 0) -> tuple[Perms, MatchReport]:
    import torch

    from ..functional import has_batchnorm, scratch, train_step
    from ..symmetry.structure import apply
    from .matching import WeightMatcher, method_report
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
    rep = method_report("ste", t0, spec, A, B, best[1],
                  {"iterations": steps, "objective_history": [wm.objective(best[1])]}, notes)
    rep.notes.append(f"{wm_iters} weight-matching sweeps in all")
    return best[1], rep


@register_align_method(
    "ste", "straight-through estimator: learn the matching that lowers the midpoint loss",
    needs_data=True, weight_space=False,
    options=(Option("steps", int, 300, "ste: optimisation steps"),
             Option("eval_every", int, 50, "ste: validation midpoint loss every N steps")))
def ste(spec: Spec, A: dict, B: dict, model: nn.Module, data, seed: int = 0,
        steps: int = 300, eval_every: int = 50) -> tuple[Perms, MatchReport]:
    return ste_matching(spec, model, A, B, data["train"], data["val"], steps=steps,
                        eval_every=eval_every, seed=seed)
