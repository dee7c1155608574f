"""The audit of a sample zoo against its training zoo: good, diverse, and not copies?

On the test split (nothing here selects on it):
* accuracy of generated and zoo models (mean, std, min, max, median);
* novelty: for each generated model the highest IoU of its set of misclassified test
  examples with any zoo model's; the same leave-one-out inside the zoo (how novel an
  independently trained network is); nearest-neighbour L2 distance in canonical weight
  space, generated -> zoo and zoo -> zoo (leave-one-out);
* baselines from the same zoo, in the same run: zoo models plus Gaussian noise (per-tensor
  relative scales 0.01 ... 1), a Gaussian fitted in the zoo's PCA code space, and the zoo
  mean;
* the margin against the noise curve (an isotonic fit of accuracy on novelty over all the
  noisy models): accuracy minus the curve's accuracy at the same novelty; positive =
  better than perturbing a zoo model until it is as new. The zoo's own (leave-one-out)
  margin is what an ideal sampler of independently trained networks would get;
* ensembles of K generated vs K zoo models: accuracy and expected calibration error;
* cost: seconds per generated model and function evaluations (from the sample zoo);
* what a sample is: its relative distance to the zoo's affine span and the effective
  number of zoo models its projection mixes (``affine_span``), in the standardised
  parameters (BN statistics left out: they are recalibrated, not generated); the zoo's
  leave-one-out values say where an independently trained network lies.
"""
from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..arch import build
from ..checkpoint import read_checkpoint
from ..errors import check_output
from ..evaluation import CALIBRATION_EXAMPLES, probabilities, recalibrate
from ..functional import mean_states
from ..results import Result
from ..zoo.datasets import load_dataset
from ..zoo.store import Zoo
from .config import GenerateError
from .encoding import _CHUNK, Encoding  # columns multiplied at once
from .novelty import max_iou
from .store import load_zoo_states, scan_zoo

NOISE = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def noise_curve(baselines: dict) -> list[tuple[float, float]]:
    """The accuracy a noisy zoo model has at a given novelty: an isotonic (non-decreasing)
    regression of accuracy on max-IoU over every model of the ``noise_*`` baselines, as
    (max-IoU, accuracy) knots by increasing max-IoU."""
    from sklearn.isotonic import IsotonicRegression
    iou, acc = [], []
    for k, b in baselines.items():
        if k.startswith("noise_"):
            iou += list(b["max_iou"])
            acc += list(b["acc"])
    fit = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(iou, acc)
    return [(float(x), float(y)) for x, y in zip(fit.X_thresholds_, fit.y_thresholds_)]


def curve_margin(curve, iou: list[float], acc: list[float]) -> dict:
    """Accuracy above the noise curve at equal novelty: per model (``mean`` of the margins,
    fraction ``above``) and for the mean model (``at_mean``: mean accuracy minus the curve
    at the mean novelty). Outside the curve's novelty range the nearest end is used (and
    counted in ``outside``)."""
    xs, ys = [c[0] for c in curve], [c[1] for c in curve]
    margins = (np.asarray(acc) - np.interp(iou, xs, ys)).tolist()  # clamps at the ends
    return {"mean": statistics.fmean(margins),
            "above": sum(m > 0 for m in margins) / len(margins),
            "outside": sum(u < xs[0] or u > xs[-1] for u in iou),
            "at_mean": statistics.fmean(acc) - float(np.interp(statistics.fmean(iou), xs, ys))}


def _stats(v: list[float]) -> dict:
    return {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": min(v),
            "max": max(v), "median": statistics.median(v)}


GROUP_NUMBERS = 100_000_000  # weights of generated / baseline models held at once


