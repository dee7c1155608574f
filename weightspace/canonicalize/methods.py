"""The alignment methods, listed explicitly (one file each), and ``align`` which runs one.

``wm`` weight matching, ``am`` activation matching, ``ste`` the straight-through estimator,
``transfusion`` head-aware attention matching. To add a method: write a file that
registers it with :func:`~.registry.register_align_method` and import it here.
"""
from __future__ import annotations

from . import am, ste, transfusion, wm
from .am import activation_matching
from .registry import (AlignError, AlignMethod, Option, align, get_align_method,
                       list_align_methods)
from .ste import ste_matching
from .transfusion import residual_families, transfusion_matching

# the method files, in the order their names are listed (the first is the default)
MODULES = (wm, am, ste, transfusion)
ALIGN_METHODS = tuple(n for mod in MODULES for n in list_align_methods()
                      if get_align_method(n).fn.__module__ == mod.__name__)
METHODS = ALIGN_METHODS  # the old name
WEIGHT_SPACE_METHODS = tuple(m for m in ALIGN_METHODS if get_align_method(m).weight_space)

__all__ = ["ALIGN_METHODS", "METHODS", "WEIGHT_SPACE_METHODS", "AlignError", "AlignMethod", "Option", "align",
           "activation_matching", "get_align_method", "list_align_methods",
           "residual_families", "ste_matching", "transfusion_matching"]
