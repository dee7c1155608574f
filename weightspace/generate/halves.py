"""The validation split in two fixed halves: the generator's default condition is measured
on one, the sampling settings are chosen on the other.

A generator conditioned on validation accuracy and guided towards the zoo's best value is
steered towards whatever made the best zoo models right on *those* examples; a choice of
sampling settings scored on the same examples rewards that steering, so the chosen
setting's validation accuracy overstates its test accuracy. Conditioning on one half
(:data:`HALF_CONDITION`) and choosing on the other keeps the choice's measurement honest,
at the price of fewer examples to choose on (the accuracy bound of
:func:`~.choose.accuracy_bound` widens accordingly).
"""
from __future__ import annotations

import torch

from .config import GenerateError, default_condition

HALF_CONDITION = "val_acc_half"  # validation accuracy on the half the choice does not use
HALF_SEED = 0  # seed of the fixed split of the validation examples into the two halves


def val_halves(n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition half, choice half): sorted indices of the ``n_val`` validation examples,
    a fixed seeded split (the same for every zoo on the same dataset); the choice half gets
    the odd one out."""
    order = torch.randperm(n_val, generator=torch.Generator().manual_seed(HALF_SEED))
    half = n_val // 2
    return order[:half].sort().values, order[half:].sort().values


def half_condition_values(zoo_err: torch.Tensor | None, where: str = "") -> torch.Tensor:
    """Each zoo model's accuracy on the condition half, from its validation errors
    ``zoo_err`` [N, n_val] (bool)."""
    if zoo_err is None or zoo_err.dim() != 2 or zoo_err.shape[1] < 2:
        raise GenerateError(f"{where}cannot condition on {HALF_CONDITION!r}: the zoo's "
                            f"validation split cannot be loaded here (or has < 2 examples)")
    cond, _ = val_halves(zoo_err.shape[1])
    return 1.0 - zoo_err[:, cond].double().mean(1)


def default_half_condition(entries: list[dict], zoo_err: torch.Tensor | None
                           ) -> tuple[str | None, str]:
    """The condition a fit takes by default: :data:`HALF_CONDITION` when the zoo's
    validation errors are known and it differs between models; else
    :func:`~.config.default_condition` (``val_acc`` over the whole split)."""
    if zoo_err is not None and zoo_err.dim() == 2 and zoo_err.shape[1] >= 2:
        if len(set(half_condition_values(zoo_err).tolist())) >= 2:
            return HALF_CONDITION, ("validation accuracy on half of the validation split; "
                                    "the sampling choice is made on the other half")
    return default_condition(entries)


def choice_examples(condition: str | None, n_val: int) -> tuple[torch.Tensor | None, str]:
    """(indices or None for all, why): the validation examples the sampling choice is made
    on for a generator conditioned on ``condition``."""
    if condition == HALF_CONDITION:
        return val_halves(n_val)[1], (f"the {n_val - n_val // 2} validation examples the "
                                      f"condition ({HALF_CONDITION}) did not see")
    if condition is not None and condition.startswith("val"):
        return None, (f"every validation example; the condition ({condition}) saw them too, "
                      f"so the choice may be optimistic (condition on {HALF_CONDITION} to "
                      f"avoid it)")
    return None, "every validation example"


__all__ = ["HALF_CONDITION", "choice_examples", "default_half_condition",
           "half_condition_values", "val_halves"]
