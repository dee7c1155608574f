import pickle

import pytest
import torch
from safetensors.torch import save_file

from weightspace.arch import build
from weightspace.checkpoint import (CheckpointError, load_model, read_checkpoint,
                                    save_checkpoint)

REF = "resnet20?width=1&norm=bn"


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build(REF).eval()


def test_round_trip_rebuilds_from_metadata_alone(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, REF, {"seed": 3, "val_acc": 0.5})
    again = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    _, arch, meta = read_checkpoint(path)
    assert arch == REF and meta == {"seed": 3, "val_acc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp files left


def _bad_state(tmp_path, model, mutate):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mutate(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata={"weightspace.arch": REF})
    return path


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s.pop("fc.bias"), "missing key 'fc.bias'"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(2)), "unexpected key 'extra.weight'"),
    (lambda s: s.__setitem__("fc.bias", torch.zeros(3)), "'fc.bias' has shape"),
    (lambda s: s["conv1.weight"].view(-1).__setitem__(0, float("nan")),
     "'conv1.weight' has non-finite"),
])
def test_validation_names_the_key(tmp_path, model, mutate, match):
    with pytest.raises(CheckpointError, match=match):
        load_model(_bad_state(tmp_path, model, mutate))


def test_not_safetensors_is_a_clear_error(tmp_path, model):
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model, REF)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:200])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(bytes(range(256)) * 4)
    pick = tmp_path / "pickle.safetensors"
    pick.write_bytes(pickle.dumps({"a": 1}))
    for path, match in [(truncated, "not a valid safetensors"), (junk, "not a valid safetensors"),
                        (pick, "pickle"), (tmp_path / "absent.safetensors", "no such file")]:
        with pytest.raises(CheckpointError, match=match):
            load_model(path)


def test_pt_state_dicts_need_arch_and_load_without_unpickling_code(tmp_path, model):
    pt = tmp_path / "m.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="`arch`"):
        load_model(pt)
    again = load_model(pt, arch=REF)
    assert torch.equal(again.fc.weight, model.fc.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(evil, arch=REF)


def test_metadata_without_arch_needs_arch(tmp_path, model):
    path = tmp_path / "noarch.safetensors"
    save_file(dict(model.state_dict()), str(path))
    with pytest.raises(CheckpointError, match="`arch`"):
        load_model(path)
    assert load_model(path, arch=REF) is not None


def test_failed_write_leaves_nothing(tmp_path, model):
    path = tmp_path / "out.safetensors"
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": "not a tensor"}, REF)
    assert list(tmp_path.iterdir()) == []


def test_bad_meta_json(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_file(dict(model.state_dict()), str(path),
              metadata={"weightspace.arch": REF, "weightspace.meta": "{oops"})
    with pytest.raises(CheckpointError, match="weightspace.meta"):
        read_checkpoint(path)


def test_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors header whose length's low byte is 0x80 (regression)."""
    from weightspace.checkpoint import read_checkpoint, save_checkpoint
    for pad in range(300):
        p = tmp_path / "m.safetensors"
        save_checkpoint(p, {"w": torch.zeros(2)}, "mlp:2-2", {"note": "x" * pad})
        if p.read_bytes()[0] == 0x80:
            state, arch, meta = read_checkpoint(p)
            assert arch == "mlp:2-2" and meta["note"] == "x" * pad
            return
    raise AssertionError("no header of length ...0x80 produced")
