"""Linear mode connectivity and merging: barriers, BN reset / REPAIR, diagnostics, merges."""
from ..features import feature_stats
from .files import barrier_matrix, lmc_checkpoints, merge_checkpoints
from .lmc import (BN_MODES, LMCError, barrier, curve, diagnostics, heatmap, lmc, plot,
                  singular_alignment)
from .merging import METHODS, POST, merge, mergemany_perms, ste_perms
from .repair import repair, repairable

__all__ = ["BN_MODES", "LMCError", "METHODS", "POST", "barrier", "barrier_matrix", "curve",
           "diagnostics", "lmc_checkpoints", "merge_checkpoints",
           "feature_stats", "heatmap", "lmc", "merge", "mergemany_perms", "plot", "repair",
           "repairable", "singular_alignment", "ste_perms"]
