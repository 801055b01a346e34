"""The generic matrix product `a @ b` on the CPU (the Tensor's `@`, what a user's own attention and einsum-free code
calls), its products on numba's threads: one single-threaded BLAS call per piece (kernels/cpu/blas.py), pieces being
(matrix of the batch, block of its rows). NumPy twin: tensor.batched_matmul.

Why not NumPy's matmul: it runs on OpenBLAS's own thread pool, and beside the numba kernels of the rest of a step two
pools would take turns on the same cores (blas.py says more); a batch of small products (one attention head's
(T, hs) x (hs, T) per sequence) also runs one OpenBLAS call after another, each too small to share out.

Operands are read in place whenever each matrix has one unit stride (a C-ordered matrix, or the transposed view that
`k.transpose(-2, -1)` makes): the BLAS reads it as given or transposed. Anything else is copied first.
Dimension names: nb matrices in the batch, M rows of the output, N its columns, K the summed length.
"""
import numba
import numpy as np
from numba import prange

from . import blas
from ._jit import kernel
from ._reduce import n_pieces

SMALL = 1 << 15
"""Multiply-adds below which NumPy's matmul is faster (OpenBLAS runs such products on one thread, and a kernel call
costs ~10 us): a generation step's one row, a notebook's 4 x 4."""


@kernel(work="macs")
def bmm(fn, ilp64, a, ta, lda, b, tb, ldb, c, row_parts):
    """c[i] (M, N) = a[i] b[i] for every i of the batch, c C-contiguous (nb, M, N); a (nb, M, K), b (nb, K, N) 3-D
    views whose matrices the BLAS reads in place with leading dimensions lda, ldb: row by row (NO_TRANS) or, for a
    transposed view (TRANS), as the transpose of the row-major matrix under it.
    Work: nb * row_parts pieces, each one BLAS call on rows r0:r1 of one matrix."""
    nb, m, n = c.shape
    k = a.shape[2]                                                 # a is op(a) as a view: (nb, M, K) either way
    ft = c.dtype.type
    for p in prange(nb * row_parts):
        i, part = p // row_parts, p % row_parts
        r0, r1 = part * m // row_parts, (part + 1) * m // row_parts
        a0 = r0 * lda if ta == blas.NO_TRANS else r0               # op(a)'s row r0: a row of a, or a column of a^T
        blas.gemm(fn, ilp64, ta, tb, r1 - r0, n, k, ft(1),
                  a.ctypes.data + i * a.strides[0] + a0 * a.itemsize, lda,
                  b.ctypes.data + i * b.strides[0], ldb,
                  ft(0), c.ctypes.data + (i * m + r0) * n * c.itemsize, n)


def _as_blas(x):
    """x (nb, R, C) as (array, op, leading dimension) the BLAS can read: unit stride along the columns (NO_TRANS) or
    the rows (TRANS); otherwise a C-contiguous copy."""
    item = x.itemsize
    s0, s1, s2 = x.strides
    r, c = x.shape[1], x.shape[2]
    if s2 == item and s1 % item == 0 and s1 // item >= max(1, c) and s0 % item == 0:
        return x, blas.NO_TRANS, s1 // item
    if s1 == item and s2 % item == 0 and s2 // item >= max(1, r) and s0 % item == 0:
        return x, blas.TRANS, s2 // item
    x = np.ascontiguousarray(x)
    return x, blas.NO_TRANS, max(1, c)


def batched_matmul(a, b):
    """Twin of tensor.batched_matmul: a (..., M, K) @ b (..., K, N) for float32/float64 arrays of at least 2
    dimensions with the same dtype; batch axes broadcast as in NumPy. Shapes NumPy would refuse go to NumPy for its
    error."""
    lib = blas.find()
    if (lib is None or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.ndim < 2 or b.ndim < 2
            or a.shape[-1] != b.shape[-2] or a.size * b.shape[-1] < SMALL):
        return a @ b
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    lead_a, lead_b = a.shape[:-2], b.shape[:-2]
    if lead_b == () or all(s == 1 for s in lead_b):               # one right-hand matrix: fold a's batch into rows
        b3 = b.reshape((1, k, n))
        try:
            a3 = a.reshape((1, -1, k)) if a.flags.c_contiguous or a.ndim == 2 else None
        except ValueError:
            a3 = None
        if a3 is not None:
            lead = np.broadcast_shapes(lead_a, lead_b)
            return _run(lib, a3, b3).reshape(lead + (m, n))
    try:
        lead = np.broadcast_shapes(lead_a, lead_b)
    except ValueError:
        return a @ b
    nb = int(np.prod(lead)) if lead else 1
    a3 = _batch(a, lead, nb)
    b3 = _batch(b, lead, nb)
    return _run(lib, a3, b3).reshape(lead + (m, n))


def _batch(x, lead, nb):
    """x broadcast to the batch shape `lead` and viewed as (nb, R, C), copying only where a view cannot do it."""
    x = np.broadcast_to(x, lead + x.shape[-2:])
    try:
        return x.reshape((nb,) + x.shape[-2:])                     # a view when the batch axes collapse
    except ValueError:
        return np.ascontiguousarray(x).reshape((nb,) + x.shape[-2:])


def _run(lib, a3, b3):
    nb, m, _ = a3.shape
    n = b3.shape[2]
    c = np.empty((nb, m, n), a3.dtype)
    if c.size == 0:
        return c
    if a3.shape[2] == 0:
        c[...] = 0
        return c
    a3, ta, lda = _as_blas(a3)
    b3, tb, ldb = _as_blas(b3)
    threads = max(1, numba.config.NUMBA_NUM_THREADS)
    row_parts = min(m, n_pieces(2 * threads, nb))                 # at least 2 pieces per thread, rows allowing
    macs = nb * m * n * a3.shape[2] if nb * row_parts > 1 else 0   # one piece: nothing to share out
    with lib.single_threaded():
        bmm.run(macs, lib.gemm_for(c.dtype), lib.ilp64, a3, ta, lda, b3, tb, ldb, c, row_parts)
    return c
