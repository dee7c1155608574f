"""Models stacked along channels: equal to one-at-a-time training, per-model BatchNorm,
reproducible bits, batched evaluation, and the timed batched-or-not choice of a zoo."""
import json

import pytest
import torch
from torch import nn

from weightspace.arch import build
from weightspace.cli.main import main
from weightspace.zoo import HParams, load_dataset, train_batched, train_sequential, train_zoo
from weightspace.zoo import runner
from weightspace import evaluation as train_mod
from weightspace.stacked import Stack, unsupported
from weightspace.functional import recalibrated
from weightspace.zoo.train import batched_impl, choose_path, evaluate, init_model, recalibrate

from ..conftest import rel_diff

BN = "resnet20?width=1&in_chans=1"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def digits(n=96):
    d = load_dataset("digits")
    return d["train"][0][:n], d["train"][1][:n]


def images32(n=64):
    """vgg11 pools five times: it needs 32x32 inputs (random ones are enough here)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def assert_close_states(a: dict, b: dict, tol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert rel_diff(a[k], b[k]) < tol, k
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch,data,opt", [
    (BN, digits, "sgd"),
    (BN + "&norm=ln", digits, "sgd"),
    (BN + "&norm=none&act=gelu", digits, "sgd"),
    ("vgg11?width=0.0625&in_chans=1", images32, "sgd"),
    ("vgg11?width=0.0625&in_chans=1&norm=none", images32, "sgd"),
    ("mlp:64-16-16-10?bias=false", digits, "adam"),
])
@pytest.mark.parametrize("device", DEVICES)
def test_stacked_equals_sequential_after_a_few_steps(arch, data, opt, device):
    """In float64, so that the comparison measures the layout, not how a machine's kernels
    round float32 (summation order differs between a grouped and a plain conv; in float32
    a few SGD steps through BatchNorm on tiny batches amplified that to 7e-4 on one thread).
    (Adam only for the MLP: its first steps are ~lr * sign(grad), so a tiny difference in
    a near-zero gradient of a deep net becomes a full step either way.)"""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x, y = data()
        x, y = x.double().to(device), y.to(device)
        assert batched_impl(arch) == "stacked"
        hp = HParams(epochs=1, batch_size=32, optimizer=opt,
                     lr=0.05 if opt == "sgd" else 1e-3, weight_decay=1e-4)
        stacked = train_batched(arch, [3, 4, 5], hp, x, y, impl="stacked")
        for seed, s in zip([3, 4, 5], stacked):
            assert_close_states(train_sequential(arch, seed, hp, x, y)[0], s, tol=1e-8)
    finally:
        torch.set_default_dtype(old)
    assert not torch.equal(stacked[0][next(iter(stacked[0]))], stacked[1][next(iter(stacked[1]))])


def test_stacked_is_bitwise_reproducible():
    x, y = digits()
    hp = HParams(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, schedule="cosine")
    a = train_batched(BN, [0, 1], hp, x, y, impl="stacked")
    b = train_batched(BN, [0, 1], hp, x, y, impl="stacked")
    assert all(torch.equal(sa[k], sb[k]) for sa, sb in zip(a, b) for k in sa)


def test_batchnorm_statistics_are_per_model():
    """Model 1 sees inputs 100x larger than model 0: shared statistics would mix them."""
    models = [init_model(BN, s).train() for s in (0, 1)]
    stack = Stack(build(BN).to("meta"), 2)
    tensors = stack.stack([m.state_dict() for m in models])
    x = torch.randn(2, 8, 1, 8, 8)
    x[1] *= 100
    with torch.no_grad():
        out = stack.forward(tensors, x, training=True)
    for i, m in enumerate(models):
        with torch.no_grad():
            ref = m(x[i])
        assert rel_diff(ref, out[i]) < 1e-4
        for k, v in stack.unstack(tensors)[i].items():
            assert rel_diff(m.state_dict()[k].float(), v.float()) < 1e-4, k


@pytest.mark.parametrize("arch", [BN, "mlp:64-32-10"])
def test_stacked_evaluation_equals_one_at_a_time(arch, monkeypatch):
    d = load_dataset("digits")
    x, y = d["test"]
    states = train_batched(arch, [0, 1, 2], HParams(epochs=1, batch_size=64), *d["train"])
    loss1, acc1 = evaluate(arch, states, x, y, batched=False)
    loss2, acc2 = evaluate(arch, states, x, y, batched=True)
    loss4, acc4 = evaluate(arch, states, x, y)  # the default path
    monkeypatch.setattr(train_mod, "EVAL_ELEMENTS", 5000)  # forces many small batches
    loss3, acc3 = evaluate(arch, states, x, y, batched=True)
    assert acc1 == acc2 == acc3 == acc4
    for a, b, c, d in zip(loss1, loss2, loss3, loss4):
        assert a == pytest.approx(b, rel=1e-5) and a == pytest.approx(c, rel=1e-5)
        assert a == pytest.approx(d, rel=1e-5)
    assert train_mod.eval_batched(arch, states[:1], x) is False  # one model: the loop


@pytest.mark.parametrize("arch,data", [(BN, digits), ("vgg11?width=0.0625&in_chans=1",
                                                      images32), ("mlp:64-32-10", digits)])
@pytest.mark.parametrize("device", DEVICES)
def test_stacked_recalibration_equals_one_at_a_time(arch, data, device, monkeypatch):
    x, _ = data(300)  # a full batch of 256 and a short one
    states = [init_model(arch, s).state_dict() for s in range(3)]
    for s in states:  # stale statistics that recalibration must replace
        for k, v in s.items():
            if k.endswith("running_mean"):
                v.add_(3.0)
    one = [recalibrated(build(arch), s, x) for s in states]
    monkeypatch.setattr(train_mod, "eval_batched", lambda *a: True)  # the stacked path
    on = [{k: v.to(device) for k, v in st.items()} for st in states]
    xd = x.to(device)
    for many in (recalibrate(arch, on, xd),
                 _chunked(monkeypatch, lambda: recalibrate(arch, on, xd))):
        for a, b in zip(one, many):
            assert_close_states(a, {k: v.cpu() for k, v in b.items()}, 1e-5)


def _chunked(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(train_mod, "EVAL_ELEMENTS", 1)  # one model per stacked pass
        return fn()


def test_unsupported_models_fall_back():
    assert "not a built-in" in unsupported(nn.Sequential(nn.Linear(2, 2)))
    model = build(BN)
    model.conv1 = nn.Conv2d(1, 16, 3, padding=1, groups=1, padding_mode="circular")
    assert "zero-padded" in unsupported(model)
    model = build(BN)
    model.blocks[0].norm1.momentum = None
    assert "momentum" in unsupported(model)
    assert unsupported(build("vgg11?width=0.25")) is None


def test_choose_path_records_both_timings_and_keeps_the_rng():
    x, y = digits(128)
    hp = HParams(batch_size=32)
    before = torch.get_rng_state()
    rec = choose_path("mlp:64-16-10", 4, hp, x, y)
    assert torch.equal(before, torch.get_rng_state())
    assert rec["path"] in ("batched", "sequential") and rec["impl"] == "stacked"
    assert rec["batched_step_s"] > 0 and rec["sequential_step_s"] > 0
    assert rec["reason"].startswith("measured")
    one = choose_path("mlp:64-16-10", 1, hp, x, y)
    assert one["path"] == "sequential" and one["batched_step_s"] is None


def test_zoo_records_its_choice_and_resume_does_not_measure_again(tmp_path, monkeypatch):
    calls = []
    real = runner.choose_path

    def counting(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)
    monkeypatch.setattr(runner, "choose_path", counting)
    kw = dict(arch="mlp:64-16-10", dataset="digits", hp=HParams(epochs=1, batch_size=64),
              progress=False, log=lambda m: None)
    train_zoo(tmp_path / "z", models=3, **kw)
    m = json.loads((tmp_path / "z" / "manifest.json").read_text())
    rec = m["batching"]["mlp:64-16-10 batch_size=64"]
    assert rec["path"] in ("batched", "sequential") and rec["models"] == 3
    assert {"batched_step_s", "sequential_step_s"} <= set(rec) and len(calls) == 1
    assert all(e["batched"] == (rec["path"] == "batched") for e in m["models"])
    (tmp_path / "z" / "models" / "s0002.safetensors").unlink()  # lost: resume retrains it

    def forget(man):
        man["models"][2]["status"] = "pending"
    runner.Zoo(tmp_path / "z").update(forget)
    assert train_zoo(tmp_path / "z", models=3, **kw)["trained"] == 1
    assert len(calls) == 1  # the cached decision was reused


@pytest.mark.parametrize("flag,path", [("--batched", "batched"), ("--no-batched", "sequential")])
def test_cli_forces_a_path(tmp_path, flag, path):
    out = tmp_path / "z"
    assert main(["zoo", "train", "--arch", "mlp:64-16-10", "--models", "2", "--epochs", "1",
                 "--out", str(out), "--no-progress", flag]) == 0
    m = json.loads((out / "manifest.json").read_text())
    (rec,) = m["batching"].values()
    assert rec["path"] == path and rec["reason"].startswith("forced")
    assert [e["batched"] for e in m["models"]] == [path == "batched"] * 2
