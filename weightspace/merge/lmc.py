"""Linear mode connectivity: interpolation curves, barriers, diagnostics, barrier matrices.

The curve evaluates ``(1 - t) A + t B`` at ``points`` values of t on a fixed train subset
and on the test split. Endpoints (t = 0, 1) are the models as they are. In between, BN
statistics are by default recomputed on a calibration sample of the train split
(``bn="reset"``); ``bn="repair"`` applies REPAIR (any network); ``bn="none"`` uses the
interpolated buffers. Barriers (Frankle et al. / Entezari et al. definition):

* loss barrier = max_t [ loss(t) - ((1 - t) loss(0) + t loss(1)) ]
* accuracy barrier = max_t [ ((1 - t) acc(0) + t acc(1)) - acc(t) ]
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..canonicalize import l2_distance
from ..canonicalize.restarts import align_with_restarts
from ..device import placed
from ..features import feature_stats
from ..functional import has_batchnorm, lerp_states, loss_acc, recalibrate_state, scratch
from ..symmetry.structure import Spec, apply
from ..evaluation import CALIBRATION_EXAMPLES
from .registry import BN_MODES, MergeError
from .repair import BN_ONLY_NOTE, bn_only, repair, repairable

CALIB = CALIBRATION_EXAMPLES  # deprecated name

TRAIN_EVAL = 2048   # train examples the curve is measured on


def curve(spec: Spec, model: nn.Module, A: dict, B: dict, data, points: int = 25,
          bn: str = "reset") -> dict:
    """Loss and accuracy along the straight line from A to B (train subset and test)."""
    model = scratch(model)
    if points < 2:
        raise MergeError(f"`points` must be >= 2, got {points}")
    if bn not in BN_MODES:
        raise MergeError(f"`bn` must be one of {', '.join(BN_MODES)}, got {bn!r}")
    xtr, ytr = (t[:TRAIN_EVAL] for t in data["train"])
    xte, yte = data["test"]
    calib = data["train"][0][:CALIBRATION_EXAMPLES]
    stats = None
    if bn == "repair":
        targets = repairable(spec, model)
        stats = [feature_stats(model, s, targets, calib) for s in (A, B)]
    out = {"t": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": [],
           "bn": bn if (bn != "reset" or has_batchnorm(model)) else "none (no BatchNorm)"}
    for i in range(points):
        t = i / (points - 1)
        if i == 0 or i == points - 1:
            state = A if i == 0 else B
        else:
            state = lerp_states(A, B, t)
            if bn == "repair":
                state = repair(spec, model, state, stats, [1 - t, t], calib)
            elif bn == "reset":
                state = recalibrate_state(model, state, calib)
        for split, (x, y) in (("train", (xtr, ytr)), ("test", (xte, yte))):
            loss, acc = loss_acc(model, x, y, state=state)
            out[f"{split}_loss"].append(loss)
            out[f"{split}_acc"].append(acc)
        out["t"].append(t)
    for split in ("train", "test"):
        out[f"{split}_loss_barrier"] = barrier(out["t"], out[f"{split}_loss"])
        out[f"{split}_acc_barrier"] = barrier(out["t"], out[f"{split}_acc"], higher_is_better=True)
    return out


def barrier(ts, values, higher_is_better: bool = False) -> float:
    """Largest excess over the straight line between the endpoint values."""
    v0, v1 = values[0], values[-1]
    gaps = []
    for t, v in zip(ts, values):
        line = (1 - t) * v0 + t * v1
        gaps.append(line - v if higher_is_better else v - line)
    best = max(gaps)
    return float(best) if math.isfinite(best) else float("inf")


def singular_alignment(A: dict, B: dict, k: int = 5) -> list[dict]:
    """Per weight matrix: overlap of the top-k left / right singular subspaces of A and B
    (``||U_A^T U_B||_F^2 / k``: 1 = same subspace, ~k/n for random ones)."""
    rows = []
    for key, a in A.items():
        if not a.is_floating_point() or a.dim() < 2 or min(a.shape[0], a[0].numel()) < 2:
            continue
        ma, mb = a.float().reshape(a.shape[0], -1), B[key].float().reshape(a.shape[0], -1)
        kk = min(k, *ma.shape)
        ua, _, va = torch.linalg.svd(ma, full_matrices=False)
        ub, _, vb = torch.linalg.svd(mb, full_matrices=False)
        left = float((ua[:, :kk].T @ ub[:, :kk]).pow(2).sum() / kk)
        right = float((va[:kk] @ vb[:kk].T).pow(2).sum() / kk)
        rows.append({"param": key, "shape": list(a.shape), "k": kk, "left": left,
                     "right": right})
    return rows


def diagnostics(spec: Spec, A: dict, B: dict, perms, k: int = 5) -> dict:
    """Ito et al. 2024's diagnostics: L2 distance ratio with / without the permutation and
    per-layer singular-subspace alignment before / after matching."""
    Bp = apply(spec, perms, B)
    d0, d1 = l2_distance(A, B), l2_distance(A, Bp)
    before = singular_alignment(A, B, k)
    after = {r["param"]: r for r in singular_alignment(A, Bp, k)}
    table = [{"param": r["param"], "shape": r["shape"], "k": r["k"],
              "left_before": r["left"], "left_after": after[r["param"]]["left"],
              "right_before": r["right"], "right_after": after[r["param"]]["right"]}
             for r in before]
    return {"l2_unaligned": d0, "l2_aligned": d1, "l2_ratio": d1 / d0 if d0 else 0.0,
            "singular_alignment": table}


def lmc(spec: Spec, model: nn.Module, A: dict, B: dict, data, align_method: str = "wm",
        points: int = 25, bn: str = "reset", seed: int = 0, restarts: int = 1,
        device=None, **align_kw) -> dict:
    """Curves and barriers before and (unless ``align_method == "none"``) after alignment.

    ``restarts`` > 1 aligns from that many seeds and keeps the one with the lowest train
    midpoint loss; the test-loss barrier of every restart is reported (``restarts``,
    ``barrier_spread``) so the luck of the group order is visible, never used to choose.
    ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``) moves the models and data there first;
    None works where they are."""
    model, A, B, data = placed(device, model, A, B, data)
    out = {"points": points, "bn": bn, "align": align_method,
           "unaligned": curve(spec, model, A, B, data, points, bn)}
    if bn == "repair" and bn_only(spec, model):
        out["notes"] = [BN_ONLY_NOTE]
    if align_method != "none":
        perms, rep, runs, candidates = align_with_restarts(
            spec, A, B, align_method, restarts, model=model, data=data, seed=seed, **align_kw)
        out["alignment"] = rep.to_dict()
        out["aligned"] = curve(spec, model, A, apply(spec, perms, B), data, points, bn)
        out["diagnostics"] = diagnostics(spec, A, B, perms)
        if restarts > 1:
            for rec, p in zip(runs, candidates):
                rec["test_loss_barrier"] = out["aligned"]["test_loss_barrier"] \
                    if rec["kept"] else \
                    curve(spec, model, A, apply(spec, p, B), data, points, bn)["test_loss_barrier"]
            barriers = [r["test_loss_barrier"] for r in runs]
            out["restarts"] = runs
            out["barrier_spread"] = {"min": min(barriers), "max": max(barriers),
                                     "mean": sum(barriers) / len(barriers)}
    return out


def plot(result: dict, path) -> None:
    """Loss and accuracy curves, train and test, before / after alignment, one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for which, style in (("unaligned", "--"), ("aligned", "-")):
        c = result.get(which)
        if c is None:
            continue
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            axes[0].plot(c["t"], c[f"{split}_loss"], style, color=color,
                         label=f"{split}, {which}")
            axes[1].plot(c["t"], c[f"{split}_acc"], style, color=color,
                         label=f"{split}, {which}")
    axes[0].set(xlabel="t", ylabel="loss", title="loss along (1-t) A + t B")
    bn = result.get("aligned", result["unaligned"])["bn"]
    axes[1].set(xlabel="t", ylabel="accuracy", title=f"accuracy (between endpoints: {bn})")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path) -> None:
    from pathlib import Path

    from ..checkpoint import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:] or "png",
                                               dpi=120))


def heatmap(matrix, labels, path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1 + 0.4 * n, 0.8 + 0.4 * n))
    im = ax.imshow([[float("nan") if v is None else v for v in row] for row in matrix],
                   cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
