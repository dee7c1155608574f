"""Zoo <-> vectors: per-tensor normalisation, optionally a PCA code, exact on the zoo.

Every floating tensor is standardised with one mean and one std computed over the whole
zoo, and the model is flattened in a fixed key order. With ``pca=True`` the vectors are
further projected on the zoo's principal directions (all of them, at most ``N - 1`` for
``N`` models, so every training model is reproduced to float tolerance) and whitened (unit
variance per component over the zoo); a code then has at most ``N`` numbers instead of one
per parameter. Integer buffers (BN ``num_batches_tracked``) are copied from the first model.
The encoding is saved next to the generator.

Two ways to fit the same PCA code:
* ``Encoding.fit(arch, states, pca=True)``: the SVD of the N x D zoo held in memory
  (float64); fine for small models, the baseline of ``scripts/benchmarks/encoding_scale.py``;
* ``Encoding.fit_streaming(arch, paths, pca=True)``: the N x N Gram matrix of the
  standardised, centred models, streamed chunk by chunk from the safetensors checkpoints
  (memory ~ N^2 + one chunk of one tensor across the zoo + one model). With the Gram
  matrix ``G = Xc Xc^T = U S^2 U^T`` the principal directions are ``V = S^-1 U^T Xc``,
  computed in a second streamed pass and written as a float32 [k, D] basis to disk.

A saved encoding's basis is read lazily: encoding and decoding map it a block of rows at a
time, so a decode touches the basis once and never holds it (or the zoo) in memory.
``mix`` [N, k] (the Gram eigenvectors ``U``) expresses a code as a combination of the
zoo models: ``w = 1/N + mix @ code / sqrt(N - 1)`` (sum 1), and the zoo's own codes are
``sqrt(N - 1) * mix``.

This module is the codec alone (about 400 lines: the two fits, encode / decode and the
file format belong together); the basis on disk is :mod:`.pca`, the hand-written
safetensors I/O :mod:`.rawio`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from ..checkpoint import ARCH_KEY, atomic_write
from .config import EncodingError
from .pca import DiskBasis, gram_eig, row_blocks
from .rawio import (DTYPES, RawTensors, data_offsets, pwrite_all, read_header,
                    write_data, write_header)

META = "weightspace.encoding"
_CHUNK = 1 << 18             # elements per model read at once when streaming the zoo

class Encoding:
    def __init__(self, arch: str, keys, shapes, mean, std, ints, center=None, basis=None,
                 scale=None, mix=None):
        """The fields of a saved encoding, one parameter each (``load`` and the fits build
        it; users call those)."""
        self.arch, self.keys, self.shapes = arch, list(keys), [tuple(s) for s in shapes]
        self.mean, self.std = mean.double(), std.double()      # [tensors]
        self.ints = ints                                        # key -> int tensor
        self.center = None if center is None else center.double()   # PCA: [D]
        self.basis = basis            # PCA: [k, D], a tensor or a DiskBasis
        self.scale = None if scale is None else scale.double()  # PCA: [k] (whitening)
        self.mix = None if mix is None else mix.double()        # PCA: [N, k] (zoo weights)

    @property
    def dim(self) -> int:
        return self.basis.shape[0] if self.basis is not None else \
            sum(math.prod(s) for s in self.shapes)

    @property
    def zoo_codes(self) -> torch.Tensor | None:
        """[N, k] codes of the training models (``encode`` of each, without reading them)."""
        if self.mix is None:
            return None
        return (self.mix * max(self.mix.shape[0] - 1, 1) ** 0.5).float()

    def zoo_weights(self, code: torch.Tensor) -> torch.Tensor:
        """[N] weights w (sum 1) with ``decode(code) == sum_i w_i zoo_i`` (standardised)."""
        if self.mix is None:
            raise EncodingError("this encoding keeps no zoo weights (not a PCA code, or "
                                "saved by an older version)")
        n = self.mix.shape[0]
        return 1.0 / n + self.mix @ code.double() / max(n - 1, 1) ** 0.5

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, arch: str, states: list[dict], pca: bool = False) -> "Encoding":
        """In memory: per-tensor statistics, and with ``pca`` the SVD of the N x D zoo."""
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
            u, sv, vh = torch.linalg.svd(flat - center, full_matrices=False)
            keep = sv > sv.max() * 1e-10
            enc.center, enc.basis, enc.mix = center, vh[keep], u[:, keep]
            enc.scale = (sv[keep] / max(len(states) - 1, 1) ** 0.5).clamp_min(1e-12)
        return enc

    @classmethod
    def fit_streaming(cls, arch: str, paths, pca: bool = True, workdir=None,
                      chunk: int = _CHUNK, progress=None) -> "Encoding":
        """The same encoding as ``fit`` (up to the sign / rotation of principal directions
        with equal singular values), read tensor by tensor from safetensors ``paths``.

        Pass 1 reads each tensor across the zoo in chunks of ``chunk`` elements per model
        and accumulates the tensor's mean and std (exact pooled statistics), its mean model
        and its centred Gram matrix. Pass 2 (with ``pca``) reads the zoo again and writes
        the float32 basis ``S^-1 U^T Xc`` to an unlinked file in ``workdir`` (default: the
        system temp dir) that ``save`` copies. ``progress(pass_no, done, total)`` is called
        after each chunk."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise EncodingError("cannot fit an encoding on an empty zoo")
        if chunk < 1:
            raise EncodingError(f"chunk must be >= 1 element, got {chunk}")
        from safetensors import SafetensorError, safe_open
        with contextlib.ExitStack() as stack:
            files = []
            for p in paths:
                try:
                    files.append(stack.enter_context(safe_open(str(p), framework="pt")))
                except (OSError, SafetensorError, ValueError) as e:
                    raise EncodingError(f"{p}: not a readable safetensors checkpoint ({e})") \
                        from None
            keys, shapes, ints = _zoo_layout(arch, paths, files)
            # plain reads, not safetensors' mmap: mapped pages would count as this process's
            # memory (the whole zoo, by the end of a pass)
            files = [stack.enter_context(RawTensors(p)) for p in paths]
            n, sizes = len(paths), [math.prod(s) for s in shapes]
            total = sum(sizes)
            mean, std = torch.empty(len(keys), dtype=torch.float64), \
                torch.empty(len(keys), dtype=torch.float64)
            center = torch.empty(total, dtype=torch.float64)     # the mean model (raw)
            gram = torch.zeros(n, n, dtype=torch.float64)
            done, off = 0, 0
            for i, k in enumerate(keys):
                gk = torch.zeros(n, n, dtype=torch.float64)
                cnt, mu, m2 = 0, 0.0, 0.0            # Chan et al.: pooled mean / M2
                for a, w in _chunks(files, paths, k, shapes[i], chunk):
                    cm = w.mean(0)
                    w -= cm
                    gk.addmm_(w, w.T)
                    c_n = cm.numel()
                    c_mu = float(cm.mean())
                    c_m2 = float((cm - c_mu).pow(2).sum())
                    delta, tot = c_mu - mu, cnt + c_n
                    mu += delta * c_n / tot
                    m2 += c_m2 + delta * delta * cnt * c_n / tot
                    cnt = tot
                    center[off + a:off + a + c_n] = cm
                    done += c_n
                    if progress:
                        progress(1, done, total)
                ss = float(gk.diagonal().sum()) + n * m2    # sum over models, elements
                mean[i] = mu
                std[i] = max(math.sqrt(ss / max(n * sizes[i], 1)), 1e-8)
                gram += gk / std[i] ** 2
                center[off:off + sizes[i]].sub_(mu).div_(std[i])
                off += sizes[i]
            enc = cls(arch, keys, shapes, mean, std, ints)
            if not pca:
                return enc
            u, sv = gram_eig(gram)
            enc.center, enc.mix = center, u
            enc.scale = (sv / max(n - 1, 1) ** 0.5).clamp_min(1e-12)
            enc._stream_basis(files, paths, u / sv, workdir, chunk, progress)
        return enc

    def _stream_basis(self, files, paths, proj, workdir, chunk, progress) -> None:
        """Pass 2: basis rows ``proj^T Xc`` ([k, D], float32) into a safetensors file that
        holds the whole encoding, unlinked at once (only this object's descriptor keeps it)."""
        k, d = proj.shape[1], self.center.numel()
        fd, tmp = tempfile.mkstemp(prefix="weightspace-encoding-", suffix=".safetensors",
                                   dir=workdir)
        try:
            os.unlink(tmp)
            tensors, lazy = self._tensors(), {"basis": ((k, d), torch.float32)}
            offset = write_header(fd, tensors, lazy, self._meta())
            write_data(fd, tensors, lazy, offset)
            boff = offset + data_offsets(tensors, lazy)["basis"][0]
            pt = proj.T.contiguous()                           # [k, N]
            off, done = 0, 0
            for i, key in enumerate(self.keys):
                n = math.prod(self.shapes[i])
                for a, w in _chunks(files, paths, key, self.shapes[i], chunk):
                    c = w.shape[1]
                    w.sub_(self.mean[i]).div_(self.std[i]).sub_(
                        self.center[off + a:off + a + c])
                    rows = (pt @ w).float().numpy()            # [k, c]
                    for r in range(k):
                        pwrite_all(fd, rows[r].tobytes(), boff + 4 * (r * d + off + a))
                    done += c
                    if progress:
                        progress(2, done, d)
                off += n
            self.basis = DiskBasis(fd, boff, (k, d), torch.float32)
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- coding
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
        xc = flat - self.center
        p = torch.zeros(self.basis.shape[0], dtype=torch.float64)
        for i0, i1, rows in row_blocks(self.basis):
            # float64 dot products: a float32 sum over millions of terms loses ~4 digits
            for a in range(0, xc.numel(), _CHUNK):
                p[i0:i1] += rows[:, a:a + _CHUNK].double() @ xc[a:a + _CHUNK]
        return (p / self.scale).float()

    def decode(self, code: torch.Tensor) -> dict:
        code = code.double()
        if self.basis is None:
            flat = code
        else:
            coef = (code * self.scale).to(self.basis.dtype)
            acc = torch.zeros(self.basis.shape[1], dtype=self.basis.dtype)
            for i0, i1, rows in row_blocks(self.basis):
                acc.addmv_(rows.T, coef[i0:i1])
            flat = self.center + acc.double()
        out, off = {}, 0
        for i, (k, shape) in enumerate(zip(self.keys, self.shapes)):
            n = math.prod(shape)
            out[k] = (flat[off:off + n] * self.std[i] + self.mean[i]).view(shape).float()
            off += n
        out.update({k: v.clone() for k, v in self.ints.items()})
        return out

    # ---------------------------------------------------------------- files
    def _meta(self) -> dict:
        return {META: json.dumps({"arch": self.arch, "keys": self.keys,
                                  "shapes": [list(s) for s in self.shapes]})}

    def _tensors(self) -> dict:
        """Every tensor of the file but the basis."""
        t = {"mean": self.mean, "std": self.std,
             **{f"int/{k}": v for k, v in self.ints.items()}}
        if self.basis is not None:
            t.update(center=self.center, scale=self.scale)
            if self.mix is not None:
                t["mix"] = self.mix
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def save(self, path) -> None:
        """One safetensors file, header keys sorted (bitwise reproducible); the basis is
        written a block of rows at a time, never materialised."""
        tensors = self._tensors()
        lazy = {} if self.basis is None else \
            {"basis": (tuple(self.basis.shape), self.basis.dtype)}

        def write(tmp):
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                offset = write_header(fd, tensors, lazy, self._meta())
                write_data(fd, tensors, lazy, offset)
                pos = offset + data_offsets(tensors, lazy)["basis"][0] if lazy else 0
                if isinstance(self.basis, DiskBasis):
                    self.basis.copy_to(fd, pos)
                elif lazy:
                    for _, _, rows in row_blocks(self.basis):
                        data = rows.contiguous().view(-1).view(torch.uint8).numpy()
                        pwrite_all(fd, memoryview(data), pos)
                        pos += data.nbytes
            finally:
                os.close(fd)
        atomic_write(path, write)

    @classmethod
    def load(cls, path) -> "Encoding":
        """Reads every tensor but the basis, which stays on disk (``DiskBasis``)."""
        from safetensors import SafetensorError, safe_open
        try:
            header, data_start = read_header(path)
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[META])
                t = {k: f.get_tensor(k) for k in f.keys() if k != "basis"}
            if "basis" in header:
                h = header["basis"]
                dtype = DTYPES.get(h["dtype"])
                if dtype not in (torch.float32, torch.float64):
                    raise ValueError(f"basis dtype {h['dtype']} is not F32 or F64")
                t["basis"] = DiskBasis(str(path), data_start + h["data_offsets"][0],
                                       h["shape"], dtype) if len(h["shape"]) == 2 else \
                    torch.empty(h["shape"])      # refused by _check_saved below
        except (OSError, KeyError, ValueError, TypeError, SafetensorError) as e:
            raise EncodingError(f"{path}: not a weightspace encoding ({e})") from None
        _check_saved(meta, t, path)
        ints = {k[4:]: v for k, v in t.items() if k.startswith("int/")}
        return cls(meta["arch"], meta["keys"], meta["shapes"], t["mean"], t["std"], ints,
                   t.get("center"), t.get("basis"), t.get("scale"), t.get("mix"))

    def signature_dict(self) -> dict:
        """What identifies the encoding in a generator's ``config.json``."""
        return {"arch": self.arch, "keys": self.keys, "dim": self.dim,
                "pca": self.basis is not None}

    def signature(self) -> str:
        return json.dumps(self.signature_dict())


