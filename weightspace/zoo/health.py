"""Zoo health: a model that trained to the end but ends near chance accuracy has *failed*.

A recipe that does not learn (too high a learning rate, a normalisation that stalls) still
writes finite weights; without this check such models would count as ``done`` and feed
canonicalization and generation as if they were trained networks. A model is recorded as
``failed`` (its checkpoint kept, for inspection) when its held-out accuracy is at most
:func:`chance_threshold`: chance plus :data:`FAILED_MARGIN` of the way from chance to a
perfect score. Plain Python (no torch): the CLI reads it.
"""
from __future__ import annotations

FAILED_MARGIN = 0.1  # of the distance from chance (1 / classes) to 1; 10 classes: 0.19


def chance_threshold(num_classes: int, margin: float = FAILED_MARGIN) -> float:
    """The accuracy at or below which a model of ``num_classes`` outputs has failed."""
    chance = 1.0 / max(int(num_classes), 1)
    return chance + margin * (1.0 - chance)


def health_metric(metrics: dict) -> str | None:
    """Which accuracy decides: validation (held out) where measured, else train."""
    return next((k for k in ("val_acc", "train_acc") if metrics.get(k) is not None), None)


def trained_status(metrics: dict, num_classes: int | None) -> str:
    """``done``, or ``failed`` when the model ends near chance accuracy (unknown classes or
    no accuracy measured: ``done``, nothing to judge by)."""
    key = health_metric(metrics)
    if key is None or not num_classes:
        return "done"
    return "failed" if metrics[key] <= chance_threshold(num_classes) else "done"


def failed_line(failed: int, total: int, num_classes: int | None) -> str | None:
    """The one line a command prints about failed models (None when there are none)."""
    if not failed:
        return None
    at = f" (<= {chance_threshold(num_classes):.2f} for {num_classes} classes)" \
        if num_classes else ""
    return (f"{failed} of {total} model(s) ended near chance accuracy{at} and are recorded "
            f"as failed, not done: the recipe did not train them (try a lower lr or another "
            f"optimizer); canonicalize and generate leave them out")
