"""A linear layer on the CPU: y = act(x W^T + b) + residual and its backward, with the products split over numba's
threads (each thread one single-threaded BLAS call, kernels/cpu/blas.py) and the elementwise work fused to them:
the forward's epilogue (bias, activation, residual) runs on each thread's rows right after its product, while they
are in the cache; the backward's activation derivative is fused with the bias gradient (column sums).
NumPy twins: fused.linear_forward / linear_backward.

Activations: None, "relu", "gelu" (the tanh form, GPT-2's and torch's gelu(approximate="tanh")), passed to the
kernels as the codes NO_ACTIVATION, RELU, GELU (ACTIVATION maps the names to them); numba removes the code for an
argument that is None (a missing bias, residual, activation input or bias gradient) when it compiles.
Dimension names: N rows, D outputs (out), I inputs (in); the column sums run in pieces of ROWS rows.
"""
import numba
import numpy as np
from numba import prange

from .. import GELU_C, GELU_K
from . import blas
from ._jit import kernel
from ._math import tanh
from ._reduce import n_pieces, sum_rows
from .tuning import ROWS

NO_ACTIVATION, RELU, GELU = 0, 1, 2                 # the kernels' `act` argument (numba compiles them as constants)
ACTIVATION = {None: NO_ACTIVATION, "relu": RELU, "gelu": GELU}


@numba.njit(inline="always")
def _gelu_and_slope(x, ft):
    """gelu(x) = 0.5 x (1 + tanh u), u = k (x + c x^3) (k = GELU_K, c = GELU_C); and its derivative
    0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 c x^2)."""
    k, c, half, one = ft(GELU_K), ft(GELU_C), ft(0.5), ft(1)
    th = tanh(k * (x + c * x * x * x))
    return half * x * (one + th), half * (one + th) + half * x * (one - th * th) * k * (one + ft(3) * c * x * x)


@kernel
def epilogue_fwd(y, b, act, residual, pre):
    """In place on y (N, D), the epilogue alone (for the path without a BLAS to call): y = act(y + b) + residual,
    act as in linear_fwd (pre receives y + b under GELU); b, residual, pre may be None."""
    n, d = y.shape
    ft = y.dtype.type
    for i in prange(n):
        for j in range(d):
            v = y[i, j]
            if b is not None:
                v += b[j]
            if act == RELU:
                v = max(v, ft(0))
            elif act == GELU and pre is not None:
                pre[i, j] = v
                v = _gelu_and_slope(v, ft)[0]
            if residual is not None:
                v += residual[i, j]
            y[i, j] = v


@kernel
def epilogue_bwd(g, relu_out, gelu_in, db_part):
    """The backward of the epilogue, in place on g (N, D): g *= [relu_out > 0] (relu_out the ReLU's output) or
    g *= gelu'(gelu_in) (gelu_in the GELU's input), at most one of them given; with neither, g is only read.
    db_part (pieces, D) receives the column sums of the result per piece of ROWS rows, or is None."""
    n, d = g.shape
    ft = g.dtype.type
    for p in prange(n_pieces(n)):
        if db_part is not None:
            db_part[p, :] = ft(0)
        for i in range(p * ROWS, min(n, (p + 1) * ROWS)):
            for j in range(d):
                v = g[i, j]
                if relu_out is not None:
                    v = v if relu_out[i, j] > ft(0) else ft(0)
                    g[i, j] = v
                elif gelu_in is not None:
                    v = v * _gelu_and_slope(gelu_in[i, j], ft)[1]
                    g[i, j] = v
                if db_part is not None:
                    db_part[p, j] += v


@kernel(work="macs")
def linear_fwd(fn, ilp64, x, w, y, b, act, residual, pre, pieces):
    """y (N, D) = act(x (N, I) W^T + b) + residual, W (D, I), in `pieces` parts, each one BLAS call and then its
    epilogue while its part of y is in the cache: parts of rows, or, for fewer than 4 rows per piece (generation's one
    row at a time), parts of columns, so that every thread still reads its share of W. act: NO_ACTIVATION, RELU or
    GELU (pre receives x W^T + b). b, residual, pre may be None."""
    n, d = y.shape
    k = x.shape[1]
    ft = y.dtype.type
    by_rows = n >= 4 * pieces
    for p in prange(pieces):
        r0, r1, c0, c1 = 0, n, 0, d
        if by_rows:
            r0, r1 = p * n // pieces, (p + 1) * n // pieces
        else:
            c0, c1 = p * d // pieces, (p + 1) * d // pieces
        blas.gemm(fn, ilp64, blas.NO_TRANS, blas.TRANS, r1 - r0, c1 - c0, k, ft(1),
                  x.ctypes.data + r0 * k * x.itemsize, k, w.ctypes.data + c0 * k * w.itemsize, k, ft(0),
                  y.ctypes.data + (r0 * d + c0) * y.itemsize, d)
        for i in range(r0, r1):
            row = y[i, c0:c1]
            if b is not None:
                bb = b[c0:c1]
                for j in range(c1 - c0):
                    row[j] += bb[j]
            if act == RELU:
                for j in range(c1 - c0):
                    row[j] = max(row[j], ft(0))
            elif act == GELU and pre is not None:
                prow = pre[i, c0:c1]
                for j in range(c1 - c0):
                    prow[j] = row[j]
                    row[j] = _gelu_and_slope(row[j], ft)[0]
            if residual is not None:
                rrow = residual[i, c0:c1]
                for j in range(c1 - c0):
                    row[j] += rrow[j]


