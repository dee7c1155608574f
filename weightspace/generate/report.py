"""The audit's files: ``report.json`` (the :class:`~.audit.AuditReport`), ``report.md`` (the
tables a person reads) and ``acc_vs_novelty.png`` (accuracy against novelty, with the
baselines and their noise curve)."""
from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..errors import make_dir


def write_report(r, out: Path) -> None:
    """``report.json``, ``report.md`` and the accuracy-vs-novelty plot in ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    make_dir(out)
    atomic_write_text(out / "report.json", json.dumps(r.to_json(), indent=1) + "\n")
    g, z = r.generated, r.zoo
    gacc, giou = g["acc_values"], g["max_iou_values"]
    zacc, ziou = z["acc_values"], z["max_iou_loo_values"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(ziou, zacc, s=12, label="zoo (leave-one-out)", alpha=0.7)
    ax.scatter(giou, gacc, s=12, label="generated", alpha=0.7)
    for name, b in r["baselines"].items():
        ax.scatter(b["max_iou"], b["acc"], s=10, marker="x", label=name, alpha=0.6)
    ax.plot([c["max_iou"] for c in r["noise_curve"]],
            [c["acc"] for c in r["noise_curve"]], "k--", lw=1, label="noise curve (isotonic)")
    ax.set(xlabel="novelty: max IoU of test errors with a zoo model (lower = newer)",
           ylabel="test accuracy", title=f"{r['arch']} on {r['dataset']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "acc_vs_novelty.png", dpi=120)
    plt.close(fig)
    lines = [f"# Generated vs zoo: {r['arch']} on {r['dataset']}", "",
             "| | n | test acc mean | std | min | max | novelty (max IoU) | NN L2 |",
             "|---|---|---|---|---|---|---|---|",
             f"| zoo (leave-one-out) | {z['n']} | {z['acc']['mean']:.4f} | {z['acc']['std']:.4f}"
             f" | {z['acc']['min']:.4f} | {z['acc']['max']:.4f} | {z['max_iou_loo_mean']:.3f} | "
             f"{z['nn_l2_loo']['mean']:.3f} |",
             f"| generated | {g['n']} | {g['acc']['mean']:.4f} | {g['acc']['std']:.4f} | "
             f"{g['acc']['min']:.4f} | {g['acc']['max']:.4f} | {g['max_iou_mean']:.3f} | "
             f"{g['nn_l2']['mean']:.3f} |"]
    for name, b in r["baselines"].items():
        lines.append(f"| {name} | {len(b['acc'])} | {b['acc_mean']:.4f} | | | | "
                     f"{b['max_iou_mean']:.3f} | {b['nn_l2_mean']:.3f} |")
    gm, zm = g["noise_margin"], z["noise_margin_loo"]
    lines += ["", f"Against the noise curve (accuracy above it at equal novelty): generated "
              f"{100 * gm['at_mean']:+.2f} points at the mean (per model "
              f"{100 * gm['mean']:+.2f} on average, {100 * gm['above']:.0f}% of models above "
              f"it); the zoo itself (leave-one-out) {100 * zm['at_mean']:+.2f} at the mean, "
              f"{100 * zm['mean']:+.2f} per model, {100 * zm['above']:.0f}% above."]
    if "span" in g and "span_loo" in z:
        lines += ["", "What a sample is (standardised parameters): distance to the zoo's affine "
                  "span relative to the distance to the zoo mean (0 = an affine combination of "
                  "zoo models), and the effective number of zoo models the projection mixes "
                  "(1/sum w^2 of its affine weights; 1 = one zoo model, "
                  f"{z['n']} = the zoo mean; negative weights = extrapolation).", "",
                  "| | residual to span mean | median | effective zoo models mean | median "
                  "| negative weight mass mean |", "|---|---|---|---|---|---|"]
        for name, sp in (("zoo (leave-one-out)", z["span_loo"]), ("generated", g["span"])):
            lines.append(f"| {name} | {sp['residual']['mean']:.3f} | "
                         f"{sp['residual']['median']:.3f} | "
                         f"{sp['effective_models']['mean']:.2f} | "
                         f"{sp['effective_models']['median']:.2f} | "
                         f"{sp['negative_weight']['mean']:.3f} |")
    e = r["ensemble"]
    lines += ["", f"Ensemble of {e['k']}: generated acc {e['generated_acc']:.4f} "
              f"(ECE {e['generated_ece']:.4f}), zoo acc {e['zoo_acc']:.4f} "
              f"(ECE {e['zoo_ece']:.4f}).",
              f"Sampling: {r['nfe']} function evaluations ({r['network_passes']} passes of "
              f"the velocity network; guidance runs two per evaluation), "
              f"{(r['seconds_per_model'] or 0) * 1e3:.2f} ms per model.", "",
              "![accuracy vs novelty](acc_vs_novelty.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
