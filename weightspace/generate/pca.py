"""The PCA basis of an encoding: a [k, D] matrix kept on disk and mapped a block of rows at a
time (:class:`DiskBasis`), and the eigen-decomposition of the zoo's centred Gram matrix
that the streamed fit computes it from (:func:`gram_eig`)."""
from __future__ import annotations

import contextlib
import math
import mmap
import os

import torch

from .config import EncodingError

BLOCK_BYTES = 1 << 30       # basis rows mapped at once when encoding / decoding


class DiskBasis:
    """A row-major [k, D] float matrix at byte ``offset`` of a file, mapped a block of rows
    at a time (``rows``) and unmapped after use, so it never sits whole in memory."""

    def __init__(self, file, offset: int, shape, dtype: torch.dtype):
        self.fd = os.dup(file) if isinstance(file, int) else os.open(str(file), os.O_RDONLY)
        self.offset, self.shape, self.dtype = offset, torch.Size(shape), dtype

    def dim(self) -> int:
        return 2

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @contextlib.contextmanager
    def rows(self, i0: int, i1: int):
        """[i1 - i0, D] view of the mapped rows (valid inside the ``with`` only)."""
        d, es = self.shape[1], self.dtype.itemsize
        start = self.offset + i0 * d * es
        base = start - start % mmap.ALLOCATIONGRANULARITY
        length = start - base + (i1 - i0) * d * es
        if length == start - base:
            yield torch.empty(0, d, dtype=self.dtype)
            return
        # ACCESS_COPY: a private mapping torch may treat as writable (no copy unless written)
        mm = mmap.mmap(self.fd, length, access=mmap.ACCESS_COPY, offset=base)
        try:
            yield torch.frombuffer(mm, dtype=self.dtype, count=(i1 - i0) * d,
                                   offset=start - base).view(i1 - i0, d)
        finally:
            with contextlib.suppress(BufferError):   # a view kept by the caller keeps it
                mm.close()

    def copy_to(self, fd: int, pos: int) -> None:
        """Write the matrix's bytes at ``pos`` of ``fd`` (in-kernel copy)."""
        src, left = self.offset, math.prod(self.shape) * self.dtype.itemsize
        while left:
            n = os.copy_file_range(self.fd, fd, min(left, 1 << 30), src, pos)
            if n <= 0:
                raise EncodingError("the encoding's basis file ended early")
            src, pos, left = src + n, pos + n, left - n

    def __del__(self):
        with contextlib.suppress(Exception):
            os.close(self.fd)


def row_blocks(basis):
    """(i0, i1, rows [i1 - i0, D]) blocks of ``basis`` (a tensor or a ``DiskBasis``)."""
    k, d = basis.shape
    step = max(1, BLOCK_BYTES // max(1, d * basis.dtype.itemsize))
    for i0 in range(0, k, step):
        i1 = min(k, i0 + step)
        if isinstance(basis, DiskBasis):
            with basis.rows(i0, i1) as r:
                yield i0, i1, r
        else:
            yield i0, i1, basis[i0:i1]


def gram_eig(gram: torch.Tensor, rtol: float = 1e-12):
    """(U [N, k], S [k]) with ``gram = U S^2 U^T`` on the complement of the ones vector
    (a centred Gram matrix has it in its null space; removing it exactly keeps its rounding
    noise out of the code), eigenvalues below ``rtol`` x the largest dropped, descending."""
    n = gram.shape[0]
    if n < 2:
        return torch.zeros(n, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    c = torch.eye(n, dtype=torch.float64) - 1.0 / n
    q, _ = torch.linalg.qr(c[:, :n - 1])                     # [N, N-1], orthonormal
    h = q.T @ gram @ q
    lam, e = torch.linalg.eigh((h + h.T) / 2)
    lam, e = lam.flip(0), e.flip(1)
    keep = lam > max(float(lam[0]), 0.0) * rtol
    if float(lam[0]) <= 0:
        keep[:] = False
    return q @ e[:, keep], lam[keep].sqrt()
