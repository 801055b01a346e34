"""The elementwise work around a linear layer's matmul, on the CPU: the epilogue of y = x W^T (bias, activation,
residual, in one pass over y) and, in the backward, the activation's derivative fused with the bias gradient.
NumPy twins: functional.epilogue_forward / epilogue_backward. The matmuls stay with NumPy's BLAS.

One kernel per activation (none, ReLU, GELU in its tanh form: GPT-2's and torch's gelu(approximate="tanh")):
numba removes the code for an argument that is None (a missing bias, residual or bias gradient) when it compiles.
Dimension names: N rows, D outputs; the backward's column sums run in pieces of ROWS rows.
"""
import math

import numba
import numpy as np
from numba import prange

from ._jit import kernel
from ._math import tanh

ROWS = 64            # rows per piece of the column sums: fixed, so results do not depend on the thread count
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@numba.njit(inline="always")
def _gelu_and_slope(x, ft):
    """gelu(x) = 0.5 x (1 + tanh u), u = k (x + c x^3); and its derivative
    0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) k (1 + 3 c x^2)."""
    k, c, half, one = ft(_GELU_K), ft(_GELU_C), ft(0.5), ft(1)
    th = tanh(k * (x + c * x * x * x))
    return half * x * (one + th), half * (one + th) + half * x * (one - th * th) * k * (one + ft(3) * c * x * x)


@kernel
def bias_residual_fwd(y, b, residual):
    """In place on y (N, D): y = y + b + residual (b, residual may be None), in that order."""
    n, d = y.shape
    for i in prange(n):
        for j in range(d):
            v = y[i, j]
            if b is not None:
                v += b[j]
            if residual is not None:
                v += residual[i, j]
            y[i, j] = v


@kernel
def bias_relu_fwd(y, b):
    """In place on y (N, D): y = max(y + b, 0) (b may be None)."""
    n, d = y.shape
    ft = y.dtype.type
    for i in prange(n):
        for j in range(d):
            v = y[i, j]
            if b is not None:
                v += b[j]
            y[i, j] = max(v, ft(0))


@kernel
def bias_gelu_fwd(y, b, pre):
    """In place on y (N, D): pre = y + b (kept for the backward), y = gelu(pre) (b may be None)."""
    n, d = y.shape
    ft = y.dtype.type
    for i in prange(n):
        for j in range(d):
            v = y[i, j]
            if b is not None:
                v += b[j]
            pre[i, j] = v
            y[i, j] = _gelu_and_slope(v, ft)[0]


@kernel
def relu_bwd(g, h, db_part):
    """In place on g (N, D): g *= [h > 0] (h the ReLU's output); db_part (pieces, D) receives the column sums of the
    result per piece of ROWS rows, or is None."""
    n, d = g.shape
    ft = g.dtype.type
    for p in prange(-(-n // ROWS)):
        if db_part is not None:
            db_part[p, :] = ft(0)
        for i in range(p * ROWS, min(n, (p + 1) * ROWS)):
            for j in range(d):
                v = g[i, j] if h[i, j] > ft(0) else ft(0)
                g[i, j] = v
                if db_part is not None:
                    db_part[p, j] += v


@kernel
def gelu_bwd(g, pre, db_part):
    """In place on g (N, D): g *= gelu'(pre); db_part as in relu_bwd."""
    n, d = g.shape
    ft = g.dtype.type
    for p in prange(-(-n // ROWS)):
        if db_part is not None:
            db_part[p, :] = ft(0)
        for i in range(p * ROWS, min(n, (p + 1) * ROWS)):
            for j in range(d):
                v = g[i, j] * _gelu_and_slope(pre[i, j], ft)[1]
                g[i, j] = v
                if db_part is not None:
                    db_part[p, j] += v


@kernel
def column_sums_part(g, db_part):
    """db_part (pieces, D): the column sums of g (N, D) per piece of ROWS rows."""
    n, d = g.shape
    ft = g.dtype.type
    for p in prange(-(-n // ROWS)):
        db_part[p, :] = ft(0)
        for i in range(p * ROWS, min(n, (p + 1) * ROWS)):
            for j in range(d):
                db_part[p, j] += g[i, j]


@kernel
def sum_rows(parts, out):
    """out[j] = sum over the rows of parts (P, D), in row order."""
    out[:] = parts[0]
    for p in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            out[j] += parts[p, j]


def epilogue_forward(y, b=None, activation=None, residual=None):
    """Twin of functional.epilogue_forward: in place on the contiguous y (N, D); returns what the backward needs."""
    if activation == "relu":
        bias_relu_fwd.run(y.size, y, b)
        return y
    if activation == "gelu":
        pre = np.empty_like(y)
        bias_gelu_fwd.run(y.size, y, b, pre)
        return pre
    if b is not None or residual is not None:
        bias_residual_fwd.run(y.size, y, b, residual)
    return None


def epilogue_backward(g, saved, activation=None, bias=True):
    """Twin of functional.epilogue_backward: in place on the contiguous g (N, D); returns db (D,) or None."""
    n, d = g.shape
    parts = np.empty((max(1, -(-n // ROWS)), d), g.dtype) if bias else None
    if activation == "relu":
        relu_bwd.run(g.size, g, saved, parts)
    elif activation == "gelu":
        gelu_bwd.run(g.size, g, saved, parts)
    elif bias:
        column_sums_part.run(g.size, g, parts)
    if not bias:
        return None
    if n == 0:
        return np.zeros(d, g.dtype)
    db = np.empty(d, g.dtype)
    sum_rows(parts, db)
    return db