def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` in float64 ([M, D] x [N, D] -> [M, N]), a block of columns at a time
    (the rows may be stored in float32)."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for c0 in range(0, a.shape[1], _CHUNK):
        out += a[:, c0:c0 + _CHUNK].double() @ b[:, c0:c0 + _CHUNK].double().T
    return out


def _pairwise(enc: Encoding, zoo: list[dict], states: list[dict], params=frozenset()):
    """In the encoding's standardised weights, one tensor at a time (float64): squared
    distances [M, N] of ``states`` to the ``zoo`` models over every tensor, and over the
    tensors named in ``params`` the inner products [N, M] with the zoo models and [M] of
    each state with itself (what :func:`span_from_gram` needs)."""
    m, n = len(states), len(zoo)
    d2 = torch.zeros(m, n, dtype=torch.float64)
    gzx = torch.zeros(n, m, dtype=torch.float64)
    gxx = torch.zeros(m, dtype=torch.float64)
    for i, key in enumerate(enc.keys):
        z = torch.stack([st[key].reshape(-1) for st in zoo]).double()
        g = z if states is zoo else torch.stack([st[key].reshape(-1) for st in states]).double()
        d2 += torch.cdist(g, z).pow(2) / float(enc.std[i]) ** 2
        if key in params:
            z = (z - enc.mean[i]) / enc.std[i]
            g = z if states is zoo else (g - enc.mean[i]) / enc.std[i]
            gzx += z @ g.T
            gxx += (g * g).sum(1)
    return d2, gzx, gxx


def _nearest(d2: torch.Tensor, leave_one_out: bool = False) -> torch.Tensor:
    """Distance of each row to its nearest zoo model, from squared distances [M, N]."""
    if leave_one_out:
        d2 = d2.clone().fill_diagonal_(float("inf"))
    return d2.min(1).values.sqrt()


BASELINE_NUMBERS = 200_000_000  # weights of one baseline's models in all (>= 16 models)


def baseline_models(n: int, numbers: int) -> int:
    """Models per baseline for ``n`` generated models of ``numbers`` weights: as many as
    were generated, fewer (at least 16) where they would exceed :data:`BASELINE_NUMBERS`
    (800 noisy timm ResNet-18s took most of an 8-minute audit)."""
    return min(n, max(16, BASELINE_NUMBERS // max(1, numbers)))


def _groups(n: int, numbers: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ``n`` models of ``numbers`` weights, ``GROUP_NUMBERS`` at a time."""
    size = max(1, GROUP_NUMBERS // max(1, numbers))
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def affine_span(zoo: torch.Tensor, points: torch.Tensor | None = None,
                rtol: float = 1e-10) -> dict:
    """Where each point lies relative to the affine span of the zoo's rows.

    ``zoo`` [N, D], ``points`` [M, D] (None: the zoo itself, each row measured against the
    *other* rows, leave-one-out). Per point: ``residual`` = ||x - p|| / ||x - mean||, with
    p its projection on the span and mean the zoo's mean (0: an affine combination of zoo
    models; 1: orthogonal to every direction the zoo spans); ``weights`` [M, N] the
    minimum-norm affine weights of p (sum 1; 0 for a left-out row); ``effective`` =
    1 / sum(w^2) (Kish's effective number: 1 for a zoo model, N for the zoo mean, below
    the number of models it touches, and below 1, when the combination extrapolates
    with negative weights); ``negative`` = sum of |w_i| over w_i < 0 (0 for a convex
    combination). Everything comes from inner products (float64): the zoo's Gram matrix,
    and each point's products with the zoo rows and itself (:func:`span_from_gram`)."""
    gzz = _gram(zoo, zoo)
    if points is None:
        return span_from_gram(gzz, rtol=rtol)
    return span_from_gram(gzz, _gram(zoo, points), (points.double() ** 2).sum(1), rtol)


def span_from_gram(gzz: torch.Tensor, gzx: torch.Tensor | None = None,
                   gxx: torch.Tensor | None = None, rtol: float = 1e-10) -> dict:
    """:func:`affine_span` from inner products: ``gzz`` [N, N] of the zoo rows, ``gzx``
    [N, M] of zoo rows with the points, ``gxx`` [M] of each point with itself (None:
    the zoo itself, leave-one-out)."""
    n = gzz.shape[0]
    rz, c = gzz.mean(1), gzz.mean()
    kz = gzz - rz[:, None] - rz[None, :] + c                  # (z_i - mu) . (z_j - mu)
    loo = gzx is None
    if not loo:
        rx = gzx.mean(0)                                        # x . mu
        kzx = gzx - rz[:, None] - rx[None, :] + c
        kxx = gxx - 2 * rx + c
    res, ws = [], []
    for j in range(n if loo else gzx.shape[1]):
        idx = [i for i in range(n) if not (loo and i == j)]
        if not idx:
            res.append(0.0)
            ws.append(torch.zeros(n, dtype=torch.float64))
            continue
        kj = kz[idx][:, idx]
        row, tot = kj.mean(1), kj.mean()
        gc = kj - row[:, None] - row[None, :] + tot          # centred Gram of the span
        kx = kz[j, idx] if loo else kzx[idx, j]
        ktt = float(kz[j, j] if loo else kxx[j])
        b = kx - kx.mean() - row + tot                        # (z_i - zbar) . (x - zbar)
        nx2 = ktt - 2 * float(kx.mean()) + float(tot)         # ||x - zbar||^2
        a = torch.linalg.pinv(gc, rtol=rtol, hermitian=True) @ b
        r2 = nx2 - 2 * float(a @ b) + float(a @ gc @ a)
        # at the zoo mean (up to rounding) the direction is undefined: residual 0
        tiny = 1e-12 * float(gc.diagonal().mean()) if len(idx) > 1 else 0.0
        res.append(math.sqrt(min(max(r2, 0.0) / nx2, 1.0)) if nx2 > tiny else 0.0)
        w = torch.zeros(n, dtype=torch.float64)
        w[idx] = a + 1.0 / len(idx)
        ws.append(w)
    w = torch.stack(ws) if ws else torch.zeros(0, n, dtype=torch.float64)
    return {"residual": res, "weights": w,
            "effective": (1.0 / w.pow(2).sum(1).clamp_min(1e-300)).tolist(),
            "negative": (-w).clamp_min(0).sum(1).tolist()}


def _span_report(s: dict) -> dict:
    return {"residual": _stats(s["residual"]), "effective_models": _stats(s["effective"]),
            "negative_weight": _stats(s["negative"]),
            "per_model": {"residual": s["residual"], "effective_models": s["effective"]}}


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += float(m.float().mean() * (conf[m].mean() - correct[m].mean()).abs())
    return total


@dataclass
class AuditReport(Result):
    """The audit of generated models against their zoo (``report.json``): accuracy,
    novelty and distances of the generated models and of the zoo (leave-one-out), what a
    sample is (the zoo's affine span), the baselines and their noise curve, ensembles."""
    arch: str
    dataset: str
    samples_dir: str
    zoo_dir: str
    generated: dict
    zoo: dict
    nfe: int | None = None
    network_passes: int | None = None
    seconds_per_model: float | None = None
    baseline_models: int | None = None
    baselines: dict = field(default_factory=dict)
    noise_curve: list = field(default_factory=list)
    ensemble: dict = field(default_factory=dict)


@dataclass
class _Inputs:
    """What one audit reads: the zoo's states and encoding, the data, the samples."""
    samples: Zoo
    entries: list
    zoo_states: list
    arch: str
    data: object
    enc: Encoding
    gen: torch.Generator

    @property
    def numbers(self) -> int:
        return sum(math.prod(sh) for sh in self.enc.shapes)


def audit(samples_dir, zoo_dir, k_ensemble: int = 10, seed: int = 0, data_root=None,
          out_dir=None) -> AuditReport:
    """The audit (see the module docstring) of ``samples_dir`` against ``zoo_dir``. The zoo
    is held in memory; generated and baseline models are read, built and measured a group
    at a time (:data:`GROUP_NUMBERS` weights), so large samples fit."""
    if out_dir is not None:
        check_output(out_dir, "dir")
    if isinstance(k_ensemble, bool) or not isinstance(k_ensemble, int) or k_ensemble < 1:
        raise GenerateError(f"`k_ensemble` must be >= 1, got {k_ensemble!r}")
    sm, s_entries, arch, _ = scan_zoo(samples_dir)        # checks; read again by groups
    zm, z_entries, zoo_states, zarch = load_zoo_states(zoo_dir)
    if arch != zarch:
        raise GenerateError(f"{samples_dir} holds {arch!r} models but {zoo_dir} holds "
                            f"{zarch!r}")
    ds = zm.get("dataset", {})
    data = load_dataset(ds.get("name", ""), data_root or ds.get("data_root"))
    with tempfile.TemporaryDirectory() as tmp:  # the PCA basis lives on disk while here
        zoo = Zoo(zoo_dir)
        enc = Encoding.fit_streaming(arch, [zoo.model_path(e["id"]) for e in z_entries],
                                     pca=True, workdir=tmp)
        inp = _Inputs(Zoo(samples_dir), s_entries, zoo_states, arch, data, enc,
                      torch.Generator().manual_seed(seed))
        report = _audit(inp, k_ensemble)
    gen_info = sm.get("generation", {})
    report = AuditReport(arch=arch, dataset=data.name, samples_dir=str(samples_dir),
                         zoo_dir=str(zoo_dir), nfe=gen_info.get("nfe"),
                         network_passes=gen_info.get("network_passes"),
                         seconds_per_model=gen_info.get("seconds_per_model"), **report)
    if out_dir is not None:
        from .report import write_report
        write_report(report, Path(out_dir))
    return report


def _summarise(p: torch.Tensor, y: torch.Tensor, zoo_wrong: torch.Tensor, loo: bool = False):
    """(accuracy, novelty) per model from probabilities [models, examples, classes]."""
    pred = p.argmax(-1)
    return (pred == y).float().mean(1).tolist(), \
        max_iou(pred != y, zoo_wrong, leave_one_out=loo).tolist()


def _generated(inp: _Inputs, zoo_wrong, pnames, k: int) -> dict:
    """Accuracy, novelty, nearest zoo model and span products of the generated models,
    read a group at a time; ``kept`` their first ``k`` probabilities (the ensemble)."""
    x, y = inp.data["test"]
    out = {"acc": [], "iou": [], "nn": [], "gzx": [], "gxx": [], "kept": []}
    for lo, hi in _groups(len(inp.entries), inp.numbers):
        states = [read_checkpoint(inp.samples.model_path(e["id"]))[0]
                  for e in inp.entries[lo:hi]]
        p = probabilities(inp.arch, states, x)
        acc, iou = _summarise(p, y, zoo_wrong)
        out["acc"] += acc
        out["iou"] += iou
        out["kept"].append(p[:max(0, k - lo)])
        d2, zx, xx = _pairwise(inp.enc, inp.zoo_states, states, pnames)
        out["nn"].append(_nearest(d2))
        out["gzx"].append(zx)
        out["gxx"].append(xx)
    return out


def _baselines(inp: _Inputs, zoo_wrong, n: int) -> tuple[int, dict]:
    """(models per baseline, baselines): noise added to zoo models at each scale of
    :data:`NOISE`, a Gaussian in the PCA code, the zoo mean; BatchNorm recalibrated on
    train data, built and measured a group at a time."""
    x, y = inp.data["test"]
    calibration = inp.data["train"][0][:CALIBRATION_EXAMPLES]
    zoo_states, gen, enc = inp.zoo_states, inp.gen, inp.enc
    nb = baseline_models(n, inp.numbers)
    picks = torch.randint(len(zoo_states), (nb,), generator=gen).tolist()

    def baseline(make, count):
        acc, iou, dist = [], [], []
        for lo, hi in _groups(count, inp.numbers):
            states = [make(i) for i in range(lo, hi)]
            states = recalibrate(inp.arch, states, calibration)
            a, u = _summarise(probabilities(inp.arch, states, x), y, zoo_wrong)
            acc += a
            iou += u
            dist.append(_nearest(_pairwise(enc, zoo_states, states)[0]))  # as made
        return {"acc_mean": statistics.fmean(acc), "max_iou_mean": statistics.fmean(iou),
                "nn_l2_mean": float(torch.cat(dist).mean()), "acc": acc, "max_iou": iou}

    def noisy(scale):
        def make(i):
            return {key: v + scale * v.float().std().nan_to_num() *
                    torch.randn(v.shape, generator=gen) if v.is_floating_point()
                    and v.numel() > 1 else v for key, v in zoo_states[picks[i]].items()}
        return make

    base = {f"noise_{scale}": baseline(noisy(scale), nb) for scale in NOISE}
    codes = enc.zoo_codes.double()
    mu, sd = codes.mean(0), codes.std(0).clamp_min(1e-12)
    base["pca_gaussian"] = baseline(lambda i: enc.decode(
        mu + sd * torch.randn(len(mu), generator=gen, dtype=torch.float64)), nb)
    base["zoo_mean"] = baseline(lambda i: mean_states(zoo_states), 1)
    return nb, base


def _audit(inp: _Inputs, k_ensemble: int) -> dict:
    x, y = inp.data["test"]
    zoo_states = inp.zoo_states
    zp = probabilities(inp.arch, zoo_states, x)
    zoo_wrong = zp.argmax(-1) != y
    zacc, ziou = _summarise(zp, y, zoo_wrong, loo=True)
    # the affine span is measured in the parameters (BN statistics left out: they are
    # recalibrated, not generated); distances in every tensor of the encoding
    pnames = {k for k, _ in build(inp.arch).named_parameters()}
    zd2, gzz, _ = _pairwise(inp.enc, zoo_states, zoo_states, pnames)
    n = len(inp.entries)
    k = min(k_ensemble, n, len(zoo_states))
    g = _generated(inp, zoo_wrong, pnames, k)
    gacc, giou = g["acc"], g["iou"]
    generated = {"n": n, "acc": _stats(gacc), "acc_mean": _stats(gacc)["mean"],
                 "max_iou": _stats(giou), "max_iou_mean": statistics.fmean(giou),
                 "nn_l2": _stats(torch.cat(g["nn"]).tolist()),
                 "acc_values": gacc, "max_iou_values": giou,
                 # what a sample is: distance to the zoo's affine span (parameters only)
                 "span": _span_report(span_from_gram(gzz, torch.cat(g["gzx"], 1),
                                                     torch.cat(g["gxx"])))}
    zoo = {"n": len(zoo_states), "acc": _stats(zacc), "acc_mean": _stats(zacc)["mean"],
           "max_iou_loo": _stats(ziou), "max_iou_loo_mean": statistics.fmean(ziou),
           "nn_l2_loo": _stats(_nearest(zd2, leave_one_out=True).tolist()),
           "acc_values": zacc, "max_iou_loo_values": ziou,
           "span_loo": _span_report(span_from_gram(gzz))}
    nb, base = _baselines(inp, zoo_wrong, n)
    curve = noise_curve(base)
    generated["noise_margin"] = curve_margin(curve, giou, gacc)
    zoo["noise_margin_loo"] = curve_margin(curve, ziou, zacc)
    ge, ze = torch.cat(g["kept"])[:k].mean(0), zp[:k].mean(0)
    return {"generated": generated, "zoo": zoo, "baseline_models": nb, "baselines": base,
            "noise_curve": [{"max_iou": u, "acc": a} for u, a in curve],
            "ensemble": {"k": k, "generated_acc": float((ge.argmax(1) == y).float().mean()),
                         "generated_ece": ece(ge, y),
                         "zoo_acc": float((ze.argmax(1) == y).float().mean()),
                         "zoo_ece": ece(ze, y)},
            }