# -------------------------------------------------------------------- streaming helpers
def _zoo_layout(arch, paths, files):
    """(floating keys, their shapes, integer tensors of the first model), after checking
    that every checkpoint has the same tensors and is of ``arch``."""
    first = files[0]
    names = list(first.keys())
    keys, shapes, ints = [], [], {}
    for k in names:
        s = first.get_slice(k)
        dt = DTYPES.get(s.get_dtype())
        if dt is not None and dt.is_floating_point:
            keys.append(k)
            shapes.append(tuple(s.get_shape()))
        else:
            ints[k] = first.get_tensor(k).clone()
    if not keys:
        raise EncodingError(f"{paths[0]}: no floating-point tensors to encode")
    want = {k: (first.get_slice(k).get_dtype(), list(first.get_slice(k).get_shape()))
            for k in names}
    for p, f in zip(paths, files):
        a = (f.metadata() or {}).get(ARCH_KEY)
        if a is not None and a != arch:
            raise EncodingError(f"{p}: a {a!r} checkpoint, the encoding is for {arch!r}")
        got = set(f.keys())
        if got != set(names):
            extra, missing = sorted(got - set(names)), sorted(set(names) - got)
            raise EncodingError(f"{p}: tensors differ from {paths[0]} (missing "
                                f"{missing[:3]}, extra {extra[:3]})")
        for k in names:
            s = f.get_slice(k)
            if (s.get_dtype(), list(s.get_shape())) != want[k]:
                raise EncodingError(f"{p}: tensor {k!r} is {s.get_dtype()} "
                                    f"{list(s.get_shape())}, {paths[0]} has "
                                    f"{want[k][0]} {want[k][1]}")
    return keys, shapes, ints


