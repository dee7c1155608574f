"""``mergemany`` — Ainsworth et al.'s MergeMany: match every model to the mean of the others
until the summed distance to the barycenter stops improving, then average."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import register_merge_method

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    from ..symmetry.structure import Spec


def mergemany_perms(spec: Spec, states: list[dict], seed: int = 0, max_rounds: int = 20,
                    tol: float = 1e-4):
    """Permutations that put every model into one basin, and the RMS-distance history."""
    from ..canonicalize.zoo import barycenter_perms
    perms, _, history = barycenter_perms(spec, states, "wm", seed, max_rounds, tol)
    return [perms[i] for i in range(len(states))], history


@register_merge_method("mergemany", "MergeMany: every model matched to the mean of the others")
def mergemany(spec: Spec, model, states: list[dict], data, seed: int, report: dict
              ) -> list[dict]:
    if len(states) == 1:
        from ..symmetry.structure import identity_perms
        return [identity_perms(spec)]
    perms, report["mergemany_rms_history"] = mergemany_perms(spec, states, seed=seed)
    return perms
