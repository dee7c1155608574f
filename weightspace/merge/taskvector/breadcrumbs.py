"""``breadcrumbs`` — Model Breadcrumbs (Davari and Belilovsky): drop each task vector's largest
gamma and its smallest entries, sum. mergekit's defaults: ``normalize=False``,
``rescale=False``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("Model Breadcrumbs (Davari and Belilovsky): drop each task vector's largest gamma "
           "and its smallest entries, sum")
breadcrumbs = register_gta(
    "breadcrumbs", SUMMARY, consensus=False, sparsification="magnitude_outliers",
    normalize=False, rescale=False)
