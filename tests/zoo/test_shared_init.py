"""Shared-initialisation and spawned zoos, training continued from a saved state, zoo
health (near-chance models recorded as failed), and the vgg11 input-size error."""
import json

import pytest
import torch

from weightspace.checkpoint import read_checkpoint
from weightspace.cli.main import main
from weightspace.zoo import HParams, Zoo, ZooError, load_dataset, train_zoo
from weightspace.zoo.health import chance_threshold, trained_status
from weightspace.zoo.spawn import continue_training, load_start, parent_path
from weightspace.zoo.store import summarise
from weightspace.zoo.train import (Start, init_model, train_batched, train_sequential,
                                   train_sequential_from)

MLP = "mlp:64-16-10"
BN = "resnet20?width=0.25&in_chans=1"


def _states(zoo_dir, n):
    return [read_checkpoint(f"{zoo_dir}/models/s{i:04d}.safetensors")[0] for i in range(n)]


@pytest.mark.parametrize("arch", [MLP, BN])
@pytest.mark.parametrize("batched", [True, False])
def test_shared_init_same_start_bit_for_bit_and_differ_after_steps(digits, arch, batched):
    x, y = digits["train"][0][:64], digits["train"][1][:64]
    hp = HParams(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    start = Start(init_model(arch, 11).state_dict())
    if batched:
        out = train_batched(arch, [1, 2, 3], hp, x, y, starts=[start] * 3)
    else:
        out = [train_sequential(arch, s, hp, x, y, start=start)[0] for s in (1, 2, 3)]
    # the first step already sees another half of the data: the models differ, by far
    # more than floating-point noise
    key = next(k for k, v in out[0].items() if v.dim() == 2)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (out[a][key] - out[b][key]).abs().max() > 1e-3
    # and the start they shared is seed 11's initialisation, bit for bit (zero steps)
    again = train_sequential_from(arch, 5, hp, x, y, start=start, until=0)[0][0]
    assert all(torch.equal(again[k], v) for k, v in init_model(arch, 11).state_dict().items())


def test_shared_init_zoo_records_and_shares_initial_weights(tmp_path):
    hp = HParams(epochs=1, batch_size=64)
    train_zoo(tmp_path / "z", MLP, "digits", hp, models=3, seed0=4, shared_init=9,
              batched=True, progress=False)
    m = Zoo(tmp_path / "z").read()
    assert m["settings"]["init"] == {"kind": "shared", "seed": 9}
    assert all(e["init"] == {"kind": "shared", "seed": 9} for e in m["models"])
    _, _, meta = read_checkpoint(tmp_path / "z" / "models" / "s0004.safetensors")
    assert meta["zoo"]["init"]["seed"] == 9 and meta["seed"] == 4
    # the initial weights every model started from: seed 9's, bit for bit
    ref = init_model(MLP, 9).state_dict()
    x, y = load_dataset("digits")["train"]
    for seed, s in zip((4, 5, 6), _states_ids(tmp_path / "z", ("s0004", "s0005", "s0006"))):
        redo = train_sequential(MLP, seed, hp, x, y, start=Start(ref))[0]
        assert all(torch.allclose(redo[k], s[k], atol=1e-5) for k in s)
    # an independent zoo keeps its old settings (no init key: same hash as before)
    train_zoo(tmp_path / "i", MLP, "digits", hp, models=1, batched=True, progress=False)
    assert "init" not in Zoo(tmp_path / "i").read()["settings"]


def _states_ids(zoo_dir, ids):
    return [read_checkpoint(f"{zoo_dir}/models/{i}.safetensors")[0] for i in ids]


@pytest.mark.parametrize("batched", [True, False])
def test_spawned_models_equal_the_parent_at_branch_time(tmp_path, batched, digits):
    hp = HParams(epochs=2, batch_size=256, optimizer="sgd", lr=0.05, schedule="cosine")
    train_zoo(tmp_path / "z", MLP, "digits", hp, models=3, spawn_epoch=1, batched=batched,
              progress=False, checkpoints_per_model=2)
    zoo = Zoo(tmp_path / "z")
    m = zoo.read()
    assert m["settings"]["init"] == {"kind": "spawn", "seed": 0, "spawn_epoch": 1}
    parent, arch, meta = load_start(parent_path(zoo, 0))
    assert parent.epoch == 1 and parent.optimizer is not None and arch == MLP
    # the parent is seed 0 trained one epoch of the recipe
    x, y = digits["train"]
    ref, _ = train_sequential_from(MLP, 0, hp, x, y, until=1)
    assert all(torch.equal(ref[0][k], parent.state[k]) for k in ref[0])
    # every model branched from it: continuing the parent with a model's seed is the model
    for e in m["models"]:
        assert e["status"] == "done" and e["checkpoints"] == []  # snapshot 1 = the branch
        cont = train_sequential(MLP, e["seed"], hp, x, y, start=parent)[0]
        got = read_checkpoint(tmp_path / "z" / e["file"])[0]
        assert all(torch.allclose(cont[k], got[k], atol=1e-5) for k in got)
    a, b = _states(tmp_path / "z", 2)
    assert not torch.equal(a["1.weight"], b["1.weight"])
    # resume reuses the parent; a spawn epoch that leaves nothing to train is refused
    before = parent_path(zoo, 0).read_bytes()
    assert train_zoo(tmp_path / "z", MLP, "digits", hp, models=4, spawn_epoch=1,
                     batched=batched, progress=False,
                     checkpoints_per_model=2)["trained"] == 1
    assert parent_path(zoo, 0).read_bytes() == before
    with pytest.raises(ZooError, match="spawn_epoch 2 must be below"):
        train_zoo(tmp_path / "y", MLP, "digits", hp, models=2, spawn_epoch=2, progress=False)
    assert not (tmp_path / "y").exists()


def test_continue_training_equals_uninterrupted_run(tmp_path, digits):
    """A snapshot at epoch 1 continued to epoch 2 (optimizer state, data order and schedule
    carried on) is the model trained 2 epochs in one go."""
    hp = HParams(epochs=2, batch_size=128, optimizer="adam", schedule="cosine")
    train_zoo(tmp_path / "z", MLP, "digits", hp, models=1, checkpoints_per_model=2,
              batched=False, progress=False)
    zoo = Zoo(tmp_path / "z")
    snap = zoo.root / zoo.entry("s0000")["checkpoints"][0]["file"]
    start, _, _ = load_start(snap)
    assert start.epoch == 1 and start.optimizer is None  # snapshots keep weights only
    x, y = digits["train"]
    mid, opt = train_sequential_from(MLP, 0, hp, x, y, until=1)
    from weightspace.zoo.spawn import save_start
    save_start(tmp_path / "mid.safetensors", Start(mid[0], 1, opt[0]), MLP,
               {"seed": 0, "zoo": {"hparams": hp.to_dict()}})
    done = continue_training(tmp_path / "mid.safetensors", digits)
    final = read_checkpoint(zoo.model_path("s0000"))[0]
    assert done.epoch == 2 and all(torch.equal(done.state[k], final[k]) for k in final)


def test_cli_shared_init_and_spawn(tmp_path, capsys):
    assert main(["zoo", "train", "--arch", MLP, "--models", "2", "--epochs", "2",
                 "--spawn-epoch", "1", "--seed0", "3", "--no-progress", "--batched",
                 "--out", str(tmp_path / "s")]) == 0
    assert "shared initialisation is seed 3" in capsys.readouterr().err
    assert Zoo(tmp_path / "s").read()["settings"]["init"]["seed"] == 3
    assert main(["zoo", "train", "--arch", MLP, "--models", "2", "--epochs", "1",
                 "--spawn-epoch", "1", "--no-progress", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "spawn_epoch 1 must be below" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "t").exists()


# ---------------------------------------------------------------- zoo health
def test_near_chance_models_are_failed_and_said_in_one_line(tmp_path, capsys):
    assert chance_threshold(10) == pytest.approx(0.19)
    assert trained_status({"val_acc": 0.15}, 10) == "failed"
    assert trained_status({"val_acc": 0.5}, 10) == "done"
    assert trained_status({}, 10) == "done"
    # lr far too high: SGD diverges to NaN or sits at chance
    assert main(["zoo", "train", "--arch", "mlp:64-16-10?act=tanh", "--models", "3",
                 "--epochs", "1", "--optimizer", "sgd", "--lr", "90", "--momentum", "0.99",
                 "--no-progress", "--batched", "--out", str(tmp_path / "z")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = Zoo(tmp_path / "z").read()
    failed = [e for e in m["models"] if e["status"] == "failed"]
    assert failed and m["summary"]["failed"] == len(failed)
    assert all(e["metrics"]["val_acc"] <= 0.19 for e in failed)
    assert out[-1].startswith(f"{len(failed)} of 3 model(s) ended near chance accuracy")
    assert Zoo(tmp_path / "z").models() == [e for e in m["models"] if e["status"] == "done"]


def test_manifest_without_failed_count_stays_readable(tmp_path, capsys):
    train_zoo(tmp_path / "z", MLP, "digits", HParams(epochs=1), models=1, progress=False,
              batched=True)
    p = tmp_path / "z" / "manifest.json"
    m = json.loads(p.read_text())
    m["summary"].pop("failed")
    p.write_text(json.dumps(m))
    assert main(["zoo", "list", str(tmp_path / "z")]) == 0
    assert "failed" not in summarise(m["models"]) or summarise(m["models"])["failed"] == 0


# ---------------------------------------------------------------- vgg on small inputs
def test_vgg_on_small_inputs_names_the_pools_option(tmp_path, capsys):
    assert main(["zoo", "train", "--arch", "vgg11?in_chans=1&width=0.125", "--models", "1",
                 "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pools=3" in err and "Output size" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "v").exists()


def test_imported_untrained_model_is_recorded_as_failed(tmp_path, capsys):
    from weightspace.checkpoint import save_checkpoint
    p = tmp_path / "init.safetensors"
    save_checkpoint(p, init_model(MLP, 0).state_dict(), MLP, {"dataset": "digits"})
    assert main(["zoo", "import", str(p), "--out", str(tmp_path / "z")]) == 0
    assert Zoo(tmp_path / "z").read()["models"][0]["status"] == "failed"
    assert "1 of 1 model(s) ended near chance accuracy" in capsys.readouterr().err
