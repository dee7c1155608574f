"""``breadcrumbs_ties`` — Model Breadcrumbs with TIES's sign election. mergekit's defaults:
``normalize=False``, ``rescale=False``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = "Model Breadcrumbs with TIES's sign election"
breadcrumbs_ties = register_gta(
    "breadcrumbs_ties", SUMMARY, consensus=True, sparsification="magnitude_outliers",
    normalize=False, rescale=False)