def _chunks(files, paths, key, shape, chunk):
    """(element offset, [N, c] float64) chunks of ``chunk`` elements of tensor ``key``
    across the zoo; non-finite values are refused naming the file."""
    size = math.prod(shape)
    for e0 in range(0, size, chunk):
        e1 = min(size, e0 + chunk)
        w = torch.empty(len(files), e1 - e0, dtype=torch.float64)
        for j, f in enumerate(files):
            w[j] = f.read(key, e0, e1)
        if not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).any(1).nonzero()[0])
            raise EncodingError(f"{paths[bad]}: tensor {key!r} holds non-finite values "
                                f"(NaN or Inf)")
        yield e0, w


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
    if "mix" in t and not pca:
        bad("tensor 'mix' belongs to a PCA encoding (no center, basis, scale here)")
    if pca:
        k = t["basis"].shape[0] if t["basis"].dim() == 2 else -1
        for name, shape in (("center", (d,)), ("basis", (k, d)), ("scale", (k,))):
            if tuple(t[name].shape) != shape or not t[name].is_floating_point():
                bad(f"tensor {name!r} has shape {list(t[name].shape)}, expected {list(shape)}")
        if not bool((t["scale"] > 0).all()):
            bad("tensor 'scale' must be positive")
        if not bool(torch.isfinite(t["center"]).all()):
            bad("tensor 'center' must hold finite numbers")
        mix = t.get("mix")
        if mix is not None and (mix.dim() != 2 or mix.shape[1] != k or mix.shape[0] < k
                                or not mix.is_floating_point()
                                or not bool(torch.isfinite(mix).all())):
            bad(f"tensor 'mix' has shape {list(mix.shape)}, expected [models >= {k}, {k}] "
                f"of finite numbers")
