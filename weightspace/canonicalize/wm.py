"""``wm`` — weight matching (Ainsworth et al. 2022, Git Re-Basin): coordinate descent over
permutation groups in random order, each step one linear assignment problem maximising
``<A, P(B)>`` (the core lives in :mod:`.matching`)."""
from __future__ import annotations

from ..symmetry.structure import Perms, Spec
from .matching import MatchReport, weight_matching
from .registry import Option, register_align_method

MAX_ITER = Option("max_iter", int, 100, "weight-matching sweeps (wm, am, transfusion)")


@register_align_method("wm", "weight matching: maximise <A, P(B)> group by group (default)",
                       options=(MAX_ITER,), warm_start=True)
def wm(spec: Spec, A: dict, B: dict, seed: int = 0, max_iter: int = 100,
       init: Perms | None = None) -> tuple[Perms, MatchReport]:
    return weight_matching(spec, A, B, max_iter=max_iter, seed=seed, init=init)
