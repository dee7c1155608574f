"""``ste`` — multi-model straight-through estimation: one trainable proxy per non-reference
model; each step re-matches every model to its proxy (warm-started weight matching) and
minimises the loss of a random convex combination (Dirichlet weights) of the reference and
the projected models, the proxies receiving the gradient straight through; the
permutations whose uniform merge has the lowest *validation* loss are kept (MergeMany's
permutations are the first candidate)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Option
from .mergemany import mergemany
from .registry import register_merge_method

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    from torch import nn

    from ..symmetry.structure import Spec


def ste_perms(spec: Spec, model: nn.Module, states: list[dict], data, init, steps: int = 200,
              lr: float = 1e-3, batch_size: int = 128, eval_every: int = 25, seed: int = 0):
    """Multi-model STE from the permutations ``init``; returns the best on validation."""
    import torch

    from ..canonicalize.matching import WeightMatcher, families
    from ..functional import (has_batchnorm, loss_acc, mean_states, recalibrate_state, scratch,
                              train_step)
    from ..symmetry.structure import apply
    from ..evaluation import CALIBRATION_EXAMPLES
    model = scratch(model)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    calib = x[:CALIBRATION_EXAMPLES] if has_batchnorm(model) else None
    params = {k for k, _ in model.named_parameters()}
    ref, others = states[0], states[1:]
    perms = list(init)

    def val_loss(ps):
        merged = mean_states([apply(spec, p, s) for p, s in zip(ps, states)])
        if calib is not None:
            merged = recalibrate_state(model, merged, calib)
        return loss_acc(model, *data["val"], state=merged)[0]

    best = (val_loss(perms), [dict(p) for p in perms], 0)
    proxies = [{k: ref[k].detach().clone().float().requires_grad_() for k in params}
               for _ in others]
    opt = torch.optim.Adam([t for p in proxies for t in p.values()], lr=lr)
    fams = families(spec)
    model.train()
    for step in range(1, steps + 1):
        for i, (proxy, s) in enumerate(zip(proxies, others)):
            a = {k: (proxy[k].detach() if k in proxy else v) for k, v in ref.items()}
            perms[i + 1], _ = WeightMatcher(spec, a, s, fams=fams).run(
                perms[i + 1], seed=seed + step)
        w = torch.distributions.Dirichlet(torch.ones(len(states))).sample()
        aligned = [apply(spec, perms[i + 1], s) for i, s in enumerate(others)]
        mixed = {}
        for k, v in ref.items():
            if not v.is_floating_point():
                mixed[k] = v
                continue
            m = w[0] * v
            for wi, s, proxy in zip(w[1:], aligned, proxies):
                m = m + wi * (s[k] + (proxy[k] - proxy[k].detach() if k in proxy else 0))
            mixed[k] = m
        train_step(model, mixed, opt, x, y, batch_size, gen)
        if step % eval_every == 0 or step == steps:
            v = val_loss(perms)
            if v < best[0]:
                best = (v, [dict(p) for p in perms], step)
    model.eval()
    return best[1], best[2]


@register_merge_method("ste", "multi-model STE from MergeMany's permutations (needs data)",
                       needs_data=True,
                       options=(Option("steps", int, 200, "ste: optimisation steps"),
                                Option("eval_every", int, 25,
                                       "ste: validation loss every N steps")))
def ste(spec: Spec, model, states: list[dict], data, seed: int, report: dict,
        steps: int = 200, eval_every: int = 25) -> list[dict]:
    init = mergemany(spec, model, states, data, seed, report)
    if len(states) == 1:
        return init
    perms, report["ste_best_step"] = ste_perms(spec, model, states, data, init, steps=steps,
                                               eval_every=eval_every, seed=seed)
    return perms
