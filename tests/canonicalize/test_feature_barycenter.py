"""Activation matching to the zoo's feature barycenter: planted permutations are undone,
the result keeps every model's function, and it does not depend on the number of
processes."""
import threading
from dataclasses import dataclass, field

import pytest
import torch

from weightspace.arch import build
from weightspace.canonicalize.feature_barycenter import feature_barycenter_perms
from weightspace.functional import loss_acc
from weightspace.parallel import Shard
from weightspace.symmetry import apply, random_perms, symmetry_of
from weightspace.zoo import HParams, train_batched

ARCH = "mlp:64-24-24-10"


@pytest.fixture(scope="module")
def zoo(digits):
    return train_batched(ARCH, [0, 1, 2, 3], HParams(epochs=3, batch_size=64),
                         *digits["train"])


def test_planted_permutations_of_one_model_are_undone(zoo, digits):
    """Copies of one model under random permutations all come back to one state."""
    model, spec = build(ARCH), symmetry_of(ARCH)
    copies = [zoo[0]] + [apply(spec, random_perms(spec, k), zoo[0]) for k in (1, 2, 3)]
    perms, rounds, _ = feature_barycenter_perms(spec, model, copies, digits, max_rounds=5)
    aligned = [apply(spec, perms[i], s) for i, s in enumerate(copies)]
    assert rounds <= 2  # round 2 finds round 1's answer: a fixed point
    for a in aligned[1:]:
        assert all(torch.allclose(a[k], aligned[0][k]) for k in a)


def test_aligned_models_keep_their_function_and_get_closer(zoo, digits):
    model, spec = build(ARCH), symmetry_of(ARCH)
    perms, rounds, history = feature_barycenter_perms(spec, model, zoo, digits, max_rounds=8)
    assert 1 <= rounds <= 8 and len(history) == rounds
    x, y = digits["test"]
    for i, s in enumerate(zoo):
        a = apply(spec, perms[i], s)
        assert torch.allclose(model_out(model, a, x), model_out(model, s, x), atol=1e-5)
    mean = {k: torch.stack([s[k] for s in zoo]).mean(0) for k in zoo[0]}
    aligned = [apply(spec, perms[i], s) for i, s in enumerate(zoo)]
    amean = {k: torch.stack([s[k] for s in aligned]).mean(0) for k in zoo[0]}
    assert loss_acc(model, x, y, state=amean)[1] > loss_acc(model, x, y, state=mean)[1]


def model_out(model, state, x):
    from torch.func import functional_call
    with torch.no_grad():
        return functional_call(model, state, (x,))


@dataclass
class _Hall:
    """What two threads posing as processes hand each other in ``gather``."""
    count: int
    barrier: threading.Barrier = None
    boxes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.barrier = threading.Barrier(self.count)


@dataclass(frozen=True)
class _ThreadShard(Shard):
    hall: _Hall = None

    def gather(self, obj) -> list:
        self.hall.boxes[self.index] = obj
        self.hall.barrier.wait()
        out = [self.hall.boxes[i] for i in range(self.count)]
        self.hall.barrier.wait()
        return out


def test_two_processes_give_the_one_process_answer(zoo, digits):
    model, spec = build(ARCH), symmetry_of(ARCH)
    one = feature_barycenter_perms(spec, model, zoo, digits, max_rounds=4)
    hall, results = _Hall(2), {}

    def run(index):
        results[index] = feature_barycenter_perms(
            spec, build(ARCH), zoo, digits, max_rounds=4,
            shard=_ThreadShard(index, 2, hall))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in results.values():
        assert r[1] == one[1]
        assert all(torch.equal(r[0][i][g], one[0][i][g]) for i in one[0] for g in one[0][i])
