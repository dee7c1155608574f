"""Every registered method, end to end through the CLI, on a tiny trained model.

The tests iterate the registries (timm-style): a method added in its own file is covered
here without a new test. Properties that hold for any correct method: aligning a permuted
copy of A to A keeps B's function and never moves it away from A; merging copies of one
model gives that model's function.
"""
import json
import subprocess
import sys

import pytest
import torch

from weightspace.arch import build
from weightspace.canonicalize.methods import get_align_method, list_align_methods
from weightspace.checkpoint import load_model, save_checkpoint
from weightspace.cli.main import main
from weightspace.merge.registry import get_merge_method, list_merge_methods
from weightspace.symmetry import apply, random_perms
from weightspace.symmetry import spec as discover
from weightspace.symmetry.rules import OP_RULES, list_op_rules
from weightspace.zoo import HParams, load_dataset, train_batched

ARCH = "mlp:64-32-32-10"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("registries")
    x, y = load_dataset("digits")["train"]
    (A,) = train_batched(ARCH, [0], HParams(epochs=3), x, y)
    spec = discover(ARCH)
    B = apply(spec, random_perms(spec, seed=3), A)
    for name, state in (("a", A), ("b", B)):
        save_checkpoint(root / f"{name}.safetensors", state, ARCH, {"dataset": "digits"})
    return root, A, B


def _outputs(state, x):
    return torch.func.functional_call(build(ARCH).eval(), state, (x,))


@pytest.mark.parametrize("method", list_align_methods())
def test_every_alignment_method_end_to_end(pair, capsys, method):
    root, A, B = pair
    out = root / f"aligned-{method}.safetensors"
    args = ["align", str(root / "a.safetensors"), str(root / "b.safetensors"), "--method",
            method, "--out", str(out), "--json"]
    if any(o.name == "steps" for o in get_align_method(method).options):
        args += ["--steps", "10"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == method and rep["l2_after"] <= rep["l2_before"] + 1e-6
    if method != "ste":  # ste may keep another basin if it is better on validation
        assert rep["l2_after"] < 1e-4 * rep["l2_before"]  # the planted copy is found
    x = load_dataset("digits")["test"][0][:64]
    aligned = load_model(out).state_dict()
    assert torch.allclose(_outputs(aligned, x), _outputs(B, x), atol=1e-5)


@pytest.mark.parametrize("method", list_merge_methods())
def test_every_merge_method_end_to_end(pair, capsys, method):
    root, A, _ = pair
    out = root / f"merged-{method}.safetensors"
    args = ["merge", *[str(root / "a.safetensors")] * 3, "--method", method, "--out",
            str(out), "--json"]
    if any(o.name == "steps" for o in get_merge_method(method).options):
        args += ["--steps", "5"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == method
    x = load_dataset("digits")["test"][0][:64]
    assert torch.allclose(_outputs(load_model(out).state_dict(), x), _outputs(A, x),
                          atol=1e-5)


def test_every_op_rule_is_listed_and_documented(capsys):
    rules = list_op_rules()
    assert set(rules) == set(OP_RULES) and {"linear", "conv2d", "cat", "add"} <= set(rules)
    assert all(text and not text.startswith("_") for text in rules.values())
    assert main(["spec", "--ops", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rules


def test_restarts_keep_the_best_and_report_every_run(pair, capsys):
    root, A, B = pair
    out = root / "restarts.safetensors"
    assert main(["align", str(root / "a.safetensors"), str(root / "b.safetensors"),
                 "--restarts", "3", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    runs = rep["restarts"]
    assert [r["seed"] for r in runs] == [0, 1, 2] and sum(r["kept"] for r in runs) == 1
    kept = next(r for r in runs if r["kept"])  # chosen on the train split, never test
    assert kept["train_midpoint_loss"] == min(r["train_midpoint_loss"] for r in runs)
    assert rep["l2_after"] < 1e-4 * rep["l2_before"]
    rep_dir = root / "lmc-restarts"
    assert main(["lmc", str(root / "a.safetensors"), str(root / "b.safetensors"), "--points",
                 "3", "--restarts", "2", "--out", str(rep_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    kept = next(r for r in res["restarts"] if r["kept"])
    assert kept["test_loss_barrier"] == res["aligned"]["test_loss_barrier"]
    assert res["barrier_spread"]["min"] <= res["barrier_spread"]["max"]
    assert main(["merge", str(root / "a.safetensors"), str(root / "b.safetensors"),
                 "--restarts", "2", "--out", str(root / "m.safetensors"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["restarts"]) == 2 and rep["restart_score"] == "train loss"


@pytest.mark.parametrize("first", ["weightspace.merge.lmc", "weightspace.canonicalize.registry",
                                   "weightspace.merge.registry", "weightspace.canonicalize.wm",
                                   "weightspace.canonicalize.restarts"])
def test_registries_are_complete_whatever_is_imported_first(first):
    """Packages import their parts lazily: a registry must still hold every built-in method
    when the first import is some module deep inside (a fresh interpreter each time)."""
    code = (f"import {first}\n"
            "from weightspace.canonicalize.registry import list_align_methods, get_align_method\n"
            "from weightspace.merge.registry import list_merge_methods, get_merge_method\n"
            "get_align_method('wm'); get_merge_method('mergemany')\n"
            "print(','.join(list_align_methods()), ','.join(list_merge_methods()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    aligns, merges = r.stdout.split()
    assert set(aligns.split(",")) >= {"wm", "am", "ste", "transfusion"}
    assert set(merges.split(",")) >= {"mean", "mergemany", "ste"}
