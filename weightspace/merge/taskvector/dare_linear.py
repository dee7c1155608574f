"""``dare_linear`` — DARE (Yu et al.): drop task-vector entries at random (seeded), rescale to
the L1 norm, sum. mergekit's defaults: ``normalize=False``, ``rescale=True``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("DARE (Yu et al.): drop task-vector entries at random (seeded), rescale to the L1 "
           "norm, sum")
dare_linear = register_gta("dare_linear", SUMMARY, consensus=False, sparsification="random",
                           normalize=False, rescale=True)
