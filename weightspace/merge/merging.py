"""Merging many models: plain mean, MergeMany and multi-model STE, with BN reset / REPAIR.

* ``mean`` — the plain average (for models already in one basin, e.g. a canonical zoo);
* ``mergemany`` — Ainsworth et al.'s MergeMany: match every model to the mean of the
  others until the summed distance to the barycenter stops improving, then average;
* ``ste`` — multi-model straight-through estimation: one trainable proxy per non-reference
  model; each step re-matches every model to its proxy (warm-started weight matching) and
  minimises the loss of a random convex combination (Dirichlet weights) of the reference
  and the projected models, the proxies receiving the gradient straight through; the
  permutations whose uniform merge has the lowest *validation* loss are kept (MergeMany's
  permutations are the first candidate).

``post="repair"`` rescales the merged model's units to the mean of the (aligned) endpoints'
statistics; ``post="reset"`` recomputes BN statistics; both on the train split.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..canonicalize import WeightMatcher, families
from ..canonicalize.zoo import barycenter_perms
from ..functional import (check_compatible, has_batchnorm, loss_acc, mean_states, reset_bn,
                          scratch, train_step)
from ..symmetry.structure import Spec, apply, identity_perms
from .lmc import CALIB, LMCError
from .repair import feature_stats, repair, repairable

METHODS = ("mean", "mergemany", "ste")
POST = ("none", "reset", "repair")


class _OneProcess:
    num_processes, process_index, is_main_process = 1, 0, True


def mergemany_perms(spec: Spec, states: list[dict], seed: int = 0, max_rounds: int = 20,
                    tol: float = 1e-4):
    """Permutations that put every model into one basin, and the RMS-distance history."""
    perms, _, history = barycenter_perms(spec, states, "wm", _OneProcess(), seed, max_rounds, tol,
                                    False)
    return [perms[i] for i in range(len(states))], history


def ste_perms(spec: Spec, model: nn.Module, states: list[dict], data, init, steps: int = 200,
              lr: float = 1e-3, batch_size: int = 128, eval_every: int = 25, seed: int = 0):
    """Multi-model STE from the permutations ``init``; returns the best on validation."""
    model = scratch(model)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    calib = x[:CALIB] if has_batchnorm(model) else None
    params = {k for k, _ in model.named_parameters()}
    ref, others = states[0], states[1:]
    perms = list(init)

    def val_loss(ps):
        merged = mean_states([apply(spec, p, s) for p, s in zip(ps, states)])
        if calib is not None:
            model.load_state_dict(merged)
            reset_bn(model, calib)
            merged = model.state_dict()
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


def merge(spec: Spec, model: nn.Module, states: list[dict], method: str = "mergemany",
          post: str = "none", data=None, seed: int = 0, names=None, **kw) -> tuple[dict, dict]:
    """The merged state dict and a report."""
    model = scratch(model)
    t0 = time.perf_counter()
    if method not in METHODS:
        raise LMCError(f"unknown merge method {method!r}; methods: {', '.join(METHODS)}")
    if post not in POST:
        raise LMCError(f"unknown post-processing {post!r}; choices: {', '.join(POST)}")
    if len(states) < 1:
        raise LMCError("nothing to merge")
    check_compatible(states, names)
    if (method == "ste" or post != "none") and data is None:
        raise LMCError(f"method {method!r} / {post!r} needs data: pass --dataset NAME")
    report = {"method": method, "post": post, "models": len(states)}
    if method == "mean" or len(states) == 1:
        perms = [identity_perms(spec) for _ in states]
    else:
        perms, history = mergemany_perms(spec, states, seed=seed)
        report["mergemany_rms_history"] = history
        if method == "ste":
            perms, step = ste_perms(spec, model, states, data, perms, seed=seed, **kw)
            report["ste_best_step"] = step
    aligned = [apply(spec, p, s) for p, s in zip(perms, states)]
    merged = mean_states(aligned)
    if post == "repair":
        calib = data["train"][0][:CALIB]
        targets = repairable(spec, model)
        stats = [feature_stats(model, s, targets, calib) for s in aligned]
        merged = repair(spec, model, merged, stats, [1 / len(states)] * len(states), calib)
    elif post == "reset" and has_batchnorm(model):
        model.load_state_dict(merged)
        reset_bn(model, data["train"][0][:CALIB])
        merged = {k: v.clone() for k, v in model.state_dict().items()}
    report["seconds"] = time.perf_counter() - t0
    return merged, report
