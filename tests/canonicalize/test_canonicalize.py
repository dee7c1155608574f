"""Canonicalization: planted permutations are recovered, alignment never changes a function,
the objective never decreases, zoo canonicalization is invertible bitwise, bad input fails."""
import json
from pathlib import Path

import pytest
import torch

from weightspace.arch import build, input_shape
from weightspace.canonicalize import (activation_matching, align, transfusion_matching,
                                      weight_matching)
from weightspace.canonicalize.zoo import canonicalize_zoo, restore
from weightspace.checkpoint import read_checkpoint, save_checkpoint
from weightspace.cli.main import main
from weightspace.functional import lerp_states, loss_acc
from weightspace.symmetry import apply, invert, random_perms, symmetry_of
from weightspace.symmetry import spec as discover
from weightspace.symmetry.cache import read_zoo_spec, zoo_spec
from weightspace import __version__
from weightspace.merge.files import barrier_matrix
from weightspace.zoo import HParams, Zoo, ZooError, load_dataset, train_zoo

from ..conftest import rel_diff

VIT = "timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2"
DEIT = "timm:deit_tiny_patch16_224?img_size=32&patch_size=4&depth=2"
ARCHS = ["mlp:64-64-64-10", "resnet20?width=1", "resnet20?width=1&norm=ln",
         "vgg11?width=0.25", "timm:resnet18", VIT, DEIT]
# 20 matchings of an 11M-parameter model are the suite's longest test: kept for -m slow
PLANTED = [pytest.param(r, marks=pytest.mark.slow) if r == "timm:resnet18" else r
           for r in ARCHS]

_SPECS = {}


def spec_of(ref):
    if ref not in _SPECS:
        model = build(ref).eval()
        x = torch.randn(input_shape(ref, model), generator=torch.Generator().manual_seed(0))
        _SPECS[ref] = (symmetry_of(model, x), x)
    return _SPECS[ref]


def init_state(ref, seed):
    torch.manual_seed(seed)
    return build(ref).state_dict()


def perturbed(ref, seed):
    """Random init with BN statistics and affine params moved off their defaults."""
    g = torch.Generator().manual_seed(seed + 10_000)
    out = {}
    for k, v in init_state(ref, seed).items():
        if v.is_floating_point() and ("running" in k or k.endswith((".bias",)) or
                                      "norm" in k or "bn" in k):
            v = v + 0.1 * torch.randn(v.shape, generator=g)
            if "running_var" in k:
                v = v.abs() + 0.5
        out[k] = v
    return out


@pytest.mark.parametrize("ref", PLANTED)
def test_planted_permutation_recovered_20_of_20(ref):
    spec, _ = spec_of(ref)
    for trial in range(20):
        A = perturbed(ref, trial)
        planted = random_perms(spec, seed=1000 + trial)
        B = apply(spec, planted, A)
        perms, rep = weight_matching(spec, A, B, seed=trial)
        back = apply(spec, perms, B)
        assert all(torch.equal(back[k], A[k]) for k in A), (ref, trial)
        assert rep.l2_after == 0.0 and rep.l2_before > 0
        hist = rep.objective_history
        assert all(b >= a - 1e-6 * abs(a) for a, b in zip(hist, hist[1:])), hist


@pytest.mark.parametrize("ref", ["mlp:64-64-64-10", "resnet20?width=1", VIT])
def test_planted_permutation_recovered_under_noise(ref):
    spec, _ = spec_of(ref)
    A = perturbed(ref, 0)
    planted = random_perms(spec, seed=5)
    g = torch.Generator().manual_seed(1)
    B = {k: v + 0.01 * v.std().nan_to_num() * torch.randn(v.shape, generator=g)
         if v.is_floating_point() and v.numel() > 1 else v
         for k, v in apply(spec, planted, A).items()}
    perms, rep = weight_matching(spec, A, B)
    inv = invert(spec, planted)
    assert all(torch.equal(perms[g.name], inv[g.name]) for g in spec.groups)
    assert rep.l2_after < 0.2 * rep.l2_before


@pytest.mark.parametrize("ref", ARCHS)
def test_alignment_keeps_the_function_and_lowers_l2(ref):
    spec, x = spec_of(ref)
    A, B = perturbed(ref, 1), perturbed(ref, 2)
    model = build(ref).eval()
    perms, rep = weight_matching(spec, A, B)
    model.load_state_dict(B)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(apply(spec, perms, B))
        after = model(x)
    assert rel_diff(before, after) < 1e-5
    assert rep.l2_after <= rep.l2_before
    hist = rep.objective_history
    assert all(b >= a - 1e-6 * abs(a) for a, b in zip(hist, hist[1:]))


