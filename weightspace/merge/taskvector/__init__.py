"""Task-vector merges of fine-tunes of one base, with mergekit's methods, parameters and
recipes, one tensor at a time (no model built).

Exports are imported on first use (:mod:`weightspace._lazy`)."""
from ..._lazy import lazy_package

lazy_package(__name__, {
    **dict.fromkeys(["Param", "TaskVectorError", "get_tv_method", "list_tv_methods",
                     "register_tv_method"], "base"),
    **dict.fromkeys(["Recipe", "recipe_dict"], "recipe"),
    **dict.fromkeys(["StateSource", "merge_sources", "merge_states", "merge_tensor"],
                    "stream"),
    **dict.fromkeys(["merge_recipe"], "files"),
})
