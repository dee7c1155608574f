"""``della`` — DELLA (Deep et al.): drop task-vector entries at random with probabilities by
magnitude rank (density +/- epsilon, seeded), rescale, elect a sign, average the agreeing
ones. mergekit's defaults: ``normalize=True``, ``rescale=True``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("DELLA (Deep et al.): drop task-vector entries at random with probabilities by "
           "magnitude rank (density +/- epsilon, seeded), rescale, elect a sign, average "
           "the agreeing ones")
della = register_gta("della", SUMMARY, consensus=True, sparsification="della_magprune",
                     normalize=True, rescale=True)
