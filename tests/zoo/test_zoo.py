"""Zoo training: batched == sequential, determinism, grid, resume, kill -9, lock, accelerate."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from weightspace.checkpoint import read_checkpoint
from weightspace.cli.main import main
from weightspace.zoo import (HParams, TrainError, Zoo, ZooError, load_dataset, metrics,
                             train_batched, train_sequential, train_zoo)

from ..conftest import rel_diff

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
MLP = "mlp:64-16-10"
BN = "resnet20?width=1&in_chans=1"
FAST = HParams(epochs=2, batch_size=64)


def quick(out, models=3, **kw):
    kw = {"arch": MLP, "dataset": "digits", "hp": FAST, "models": models, "progress": False,
          "batched": True, **kw}  # forced: an automatic choice may differ between two runs
    return train_zoo(out, **kw)


def files(zoo_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(zoo_dir, "models").glob("*"))}


# ---------------------------------------------------------------- the training maths
@pytest.mark.parametrize("arch", [MLP, BN])
def test_batched_equals_sequential_after_a_few_steps(arch):
    """Same seeds -> same init, same data order, same optimizer: same weights (BN too)."""
    d = load_dataset("digits")
    x, y = d["train"][0][:96], d["train"][1][:96]
    hp = HParams(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    batched = train_batched(arch, [3, 4], hp, x, y)
    for seed, b in zip([3, 4], batched):
        s = train_sequential(arch, seed, hp, x, y)[0]
        assert b.keys() == s.keys()
        for k in b:
            if b[k].is_floating_point():
                assert rel_diff(s[k], b[k]) < 1e-4, k
            else:
                assert torch.equal(s[k], b[k]), k
    assert not torch.equal(batched[0]["fc.weight" if arch == BN else "1.weight"],
                           batched[1]["fc.weight" if arch == BN else "1.weight"])


def test_batched_and_sequential_reach_the_same_accuracy():
    d = load_dataset("digits")
    x, y = d["train"]
    hp = HParams(epochs=8, batch_size=32)
    seeds = [0, 1, 2, 3]
    acc_b = [m["test_acc"] for m in metrics(MLP, train_batched(MLP, seeds, hp, x, y), d, "cpu")]
    acc_s = [m["test_acc"] for m in metrics(
        MLP, [train_sequential(MLP, s, hp, x, y)[0] for s in seeds], d, "cpu")]
    assert min(acc_b) > 0.85
    assert abs(sum(acc_b) - sum(acc_s)) / len(seeds) < 0.02


def test_dropout_models_train_batched_and_differ():
    d = load_dataset("digits")
    x, y = d["train"]
    states = train_batched("mlp:64-32-10?dropout=0.2", [0, 1], HParams(epochs=2), x, y)
    accs = [m["val_acc"] for m in metrics("mlp:64-32-10?dropout=0.2", states, d, "cpu")]
    assert min(accs) > 0.6


@pytest.mark.parametrize("bad,match", [
    ({"epochs": 0}, "epochs must be >= 1"), ({"lr": -1.0}, "lr must be a positive"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"batch_size": 2.5}, "batch_size must be int"),
])
def test_bad_hparams(bad, match):
    with pytest.raises(TrainError, match=match):
        HParams(**bad)


# ---------------------------------------------------------------- the zoo directory
def test_zoo_manifest_checkpoints_and_determinism(tmp_path):
    res = quick(tmp_path / "a", models=3, arch=BN, checkpoints_per_model=2)
    quick(tmp_path / "b", models=3, arch=BN, checkpoints_per_model=2)
    assert res["trained"] == 3 and res["done"] == 3
    assert files(tmp_path / "a") == files(tmp_path / "b")  # bitwise identical
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["arch"] == BN and m["dataset"]["splits"] == {"train": 1222, "val": 216, "test": 359}
    e = m["models"][0]
    assert e["id"] == "s0000" and e["seed"] == 0 and e["status"] == "done"
    assert set(e["metrics"]) >= {"train_acc", "val_acc", "test_acc", "train_loss"}
    assert e["hparams"]["epochs"] == 2 and [c["epoch"] for c in e["checkpoints"]] == [1]
    assert (tmp_path / "a" / e["checkpoints"][0]["file"]).is_file()
    state, arch, meta = read_checkpoint(tmp_path / "a" / e["file"])
    assert arch == BN and meta["seed"] == 0 and meta["metrics"] == e["metrics"]
    assert meta["zoo"]["settings_hash"] == m["settings_hash"]
    assert m["summary"]["mean_test_acc"] == pytest.approx(
        sum(x["metrics"]["test_acc"] for x in m["models"]) / 3)


def test_chunks_and_grid_record_hyperparameters(tmp_path):
    grid = {"lr": [0.001, 0.003], "act": ["relu", "gelu"]}
    res = quick(tmp_path / "g", models=2, grid=grid, chunk_size=1)
    assert res["trained"] == 8
    m = Zoo(tmp_path / "g").read()
    ids = [e["id"] for e in m["models"]]
    assert ids[:2] == ["c00-s0000", "c00-s0001"] and len(set(ids)) == 8
    combos = {(e["hparams"]["lr"], e["hparams"]["act"]) for e in m["models"]}
    assert combos == {(a, b) for a in grid["lr"] for b in grid["act"]}
    for e in m["models"]:
        _, arch, meta = read_checkpoint(tmp_path / "g" / e["file"])
        assert f"act={e['hparams']['act']}" in arch and meta["zoo"]["hparams"] == e["hparams"]


def test_toml_grid_via_cli(tmp_path, capsys):
    g = tmp_path / "grid.toml"
    g.write_text('weight_decay = [0.0, 0.0001]\noptimizer = "adamw"\n')
    assert main(["zoo", "train", "--arch", MLP, "--models", "1", "--epochs", "1",
                 "--grid", str(g), "--out", str(tmp_path / "z"), "--no-progress"]) == 0
    m = Zoo(tmp_path / "z").read()
    assert [(e["hparams"]["weight_decay"], e["hparams"]["optimizer"]) for e in m["models"]] \
        == [(0.0, "adamw"), (0.0001, "adamw")]
    g.write_text("lr = [")
    assert main(["zoo", "train", "--arch", MLP, "--models", "1", "--grid", str(g),
                 "--out", str(tmp_path / "z2")]) == 2
    assert "cannot parse" in capsys.readouterr().err
    assert not (tmp_path / "z2").exists()


def test_resume_extends_and_skips(tmp_path):
    quick(tmp_path / "z", models=2)
    before = files(tmp_path / "z")
    res = quick(tmp_path / "z", models=4)
    assert res["trained"] == 2 and res["skipped"] == 2 and res["done"] == 4
    after = files(tmp_path / "z")
    assert all(after[k] == v for k, v in before.items())
    assert quick(tmp_path / "z", models=4)["trained"] == 0


def test_recover_model_whose_manifest_update_was_lost(tmp_path):
    quick(tmp_path / "z", models=2)
    zoo = Zoo(tmp_path / "z")

    def forget(m):
        m["models"][1]["status"] = "pending"
        m["models"][1].pop("metrics")
    zoo.update(forget)
    (tmp_path / "z" / "models" / ".s0000.safetensors.abc.tmp").write_bytes(b"half")
    res = quick(tmp_path / "z", models=2)
    assert res["trained"] == 0 and Zoo(tmp_path / "z").entry("s0001")["status"] == "done"
    assert not list((tmp_path / "z" / "models").glob(".*.tmp"))


def test_different_settings_refused_unless_force(tmp_path):
    quick(tmp_path / "z", models=2)
    with pytest.raises(ZooError, match="different settings.*lr.*force=True"):
        quick(tmp_path / "z", models=2, hp=HParams(epochs=2, batch_size=64, lr=0.01))
    res = quick(tmp_path / "z", models=1, hp=HParams(epochs=2, batch_size=64, lr=0.01),
                force=True)
    assert res["trained"] == 1 and len(files(tmp_path / "z")) == 1


def test_second_writer_refused(tmp_path):
    quick(tmp_path / "z", models=1)
    with Zoo(tmp_path / "z").writer_lock():
        with pytest.raises(ZooError, match="being written by another process"):
            quick(tmp_path / "z", models=2)
    assert quick(tmp_path / "z", models=2)["trained"] == 1


# ---------------------------------------------------------------- CLI
def test_cli_list_and_eval_json(tmp_path, capsys):
    out = str(tmp_path / "z")
    assert main(["zoo", "train", "--arch", MLP, "--models", "2", "--epochs", "2", "--out", out,
                 "--no-progress"]) == 0
    assert "trained 2 model(s)" in capsys.readouterr().out
    assert main(["zoo", "list", out]) == 0
    table = capsys.readouterr().out
    assert "s0001" in table and "test_acc" in table
    assert main(["zoo", "list", out, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert main(["zoo", "eval", out, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in ev["models"]] == ["s0000", "s0001"]
    for r, e in zip(ev["models"], listed["models"]):
        assert r["test_acc"] == pytest.approx(e["metrics"]["test_acc"])
        assert r["val_acc"] == pytest.approx(e["metrics"]["val_acc"])
    assert ev["mean_test_acc"] == pytest.approx(sum(r["test_acc"] for r in ev["models"]) / 2)


@pytest.mark.parametrize("args,match", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "mnist", "--data-root", "{tmp}/nothing"], "missing train-images-idx3-ubyte"),
    (["--arch", "mlp:784-10"], "does not accept digits?val_size=432 inputs"),
    (["--models", "0"], "--models: 0 is out of range"),
    (["--epochs", "0"], "--epochs: 0 is out of range"),
    (["--arch", "mlp:64-3"], "has 10 classes"),
])
def test_cli_bad_input_one_line_nothing_written(tmp_path, capsys, args, match, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_OFFLINE", "1")
    out = tmp_path / "z"
    argv = ["zoo", "train", "--arch", MLP, "--models", "1", "--out", str(out), "--no-progress"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err and err.startswith("weightspace zoo train: error:")
    assert not out.exists()


def test_cli_existing_zoo_with_other_settings(tmp_path, capsys):
    out = str(tmp_path / "z")
    base = ["zoo", "train", "--arch", MLP, "--models", "1", "--epochs", "1", "--out", out,
            "--no-progress"]
    assert main(base) == 0
    before = Path(out, "manifest.json").read_text()
    assert main(base + ["--lr", "0.1"]) == 2
    assert "different settings" in capsys.readouterr().err
    assert Path(out, "manifest.json").read_text() == before
    assert main(base + ["--lr", "0.1", "--force"]) == 0


def test_cli_default_dataset_new_zoo_and_resume(tmp_path, capsys):
    """No --dataset: a new zoo gets digits with a 432-example validation split (recorded by
    that name); an existing zoo keeps its own dataset, so resuming one made on plain
    `digits` (216) neither re-carves its splits nor counts as other settings."""
    base = ["zoo", "train", "--arch", MLP, "--models", "1", "--epochs", "1", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "new")]) == 0
    d = Zoo(tmp_path / "new").read()["dataset"]
    assert d["name"] == "digits?val_size=432"
    assert d["splits"] == {"train": 1006, "val": 432, "test": 359}
    assert "note: --dataset digits?val_size=432 (default: 432 validation examples" in \
        capsys.readouterr().err
    old = str(tmp_path / "old")
    assert main(base + ["--dataset", "digits", "--out", old]) == 0
    assert "note: --dataset" not in capsys.readouterr().err  # given, not a default
    assert main(["zoo", "train", "--arch", MLP, "--models", "2", "--epochs", "1",
                 "--no-progress", "--out", old]) == 0
    assert "note: --dataset digits (default: the zoo's own)" in capsys.readouterr().err
    m = Zoo(old).read()
    assert m["dataset"]["name"] == "digits" and m["dataset"]["splits"]["val"] == 216
    assert [e["status"] for e in m["models"]] == ["done", "done"]


def test_eval_of_missing_zoo(tmp_path, capsys):
    assert main(["zoo", "eval", str(tmp_path)]) == 2
    assert "is not a zoo" in capsys.readouterr().err


# ---------------------------------------------------------------- processes
def _cli(*args):
    return [PY, "-m", "weightspace.cli.main", *args]


def test_kill_dash_nine_loses_only_models_in_flight(tmp_path):
    args = ["zoo", "train", "--arch", "mlp:64-64-64-10", "--models", "8", "--epochs", "12",
            "--no-batched", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a second spinning thread crawls under load
    ref = subprocess.run(_cli(*args, "--out", str(tmp_path / "ref")), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "z"
    proc = subprocess.Popen(_cli(*args, "--out", str(out)), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a generous bound: a loaded machine is slow, not wrong
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = sum(e["status"] == "done" for e in Zoo(out).read()["models"])
        except ZooError:
            done = 0  # not created yet: the manifest itself is never half-written
        if done >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= done < 8, "the run finished before it could be killed"
    m = Zoo(out).read()  # valid JSON after kill -9
    finished = sum(e["status"] == "done" for e in m["models"])
    rerun = subprocess.run(_cli(*args, "--out", str(out)), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} already done" in rerun.stdout or \
        f"{finished + 1} already done" in rerun.stdout  # +1: file landed, manifest not yet
    assert files(out) == files(tmp_path / "ref")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_two_processes_identical_to_one(tmp_path):
    args = ["zoo", "train", "--arch", BN, "--models", "4", "--epochs", "1", "--chunk-size",
            "1", "--batch-size", "128", "--no-progress"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}  # same threads
    one = subprocess.run(_cli(*args, "--out", str(tmp_path / "one")), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert one.returncode == 0, one.stderr
    launcher = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "weightspace.cli.main"]
    two = subprocess.run(launcher + args + ["--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "trained 4 model(s)" in two.stdout
    assert files(tmp_path / "one") == files(tmp_path / "two")
    m = Zoo(tmp_path / "two").read()
    # ten steps of a ResNet-20 may end near chance (recorded failed): finished either way
    assert [e["status"] for e in m["models"]] == \
        [e["status"] for e in Zoo(tmp_path / "one").read()["models"]]
    assert all(e["status"] in ("done", "failed") for e in m["models"])
    assert [e["process"] for e in m["models"]] == [0, 1, 0, 1]  # chunk i -> process i % 2
