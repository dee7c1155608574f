"""``della_linear`` — DELLA without sign election: magnitude-ranked random drop (seeded),
rescale, weighted sum. mergekit's defaults: ``normalize=False``, ``rescale=True``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("DELLA without sign election: magnitude-ranked random drop (seeded), rescale, "
           "weighted sum")
della_linear = register_gta("della_linear", SUMMARY, consensus=False,
                            sparsification="della_magprune", normalize=False, rescale=True)
