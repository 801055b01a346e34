"""LayerNorm forward and backward on the CPU, one pass over each row (llm.c's layernorm_forward/backward shape).
NumPy twins: fused.layer_norm_forward / layer_norm_backward (formulas in docs/derivations.md#layernorm).

Cache (the twins' too): (x, mean, rstd, w) with mean and rstd (..., 1): the backward recomputes xhat = (x - mean) *
rstd from x, which the graph keeps anyway, instead of storing an (N, C) xhat.
Dimension names: N rows, C channels; rows are split into ROWS-row pieces, each a unit of the parallel loop.
"""
import numpy as np
from numba import prange

from ._jit import kernel
from ._reduce import n_pieces, sum_rows
from .tuning import ROWS


@kernel
def layer_norm_fwd(x, w, b, eps, y, mean, rstd):
    """x (N, C) -> y = (x - mean) * rstd * w + b, mean and rstd (N,) (biased variance, two passes). b may be None."""
    n, c = x.shape
    ft = x.dtype.type
    inv_c = ft(1) / ft(c)
    for i in prange(n):
        s = ft(0)
        for j in range(c):
            s += x[i, j]
        m = s * inv_c                                              # mean = sum(x) / C
        v = ft(0)
        for j in range(c):
            d = x[i, j] - m
            v += d * d
        r = ft(1) / np.sqrt(v * inv_c + eps)                       # rstd = 1 / sqrt(var + eps)
        mean[i] = m
        rstd[i] = r
        for j in range(c):
            h = (x[i, j] - m) * r                                  # xhat
            if b is None:
                y[i, j] = h * w[j]
            else:
                y[i, j] = h * w[j] + b[j]


@kernel
def layer_norm_bwd(g, x, mean, rstd, w, dx, dw_part, db_part):
    """dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w, per row; dw = sum_rows g * xhat
    and db = sum_rows g, summed per piece of ROWS rows into dw_part/db_part (the launcher adds the pieces in order)."""
    n, c = g.shape
    ft = g.dtype.type
    inv_c = ft(1) / ft(c)
    for p in prange(dw_part.shape[0]):
        for j in range(c):
            dw_part[p, j] = ft(0)
            db_part[p, j] = ft(0)
        for i in range(p * ROWS, min(n, (p + 1) * ROWS)):
            m, r = mean[i], rstd[i]
            s1 = ft(0)
            s2 = ft(0)
            for j in range(c):
                h = (x[i, j] - m) * r                              # xhat
                d = g[i, j] * w[j]                                 # dxhat = dy * w
                s1 += d
                s2 += d * h
                dw_part[p, j] += g[i, j] * h                       # dw += dy * xhat
                db_part[p, j] += g[i, j]                           # db += dy
            s1 *= inv_c                                            # mean(dxhat)
            s2 *= inv_c                                            # mean(dxhat * xhat)
            for j in range(c):
                h = (x[i, j] - m) * r
                dx[i, j] = (g[i, j] * w[j] - s1 - h * s2) * r


def layer_norm_forward(x, w, b, eps=1e-5):
    """Twin of fused.layer_norm_forward: x (..., C) -> y, cache (x, mean, rstd (..., 1), w)."""
    lead, c = x.shape[:-1], x.shape[-1]
    x2 = np.ascontiguousarray(x.reshape(-1, c))                    # (N, C)
    n, ft = x2.shape[0], x2.dtype.type
    y = np.empty_like(x2)
    mean = np.empty(n, x2.dtype)
    rstd = np.empty(n, x2.dtype)
    layer_norm_fwd.run(x2.size, x2, np.ascontiguousarray(w), None if b is None else np.ascontiguousarray(b), ft(eps),
                       y, mean, rstd)
    return y.reshape(x.shape), (x, mean.reshape(lead + (1,)), rstd.reshape(lead + (1,)), w)


def layer_norm_backward(g, cache):
    """Twin of fused.layer_norm_backward: -> dx (..., C), dw (C,), db (C,)."""
    x, mean, rstd, w = cache
    c = g.shape[-1]
    g2 = np.ascontiguousarray(g.reshape(-1, c))                    # (N, C)
    x2 = np.ascontiguousarray(x.reshape(-1, c))
    n = g2.shape[0]
    dx = np.empty_like(g2)
    dw_part = np.empty((n_pieces(n), c), g2.dtype)                 # (pieces, C) partial column sums
    db_part = np.empty_like(dw_part)
    layer_norm_bwd.run(g2.size, g2, x2, mean.reshape(-1), rstd.reshape(-1), np.ascontiguousarray(w), dx, dw_part,
                       db_part)
    dw = np.empty(c, g2.dtype)
    db = np.empty(c, g2.dtype)
    sum_rows.run(dw_part.size, dw_part, dw)
    sum_rows.run(db_part.size, db_part, db)
    return dx.reshape(g.shape), dw, db