@pytest.mark.parametrize("ref", ["mlp:64-64-64-10", "resnet20?width=1", VIT,
                                 "resnet20?width=1&norm=ln",  # LayerNorm over NCHW channels
                                 "vgg11?width=0.125&norm=ln&in_chans=1&pools=3"])
def test_activation_matching_keeps_the_function(ref):
    spec, x = spec_of(ref)
    A, B = perturbed(ref, 1), perturbed(ref, 2)
    model = build(ref).eval()
    xs = torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(3))
    for pearson in (False, True):
        perms, rep = activation_matching(spec, model, A, B, xs, pearson=pearson)
        with torch.no_grad():
            model.load_state_dict(B)
            before = model(x)
            model.load_state_dict(apply(spec, perms, B))
            assert rel_diff(before, model(x)) < 1e-5
        assert rep.method == "am"


@pytest.mark.parametrize("residual", ["identity", "wm"])
def test_transfusion_heads(residual):
    spec, x = spec_of(VIT)
    A = perturbed(VIT, 0)
    planted = random_perms(spec, seed=3)
    if residual == "identity":  # a planted permutation that leaves the residual stream
        planted["patch_embed.proj"] = torch.arange(spec.group("patch_embed.proj").size)
    B = apply(spec, planted, A)
    perms, rep = transfusion_matching(spec, A, B, residual=residual)
    back = apply(spec, perms, B)
    assert all(torch.equal(back[k], A[k]) for k in A)
    assert rep.method == "transfusion" and rep.l2_after == 0.0
    if residual == "identity":
        assert torch.equal(perms["patch_embed.proj"], torch.arange(192))


@pytest.fixture(scope="module")
def digits_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "z"
    train_zoo(out, "mlp:64-32-32-10", "digits", HParams(epochs=8, batch_size=32), models=4,
              progress=False)
    return out


def test_ste_never_worse_than_wm_on_validation(digits_zoo):
    zoo = Zoo(digits_zoo)
    A, B = zoo.load("s0000").state_dict(), zoo.load("s0001").state_dict()
    data = load_dataset("digits")
    model = build("mlp:64-32-32-10")
    spec = discover(str(zoo.model_path("s0000")))
    xv, yv = data["val"]

    def mid_loss(perms):
        return loss_acc(model, xv, yv, lerp_states(A, apply(spec, perms, B), 0.5))[0]
    p_wm, _ = align(spec, A, B, "wm")
    p_ste, rep = align(spec, A, B, "ste", model=model, data=data, steps=40, eval_every=10)
    assert mid_loss(p_ste) <= mid_loss(p_wm) + 1e-9
    assert mid_loss(p_wm) < loss_acc(model, xv, yv, lerp_states(A, B, 0.5))[0]
    assert rep.method == "ste" and rep.iterations == 40


