"""``dare_ties`` — DARE with TIES's sign election: random drop (seeded) and rescale, then sum
the entries that agree. mergekit's defaults: ``normalize=False``, ``rescale=True``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("DARE with TIES's sign election: random drop (seeded) and rescale, then sum the "
           "entries that agree")
dare_ties = register_gta("dare_ties", SUMMARY, consensus=True, sparsification="random",
                         normalize=False, rescale=True)
