"""The task-vector merge methods, listed explicitly (one file each, mergekit's names). To
add one: write a file that registers it with :func:`~.base.register_tv_method` and import
it here."""
from __future__ import annotations

from . import linear, task_arithmetic, ties, dare_linear, dare_ties  # noqa: I001 (order shown)
from . import breadcrumbs, breadcrumbs_ties, della, della_linear, model_stock, slerp
from .base import get_tv_method, list_tv_methods

MODULES = (linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
           breadcrumbs_ties, della, della_linear, model_stock, slerp)
TASK_VECTOR_METHODS = tuple(list_tv_methods())
METHODS = TASK_VECTOR_METHODS  # the name this module first used

__all__ = ["METHODS", "MODULES", "TASK_VECTOR_METHODS", "get_tv_method"]
