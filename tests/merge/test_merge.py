"""LMC and merging: barriers of a model with itself / a permuted copy, BN reset and REPAIR
at the endpoints, merges of identical and of permuted copies, CLI and bad input."""
import json
from pathlib import Path

import pytest
import torch

from weightspace.arch import build
from weightspace.canonicalize import l2_distance
from weightspace.checkpoint import read_checkpoint, save_checkpoint
from weightspace.cli.main import main
from weightspace.functional import loss_acc
from weightspace.merge import barrier, curve, lmc, merge, mergemany_perms
from weightspace.symmetry import apply, random_perms
from weightspace.symmetry import spec as discover
from weightspace.zoo import HParams, train_batched

MLP = "mlp:64-64-64-10"
BN = "resnet20?width=1&in_chans=1"


@pytest.fixture(scope="module")
def trained(digits):
    x, y = digits["train"]
    out = {}
    for ref, hp in ((MLP, HParams(epochs=10)),
                    (BN, HParams(epochs=2, optimizer="sgd", lr=0.05, batch_size=64))):
        out[ref] = (discover(ref, (1, 1, 8, 8)),
                    train_batched(ref, [0, 1, 2, 3], hp, x, y))
    return out


def test_barrier_definition():
    assert barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    assert barrier([0, 0.5, 1], [0.9, 0.5, 0.7], higher_is_better=True) == pytest.approx(0.3)
    assert barrier([0, 1], [1.0, 1.0]) == 0.0


@pytest.mark.parametrize("ref", [MLP, BN])
def test_barrier_with_itself_and_permuted_copy(trained, digits, ref):
    spec, states = trained[ref]
    A = states[0]
    model = build(ref)
    same = curve(spec, model, A, A, digits, points=5)
    assert abs(same["test_loss_barrier"]) < 1e-5 and abs(same["test_acc_barrier"]) < 1e-9
    B = apply(spec, random_perms(spec, seed=7), A)
    res = lmc(spec, model, A, B, digits, "wm", points=7)
    # Properties of any correct code, whatever the briefly trained weights look like: the
    # unaligned path really interpolates A and the permuted copy (its midpoint is another
    # function than A), the aligned path is A all along (barrier 0).
    un, al = res["unaligned"], res["aligned"]
    assert res["diagnostics"]["l2_unaligned"] == pytest.approx(l2_distance(A, B), rel=1e-5)
    assert res["diagnostics"]["l2_unaligned"] > 0
    assert abs(un["test_loss"][3] - al["test_loss"][3]) > 1e-3
    assert un["test_loss_barrier"] >= -1e-6
    assert abs(al["test_loss_barrier"]) < 1e-5
    assert res["diagnostics"]["l2_aligned"] < 1e-4 * res["diagnostics"]["l2_unaligned"]
    rows = res["diagnostics"]["singular_alignment"]
    assert rows and all(r["left_after"] > 0.999 for r in rows)


@pytest.mark.parametrize("ref", [MLP, BN])
@pytest.mark.parametrize("bn", ["reset", "repair"])
def test_endpoints_restored_exactly(trained, digits, ref, bn):
    spec, states = trained[ref]
    model = build(ref)
    c = curve(spec, model, states[0], states[1], digits, points=3, bn=bn)
    for state, i in ((states[0], 0), (states[1], -1)):
        assert c["test_acc"][i] == loss_acc(model, *digits["test"], state=state)[1]


def test_repair_restores_unit_statistics(trained, digits):
    from weightspace.merge import feature_stats, repair, repairable
    spec, states = trained[MLP]
    model = build(MLP)
    A, B = states[0], apply(spec, mergemany_perms(spec, states[:2])[0][1], states[1])
    x = digits["train"][0][:512]
    targets = repairable(spec, model)
    assert [n for n, _ in targets] == ["1", "3"]
    sa, sb = (feature_stats(model, s, targets, x) for s in (A, B))
    mid = {k: (A[k] + B[k]) / 2 for k in A}
    fixed = repair(spec, model, mid, [sa, sb], [0.5, 0.5], x)
    got = feature_stats(model, fixed, targets, x)
    for n, _ in targets:
        goal_std = (sa[n][1] + sb[n][1]) / 2
        assert torch.allclose(got[n][1], goal_std, rtol=1e-3, atol=1e-4)


def test_repair_of_channel_first_layernorm(digits):
    """LayerNorm2d puts its features on axis 1, not last as nn.LayerNorm would."""
    from weightspace.merge import feature_stats, repair, repairable
    from weightspace.models import LayerNorm2d
    ref = "vgg11?width=0.125&norm=ln&in_chans=1&pools=3"
    spec, model = discover(ref, (1, 1, 8, 8)), build(ref)
    A, B = (build(ref).state_dict() for _ in range(2))
    x = digits["train"][0][:256]
    mods = dict(model.named_modules())
    targets = repairable(spec, model)
    ln = [n for n, _ in targets if isinstance(mods[n], LayerNorm2d)]
    assert ln
    sa, sb = (feature_stats(model, s, targets, x) for s in (A, B))
    assert all(sa[n][1].shape == mods[n].weight.shape for n in ln)
    fixed = repair(spec, model, {k: (A[k] + B[k]) / 2 for k in A}, [sa, sb], [0.5, 0.5], x)
    got = feature_stats(model, fixed, targets, x)
    for n in ln:
        assert torch.allclose(got[n][1], (sa[n][1] + sb[n][1]) / 2, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["mean", "mergemany"])
