"""``ties`` — TIES (Yadav et al.): keep each task vector's largest entries, elect a sign per
entry, average the entries that agree with it. mergekit's defaults: ``normalize=True``,
``rescale=False``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("TIES (Yadav et al.): keep each task vector's largest entries, elect a sign per "
           "entry, average the entries that agree with it")
ties = register_gta("ties", SUMMARY, consensus=True, sparsification="magnitude",
                    normalize=True, rescale=False)
