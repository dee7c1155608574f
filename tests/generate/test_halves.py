"""The validation halves: the default condition is measured on one, the sampling choice
on the other, so the choice never scores the examples the generator was steered by."""
import torch

from weightspace.generate.fit import condition_values
from weightspace.generate.halves import (HALF_CONDITION, choice_examples,
                                         default_half_condition, half_condition_values,
                                         val_halves)

import pytest

from weightspace.generate.config import GenerateError


@pytest.mark.parametrize("n", [2, 3, 216, 1001])
def test_halves_are_a_fixed_disjoint_cover(n):
    a, b = val_halves(n)
    assert torch.equal(torch.cat([a, b]).sort().values, torch.arange(n))
    assert len(a) == n // 2 and len(b) == n - n // 2
    assert all(torch.equal(x, y) for x, y in zip((a, b), val_halves(n)))  # same every time


def test_the_condition_sees_only_its_half_and_the_choice_only_the_other():
    g = torch.Generator().manual_seed(1)
    err = torch.rand(8, 216, generator=g) < 0.1
    cond, choice = val_halves(216)
    values = half_condition_values(err)
    assert torch.allclose(values, 1 - err[:, cond].double().mean(1))
    flipped = err.clone()
    flipped[:, choice] = ~flipped[:, choice]  # what the choice scores does not move it
    assert torch.equal(half_condition_values(flipped), values)
    assert torch.equal(condition_values([], HALF_CONDITION, "", err), values)
    idx, why = choice_examples(HALF_CONDITION, 216)
    assert torch.equal(idx, choice) and "did not see" in why


def test_default_condition_falls_back_and_other_conditions_say_they_saw_every_example():
    entries = [{"metrics": {"val_acc": 0.5}}, {"metrics": {"val_acc": 0.6}}]
    err = torch.zeros(2, 10, dtype=torch.bool)
    err[0, val_halves(10)[0][0]] = True
    assert default_half_condition(entries, err)[0] == HALF_CONDITION
    # no errors to measure (dataset not here) or the same on the half: the whole split
    assert default_half_condition(entries, None)[0] == "val_acc"
    assert default_half_condition(entries, torch.zeros(2, 10, dtype=torch.bool))[0] == \
        "val_acc"
    idx, why = choice_examples("val_acc", 10)
    assert idx is None and "optimistic" in why
    assert choice_examples(None, 10)[0] is None
    assert choice_examples("weight_decay", 10) == (None, "every validation example")
    with pytest.raises(GenerateError, match="val_acc_half"):
        half_condition_values(None, "zoo: ")
