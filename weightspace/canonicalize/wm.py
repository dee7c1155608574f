"""``wm`` — weight matching (Ainsworth et al. 2022, Git Re-Basin): coordinate descent over
permutation groups in random order, each step one linear assignment problem maximising
``<A, P(B)>`` (the core lives in :mod:`.matching`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import Option, register_align_method

if TYPE_CHECKING:  # method files import torch only when they run (see registry.py)
    from ..symmetry.structure import Perms, Spec
    from .matching import MatchReport

MAX_ITER = Option("max_iter", int, 100, "weight-matching sweeps (wm, am, transfusion)")


@register_align_method("wm", "weight matching: maximise <A, P(B)> group by group (default)",
                       options=(MAX_ITER,), warm_start=True)
def wm(spec: Spec, A: dict, B: dict, seed: int = 0, max_iter: int = 100,
       init: Perms | None = None) -> tuple[Perms, MatchReport]:
    from .matching import weight_matching
    return weight_matching(spec, A, B, max_iter=max_iter, seed=seed, init=init)
