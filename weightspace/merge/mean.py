"""``mean`` — the plain average, for models already in one basin (e.g. a canonical zoo)."""
from __future__ import annotations

from ..symmetry.structure import Spec, identity_perms
from .registry import register_merge_method


@register_merge_method("mean", "plain average (for models already in one basin)")
def mean(spec: Spec, model, states: list[dict], data, seed: int, report: dict) -> list[dict]:
    return [identity_perms(spec) for _ in states]
