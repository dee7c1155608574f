"""Every checkpoint layout read back exactly; the writer's files and directories."""
import json

import pytest
import torch
from safetensors.torch import save, save_file

from weightspace.arch import build
from weightspace.checkpoint import (CheckpointError, CheckpointWriter, canonical_safetensors,
                                    load_model, open_checkpoint, read_checkpoint,
                                    save_checkpoint, save_tensors)

REF = "resnet20?width=1&norm=bn"


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return build(REF).state_dict()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
                                        for k in a)


def test_single_file_is_bitwise_safetensors_own_and_independent_of_add_order(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {"w": torch.randn(3, 5, generator=g), "h": torch.randn(7).to(torch.bfloat16),
               "n": torch.tensor(3), "b": torch.tensor([True, False]),
               "d": torch.randn(2, dtype=torch.float64), "e": torch.zeros(0, 4),
               "i8": torch.arange(5, dtype=torch.int8)}
    meta = {"weightspace.arch": "mlp:2-2", "x": "é"}
    ref = canonical_safetensors(save(tensors, metadata=meta))
    for order in (list(tensors), list(reversed(tensors))):
        out = tmp_path / f"{order[0]}.safetensors"
        with CheckpointWriter(out, meta) as w:
            for k in order:
                w.add(k, tensors[k])
        assert out.read_bytes() == ref
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i8.safetensors", "w.safetensors"]


def test_round_trip_single_file_and_sharded_directory(tmp_path, state):
    single = tmp_path / "m.safetensors"
    save_checkpoint(single, state, REF, {"seed": 3})
    hub = tmp_path / "hub"
    with open_checkpoint(single) as ck, CheckpointWriter(hub, ck.metadata,
                                                        max_shard_size="50KB") as w:
        for k in reversed(ck.keys()):
            w.add(k, ck.get(k))
    index = json.loads((hub / "model.safetensors.index.json").read_text())
    shards = sorted({*index["weight_map"].values()})
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["weightspace.arch"] == REF
    assert (hub / "README.md").is_file()
    assert json.loads((hub / "config.json").read_text())["weightspace_arch"] == REF
    s, arch, meta = read_checkpoint(hub)
    assert arch == REF and meta == {"seed": 3} and _equal(s, dict(state))
    back = tmp_path / "back.safetensors"
    with open_checkpoint(hub / "model.safetensors.index.json") as ck:
        save_tensors(back, {k: ck.get(k) for k in ck.keys()},
                     {k: v for k, v in ck.metadata.items() if k != "format"})
    assert back.read_bytes() == single.read_bytes()
    small = tmp_path / "small"
    save_checkpoint(small, state, REF)
    assert sorted(p.name for p in small.iterdir()) == ["README.md", "config.json",
                                                       "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_huggingface_hub_and_timm_directories_read_back_without_arch(tmp_path):
    from huggingface_hub import save_torch_state_dict
    from timm.models._hub import save_config_for_hf, save_for_hf
    torch.manual_seed(0)
    model = build("timm:test_resnet?num_classes=7")
    sd = model.state_dict()
    (tmp_path / "hh").mkdir()
    save_torch_state_dict(sd, tmp_path / "hh", max_shard_size="20KB")
    assert (tmp_path / "hh" / "model.safetensors.index.json").is_file()
    s, _, _ = read_checkpoint(tmp_path / "hh", arch="timm:test_resnet?num_classes=7")
    assert _equal(s, dict(sd))
    save_config_for_hf(model, str(tmp_path / "hh" / "config.json"))
    assert _equal(load_model(tmp_path / "hh").state_dict(), dict(sd))
    for i, safe in enumerate((False, True)):  # pytorch_model.bin, then model.safetensors
        d = tmp_path / f"timm{i}"
        save_for_hf(model, str(d), safe_serialization=safe)
        m = load_model(d)
        assert m.weightspace_arch.startswith("timm:test_resnet?") and "num_classes=7" in \
            m.weightspace_arch
        assert _equal(m.state_dict(), dict(sd))
    vit = build("timm:test_vit?img_size=32&patch_size=4&num_classes=3")
    save_for_hf(vit, str(tmp_path / "vit"), safe_serialization=True)
    assert _equal(load_model(tmp_path / "vit").state_dict(), dict(vit.state_dict()))


@pytest.mark.parametrize("wrap,note", [
    (lambda s: {f"module.{k}": v for k, v in s.items()}, "'module.'"),
    (lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 3},
     "['state_dict']; removed the prefix 'model.'"),
    (lambda s: {f"_orig_mod.{k}": v for k, v in s.items()}, "'_orig_mod.'"),
    (lambda s: {"state_dict": {**{f"model._orig_mod.{k}": v for k, v in s.items()},
                               "criterion.weight": torch.ones(2)}},
     "'model._orig_mod.' from 128 tensor name(s); ignored 1"),
    (lambda s: {"model": dict(s)}, "['model']"),
])
def test_wrappers_are_removed_and_reported(tmp_path, state, wrap, note):
    p = tmp_path / "w.ckpt"
    torch.save(wrap(dict(state)), p)
    m = load_model(p, arch=REF)
    assert _equal(m.state_dict(), dict(state))
    assert len(m.weightspace_notes) == 1 and note in m.weightspace_notes[0]


def test_own_keys_sharing_a_leading_name_are_kept(tmp_path):
    model = build("mlp:4-8-2")
    p = tmp_path / "mlp.pt"
    torch.save({f"layers.{k}": v for k, v in model.state_dict().items()}, p)
    with pytest.raises(CheckpointError, match="missing key '1.weight'"):  # partly right: kept
        load_model(_renamed(tmp_path, model), arch="mlp:4-8-2")
    with open_checkpoint(p, arch="mlp:4-8-2") as ck:  # stripped: the keys then match
        assert ck.keys() == sorted(model.state_dict()) and "'layers.'" in ck.wrapper_note
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with open_checkpoint(plain, arch="mlp:4-8-2") as ck:
        assert ck.wrapper_note is None


def _renamed(tmp_path, model):
    p = tmp_path / "half.pt"
    s = dict(model.state_dict())
    s["x.weight"] = s.pop("1.weight")
    torch.save(s, p)
    return p


def _shards(tmp_path, state):
    d = tmp_path / "sh"
    save_checkpoint(d, state, REF, max_shard_size="50KB")
    return d, json.loads((d / "model.safetensors.index.json").read_text())


def _bad_dirs(tmp_path, state):
    """Each bad input and the words its one line must hold."""
    cases = []
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    cases.append((empty, "directory with no weights"))
    d, idx = _shards(tmp_path / "a", state)
    (d / sorted(set(idx["weight_map"].values()))[1]).unlink()
    cases.append((d, "is missing"))
    d, idx = _shards(tmp_path / "b", state)
    first, second = sorted(set(idx["weight_map"].values()))[:2]
    name = next(k for k, v in idx["weight_map"].items() if v == first)
    with open_checkpoint(d / second) as ck:
        extra = {k: ck.get(k) for k in ck.keys()}
    save_file({**extra, name: state[name]}, str(d / second))
    cases.append((d, "in two shards"))
    d, idx = _shards(tmp_path / "c", state)
    idx["weight_map"]["ghost.weight"] = first
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    cases.append((d, "'ghost.weight'"))
    d, idx = _shards(tmp_path / "d", state)
    shard = d / second
    shard.write_bytes(shard.read_bytes()[:-100])
    cases.append((d, "not a valid safetensors"))
    p = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"net.enc.{k}x": v for k, v in state.items()}}, p)
    cases.append((p, "tried removing the prefix(es) 'net.', 'net.enc.'"))
    d, idx = _shards(tmp_path / "e", state)
    idx["weight_map"][name] = "../escape.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    cases.append((d, "outside"))
    cases.append((tmp_path / "absent", "no such file or directory"))
    return cases


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, state):
    from weightspace.canonicalize.files import align_checkpoints
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, state, REF)
    for path, words in _bad_dirs(tmp_path, state):
        with pytest.raises(CheckpointError) as e:
            load_model(path, arch=REF if str(path).endswith(".pt") else None)
        msg = str(e.value)
        assert words in msg and "\n" not in msg, msg
        out = tmp_path / "out"
        with pytest.raises(CheckpointError):
            align_checkpoints(good, path, out, arch=None)
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_half_precision_is_kept_and_dtype_overrides(tmp_path, state):
    from weightspace.canonicalize.files import align_checkpoints
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    a, b = tmp_path / "a.safetensors", tmp_path / "b"
    save_checkpoint(a, half, REF)
    save_checkpoint(b, half, REF)
    align_checkpoints(a, b, tmp_path / "o.safetensors")
    with open_checkpoint(tmp_path / "o.safetensors") as ck:
        assert {ck.dtype(k) for k in ck.keys()} == {torch.bfloat16, torch.int64}
    align_checkpoints(a, b, tmp_path / "o32", dtype=torch.float32)
    with open_checkpoint(tmp_path / "o32") as ck:
        assert {ck.dtype(k) for k in ck.keys()} == {torch.float32, torch.int64}
        assert ck.arch == REF and (tmp_path / "o32" / "README.md").is_file()


def test_writer_leaves_nothing_on_error_and_keeps_foreign_directories(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with CheckpointWriter(out) as w:
            w.add("a", torch.ones(2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (out / "mine").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="other than a checkpoint"):
        CheckpointWriter(out)
    save_tensors(tmp_path / "p", {"a": torch.ones(2)}, max_shard_size="1GB")
    save_tensors(tmp_path / "p", {"a": torch.zeros(2)}, max_shard_size="1GB")  # replaced
    with open_checkpoint(tmp_path / "p") as ck:
        assert torch.equal(ck.get("a"), torch.zeros(2))