def test_merging_identical_models_returns_the_model(trained, method):
    spec, states = trained[MLP]
    merged, _ = merge(spec, build(MLP), [states[0]] * 3, method)
    assert all(torch.allclose(merged[k], states[0][k], atol=1e-6) for k in merged)


def test_mergemany_of_permuted_copies_is_order_invariant(trained, digits):
    spec, states = trained[MLP]
    A = states[0]
    copies = [apply(spec, random_perms(spec, seed=s), A) for s in range(4)]
    model = build(MLP).eval()
    x = digits["test"][0]
    with torch.no_grad():
        want = torch.func.functional_call(model, A, (x,))
        for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
            merged, rep = merge(spec, model, [copies[i] for i in order], "mergemany")
            got = torch.func.functional_call(model, merged, (x,))
            assert torch.allclose(got, want, atol=1e-5)
    hist = rep["mergemany_rms_history"]
    assert all(b < a for a, b in zip(hist[:-2], hist[1:-1]))  # decreasing until the stop
    assert hist[-2] < 1e-5 or len(hist) == 2


def test_merge_with_repair_and_ste(trained, digits):
    spec, states = trained[MLP]
    model = build(MLP)
    x, y = digits["test"]
    ends = [loss_acc(model, x, y, state=s)[1] for s in states]
    mean_merge, _ = merge(spec, model, states, "mean")
    mm, _ = merge(spec, model, states, "mergemany", "repair", digits)
    ste, rep = merge(spec, model, states, "ste", "repair", digits, steps=20, eval_every=10)
    acc = {k: loss_acc(model, x, y, state=s)[1] for k, s in
           (("mean", mean_merge), ("mm", mm), ("ste", ste))}
    assert acc["mm"] > acc["mean"] and acc["mm"] > sum(ends) / len(ends) - 0.1
    assert acc["ste"] > acc["mean"] and "ste_best_step" in rep


def _save(tmp_path, name, state, ref=MLP):
    p = tmp_path / name
    save_checkpoint(p, state, ref, {"dataset": "digits"})
    return str(p)


def test_cli_lmc_and_merge(trained, tmp_path, capsys):
    spec, states = trained[MLP]
    a, b = _save(tmp_path, "a.safetensors", states[0]), _save(tmp_path, "b.safetensors",
                                                               states[1])
    out = tmp_path / "rep"
    assert main(["lmc", a, b, "--points", "5", "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"loss_barrier", "acc_barrier", "loss_barrier_unaligned", "t", "test_loss",
            "test_acc"} <= set(res)
    assert res["loss_barrier"] < res["loss_barrier_unaligned"]
    assert (out / "lmc.png").stat().st_size > 1000 and json.loads((out / "lmc.json").read_text())
    c = _save(tmp_path, "c.safetensors", states[2])
    m = tmp_path / "m.safetensors"
    assert main(["merge", a, b, c, "--method", "mergemany", "--repair", "--out", str(m),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"method", "seconds", "merged_test_acc", "endpoint_test_accs"} <= set(rep)
    _, arch, meta = read_checkpoint(m)
    assert arch == MLP and meta["merged"]["sources"] == [a, b, c]
    assert meta["merged"]["method"] == "mergemany" and meta["merged"]["post"] == "repair"


def test_cli_pairwise_matrix(trained, tmp_path, capsys):
    from weightspace.zoo import train_zoo
    train_zoo(tmp_path / "z", "mlp:64-16-10", "digits", HParams(epochs=3), models=3,
              progress=False)
    assert main(["lmc", "--zoo", str(tmp_path / "z"), "--points", "3", "--out",
                 str(tmp_path / "r"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["pairs"]) == 3 and res["test_loss_barrier_aligned"][0][0] == 0.0
    assert (tmp_path / "r" / "barriers_aligned.png").exists()


def test_cli_bad_input(trained, tmp_path, capsys):
    spec, states = trained[MLP]
    a = _save(tmp_path, "a.safetensors", states[0])
    torch.manual_seed(0)
    w = _save(tmp_path, "w.safetensors", build("mlp:64-32-64-10").state_dict(),
              "mlp:64-32-64-10")
    big = _save(tmp_path, "big.safetensors", build("mlp:784-16-10").state_dict(), "mlp:784-16-10")
    for argv, match in (
            (["lmc", a, w, "--out", str(tmp_path / "r1")], "widths"),
            (["lmc", a, a, "--points", "1", "--out", str(tmp_path / "r2")], "--points"),
            (["lmc", big, big, "--out", str(tmp_path / "r3")], "does not accept digits"),
            (["merge", a, w, "--out", str(tmp_path / "m.safetensors")], "widths")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    assert not any(p.name.startswith(("r", "m.")) for p in Path(tmp_path).iterdir())
