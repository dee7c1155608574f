"""The verbs on checkpoints as users keep them: sharded, half precision, Hub directories."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from weightspace.arch import build
from weightspace.checkpoint import open_checkpoint, save_checkpoint

REF = "resnet20?width=1&norm=bn"


def _half_models(tmp_path, n=3):
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        s = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
             for k, v in build(REF).state_dict().items()}
        p = tmp_path / f"m{i}"
        save_checkpoint(p, s, REF, max_shard_size="100KB")
        paths.append(p)
    return paths


def _read(path) -> dict:
    with open_checkpoint(path) as ck:
        return {k: ck.get(k) for k in ck.keys()}


def test_streamed_mean_equals_the_in_memory_mean_bitwise(tmp_path):
    from weightspace.merge.files import merge_checkpoints
    paths = _half_models(tmp_path)
    rep = merge_checkpoints(paths, tmp_path / "s", method="mean", post="none",
                            max_shard_size="100KB")
    assert rep["streamed"] and rep["dtype"] == "kept (bfloat16)" and rep["peak_rss_mb"] > 0
    merge_checkpoints(paths, tmp_path / "m.safetensors", method="mean", stream=False)
    s, m = _read(tmp_path / "s"), _read(tmp_path / "m.safetensors")
    assert s.keys() == m.keys()
    assert all(s[k].dtype == m[k].dtype and torch.equal(s[k], m[k]) for k in s)
    assert s["fc.weight"].dtype == torch.bfloat16
    ref = torch.stack([_read(p)["fc.weight"].float() for p in paths]).mean(0).bfloat16()
    assert torch.equal(s["fc.weight"], ref)
    assert (tmp_path / "s" / "model.safetensors.index.json").is_file()
    card = (tmp_path / "s" / "README.md").read_text()
    assert "mean" in card and str(paths[0]) in card


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "weightspace.cli.main", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                               "PATH": "/usr/bin:/bin"})


def test_align_sharded_timm_dirs_without_arch_equals_single_files(tmp_path):
    from timm.models._hub import save_config_for_hf
    outs = []
    for i in range(2):
        torch.manual_seed(10 + i)
        model = build("timm:test_resnet?num_classes=5")
        single = tmp_path / f"s{i}.safetensors"
        save_checkpoint(single, model, "timm:test_resnet?num_classes=5")
        d = tmp_path / f"d{i}"
        from huggingface_hub import save_torch_state_dict
        d.mkdir()
        save_torch_state_dict(model.state_dict(), d, max_shard_size="30KB")
        save_config_for_hf(model, str(d / "config.json"))
        outs.append((single, d))
    r = _cli("align", outs[0][1], outs[1][1], "--out", tmp_path / "ad", "--json", "--verbose",
             "--max-shard-size", "40KB", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["max_shard_size"] == "40KB" and "peak memory (RSS)" in r.stderr
    r = _cli("align", outs[0][0], outs[1][0], "--out", tmp_path / "as.safetensors", "--json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = _read(tmp_path / "ad"), _read(tmp_path / "as.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "ad" / "config.json").read_text())["architecture"] == \
        "test_resnet"


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    good = tmp_path / "g.safetensors"
    save_checkpoint(good, build("mlp:4-8-2"), "mlp:4-8-2")
    r = _cli("merge", good, tmp_path / "empty", "--method", "mean", "--out", tmp_path / "o",
             cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "directory with no weights" in r.stderr and not (tmp_path / "o").exists()
    r = _cli("merge", good, good, "--method", "mean", "--out", tmp_path / "o",
             "--max-shard-size", "lots", cwd=tmp_path)
    assert r.returncode == 2 and "max_shard_size" in r.stderr and not (tmp_path / "o").exists()


def test_zoo_import_and_eval_from_hub_dirs_and_lightning_keep_precision(tmp_path):
    from weightspace.zoo.evaluation import evaluate_zoo
    from weightspace.zoo.importer import import_zoo
    from weightspace.checkpoint import read_checkpoint
    from weightspace.zoo import HParams, train_zoo
    ref = "mlp:64-32-10"
    # trained models: an untrained one sits at chance and is imported as failed
    train_zoo(tmp_path / "src", ref, "digits", HParams(epochs=4), models=2, progress=False)
    trained = [read_checkpoint(p)[0] for p in sorted((tmp_path / "src" / "models").glob(
        "*.safetensors"))]
    s0 = {k: v.to(torch.float16) for k, v in trained[0].items()}
    save_checkpoint(tmp_path / "hub", s0, ref, max_shard_size="5KB")
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained[1].items()},
                "epoch": 2}, tmp_path / "run.ckpt")
    res = import_zoo([tmp_path / "hub", tmp_path / "run.ckpt"], tmp_path / "zoo", arch=ref,
                     dataset="digits")
    assert res["models"] == 2 and any("'model.'" in n for n in res["notes"])
    with open_checkpoint(tmp_path / "zoo" / "models" / "hub.safetensors") as ck:
        assert ck.dtype("1.weight") == torch.float16 and torch.equal(ck.get("1.weight"),
                                                                     s0["1.weight"])
    ev = evaluate_zoo(tmp_path / "zoo")
    assert len(ev["models"]) == 2 and 0 <= ev["mean_test_acc"] <= 1


def test_permuted_tensors_stream_what_apply_returns():
    from weightspace.symmetry import apply, random_perms, symmetry_of
    from weightspace.symmetry.structure import permuted_tensors
    model = build(REF).eval()
    spec = symmetry_of(model, torch.randn(1, 3, 32, 32), check=False)
    perms = random_perms(spec, seed=3)
    whole = apply(spec, perms, model.state_dict())
    streamed = dict(permuted_tensors(spec, perms, model.state_dict()))
    assert whole.keys() == streamed.keys()
    assert all(torch.equal(whole[k], streamed[k]) for k in whole)
    assert not all(torch.equal(whole[k], model.state_dict()[k]) for k in whole)
