"""Datasets with fixed train / validation / test splits, held in memory as tensors.

* ``digits`` — scikit-learn's bundled 8x8 handwritten digits (1,797 images): the embedded
  default, always offline. It has no official test split, so one is carved with a fixed seed.
* ``fashion-mnist``, ``mnist`` — IDX files (gzip or plain) read directly from ``data_root``
  (flat, or torchvision's ``<Name>/raw`` layout). ``fashion-mnist`` defaults to
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
* ``cifar10``, ``cifar100`` — the *binary* CIFAR releases (``cifar-10-batches-bin``); the
  pickled python release is refused because weightspace never unpickles.

Missing files are downloaded (through torchvision's downloader) only when ``download`` is
true, ``WEIGHTSPACE_OFFLINE`` is unset and a network is there; otherwise the error says
which files to put where.

Validation is always carved from the training part with a fixed seed; inputs are normalised
with per-channel statistics of the *train* split. Model selection must only look at ``train``
and ``val``. A name may carry options like an architecture reference:
``fashion-mnist?train_size=5000`` (a fixed subset of the train split), ``val_size=N``.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
import torch

from ..arch import parse_value
from ..errors import WeightspaceError


class DatasetError(WeightspaceError):
    """An unknown dataset, one whose files are missing, or one that does not fit a model."""


@dataclass
class Dataset:
    name: str                           # the full reference, options included
    input_shape: tuple[int, ...]        # one example, e.g. (1, 8, 8)
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (x [N, *shape], y [N])
    info: dict = field(default_factory=dict)              # split seed, normalisation, source
    indices: dict[str, torch.Tensor] = field(default_factory=dict)  # rows of the source part

    def __getitem__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r}; "
                               f"splits: {sorted(self.splits)}")
        return self.splits[split]

    def describe(self) -> dict:
        """What a manifest records about the data (JSON-ready)."""
        return {"name": self.name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes,
                "splits": {k: len(v[1]) for k, v in self.splits.items()}, **self.info}


SPLIT_SEED = 0          # seed of the train -> train/val carve (and digits' test carve)
DEFAULT_ROOT = Path(os.environ.get("WEIGHTSPACE_DATA", "~/.cache/weightspace/data")).expanduser()


def _carve(x, y, x_test, y_test, name, shape, classes, val_size, train_size, source) -> Dataset:
    """Split official train into train/val with a fixed seed; normalise with train stats."""
    n = len(y)
    if not 0 < val_size < n:
        raise DatasetError(f"{name}: val_size must be between 1 and {n - 1}, got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    val, train = order[:val_size], order[val_size:]
    if train_size is not None:
        if not 0 < train_size <= len(train):
            raise DatasetError(f"{name}: train_size must be between 1 and {len(train)}, "
                               f"got {train_size}")
        train = train[:train_size]
    train = train.sort().values  # keep the file order inside each split
    val = val.sort().values
    xt = x[train]
    dims = [0] + list(range(2, xt.dim()))
    mean = xt.mean(dim=dims, keepdim=True)[0]
    std = xt.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)

    def norm(a):
        return ((a - mean) / std).contiguous()

    splits = {"train": (norm(xt), y[train]), "val": (norm(x[val]), y[val]),
              "test": (norm(x_test), y_test)}
    info = {"split_seed": SPLIT_SEED, "source": source,
            "normalisation": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}}
    indices = {"train": train, "val": val, "test": torch.arange(len(y_test))}
    return Dataset(name, tuple(shape), classes, splits, info, indices)


def _digits(name, root, download, val_size=216, train_size=None, test_size=359):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    test, rest = order[:test_size].sort().values, order[test_size:].sort().values
    return _carve(x[rest], y[rest], x[test], y[test], name, (1, 8, 8), 10, val_size,
                  train_size, "sklearn.datasets.load_digits")


# ---------------------------------------------------------------- IDX (MNIST-style) files
_IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (plain or gzip), checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise DatasetError(f"{path}: IDX header says shape {shape} ({expected} bytes) but "
                           f"the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _find(root: Path, subdirs: list[str], stem: str) -> Path | None:
    for d in subdirs:
        for suffix in ("", ".gz"):
            p = root / d / (stem + suffix)
            if p.is_file():
                return p
    return None


def _idx_dataset(name, root, download, tv_name, default_root, val_size=5000,
                 train_size=None):
    root = Path(root or default_root).expanduser()
    subdirs = [".", f"{tv_name}/raw", "raw"]
    paths = [_find(root, subdirs, s) for s in _IDX_FILES]
    if None in paths and download:
        _torchvision_download(tv_name, root, name)
        paths = [_find(root, subdirs, s) for s in _IDX_FILES]
    if None in paths:
        missing = [s for s, p in zip(_IDX_FILES, paths) if p is None]
        raise DatasetError(
            f"{name}: missing {', '.join(m + '[.gz]' for m in missing)} under {root} "
            f"(looked in {root} and {root / tv_name / 'raw'}); put the four IDX files there, "
            f"pass `data_root`" + ("" if not name.startswith("fashion-mnist") else
                                       ", or `apt-get install dataset-fashion-mnist`")
            + ("" if download else ", or allow a download"))
    xi, yi, xt, yt = (read_idx(p) for p in paths)
    if xi.shape[0] != yi.shape[0] or xt.shape[0] != yt.shape[0] or xi.shape[1:] != xt.shape[1:]:
        raise DatasetError(f"{name}: image and label files under {root} do not match "
                           f"({xi.shape}, {yi.shape}, {xt.shape}, {yt.shape})")

    def img(a):
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    def lab(a):
        return torch.from_numpy(a.astype(np.int64))

    return _carve(img(xi), lab(yi), img(xt), lab(yt), name, (1, *xi.shape[1:]), 10,
                  val_size, train_size, str(root))


def _torchvision_download(tv_name: str, root: Path, name: str) -> None:
    import torchvision
    try:
        getattr(torchvision.datasets, tv_name)(str(root), train=True, download=True)
        getattr(torchvision.datasets, tv_name)(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure means "offline"
        raise DatasetError(f"{name}: files not found under {root} and the download failed "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''});"
                           f" put the files there by hand or pass `data_root`") from None


# ---------------------------------------------------------------- CIFAR (binary release)
_CIFAR = {
    "cifar10": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                ["test_batch.bin"], 1, 10,
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 100,
                 "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
}


def _cifar(name, root, download, val_size=5000, train_size=None):
    folder, train_files, test_files, n_label, classes, url = _CIFAR[name.partition("?")[0]]
    root = Path(root or DEFAULT_ROOT).expanduser()
    base = root / folder
    files = train_files + test_files
    if not all((base / f).is_file() for f in files) and download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive
            download_and_extract_archive(url, str(root))
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{name}: files not found under {base} and the download failed "
                               f"({type(e).__name__}); download {url} and extract it into "
                               f"{root}, or pass `data_root`") from None
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        pickled = (root / folder.replace("-bin", "-py").replace("-binary", "-python"))
        hint = (f" ({pickled} is the pickled release, which weightspace never unpickles)"
                if pickled.exists() else "")
        raise DatasetError(f"{name}: missing {', '.join(missing)} in {base}{hint}; download "
                           f"{url} and extract it into {root}, or pass `data_root`")

    def read(fnames):
        rec = n_label + 3072
        raw = b"".join((base / f).read_bytes() for f in fnames)
        if len(raw) % rec:
            raise DatasetError(f"{name}: {base} holds a truncated record "
                               f"({len(raw)} bytes is not a multiple of {rec})")
        a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
        x = torch.from_numpy(a[:, n_label:].astype(np.float32) / 255.0).view(-1, 3, 32, 32)
        return x, torch.from_numpy(a[:, n_label - 1].astype(np.int64))  # the fine label

    x, y = read(train_files)
    xt, yt = read(test_files)
    return _carve(x, y, xt, yt, name, (3, 32, 32), classes, val_size, train_size, str(base))


DATASETS = {
    "digits": _digits,
    "fashion-mnist": lambda name, root, download, **kw: _idx_dataset(
        name, root, download, "FashionMNIST", "/usr/share/datasets/fashion-mnist", **kw),
    "mnist": lambda name, root, download, **kw: _idx_dataset(
        name, root, download, "MNIST", DEFAULT_ROOT, **kw),
    "cifar10": _cifar,
    "cifar100": _cifar,
}
_OPTIONS = {"train_size", "val_size"}

# What `zoo train` trains on when no --dataset is given. digits' own split keeps 216
# validation examples (a zoo records its dataset by name, so what plain `digits` means
# never changes under an existing zoo); a zoo that feeds a generator needs twice that to
# show a novel sampling setting within a point of the zoo (docs/results.md, "Held-out
# seeds, session 6": MLP 3 of 3 zoo seeds meet every target at 432 against 1 of 3 at 216).
ZOO_DEFAULT = "digits?val_size=432"


def load_dataset(ref: str, data_root: str | os.PathLike | None = None,
                 download: bool = True) -> Dataset:
    """Load ``NAME`` or ``NAME?train_size=N&val_size=M`` with its fixed splits.

    Set ``WEIGHTSPACE_OFFLINE=1`` to never attempt a download."""
    download = download and os.environ.get("WEIGHTSPACE_OFFLINE", "") in ("", "0")
    name, _, query = str(ref).strip().partition("?")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    try:
        opts = {k: parse_value(v) for k, v in parse_qsl(query, strict_parsing=bool(query))}
    except ValueError:
        raise DatasetError(f"{ref!r}: options must look like ?key=value&key2=value2") from None
    bad = sorted(set(opts) - _OPTIONS | {k for k, v in opts.items() if not isinstance(v, int)})
    if bad:
        raise DatasetError(f"{ref!r}: unknown or non-integer option(s) {bad}; "
                           f"options: {sorted(_OPTIONS)}")
    return DATASETS[name](str(ref).strip(), data_root, download, **opts)


def dataset_of(model: torch.nn.Module, name: str | None = None, data_root=None,
               required: bool = True, why: str = "this needs data"):
    """The dataset ``name``, or the one the model's checkpoint records, checked to fit the
    model; None when there is none and it is not ``required``."""
    name = name or getattr(model, "weightspace_meta", {}).get("dataset")
    if isinstance(name, dict):  # a manifest-style record {"name": ..., ...}
        name = name.get("name")
    if name is not None and not isinstance(name, str):
        raise DatasetError(f"the checkpoint's metadata names its dataset with a "
                           f"{type(name).__name__}, not a dataset name: give a `dataset`")
    if not name:
        if required:
            raise DatasetError(f"{why}: give a `dataset` (the checkpoint records none)")
        return None
    data = load_dataset(name, data_root)
    check_fits(model, data, getattr(model, "weightspace_arch", ""))
    return data


def check_fits(model: torch.nn.Module, data: Dataset, arch: str = "") -> None:
    """Refuse, before training, a model whose input or output does not fit the dataset."""
    x = data["train"][0][:2]
    what = f"architecture {arch!r}" if arch else "the model"
    problem = getattr(model, "input_problem", None)  # a built-in's own, clearer message
    why = problem(tuple(x.shape[1:])) if callable(problem) else None
    if why:
        raise DatasetError(f"{what} does not accept {data.name} inputs of shape "
                           f"{tuple(data.input_shape)}: {why}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - any failure here is a mismatch
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{what} does not accept {data.name} inputs of shape "
                           f"{tuple(data.input_shape)}: {msg}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), data.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DatasetError(f"{what} outputs {shape} for a batch of {len(x)}, but {data.name} "
                           f"has {data.num_classes} classes (expected ({len(x)}, "
                           f"{data.num_classes}))")
