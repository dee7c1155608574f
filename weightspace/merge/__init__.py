"""Linear mode connectivity and merging: barriers, BN reset / REPAIR, diagnostics, merges.

Exports are imported on first use (:mod:`weightspace._lazy`)."""
from .._lazy import lazy_package

lazy_package(__name__, {
    "feature_stats": "lmc",
    **dict.fromkeys(["barrier_matrix", "lmc_checkpoints", "merge_checkpoints"], "files"),
    "LMCError": "registry",
    **dict.fromkeys(["BN_MODES", "MergeError", "barrier", "curve", "diagnostics", "heatmap",
                     "lmc", "plot", "singular_alignment"], "lmc"),
    **dict.fromkeys(["MERGE_METHODS", "METHODS", "POST", "merge", "mergemany_perms", "ste_perms"], "merging"),
    **dict.fromkeys(["repair", "repairable", "bn_only"], "repair"),
    **dict.fromkeys(["CORRECTIONS", "MIX_TARGET", "MixError", "MixabilityReport", "mix",
                     "mixability"], "mixing"),
    **dict.fromkeys(["choose_canonicalization", "probe_zoo"], "probe"),
    **dict.fromkeys(["Recipe", "merge_recipe"], "taskvector"),
})
