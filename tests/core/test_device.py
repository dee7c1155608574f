"""``--device``: every verb that aligns, canonicalizes, interpolates or merges runs where it is
told, with the same results as where its inputs were. On a machine without CUDA the device
path is exercised with ``cpu`` and ``auto``; the CUDA comparisons run where CUDA is."""
import json

import pytest
import torch

from weightspace.canonicalize import align, canonicalize_zoo
from weightspace.canonicalize.batched import batched_weight_matching
from weightspace.checkpoint import read_checkpoint, save_checkpoint
from weightspace.cli.main import main
from weightspace.device import DeviceError, resolve_device, to_device
from weightspace.merge import lmc
from weightspace.merge.merging import merge
from weightspace.symmetry import apply, random_perms, spec as discover
from weightspace.zoo import HParams, train_batched, train_zoo

ARCH = "mlp:64-32-32-10"
BN = "resnet20?width=1&in_chans=1"
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", "auto", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(scope="module")
def bn_pair(digits):
    x, y = digits["train"]
    return discover(BN, (1, 1, 8, 8)), train_batched(
        BN, [0, 1], HParams(epochs=1, optimizer="sgd", lr=0.05, batch_size=64), x, y)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)
    for bad in ("tpu", "cuda:x", "banana"):
        with pytest.raises(DeviceError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        with pytest.raises(DeviceError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_to_device_moves_copies_and_leaves_the_callers_objects(digits, bn_pair):
    from weightspace.arch import build
    net = build(BN)
    dev = resolve_device("auto")
    moved_net, moved_data, (a, b) = to_device((net, digits, bn_pair[1]), dev)
    assert all(v.device.type == dev.type for v in a.values())
    assert moved_data["train"][0].device.type == dev.type
    assert next(moved_net.parameters()).device.type == dev.type
    assert moved_data.name == digits.name and digits["train"][0].device.type == "cpu"
    assert to_device(net, None) is net


@pytest.mark.parametrize("device", DEVICES)
def test_alignment_on_a_device_equals_alignment_where_the_tensors_are(bn_pair, digits, device):
    spec, (A, B) = bn_pair
    from weightspace.arch import build
    model = build(BN)
    for method, kw in (("wm", {}), ("am", {"model": model, "data": digits})):
        p0, r0 = align(spec, A, B, method, **kw)
        p1, r1 = align(spec, A, B, method, device=device, **kw)
        assert all(torch.equal(p0[g], p1[g].cpu()) for g in p0), method
        assert r1.l2_after == pytest.approx(r0.l2_after, rel=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_zoo_matching_on_a_device(bn_pair, device):
    spec, (A, B) = bn_pair
    B2 = apply(spec, random_perms(spec, seed=5), A)
    ref = batched_weight_matching(spec, [A, A], [B, B2])
    dev = resolve_device(device)
    out = batched_weight_matching(spec, to_device([A, A], dev), to_device([B, B2], dev))
    for p, q in zip(ref, out):
        assert all(torch.equal(p[g], q[g].cpu()) for g in p)


@pytest.mark.parametrize("device", DEVICES)
def test_lmc_and_merge_on_a_device(bn_pair, digits, device):
    from weightspace.arch import build
    spec, (A, B) = bn_pair
    model = build(BN)
    r0 = lmc(spec, model, A, B, digits, points=3)
    r1 = lmc(spec, model, A, B, digits, points=3, device=device)
    for k in ("unaligned", "aligned"):
        assert r1[k]["test_loss_barrier"] == pytest.approx(r0[k]["test_loss_barrier"],
                                                           abs=1e-4)
    m0, _ = merge(spec, model, [A, B], "mergemany", "reset", digits)
    m1, _ = merge(spec, model, [A, B], "mergemany", "reset", digits, device=device)
    assert all(torch.allclose(m0[k].float(), m1[k].cpu().float(), atol=1e-4) for k in m0)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put


@pytest.mark.parametrize("device", DEVICES)
def test_every_verb_takes_device(tmp_path, capsys, digits, device):
    x, y = digits["train"]
    states = train_batched(ARCH, [0, 1, 2], HParams(epochs=2), x, y)
    paths = []
    for i, s in enumerate(states):
        paths.append(str(tmp_path / f"m{i}.safetensors"))
        save_checkpoint(paths[-1], s, ARCH, {"dataset": "digits"})
    zoo = tmp_path / "zoo"
    train_zoo(zoo, ARCH, "digits", HParams(epochs=1), models=3, progress=False)
    want = resolve_device(device).type
    for args in (["align", *paths[:2], "--out", str(tmp_path / "a.safetensors")],
                 ["canonicalize", str(zoo), "--out", str(tmp_path / "canon")],
                 ["lmc", *paths[:2], "--out", str(tmp_path / "lmc"), "--points", "3"],
                 ["lmc", "--zoo", str(zoo), "--out", str(tmp_path / "bm"), "--points", "3"],
                 ["merge", *paths, "--out", str(tmp_path / "m.safetensors"), "--bn-reset"]):
        assert main([*args, "--device", device, "--json"]) == 0, args
        rep = json.loads(capsys.readouterr().out)
        assert rep["device"].split(":")[0] == want, args
    state, _, _ = read_checkpoint(tmp_path / "m.safetensors")
    assert all(v.device.type == "cpu" for v in state.values())


def test_canonicalize_zoo_python_function_takes_device(tmp_path):
    zoo = tmp_path / "zoo"
    train_zoo(zoo, ARCH, "digits", HParams(epochs=1), models=3, progress=False)
    a = canonicalize_zoo(zoo, tmp_path / "c1", progress=False)
    b = canonicalize_zoo(zoo, tmp_path / "c2", progress=False, device="cpu")
    assert a["device"] == resolve_device("auto").__str__() and b["device"] == "cpu"
    assert a["l2_to_barycenter_after"] == pytest.approx(b["l2_to_barycenter_after"])
