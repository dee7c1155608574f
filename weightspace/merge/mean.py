"""``mean`` — the plain average, for models already in one basin (e.g. a canonical zoo)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_merge_method

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    from ..symmetry.structure import Spec


@register_merge_method("mean", "plain average (for models already in one basin)")
def mean(spec: Spec, model, states: list[dict], data, seed: int, report: dict) -> list[dict]:
    from ..symmetry.structure import identity_perms
    return [identity_perms(spec) for _ in states]
