"""Generate: exact encoding round trip, deterministic sampling, a tiny end-to-end run,
the audit on hand-made cases, resume of an interrupted fit, bad input."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from weightspace.checkpoint import load_model
from weightspace.cli.main import main
from weightspace.generate import (Encoding, TokenVelocity, Velocity, audit,
                                  fit_generator, sample, sample_zoo, train_flow)
from weightspace.generate.config import EVIDENCE, GenerateError
from weightspace.generate.config import GUIDANCE_GRID, PASS_BUDGET, SOLVER_GRID, solver_name
from weightspace.generate import pipeline
from weightspace.generate.choose import choose_by_bound
from weightspace.generate.pipeline import (MIX_GRID, candidates, choose_guidance,
                                           load_zoo_states)
from weightspace.generate.run import run_generation
from weightspace.zoo import HParams, Zoo, ZooError, train_zoo
from weightspace.zoo.store import finished

ARCH = "mlp:64-16-10"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "zoo"
    train_zoo(out, ARCH, "digits", HParams(epochs=4), models=6, progress=False)
    return out


@pytest.mark.parametrize("pca", [False, True])
def test_encoding_round_trip_is_exact(tiny_zoo, tmp_path, pca):
    _, _, states, arch = load_zoo_states(tiny_zoo)
    enc = Encoding.fit(arch, states, pca=pca)
    assert enc.dim == (5 if pca else sum(v.numel() for v in states[0].values()))
    enc.save(tmp_path / "e.safetensors")
    again = Encoding.load(tmp_path / "e.safetensors")
    for s in states:
        for e in (enc, again):
            back = e.decode(e.encode(s))
            assert all((back[k] - s[k]).abs().max() < 1e-5 for k in s)
    with pytest.raises(GenerateError, match="shape"):
        enc.encode({**states[0], "1.weight": torch.zeros(3, 3)})


@pytest.mark.parametrize("pca", [False, True])
def test_fit_reads_the_zoo_one_model_at_a_time(tiny_zoo, tmp_path, monkeypatch, pca):
    """The fit's checks stream the checkpoints (one state dict in memory at a time) and
    decode each zoo model once for the round-trip check (it decoded once per tensor)."""
    from weightspace.generate.pipeline import scan_zoo
    seen = []
    m, entries, arch, first = scan_zoo(tiny_zoo, lambda i, st, a: seen.append((i, a)))
    assert seen == [(i, ARCH) for i in range(len(entries))] and arch == ARCH
    assert all(torch.equal(first[k], load_zoo_states(tiny_zoo)[2][0][k]) for k in first)
    decodes = []
    real = Encoding.decode
    monkeypatch.setattr(Encoding, "decode", lambda self, c: decodes.append(1) or real(self, c))
    fit = fit_generator(tiny_zoo, tmp_path / "g", steps=2, width=8, depth=1, pca=pca,
                        progress=False)
    assert len(decodes) == len(entries) and fit["max_roundtrip_error"] < 1e-5


def test_sampling_is_deterministic():
    torch.manual_seed(0)
    v = Velocity(7, width=16, depth=1)
    torch.nn.init.normal_(v.out.weight)
    a, nfe = sample(v, 4, steps=5, method="rk4", seed=3)
    b, _ = sample(v, 4, steps=5, method="rk4", seed=3)
    c, _ = sample(v, 4, steps=5, method="rk4", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c) and nfe == 20
    assert sample(v, 2, steps=4, method="euler")[1] == 4


def test_end_to_end_and_cli(tiny_zoo, tmp_path, capsys):
    gen, samples = tmp_path / "gen", tmp_path / "samples"
    assert main(["generate", "fit", str(tiny_zoo), "--out", str(gen), "--steps", "30",
                 "--pca", "--condition", "none", "--width", "32", "--no-progress",
                 "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["max_roundtrip_error"] < 1e-5 and fit["dim"] == 5
    assert main(["generate", "sample", str(gen), "-n", "5", "--steps", "4", "--out",
                 str(samples), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the solver is fixed (midpoint x4: 8 evaluations); the mix is chosen within the budget
    assert res["n"] == 5 and res["nfe"] == 8
    assert res["network_passes"] == 8 * res["mix"] <= PASS_BUDGET
    assert res["defaults"]["mix"]["chosen"] == res["mix"] and "solver" not in res["defaults"]
    m = load_model(samples / "models" / "g0003.safetensors")
    assert m.weightspace_arch == ARCH
    assert main(["zoo", "eval", str(samples), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["models"]) == 5
    assert main(["generate", "eval", str(samples), "--zoo", str(tiny_zoo), "--out",
                 str(tmp_path / "rep"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"acc_mean", "max_iou_mean"} <= set(r["generated"])
    assert {"acc_mean", "max_iou_loo_mean"} <= set(r["zoo"])
    assert {"noise_0.01", "noise_0.03", "pca_gaussian", "zoo_mean"} <= set(r["baselines"])
    assert r["nfe"] == 8 and {"generated_acc", "zoo_ece"} <= set(r["ensemble"])
    for f in ("report.md", "report.json", "acc_vs_novelty.png"):
        assert (tmp_path / "rep" / f).is_file()


def test_audit_of_the_zoo_itself(tiny_zoo):
    r = audit(tiny_zoo, tiny_zoo)
    assert r["baseline_models"] == 6 and len(r["baselines"]["noise_0.1"]["acc"]) == 6
    assert r["generated"]["max_iou_mean"] == 1.0
    assert r["generated"]["nn_l2"]["max"] == 0.0
    assert r["generated"]["acc_mean"] == pytest.approx(r["zoo"]["acc_mean"])
    assert r["zoo"]["max_iou_loo_mean"] < 1.0


def test_baselines_of_large_models_are_fewer():
    from weightspace.generate.audit import baseline_models
    assert baseline_models(100, 8970) == 100 and baseline_models(1000, 8970) == 1000
    assert baseline_models(100, 272_000) == 100               # ResNet-20
    assert baseline_models(100, 11_200_000) == 17             # timm resnet18
    assert baseline_models(100, 10 ** 9) == 16 and baseline_models(5, 10 ** 9) == 5


def test_audit_in_groups_equals_all_at_once(tiny_zoo, monkeypatch):
    """Generated and baseline models are read and measured a group at a time (large
    models): one model per group gives the same report as one group."""
    import importlib
    audit_module = importlib.import_module("weightspace.generate.audit")
    whole = audit(tiny_zoo, tiny_zoo, k_ensemble=3)
    monkeypatch.setattr(audit_module, "GROUP_NUMBERS", 1)
    grouped = audit(tiny_zoo, tiny_zoo, k_ensemble=3)

    def leaves(r):
        if isinstance(r, dict):
            return [v for k in sorted(r) for v in leaves(r[k])]
        if isinstance(r, (list, tuple)):
            return [v for x in r for v in leaves(x)]
        return [r]
    a, b = leaves(whole.to_json()), leaves(grouped.to_json())
    assert len(a) == len(b)
    for x, y in zip(a, b):  # the same up to the order of float64 sums
        assert y == pytest.approx(x, rel=1e-9, abs=1e-7) if isinstance(x, float) else x == y


def test_interrupted_fit_resumes_to_the_same_generator(tiny_zoo, tmp_path):
    kw = dict(steps=12, width=16, depth=1, pca=True, progress=False, checkpoint_every=3)
    fit_generator(tiny_zoo, tmp_path / "a", until=6, **kw)
    assert json.loads((tmp_path / "a" / "state.json").read_text())["step"] == 6
    fit_generator(tiny_zoo, tmp_path / "a", **kw)
    fit_generator(tiny_zoo, tmp_path / "b", **kw)
    assert (tmp_path / "a" / "generator.safetensors").read_bytes() == \
        (tmp_path / "b" / "generator.safetensors").read_bytes()
    with pytest.raises(GenerateError, match="other settings"):
        fit_generator(tiny_zoo, tmp_path / "a", **{**kw, "width": 8})


def test_bad_input(tiny_zoo, tmp_path):
    other = tmp_path / "other"
    train_zoo(other, "mlp:64-8-10", "digits", HParams(epochs=1), models=2, progress=False)
    with pytest.raises(GenerateError, match="holds 'mlp:64-8-10' models"):
        audit(other, tiny_zoo)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.json").write_text(json.dumps(
        {"format": "weightspace.zoo", "version": 1, "models": []}))
    with pytest.raises(ZooError, match="no finished models"):
        fit_generator(empty, tmp_path / "g0", steps=2, progress=False)
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    fit_generator(tiny_zoo, g1, steps=2, width=8, depth=1, pca=True, progress=False)
    fit_generator(tiny_zoo, g2, steps=2, width=8, depth=1, pca=False, progress=False)
    (g1 / "encoding.safetensors").write_bytes((g2 / "encoding.safetensors").read_bytes())
    with pytest.raises(GenerateError, match="different encoding"):
        sample_zoo(g1, tmp_path / "s", 2)
    assert not Path(tmp_path / "s").exists()


def test_noise_curve_margin_on_hand_made_points():
    from weightspace.generate.audit import curve_margin, noise_curve
    base = {"noise_0.1": {"acc": [0.9, 0.9], "max_iou": [0.6, 0.6]},
            "noise_1.0": {"acc": [0.75, 0.85, 0.85], "max_iou": [0.2, 0.2, 0.7]},
            "zoo_mean": {"acc": [0.1], "max_iou": [0.4]}}
    curve = noise_curve(base)  # isotonic: the 0.85 at 0.7 is pooled with the 0.9s at 0.6
    assert [x for x, _ in curve] == [0.2, 0.6, 0.7]
    assert [y for _, y in curve] == pytest.approx([0.8, 2.65 / 3, 2.65 / 3])
    curve = [(0.2, 0.8), (0.6, 0.9)]
    m = curve_margin(curve, [0.4, 0.4, 0.9], [0.9, 0.8, 0.95])
    assert m["mean"] == pytest.approx((0.05 - 0.05 + 0.05) / 3)
    assert m["above"] == pytest.approx(2 / 3) and m["outside"] == 1
    assert curve_margin(curve, [0.3, 0.5], [0.85, 0.85])["at_mean"] == pytest.approx(0.0)


def test_classifier_free_guidance_steers_by_the_condition():
    torch.manual_seed(0)
    c = torch.tensor([1.0, -1.0] * 32)
    codes = torch.randn(64, 4) * 0.3
    codes[:, 0] += 3 * c
    model, _ = train_flow(codes, steps=400, batch_size=64, lr=3e-3, width=64, depth=2,
                          cond=c, p_uncond=0.2)
    up = sample(model, 200, 10, cond=1.0, seed=1)[0][:, 0]
    down = sample(model, 200, 10, cond=-1.0, seed=1)[0][:, 0]
    free = sample(model, 200, 10, seed=1)[0][:, 0]
    assert up.mean() > 2 and down.mean() < -2 and abs(free.mean()) < 1.5
    assert (up > 0).float().mean() > 0.9 and (down < 0).float().mean() > 0.9
    guided, nfe = sample(model, 200, 10, cond=1.0, guidance=3.0, seed=1)
    assert (guided[:, 0] > 0).float().mean() >= (up > 0).float().mean() and nfe == 20
    with pytest.raises(ValueError, match="without a condition"):
        sample(Velocity(4, width=8, depth=1), 2, cond=1.0)


def test_conditional_generator_pipeline(tiny_zoo, tmp_path, monkeypatch):
    with pytest.raises(GenerateError, match="test metrics"):
        fit_generator(tiny_zoo, tmp_path / "g", steps=2, condition="test_acc", progress=False)
    with pytest.raises(GenerateError, match="no numeric metric or hyperparameter 'nope'"):
        fit_generator(tiny_zoo, tmp_path / "g", steps=2, condition="nope", progress=False)
    fit_generator(tiny_zoo, tmp_path / "g", steps=5, width=16, depth=1, pca=True,
                  condition="val_acc", progress=False)
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["condition"]["name"] == "val_acc"
    res = sample_zoo(tmp_path / "g", tmp_path / "s", 3, steps=2,
                     condition=cfg["condition"]["max"], guidance=2.0, mix=1)
    assert res["n"] == 3 and res["nfe"] == 4 and res["network_passes"] == 8
    assert res["guidance_choice"] is None  # every setting passed: nothing to choose
    assert main(["generate", "sample", str(tmp_path / "g"), "-n", "3", "--condition", "max",
                 "--out", str(tmp_path / "a"), "--json"]) == 0
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())["settings"]
    assert m["condition"] == cfg["condition"]["max"]
    choice = m["guidance_choice"]  # chosen on val only: accuracy under a novelty limit
    grid = {(g["method"], g["steps"], g["guidance"], g["mix"]): g for g in choice["grid"]}
    # solver, weight and mix chosen jointly by default, within the pass budget
    assert set(grid) == set(candidates(SOLVER_GRID, GUIDANCE_GRID, MIX_GRID, True))
    assert {k[:2] for k in grid} == set(SOLVER_GRID) and {k[3] for k in grid} == set(MIX_GRID)
    assert all(g["passes"] <= PASS_BUDGET for g in choice["grid"])
    assert choice["networks_per_setting"] == pipeline.sweep_samples(int(
        m["n"]), 1) == min(int(m["n"]), pipeline.SWEEP_SAMPLES)
    # chosen among the finalists, those measured on every network of the sweep
    final = {key: g for key, g in grid.items()
             if g["networks"] == choice["networks_per_setting"]}
    assert len(final) == choice["finalists"] < len(grid)
    diff = {key: g["val_acc_vs_zoo"] for key, g in final.items()}
    lower = {key: g["val_acc_lower_bound"] for key, g in final.items()}
    novelty = {key: g["val_novelty"] for key, g in final.items()}
    passes = {key: g["passes"] for key, g in grid.items()}
    assert (m["method"], m["steps"], m["guidance"], m["mix"]) == choose_by_bound(
        diff, lower, novelty, choice["novelty_limit"],
        cost=lambda k: (passes[k], k[2], k[3]))[0]
    assert m["defaults"]["mix"]["chosen"] == m["mix"]
    assert m["defaults"]["solver"]["chosen"] == solver_name(m["method"], m["steps"])
    gen = json.loads((tmp_path / "a" / "manifest.json").read_text())["generation"]
    assert gen["network_passes"] == passes[(m["method"], m["steps"], m["guidance"], m["mix"])]
    monkeypatch.setattr(pipeline, "SWEEP_SAMPLES", 2)  # the sweep measures 2, draws all 5
    few = sample_zoo(tmp_path / "g", tmp_path / "few", 5, condition="max")
    assert few["n"] == 5 and len(finished(Zoo(tmp_path / "few").read())) == 5
    assert few["guidance_choice"]["grid"]
    monkeypatch.undo()
    fixed = sample_zoo(tmp_path / "g", tmp_path / "k3", 3, steps=2, condition="max",
                       guidance=2.0, mix=3)
    assert fixed["mix"] == 3 and fixed["network_passes"] == 8 * 3  # 3 averaged per network
    with pytest.raises(GenerateError, match="`mix` must be"):
        sample_zoo(tmp_path / "g", tmp_path / "k0", 3, condition="max", mix=0)
    with pytest.raises(GenerateError, match="needs a `condition`"):
        sample_zoo(tmp_path / "g", tmp_path / "s3", 2, condition=None, guidance="auto")
    fit_generator(tiny_zoo, tmp_path / "u", steps=2, width=8, depth=1, pca=True,
                  condition=None, progress=False)
    with pytest.raises(GenerateError, match="without a condition"):
        sample_zoo(tmp_path / "u", tmp_path / "s2", 2, condition=0.9)


def test_transformer_velocity_over_per_layer_tokens(tiny_zoo, tmp_path):
    sizes = [5, 9, 3]
    v = TokenVelocity(17, sizes, token=4, width=16, depth=1, heads=2)
    assert v.tokens == 2 + 3 + 1
    owner = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    for tok_idx, tok_ok in zip(v.index.view(v.tokens, 4), v.valid.view(v.tokens, 4)):
        assert len(set(owner[tok_idx[tok_ok]].tolist())) == 1  # no token mixes two tensors
    x = torch.randn(3, 17)
    assert torch.equal(v(torch.rand(3), x), torch.zeros(3, 17))  # zero-initialised read-out
    torch.nn.init.normal_(v.out.weight)
    y = v(torch.rand(3), x)
    y.sum().backward()
    assert y.shape == (3, 17) and v.inp.weight.grad.abs().sum() > 0
    gen, out = tmp_path / "g", tmp_path / "s"
    fit = fit_generator(tiny_zoo, gen, steps=3, width=16, depth=1, velocity="transformer",
                        token=64, heads=2, progress=False)
    assert fit["dim"] == sum(p.numel() for p in load_zoo_states(tiny_zoo)[2][0].values())
    assert sample_zoo(gen, out, 2, steps=2)["n"] == 2
    assert load_model(out / "models" / "g0001.safetensors").weightspace_arch == ARCH
    with pytest.raises(GenerateError, match="without `pca`"):
        fit_generator(tiny_zoo, tmp_path / "g2", steps=1, velocity="transformer", pca=True,
                      progress=False)


def test_fit_under_accelerate_with_two_processes(tiny_zoo, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    gen = tmp_path / "gen"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port),
           "-m", "weightspace.cli.main", "generate", "fit", str(tiny_zoo), "--out", str(gen),
           "--steps", "20", "--pca", "--width", "16", "--depth", "1", "--no-progress"]
    run = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("fitted a generator on 6 models") == 2  # one line per rank
    assert json.loads((gen / "state.json").read_text())["step"] == 20
    assert sample_zoo(gen, tmp_path / "s", 2, steps=2)["n"] == 2


# ------------------------------------------------------------ the best recipe by default
def test_defaults_are_the_measured_recipe_and_recorded(tiny_zoo, tmp_path, capsys):
    from weightspace.generate.config import best_value, default_condition, default_pca
    gen = tmp_path / "g"
    assert main(["generate", "fit", str(tiny_zoo), "--out", str(gen), "--steps", "5",
                 "--width", "16", "--depth", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "defaults: pca=True" in err and "condition=val_acc" in err
    cfg = json.loads((gen / "config.json").read_text())
    assert cfg["encoding"]["pca"] and cfg["condition"]["name"] == "val_acc"
    assert set(cfg["defaults"]) == {"pca", "condition"}
    assert cfg["defaults"]["pca"]["value"] is True and "6 models <" in \
        cfg["defaults"]["pca"]["why"] and cfg["defaults"]["pca"]["evidence"] == EVIDENCE
    assert cfg["defaults"]["condition"]["value"] == "val_acc"
    # sampling with no options: the zoo's best val_acc, guidance chosen on validation
    assert main(["generate", "sample", str(gen), "-n", "3", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "condition=max" in err and "guidance=auto" in err and "mix=auto" in err and \
        "solver=auto" in err
    st = json.loads((tmp_path / "s" / "manifest.json").read_text())["settings"]
    assert st["condition"] == cfg["condition"]["max"] and st["guidance_val_acc"]
    assert st["defaults"]["condition"]["value"] == "max"
    assert st["defaults"]["guidance"]["value"] == "auto"
    assert st["defaults"]["guidance"]["chosen"] == st["guidance"]
    # explicit flags turn each default off, and nothing is then recorded as automatic
    assert main(["generate", "sample", str(gen), "-n", "2", "--steps", "2", "--guidance", "1",
                 "--out", str(tmp_path / "s1")]) == 0
    st = json.loads((tmp_path / "s1" / "manifest.json").read_text())["settings"]
    assert st["guidance"] == 1.0 and set(st["defaults"]) == {"condition", "mix", "correction"}
    # the mix not passed is still chosen on validation (with the fixed solver and weight)
    assert st["defaults"]["mix"]["value"] == "auto" and "solver" not in st["defaults"]
    assert st["defaults"]["mix"]["chosen"] == st["mix"]
    assert {(g["guidance"], g["steps"]) for g in st["guidance_choice"]["grid"]} == {(1.0, 2)}
    assert main(["generate", "sample", str(gen), "-n", "2", "--steps", "2", "--condition",
                 "none", "--out", str(tmp_path / "s2")]) == 0
    st = json.loads((tmp_path / "s2" / "manifest.json").read_text())["settings"]
    assert st["condition"] is None and st["guidance"] == 1.0
    assert st["defaults"]["guidance"]["value"] == 1.0
    capsys.readouterr()
    assert main(["generate", "fit", str(tiny_zoo), "--out", str(tmp_path / "g2"), "--steps",
                 "2", "--width", "8", "--depth", "1", "--no-pca", "--condition", "none",
                 "--no-progress"]) == 0
    assert "none taken" in capsys.readouterr().err
    cfg = json.loads((tmp_path / "g2" / "config.json").read_text())
    assert cfg["defaults"] == {} and not cfg["encoding"]["pca"] and cfg["condition"] is None
    # the rules themselves
    assert default_pca(6, 650, "mlp")[0] and not default_pca(700, 650, "mlp")[0]
    assert not default_pca(6, 650, "transformer")[0]
    both = [{"metrics": {"train_loss": 0.1, "val_acc": 0.5}},
            {"metrics": {"train_loss": 0.2, "val_acc": 0.6}}]
    assert default_condition(both)[0] == "val_acc"
    # val_acc missing or constant on a model: train_loss, and the reason says why
    name, why = default_condition([both[0], {"metrics": {"train_loss": 0.2}}])
    assert name == "train_loss" and "not every finished model has a numeric val_acc" in why
    assert default_condition([{"metrics": {"train_loss": t, "val_acc": 0.5}}
                              for t in (0.1, 0.2)])[0] == "train_loss"
    assert default_condition([{"metrics": {"val_acc": 0.5}}, {"metrics": {}}])[0] is None
    assert default_condition([{"metrics": {"val_acc": 0.5}}] * 2)[0] is None
    # the best value of a loss or an error is its lowest; of anything else its highest
    assert [best_value(n) for n in ("train_loss", "val_err", "val_acc", "weight_decay")] \
        == ["min", "min", "max", "max"]


# ------------------------------------------------------------------- generate run
RUN_ARGS = ["--steps", "12", "--width", "16", "--depth", "1", "-n", "3", "--sample-steps",
            "2", "--ensemble", "2", "--no-progress"]


@pytest.fixture(scope="module")
def raw_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "zoo"
    train_zoo(out, "mlp:64-8-10", "digits", HParams(epochs=2), models=4, progress=False)
    return out


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def canon_models(zoo):
    return len(finished(json.loads((zoo / "manifest.json").read_text())))


def test_generate_run_end_to_end_and_skips_finished_stages(raw_zoo, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["generate", "run", str(raw_zoo), "--out", str(out), *RUN_ARGS]) == 0
    o, err = capsys.readouterr()
    assert "| generated |" in o and "| zoo (leave-one-out) |" in o  # the audit table
    for i, stage in enumerate(("canonicalize", "fit", "sample", "audit"), 1):
        assert f"[{i}/4] {stage}: done" in err
    # the canonicalization the mixability probe chose on validation, kept for reruns
    choice = json.loads((out / "canonicalization.json").read_text())
    assert set(choice["reports"]) == {"none", "wm", "am"} and choice["chosen"] != "none"
    best = max(r["score"] for r in choice["reports"].values())
    assert choice["reports"][choice["chosen"]]["score"] == best
    canon = json.loads((out / "canonical" / "manifest.json").read_text())
    assert canon["canonicalization"]["method"] == choice["chosen"]
    assert canon["canonicalization"]["reference"] == "barycenter"
    cfg = json.loads((out / "generator" / "config.json").read_text())
    assert set(cfg["defaults"]) == {"pca", "condition"}
    # the probe ran before the fit and is recorded with the generator
    assert cfg["mixability"]["verdict"] in ("mixable", "not mixable")
    # ... and it is the report of the chosen canonicalization, not measured twice
    assert cfg["mixability"]["mixtures"] == choice["reports"][choice["chosen"]]["mixtures"]
    assert len(cfg["mixability"]["singles"]) == canon_models(out / "canonical")
    st = json.loads((out / "samples" / "manifest.json").read_text())["settings"]
    assert set(st["defaults"]) == {"condition", "guidance", "mix", "correction"} and \
        st["n"] == 3
    assert (out / "report" / "report.md").is_file()
    before = _files(out)
    assert main(["generate", "run", str(raw_zoo), "--out", str(out), *RUN_ARGS]) == 0
    o, err = capsys.readouterr()
    assert err.count("skipped") == 4 and "| generated |" in o
    assert _files(out) == before  # nothing redone, nothing rewritten
    # a canonical zoo is not canonicalized again
    res = run_generation(out / "canonical", tmp_path / "run2", steps=12, width=16, depth=1,
                         n=2, sample_steps=2, ensemble=2, progress=False)
    assert res["stages"]["canonicalize"].startswith("skipped")
    assert not (tmp_path / "run2" / "canonical").exists()
    assert res["canonical"] == str(out / "canonical")
    # other settings on an existing run directory are refused, not silently mixed
    assert main(["generate", "run", str(raw_zoo), "--out", str(out),
                 *RUN_ARGS[:-1], "--width", "8"]) == 2
    assert "other training settings" in capsys.readouterr().err


def test_generate_run_resumes_after_an_interrupted_stage(raw_zoo, tmp_path, monkeypatch):
    import weightspace.generate.run as run_mod
    kw = dict(steps=12, width=16, depth=1, n=3, sample_steps=2, ensemble=2, progress=False)
    full = tmp_path / "full"
    run_mod.run_generation(raw_zoo, full, **kw)
    # 1. the fit is interrupted at step 5: the rerun skips the canonical zoo and resumes
    real_fit, out = run_mod.fit_generator, tmp_path / "run"

    def interrupted_fit(*a, **k):
        real_fit(*a, until=5, checkpoint_every=2, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "fit_generator", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        run_mod.run_generation(raw_zoo, out, **kw)
    assert json.loads((out / "generator" / "state.json").read_text())["step"] == 5
    assert not (out / "samples").exists()
    canon = _files(out / "canonical")
    monkeypatch.setattr(run_mod, "fit_generator", real_fit)
    res = run_mod.run_generation(raw_zoo, out, **kw)
    assert res["stages"]["canonicalize"].startswith("skipped")
    assert "resumed from step 5" in res["stages"]["fit"]
    assert _files(out / "canonical") == canon
    assert (out / "generator" / "generator.safetensors").read_bytes() == \
        (full / "generator" / "generator.safetensors").read_bytes()  # as if never stopped
    # 2. the samples are lost: only sampling and the audit are redone, from the same inputs
    before = _files(out)
    shutil.rmtree(out / "samples")
    res = run_mod.run_generation(raw_zoo, out, **kw)
    assert [res["stages"][s].split()[0] for s in run_mod.STAGES] == \
        ["skipped:", "skipped:", "done", "done"]
    after = _files(out)
    kept = ("canonical", "generator", "samples/models")  # sampling is deterministic
    assert {k: v for k, v in after.items() if k.startswith(kept)} == \
        {k: v for k, v in before.items() if k.startswith(kept)}
    assert after.keys() == before.keys()


def test_guidance_is_chosen_under_a_novelty_limit_on_validation():
    acc = {1.0: 0.90, 2.0: 0.95, 4.0: 0.97}
    novelty = {1.0: 0.60, 2.0: 0.70, 4.0: 0.90}
    assert choose_guidance(acc, novelty, 0.75)[0] == 2.0  # 4 is too close to the zoo
    assert choose_guidance(acc, novelty, 0.95)[0] == 4.0
    assert choose_guidance(acc, novelty, 0.50)[0] == 1.0  # none is novel enough: most novel
    assert choose_guidance(acc, None, None)[0] == 4.0
    # (weight, mix) pairs: the same rule; ties go to the smaller weight, then mix
    pairs = {(2.0, 1): 0.9, (2.0, 4): 0.95, (4.0, 1): 0.95, (1.0, 16): 0.8}
    nov = {(2.0, 1): 0.7, (2.0, 4): 0.72, (4.0, 1): 0.9, (1.0, 16): 0.6}
    assert choose_guidance(pairs, nov, 0.8)[0] == (2.0, 4)
    assert choose_guidance(pairs, None, None)[0] == (2.0, 4)
    assert choose_guidance(pairs, nov, 0.5)[0] == (1.0, 16)
    # accuracies within the tolerance are the validation split's noise: the more novel wins
    close = {1.0: 0.950, 2.0: 0.953, 3.0: 0.960}
    nov3 = {1.0: 0.50, 2.0: 0.40, 3.0: 0.45}
    assert choose_guidance(close, nov3, 0.6, tolerance=0.01)[0] == 2.0
    assert choose_guidance(close, nov3, 0.6, tolerance=0.005)[0] == 3.0  # 0.953 is too far
    assert choose_guidance(close, nov3, 0.6, tolerance=0.0)[0] == 3.0
    assert choose_guidance(close, nov3, 0.6, tolerance=0.02)[0] == 2.0
    assert choose_guidance(close, nov3, 0.42, tolerance=0.0)[0] == 2.0  # the only novel one


def test_the_choice_measures_fewer_networks_of_large_models():
    from weightspace.generate.pipeline import (SWEEP_MIN_SAMPLES, SWEEP_SAMPLES,
                                               sweep_samples)
    assert sweep_samples(1000, 8970) == SWEEP_SAMPLES          # the demo MLP
    assert sweep_samples(1000, 272_000) == SWEEP_SAMPLES       # ResNet-20
    assert sweep_samples(1000, 11_200_000) == SWEEP_MIN_SAMPLES  # timm resnet18
    assert SWEEP_MIN_SAMPLES < sweep_samples(1000, 4_000_000) < SWEEP_SAMPLES
    assert sweep_samples(5, 11_200_000) == 5                    # never more than asked


def test_sampling_candidates_keep_the_pass_budget():
    every = candidates(SOLVER_GRID, GUIDANCE_GRID, MIX_GRID, guided=True)
    assert every and all(o.passes(True) <= PASS_BUDGET for o in every)
    # guidance 1 is one pass per evaluation, so more samples fit it
    assert max(o.mix for o in every if o.guidance == 1.0) > \
        max(o.mix for o in every if o.guidance != 1.0)
    assert ("euler", 1, 1.0, 16) in every and ("midpoint", 5, 2.0, 2) not in every
    # unconditional: guidance is never doubled
    assert all(o.passes(False) == o.passes(True) for o in every if o.guidance == 1.0)
    # fixed settings beyond the budget: the cheapest of them, not nothing
    over = candidates((("rk4", 10),), (2.0,), MIX_GRID, guided=True)
    assert [o.mix for o in over] == [1] and over[0].passes(True) == 80
    assert len(candidates((("dopri5", 10),), (1.0,), MIX_GRID, True)) == len(MIX_GRID)
    # ties of accuracy go to fewer passes
    a, b = ("euler", 1, 1.0, 4), ("euler", 2, 1.0, 4)
    assert choose_guidance({a: 0.9, b: 0.9}, {a: 0.5, b: 0.5}, 0.6,
                           cost=lambda k: (k[1] * k[3],))[0] == a
