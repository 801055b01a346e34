"""Softmax cross-entropy: the forward fuses the row max, the softmax (kept for backward) and each row's loss in one
pass per row; the backward writes dlogits = (softmax - onehot) * g / N in one elementwise pass.
NumPy twins: fused.cross_entropy_forward / fused.cross_entropy_backward
(docs/derivations.md#softmax-cross-entropy). The cache is the twin's cache, (prob, y, rows, shape).
Dimension names: N rows, V vocabulary.
"""
import math

import numpy as np
from numba import cuda

from ._common import (
    MAX_THREADS,
    CudaKernel,
    array_module,
    flat_config,
    launch,
    numba_type,
    row_config,
    row_max,
    row_sum,
)


def _make_forward(ft):
    nbt, zero, neg_inf, nan = numba_type(ft), ft(0), ft(-np.inf), ft(np.nan)

    def cross_entropy_fwd(z, y, prob, loss):
        """z (N, V) logits, y (N,) targets -> prob = softmax(z) (N, V), loss[r] = logsumexp(z_r) - z_r[y_r] (N,)."""
        buf = cuda.shared.array(MAX_THREADS, nbt)
        n, v = z.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        stride_x, rows_per_block = cuda.blockDim.x, cuda.blockDim.y
        for row0 in range(cuda.blockIdx.x * rows_per_block, n, cuda.gridDim.x * rows_per_block):
            row = row0 + ty
            width = 0                                              # 0: not a row
            if row < n:
                width = v
            m = neg_inf
            for j in range(tx, width, stride_x):
                if z[row, j] > m:
                    m = z[row, j]
            m = row_max(buf, m)
            acc = zero
            for j in range(tx, width, stride_x):
                e = math.exp(z[row, j] - m)                        # exp of the max-shifted logits
                prob[row, j] = e
                acc += e
            total = row_sum(buf, acc)
            for j in range(tx, width, stride_x):
                prob[row, j] = prob[row, j] / total                # softmax, kept for backward
            if width and tx == 0:
                target = y[row]
                if 0 <= target < v:
                    loss[row] = math.log(total) - (z[row, target] - m)   # logsumexp - z[y] (the max cancels)
                else:
                    loss[row] = nan
    return cross_entropy_fwd


def _make_backward(ft):
    def cross_entropy_bwd(prob, y, v, g, n_rows, dz):
        """dz = prob * (g / N) - onehot(y) * (g / N), flat over N * V."""
        gn = g[0] / ft(n_rows)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        size = prob.shape[0]
        while i < size:
            d = prob[i] * gn
            if i % v == y[i // v]:
                d = d - gn
            dz[i] = d
            i += step
    return cross_entropy_bwd


FORWARD = CudaKernel("cross_entropy_fwd", _make_forward, "void({f}[:, ::1], int64[::1], {f}[:, ::1], {f}[::1])")
BACKWARD = CudaKernel("cross_entropy_bwd", _make_backward,
                      "void({f}[::1], int64[::1], int64, {f}[::1], int64, {f}[::1])")


def cross_entropy_forward(logits, targets, *, config=None):
    """Twin of fused.cross_entropy_forward: the mean loss as a 0-d device array (no host sync), cache."""
    xp = array_module(logits)
    v = logits.shape[-1]
    z = xp.ascontiguousarray(logits.reshape(-1, v))                # (N, V)
    y = xp.ascontiguousarray(targets.reshape(-1)).astype(np.int64, copy=False)   # (N,)
    n, dtype = z.shape[0], z.dtype
    prob = xp.empty_like(z)
    loss_rows = xp.empty(n, dtype=dtype)
    if n:
        grid, block = row_config(n, v, **(config or {}))
        launch(FORWARD, dtype, grid, block, z, y, prob, loss_rows)
    return loss_rows.mean(), (prob, y, xp.arange(n), logits.shape)


def cross_entropy_backward(g, cache, *, config=None):
    """Twin of fused.cross_entropy_backward: dlogits of the mean loss times the upstream g (a scalar)."""
    prob, y, _, shape = cache
    xp = array_module(prob)
    prob = xp.ascontiguousarray(prob)                              # (N, V)
    y = xp.ascontiguousarray(y).astype(np.int64, copy=False)       # (N,)
    n, v = prob.shape
    dtype = prob.dtype
    g1 = xp.asarray(g, dtype=dtype).reshape(1)                     # g stays on the device: no sync
    dz = xp.empty_like(prob)
    if prob.size:
        grid, threads = flat_config(prob.size, **(config or {}))
        launch(BACKWARD, dtype, grid, threads, prob.reshape(-1), y, v, g1, n, dz.reshape(-1))
    return dz.reshape(shape)
