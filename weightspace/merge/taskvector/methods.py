"""The task-vector merge methods, listed explicitly (one file each, mergekit's names). To
add one: write a file that registers it with :func:`~.base.register_tv_method` and import
it here."""
from __future__ import annotations

from . import linear, task_arithmetic, ties, dare_linear, dare_ties  # noqa: I001 (order shown)
from . import breadcrumbs, breadcrumbs_ties, della, della_linear, model_stock, slerp
from .base import get_tv_method, list_tv_methods

MODULES = (linear, task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
           breadcrumbs_ties, della, della_linear, model_stock, slerp)
METHODS = tuple(list_tv_methods())

__all__ = ["METHODS", "MODULES", "get_tv_method"]
