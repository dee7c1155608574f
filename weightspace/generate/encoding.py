"""Zoo <-> vectors: per-tensor normalisation, optionally a PCA code, exact on the zoo.

Every floating tensor is standardised with one mean and one std computed over the whole
zoo, and the model is flattened in a fixed key order. With ``pca=True`` the vectors are
further projected on the zoo's principal directions (all of them, at most ``N`` for ``N``
models, so every training model is reproduced to float tolerance) and whitened (unit
variance per component over the zoo); a code then has at most ``N`` numbers instead of one
per parameter. Integer buffers (BN ``num_batches_tracked``) are
copied from the first model. The encoding is saved next to the generator.
"""
from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file, save

from ..checkpoint import atomic_write, canonical_safetensors
from ..errors import WeightspaceError


class EncodingError(WeightspaceError):
    """An encoding that does not fit the models or the generator it is used with."""


class Encoding:
    def __init__(self, arch: str, keys, shapes, mean, std, ints, center=None, basis=None,
                 scale=None):
        self.arch, self.keys, self.shapes = arch, list(keys), [tuple(s) for s in shapes]
        self.mean, self.std = mean.double(), std.double()      # [tensors]
        self.ints = ints                                        # key -> int tensor
        self.center, self.basis = center, basis                 # PCA: [D], [k, D]
        self.scale = scale                                      # PCA: [k] (whitening)

    @property
    def dim(self) -> int:
        return self.basis.shape[0] if self.basis is not None else \
            sum(int(torch.tensor(s).prod()) for s in self.shapes)

    @classmethod
    def fit(cls, arch: str, states: list[dict], pca: bool = False) -> "Encoding":
        if not states:
            raise EncodingError("cannot fit an encoding on an empty zoo")
        first = states[0]
        keys = [k for k, v in first.items() if v.is_floating_point()]
        ints = {k: v.clone() for k, v in first.items() if not v.is_floating_point()}
        shapes = [tuple(first[k].shape) for k in keys]
        mean = torch.stack([torch.stack([s[k].double().mean() for s in states]).mean()
                            for k in keys])
        std = torch.stack([torch.cat([s[k].double().flatten() - m for s in states]).pow(2)
                           .mean().sqrt().clamp_min(1e-8) for k, m in zip(keys, mean)])
        enc = cls(arch, keys, shapes, mean, std, ints)
        if pca:
            flat = torch.stack([enc._flatten(s) for s in states])
            center = flat.mean(0)
            _, sv, vh = torch.linalg.svd(flat - center, full_matrices=False)
            keep = sv > sv.max() * 1e-10
            enc.center, enc.basis = center, vh[keep]
            enc.scale = (sv[keep] / max(len(states) - 1, 1) ** 0.5).clamp_min(1e-12)
        return enc

    def _flatten(self, state: dict) -> torch.Tensor:
        parts = []
        for i, k in enumerate(self.keys):
            if k not in state:
                raise EncodingError(f"model has no tensor {k!r} (the encoding needs it)")
            t = state[k]
            if tuple(t.shape) != self.shapes[i]:
                raise EncodingError(f"tensor {k!r} has shape {list(t.shape)}, the encoding "
                                    f"expects {list(self.shapes[i])}")
            parts.append(((t.double() - self.mean[i]) / self.std[i]).flatten())
        return torch.cat(parts)

    def encode(self, state: dict) -> torch.Tensor:
        flat = self._flatten(state)
        if self.basis is None:
            return flat.float()
        return (((flat - self.center) @ self.basis.T) / self.scale).float()

    def decode(self, code: torch.Tensor) -> dict:
        code = code.double()
        flat = code if self.basis is None else self.center + (code * self.scale) @ self.basis
        out, off = {}, 0
        for i, (k, shape) in enumerate(zip(self.keys, self.shapes)):
            n = int(torch.tensor(shape).prod()) if shape else 1
            out[k] = (flat[off:off + n] * self.std[i] + self.mean[i]).view(shape).float()
            off += n
        out.update({k: v.clone() for k, v in self.ints.items()})
        return out

    def save(self, path) -> None:
        tensors = {"mean": self.mean, "std": self.std,
                   **{f"int/{k}": v for k, v in self.ints.items()}}
        if self.basis is not None:
            tensors.update(center=self.center, basis=self.basis, scale=self.scale)
        meta = {"weightspace.encoding": json.dumps({"arch": self.arch, "keys": self.keys,
                                                    "shapes": [list(s) for s in self.shapes]})}
        blob = canonical_safetensors(save({k: v.contiguous() for k, v in tensors.items()},
                                          metadata=meta))
        atomic_write(path, lambda tmp: open(tmp, "wb").write(blob))

    @classmethod
    def load(cls, path) -> "Encoding":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["weightspace.encoding"])
            t = load_file(str(path))
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            raise EncodingError(f"{path}: not a weightspace encoding ({e})") from None
        _check_saved(meta, t, path)
        ints = {k[4:]: v for k, v in t.items() if k.startswith("int/")}
        return cls(meta["arch"], meta["keys"], meta["shapes"], t["mean"], t["std"], ints,
                   t.get("center"), t.get("basis"), t.get("scale"))

    def signature(self) -> str:
        return json.dumps({"arch": self.arch, "keys": self.keys, "dim": self.dim,
                           "pca": self.basis is not None})


def _check_saved(meta, t: dict, path) -> None:
    """A saved encoding's fields and tensor shapes agree with each other (a hand-edited or
    truncated file is refused here, naming the field, not deep inside decoding)."""
    def bad(msg):
        raise EncodingError(f"{path}: {msg}")
    if not isinstance(meta, dict):
        bad("metadata 'weightspace.encoding' must be a JSON object")
    if not isinstance(meta.get("arch"), str):
        bad("field 'arch' must be a string")
    keys, shapes = meta.get("keys"), meta.get("shapes")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or not keys:
        bad("field 'keys' must be a non-empty list of strings")
    if not isinstance(shapes, list) or len(shapes) != len(keys) or not all(
            isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                        and d >= 0 for d in s) for s in shapes):
        bad("field 'shapes' must be one list of non-negative integers per key")
    for name in ("mean", "std"):
        v = t.get(name)
        if v is None or v.shape != (len(keys),) or not v.is_floating_point() \
                or not bool(torch.isfinite(v).all()):
            bad(f"tensor {name!r} must hold {len(keys)} finite numbers")
    if not bool((t["std"] > 0).all()):
        bad("tensor 'std' must be positive")
    d = sum(math.prod(s) for s in shapes)
    pca = [n for n in ("center", "basis", "scale") if n in t]
    if pca and len(pca) != 3:
        bad(f"a PCA encoding needs center, basis and scale; found only {', '.join(pca)}")
    if pca:
        k = t["basis"].shape[0] if t["basis"].dim() == 2 else -1
        for name, shape in (("center", (d,)), ("basis", (k, d)), ("scale", (k,))):
            if tuple(t[name].shape) != shape or not t[name].is_floating_point():
                bad(f"tensor {name!r} has shape {list(t[name].shape)}, expected {list(shape)}")
        if not bool((t["scale"] > 0).all()):
            bad("tensor 'scale' must be positive")