def _hashes(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("reference", ["barycenter", "s0002"])
def test_zoo_canonicalization_is_invertible(digits_zoo, tmp_path, reference):
    before = _hashes(digits_zoo)
    rep = canonicalize_zoo(digits_zoo, tmp_path / "c", "wm", reference, progress=False)
    assert _hashes(digits_zoo) == before  # the input zoo is untouched
    assert rep["l2_to_barycenter_after"] < rep["l2_to_barycenter_before"]
    m = Zoo(tmp_path / "c").read()
    assert m["canonicalization"]["method"] == "wm"
    assert [e["id"] for e in m["models"]] == ["s0000", "s0001", "s0002", "s0003"]
    data = load_dataset("digits")
    model = build("mlp:64-32-32-10")
    for e in m["models"]:
        orig, _, _ = read_checkpoint(Path(digits_zoo) / e["file"])
        back = restore(tmp_path / "c", e["id"])
        assert all(torch.equal(back[k], orig[k]) for k in orig)
        canon, _, meta = read_checkpoint(tmp_path / "c" / e["file"])
        assert loss_acc(model, *data["test"], state=canon)[1] == \
            pytest.approx(e["metrics"]["test_acc"])
        assert meta["canonical"]["reference"] == reference
    if reference != "barycenter":
        ref_state, _, _ = read_checkpoint(tmp_path / "c" / "models" / "s0002.safetensors")
        orig_ref, _, _ = read_checkpoint(Path(digits_zoo) / "models" / "s0002.safetensors")
        assert all(torch.equal(ref_state[k], orig_ref[k]) for k in orig_ref)


def test_zoo_canonicalization_bad_input(digits_zoo, tmp_path):
    with pytest.raises(ZooError, match="no finished model with that id"):
        canonicalize_zoo(digits_zoo, tmp_path / "c", "wm", "s9999", progress=False)
    with pytest.raises(ZooError, match="must differ"):
        canonicalize_zoo(digits_zoo, digits_zoo, "wm", progress=False)
    assert not (tmp_path / "c").exists()


def test_cli_align_and_canonicalize(digits_zoo, tmp_path, capsys):
    a, b = (str(Path(digits_zoo) / "models" / f"s000{i}.safetensors") for i in (0, 1))
    for method in ("wm", "am", "transfusion"):
        out = tmp_path / f"b_{method}.safetensors"
        assert main(["align", a, b, "--method", method, "--out", str(out), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert {"method", "seconds", "iterations", "l2_before", "l2_after"} <= set(rep)
        assert rep["method"] == method and rep["l2_after"] < rep["l2_before"]
        state, arch, meta = read_checkpoint(out)
        assert meta["aligned"]["method"] == method and arch == "mlp:64-32-32-10"
    assert main(["canonicalize", str(digits_zoo), "--out", str(tmp_path / "c"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["models"] == 4 and rep["reference"] == "barycenter"
    assert main(["canonicalize", str(digits_zoo), "--out", str(tmp_path / "c")]) == 2
    assert "already holds a zoo" in capsys.readouterr().err


def test_cli_align_bad_input(tmp_path, capsys):
    torch.manual_seed(0)
    a = tmp_path / "a.safetensors"
    save_checkpoint(a, build("mlp:64-32-10"), "mlp:64-32-10")
    b = tmp_path / "b.safetensors"
    save_checkpoint(b, build("mlp:64-48-10"), "mlp:64-48-10")
    out = tmp_path / "out.safetensors"
    assert main(["align", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'1.weight'" in err and "widths" in err and err.count("\n") == 1
    c = tmp_path / "c.safetensors"
    save_checkpoint(c, build("mlp:64-32-10"), "mlp:64-32-10")
    assert main(["align", str(a), str(c), "--method", "am", "--out", str(out)]) == 2
    assert "needs data" in capsys.readouterr().err
    bad = build("mlp:64-32-10").state_dict()
    bad["1.bias"][3] = float("nan")
    n = tmp_path / "nan.safetensors"
    save_checkpoint(n, bad, "mlp:64-32-10")
    assert main(["align", str(a), str(n), "--out", str(out)]) == 2
    assert "1.bias" in capsys.readouterr().err
    assert not out.exists()


def test_cli_align_timm_model_with_one_input_channel(tmp_path):
    """timm's pretrained config says 3 input channels; the reference's in_chans wins."""
    ref = "timm:mobilenetv3_small_050?in_chans=1&num_classes=10"
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.safetensors")
        save_checkpoint(paths[-1], build(ref), ref)
    out = tmp_path / "aligned.safetensors"
    assert main(["align", *map(str, paths), "--out", str(out)]) == 0
    model = build(ref).eval()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.load_state_dict(read_checkpoint(paths[1])[0])
        before = model(x)
        model.load_state_dict(read_checkpoint(out)[0])
        assert rel_diff(before, model(x)) < 1e-5


def test_accelerate_two_processes_identical_to_one(digits_zoo, tmp_path):
    import os
    import subprocess
    import sys

    from ..zoo.test_zoo import ROOT, _free_port, files
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    args = ["canonicalize", str(digits_zoo), "--no-progress", "--max-rounds", "3"]
    one = subprocess.run([sys.executable, "-m", "weightspace.cli.main", *args, "--out",
                          str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert one.returncode == 0, one.stderr
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                "-m", "weightspace.cli.main"]
    two = subprocess.run(launcher + args + ["--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-3000:]
    assert files(tmp_path / "one") == files(tmp_path / "two")
    perms = sorted((tmp_path / "one" / "perms").glob("*"))
    assert perms and all(p.read_bytes() == (tmp_path / "two" / "perms" / p.name).read_bytes()
                         for p in perms)


@pytest.mark.parametrize("ref", ["mlp:64-64-64-10", "resnet20?width=1"])
def test_batched_matching_equals_one_pair_at_a_time(ref):
    """The same group order gives every model of a batch the permutations that
    ``weight_matching`` finds for it alone (with an initial permutation too)."""
    from weightspace.canonicalize.batched import batched_weight_matching, supports
    spec, _ = spec_of(ref)
    assert supports(spec)
    A = [perturbed(ref, s) for s in range(3)]
    B = [perturbed(ref, 10 + s) for s in range(3)]
    init = [random_perms(spec, seed=s) for s in range(3)]
    for inits in (None, init):
        out = batched_weight_matching(spec, A, B, init=inits, seed=7)
        for b in range(3):
            perms, _ = weight_matching(spec, A[b], B[b], seed=7,
                                       init=inits[b] if inits else None)
            assert all(torch.equal(perms[g], out[b][g]) for g in perms), (ref, b)


def test_batched_matching_recovers_planted_permutations():
    from weightspace.canonicalize.batched import batched_weight_matching
    ref = "resnet20?width=1"
    spec, _ = spec_of(ref)
    A = [perturbed(ref, s) for s in range(4)]
    B = [apply(spec, random_perms(spec, seed=100 + s), a) for s, a in enumerate(A)]
    for a, b, perms in zip(A, B, batched_weight_matching(spec, A, B)):
        back = apply(spec, perms, b)
        assert all(torch.equal(back[k], a[k]) for k in a)


def test_batched_matching_refuses_structured_specs():
    from weightspace.canonicalize.batched import BatchedMatcher, supports
    spec, _ = spec_of(VIT)
    assert not supports(spec)
    with pytest.raises(ValueError, match="plain layouts"):
        BatchedMatcher(spec, {}, {})


def test_barycenter_batched_as_good_as_sequential(digits_zoo, tmp_path):
    reps = {b: canonicalize_zoo(digits_zoo, tmp_path / f"c{b}", "wm", "barycenter",
                                progress=False, batched=b) for b in (True, False)}
    for rep in reps.values():
        assert rep["l2_to_barycenter_after"] < rep["l2_to_barycenter_before"]
        hist = rep["history"]
        assert all(b <= a for a, b in zip(hist, hist[1:-1]))  # the kept rounds improve
    assert reps[True]["l2_to_barycenter_after"] <= \
        reps[False]["l2_to_barycenter_after"] * 1.01
    for e in Zoo(tmp_path / "cTrue").read()["models"]:  # still exactly invertible
        orig, _, _ = read_checkpoint(Path(digits_zoo) / e["file"])
        back = restore(tmp_path / "cTrue", e["id"])
        assert all(torch.equal(back[k], orig[k]) for k in orig)


def test_a_canonical_zoo_carries_its_verified_spec(digits_zoo, tmp_path, monkeypatch):
    arch = "mlp:64-32-32-10"
    before = _hashes(digits_zoo)
    canonicalize_zoo(digits_zoo, tmp_path / "c", "wm", "barycenter", progress=False)
    canon = tmp_path / "c"
    state = Zoo(canon).load("s0000").state_dict()
    fresh = discover(arch)
    kept = read_zoo_spec(canon, arch, state)
    assert kept is not None and kept.verified
    assert (kept.groups, kept.layouts, kept.shapes) == (fresh.groups, fresh.layouts,
                                                         fresh.shapes)
    # a verb on the canonical zoo does not discover it again ...
    import weightspace.symmetry as sym
    with monkeypatch.context() as m:
        m.setattr(sym, "spec", lambda *a, **k: pytest.fail("discovered again"))
        assert zoo_spec(canon, arch, state=state).groups == fresh.groups
        rep = barrier_matrix(canon, tmp_path / "lmc", pairs=1, points=3)
        assert len(rep["pairs"]) == 1
    # ... a raw zoo keeps none, and reading never writes into a zoo
    assert read_zoo_spec(digits_zoo, arch) is None
    assert zoo_spec(digits_zoo, arch).groups == fresh.groups
    assert _hashes(digits_zoo) == before
    # another architecture, a spec that does not fit the models, another version's
    # canonicalization, a broken file: not used
    assert read_zoo_spec(canon, "mlp:64-16-10") is None
    key = next(iter(kept.shapes))
    assert read_zoo_spec(canon, arch, {**state, key: torch.zeros(3)}) is None
    mpath = canon / "manifest.json"
    m = json.loads(mpath.read_text())
    m["canonicalization"]["weightspace_version"] = "0.0.0-other"
    mpath.write_text(json.dumps(m))
    assert read_zoo_spec(canon, arch) is None
    m["canonicalization"]["weightspace_version"] = __version__
    mpath.write_text(json.dumps(m))
    assert read_zoo_spec(canon, arch) is not None
    (canon / "spec.json").write_text("{not json")
    assert read_zoo_spec(canon, arch) is None and zoo_spec(canon, arch).verified
