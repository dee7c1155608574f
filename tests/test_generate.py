"""Generate: exact encoding round trip, deterministic sampling, a tiny end-to-end run,
the audit on hand-made cases, resume of an interrupted fit, bad input."""
import json
from pathlib import Path

import pytest
import torch

from weightspace.checkpoint import load_model
from weightspace.cli.main import main
from weightspace.generate import (Encoding, EncodingError, Velocity, audit, fit_generator,
                                  sample, sample_zoo)
from weightspace.generate.pipeline import load_zoo_states
from weightspace.zoo import HParams, ZooError, train_zoo

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
    with pytest.raises(EncodingError, match="shape"):
        enc.encode({**states[0], "1.weight": torch.zeros(3, 3)})


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
                 "--pca", "--width", "32", "--no-progress", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["max_roundtrip_error"] < 1e-5 and fit["dim"] == 5
    assert main(["generate", "sample", str(gen), "-n", "5", "--steps", "4", "--out",
                 str(samples), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 5 and res["nfe"] == 8
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
    assert r["generated"]["max_iou_mean"] == 1.0
    assert r["generated"]["nn_l2"]["max"] == 0.0
    assert r["generated"]["acc_mean"] == pytest.approx(r["zoo"]["acc_mean"])
    assert r["zoo"]["max_iou_loo_mean"] < 1.0


def test_interrupted_fit_resumes_to_the_same_generator(tiny_zoo, tmp_path):
    kw = dict(steps=12, width=16, depth=1, pca=True, progress=False, checkpoint_every=3)
    fit_generator(tiny_zoo, tmp_path / "a", until=6, **kw)
    assert json.loads((tmp_path / "a" / "state.json").read_text())["step"] == 6
    fit_generator(tiny_zoo, tmp_path / "a", **kw)
    fit_generator(tiny_zoo, tmp_path / "b", **kw)
    assert (tmp_path / "a" / "generator.safetensors").read_bytes() == \
        (tmp_path / "b" / "generator.safetensors").read_bytes()
    with pytest.raises(EncodingError, match="other settings"):
        fit_generator(tiny_zoo, tmp_path / "a", **{**kw, "width": 8})


def test_bad_input(tiny_zoo, tmp_path):
    other = tmp_path / "other"
    train_zoo(other, "mlp:64-8-10", "digits", HParams(epochs=1), models=2, progress=False)
    with pytest.raises(ZooError, match="holds 'mlp:64-8-10' models"):
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
    with pytest.raises(EncodingError, match="different encoding"):
        sample_zoo(g1, tmp_path / "s", 2)
    assert not Path(tmp_path / "s").exists()
