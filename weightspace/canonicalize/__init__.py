"""Canonicalization: remove the permutation symmetry between models (pairs and zoos).

>>> perms, report = align(spec, A, B, method="wm")      # B's groups -> A's basin
>>> B_aligned = apply(spec, perms, B)                    # same function as B

Exports are imported on first use (:mod:`weightspace._lazy`): the registry of methods
answers without importing torch.
"""
from .._lazy import lazy_package

lazy_package(__name__, {
    "align_checkpoints": "files",
    **dict.fromkeys(["MatchReport", "WeightMatcher", "families", "l2_distance", "lap",
                     "weight_matching"], "matching"),
    **dict.fromkeys(["ALIGN_METHODS", "METHODS", "AlignError", "activation_matching", "align",
                     "residual_families", "ste_matching", "transfusion_matching"], "methods"),
    "align_with_restarts": "restarts",
    **dict.fromkeys(["canonical_states", "canonicalize_zoo", "data_barycenter_perms",
                     "restore"], "zoo"),
})
