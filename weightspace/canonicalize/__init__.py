"""Canonicalization: remove the permutation symmetry between models (pairs and zoos).

>>> perms, report = align(spec, A, B, method="wm")      # B's groups -> A's basin
>>> B_aligned = apply(spec, perms, B)                    # same function as B
"""
from .files import align_checkpoints
from .matching import MatchReport, WeightMatcher, families, l2_distance, lap, weight_matching
from .methods import (METHODS, AlignError, activation_matching, align, residual_families,
                      ste_matching, transfusion_matching)
from .restarts import align_with_restarts
from .zoo import canonicalize_zoo, restore

__all__ = ["METHODS", "AlignError", "MatchReport", "WeightMatcher", "activation_matching",
           "align", "align_checkpoints", "align_with_restarts", "canonicalize_zoo",
           "families", "l2_distance", "lap", "residual_families", "restore", "ste_matching",
           "transfusion_matching", "weight_matching"]