@kernel(work="macs")
def gemm_rows(fn, ilp64, a, ta, b, tb, c, pieces):
    """c (M, N) = op(a) op(b), the rows of c in `pieces` parts (one BLAS call each); a, b, c C-contiguous 2-D,
    op(a) = a (ta NO_TRANS: a is (M, K)) or a^T (TRANS: a is (K, M)), op(b) likewise."""
    m, n = c.shape
    k = a.shape[1] if ta == blas.NO_TRANS else a.shape[0]
    lda, ldb = a.shape[1], b.shape[1]
    ft = c.dtype.type
    for p in prange(pieces):
        r0, r1 = p * m // pieces, (p + 1) * m // pieces
        a0 = r0 * lda if ta == blas.NO_TRANS else r0                # op(a)'s rows r0: rows of a, or columns of a^T
        blas.gemm(fn, ilp64, ta, tb, r1 - r0, n, k, ft(1), a.ctypes.data + a0 * a.itemsize, lda, b.ctypes.data, ldb,
                  ft(0), c.ctypes.data + r0 * n * c.itemsize, n)


def _pieces():
    return max(1, numba.config.NUMBA_NUM_THREADS)


def linear_forward(x, w, b=None, activation=None, residual=None):
    """Twin of fused.linear_forward: x (N, I), W (D, I) -> y (N, D) = act(x W^T + b) + residual, saved."""
    lib = blas.find()
    x = np.ascontiguousarray(x)
    n, d = x.shape[0], w.shape[0]
    if lib is None:                                               # no BLAS to call from numba: NumPy's matmul
        y = x @ w.T
        return y, epilogue_forward(y, b, activation, residual)
    y = np.empty((n, d), np.result_type(x, w))
    pre = np.empty_like(y) if activation == "gelu" else None
    res = None if residual is None else np.ascontiguousarray(residual)
    with lib.single_threaded():
        linear_fwd.run(n * d * x.shape[1], lib.gemm_for(y.dtype), lib.ilp64, x, np.ascontiguousarray(w), y, b,
                       ACTIVATION[activation], res, pre, _pieces())
    return y, (y if activation == "relu" else pre)


def linear_backward(g, x, w, bias=True, saved=None, activation=None):
    """Twin of fused.linear_backward: g (N, D) *= act'(.) in place when there is an activation; -> dx (N, I),
    dW (D, I), db (D,) or None."""
    lib = blas.find()
    g = g if g.flags.c_contiguous else np.ascontiguousarray(g)
    db = epilogue_backward(g, saved, activation, bias) if (bias or activation) else None
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    if lib is None:
        return g @ w, g.T @ x, db
    dx = np.empty((g.shape[0], w.shape[1]), g.dtype)
    dw = np.empty(w.shape, g.dtype)
    fn, pieces = lib.gemm_for(g.dtype), _pieces()
    macs = g.size * w.shape[1]
    with lib.single_threaded():
        gemm_rows.run(macs, fn, lib.ilp64, g, blas.NO_TRANS, w, blas.NO_TRANS, dx, pieces)     # dx = g W
        gemm_rows.run(macs, fn, lib.ilp64, g, blas.TRANS, x, blas.NO_TRANS, dw, pieces)        # dW = g^T x
    return dx, dw, db


def epilogue_forward(y, b=None, activation=None, residual=None):
    """In place on the contiguous y (N, D): y = act(y + b) + residual; returns what the backward needs."""
    pre = np.empty_like(y) if activation == "gelu" else None
    if activation is not None or b is not None or residual is not None:
        epilogue_fwd.run(y.size, y, b, ACTIVATION[activation], residual, pre)
    return y if activation == "relu" else pre


def epilogue_backward(g, saved, activation=None, bias=True):
    """In place on the contiguous g (N, D): g *= act'(.); returns db (D,) (column sums of the result) or None."""
    n, d = g.shape
    parts = np.empty((n_pieces(n), d), g.dtype) if bias else None
    if activation is not None or bias:
        epilogue_bwd.run(g.size, g, saved if activation == "relu" else None, saved if activation == "gelu" else None,
                         parts)
    if not bias:
        return None
    if n == 0:
        return np.zeros(d, g.dtype)
    db = np.empty(d, g.dtype)
    sum_rows.run(parts.size, parts, db)
    return db
