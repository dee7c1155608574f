"""Activation matching and STE to the zoo's barycenter: a fixed point of "align every model
to the (BN-recalibrated) mean of the aligned zoo", exactly invertible."""
from pathlib import Path

import pytest
import torch

from weightspace.arch import build
from weightspace.canonicalize import canonicalize_zoo
from weightspace.canonicalize.zoo import restore
from weightspace.checkpoint import read_checkpoint
from weightspace.functional import loss_acc
from weightspace.zoo import HParams, Zoo, train_zoo

ARCH = "mlp:64-24-24-10"


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    d = tmp_path_factory.mktemp("bzoo") / "z"
    train_zoo(d, ARCH, "digits", HParams(epochs=4, batch_size=64), models=4, batched=True,
              progress=False)
    return d


@pytest.mark.parametrize("method,kw", [("am", {}), ("ste", {"steps": 6, "eval_every": 3})])
def test_data_method_to_the_barycenter_is_invertible(small_zoo, tmp_path, method, kw, digits):
    rep = canonicalize_zoo(small_zoo, tmp_path / "c", method, "barycenter", progress=False,
                           max_rounds=6, **kw)
    assert rep["reference"] == "barycenter" and 1 <= rep["rounds"] <= 6
    assert rep["l2_to_barycenter_after"] < rep["l2_to_barycenter_before"]
    m = Zoo(tmp_path / "c").read()
    assert m["canonicalization"]["method"] == method
    net = build(ARCH)
    for e in m["models"]:
        orig, _, _ = read_checkpoint(Path(small_zoo) / e["file"])
        back = restore(tmp_path / "c", e["id"])
        assert all(torch.equal(back[k], orig[k]) for k in orig)  # bitwise
        canon, _, _ = read_checkpoint(tmp_path / "c" / e["file"])
        assert loss_acc(net, *digits["test"], state=canon)[1] == \
            pytest.approx(e["metrics"]["test_acc"])


def test_am_barycenter_stops_at_a_fixed_point(small_zoo, tmp_path):
    """Given enough rounds, am reaches permutations that the next round leaves unchanged."""
    rep = canonicalize_zoo(small_zoo, tmp_path / "c", "am", "barycenter", progress=False,
                           max_rounds=20)
    assert rep["rounds"] < 20 and len(rep["history"]) == rep["rounds"]
