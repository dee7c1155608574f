"""Datasets: fixed disjoint splits, IDX and CIFAR-binary readers, offline errors, fit checks."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from weightspace.arch import build
from weightspace.zoo import DatasetError, check_fits, load_dataset

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _disjoint(d):
    tr, va = set(d.indices["train"].tolist()), set(d.indices["val"].tolist())
    return not tr & va


def test_digits_splits_fixed_disjoint_normalised():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    sizes = {k: len(v[1]) for k, v in d.splits.items()}
    assert sizes == {"train": 1222, "val": 216, "test": 359}
    assert sum(sizes.values()) == 1797 and _disjoint(d)
    x = d["train"][0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    again = load_dataset("digits")
    for k in d.splits:
        assert torch.equal(d[k][0], again[k][0]) and torch.equal(d[k][1], again[k][1])
    with pytest.raises(DatasetError, match="no split"):
        d["holdout"]


def test_subset_option_and_bad_options():
    d = load_dataset("digits?train_size=100&val_size=50")
    assert len(d["train"][1]) == 100 and len(d["val"][1]) == 50
    assert d.name == "digits?train_size=100&val_size=50"
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="unknown or non-integer option"):
        load_dataset("digits?shuffle=1")
    with pytest.raises(DatasetError, match="train_size must be between"):
        load_dataset("digits?train_size=0")


def _write_idx(path: Path, arr: np.ndarray, gz: bool):
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = head + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(root: Path, gz: bool, n=60, n_test=20):
    rng = np.random.default_rng(0)
    for stem, m in (("train", n), ("t10k", n_test)):
        _write_idx(root / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (m, 28, 28),
                                                                    dtype=np.uint8), gz)
        _write_idx(root / f"{stem}-labels-idx1-ubyte", (np.arange(m) % 10).astype(np.uint8), gz)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", [".", "MNIST/raw"])
def test_idx_reader_flat_and_torchvision_layout(tmp_path, gz, layout):
    _fake_mnist(tmp_path / layout, gz)
    d = load_dataset("mnist?val_size=10", data_root=tmp_path, download=False)
    assert d.input_shape == (1, 28, 28)
    assert {k: len(v[1]) for k, v in d.splits.items()} == {"train": 50, "val": 10, "test": 20}
    assert _disjoint(d)


def test_offline_error_names_files_and_place(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg and "`data_root`" in msg
    assert "\n" not in msg


def test_corrupt_idx_named(tmp_path):
    _fake_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte: IDX header says"):
        load_dataset("mnist?val_size=10", data_root=tmp_path, download=False)


def test_cifar_binary_and_pickled_release_refused(tmp_path):
    base = tmp_path / "cifar-10-batches-bin"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}.bin", 4) for i in range(1, 6)), ("test_batch.bin", 5)]:
        rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], 1)
        (base / name).write_bytes(rec.astype(np.uint8).tobytes())
    d = load_dataset("cifar10?val_size=5", data_root=tmp_path, download=False)
    assert d.input_shape == (3, 32, 32) and len(d["train"][1]) == 15 and len(d["test"][1]) == 5
    other = tmp_path / "other"
    (other / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DatasetError, match="never unpickles"):
        load_dataset("cifar10", data_root=other, download=False)


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian package "
                    "dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")
def test_fashion_mnist_from_debian_package():
    d = load_dataset("fashion-mnist", download=False)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert {k: len(v[1]) for k, v in d.splits.items()} == {"train": 55000, "val": 5000,
                                                           "test": 10000}
    assert _disjoint(d)
    assert sorted(torch.bincount(d["test"][1]).tolist()) == [1000] * 10


@pytest.mark.parametrize("arch,match", [
    ("mlp:784-10", "does not accept digits inputs"),
    ("resnet20?width=1", "does not accept digits inputs"),  # 3 input channels
    ("mlp:64-7", "has 10 classes"),
])
def test_arch_dataset_mismatch(arch, match):
    with pytest.raises(DatasetError, match=match):
        check_fits(build(arch), load_dataset("digits"), arch)


def test_fits():
    check_fits(build("resnet20?width=1&in_chans=1"), load_dataset("digits"))
