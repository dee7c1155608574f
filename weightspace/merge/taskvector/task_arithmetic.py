"""``task_arithmetic`` — Task arithmetic (Ilharco et al.): the base plus lambda times the
weighted sum of the task vectors. mergekit's defaults: ``normalize=False``,
``rescale=False``."""
from __future__ import annotations

from .gta import register_gta

SUMMARY = ("Task arithmetic (Ilharco et al.): the base plus lambda times the weighted sum of "
           "the task vectors")
task_arithmetic = register_gta("task_arithmetic", SUMMARY, consensus=False, sparsification=None,
                               normalize=False, rescale=False)
