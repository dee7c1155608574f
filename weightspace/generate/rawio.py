"""Safetensors read and written by hand, for files too large to hold: element ranges of a
tensor by ``pread`` (:class:`RawTensors`), and a file whose header is written first and
whose data is filled in later, some tensors copied in from elsewhere (the PCA basis).
The header is sorted and the data laid out as safetensors lays it out, so the bytes equal
``safetensors.torch.save``'s for the same tensors."""
from __future__ import annotations

import json
import math
import os

import torch

from .config import EncodingError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
          "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}


class RawTensors:
    """Element ranges of a safetensors file's tensors by ``pread`` (no mapping, no copy of
    anything but the range asked for)."""

    def __init__(self, path):
        self.path = path
        self.header, self.start = read_header(path)
        self.fd = os.open(str(path), os.O_RDONLY)

    def read(self, key: str, e0: int, e1: int) -> torch.Tensor:
        h = self.header[key]
        dtype = DTYPES[h["dtype"]]
        es = dtype.itemsize
        buf = bytearray((e1 - e0) * es)
        view, pos = memoryview(buf), self.start + h["data_offsets"][0] + e0 * es
        while len(view):
            n = os.preadv(self.fd, [view], pos)
            if n <= 0:
                raise EncodingError(f"{self.path}: truncated while reading {key!r}")
            view, pos = view[n:], pos + n
        return torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def data_offsets(tensors: dict, lazy: dict) -> dict:
    """name -> (begin, end) in the data section; larger items first (aligned, as
    safetensors orders them), then by name."""
    spec = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} | lazy
    order = sorted(spec, key=lambda k: (-spec[k][1].itemsize, k))
    out, pos = {}, 0
    for k in order:
        size = math.prod(spec[k][0]) * spec[k][1].itemsize
        out[k] = (pos, pos + size)
        pos += size
    return out


def write_header(fd, tensors: dict, lazy: dict, metadata: dict) -> int:
    """Write the u64 length + sorted JSON header; returns where the data section starts.
    The file is sized to its full length (the lazy tensors are filled in later)."""
    spec = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} | lazy
    offs = data_offsets(tensors, lazy)
    header = {"__metadata__": metadata,
              **{k: {"dtype": NAMES[spec[k][1]], "shape": list(spec[k][0]),
                     "data_offsets": list(offs[k])} for k in spec}}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    pwrite_all(fd, len(text).to_bytes(8, "little") + text, 0)
    start = 8 + len(text)
    os.ftruncate(fd, start + max((e for _, e in offs.values()), default=0))
    return start


def write_data(fd, tensors: dict, lazy: dict, start: int) -> None:
    offs = data_offsets(tensors, lazy)
    for k, v in tensors.items():
        data = v.reshape(-1).view(torch.uint8).numpy() if v.numel() else b""
        pwrite_all(fd, memoryview(data) if len(data) else b"", start + offs[k][0])


def pwrite_all(fd, data, pos: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def read_header(path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise ValueError("header longer than the file")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
              default=0)
    if 8 + n + end > size:
        raise ValueError(f"truncated: {size} bytes, the header needs {8 + n + end}")
    return header, 8 + n
