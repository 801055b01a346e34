"""LayerNorm forward and backward, one block per row (or per few rows).
NumPy twins: fused.layer_norm_forward / fused.layer_norm_backward (formulas in docs/derivations.md).

The caches are the twins' caches, (x, mean (..., 1), rstd (..., 1), w): the backward recomputes xhat from x (which
the graph keeps anyway) instead of reading an (N, C) xhat, so either backward accepts either forward's cache.
Dimension names: N rows, C channels.
"""
import math

from numba import cuda

from ._common import MAX_THREADS, CudaKernel, array_module, launch, numba_type, row_config, row_sum


def _make_forward(ft):
    nbt, zero = numba_type(ft), ft(0)

    def layer_norm_fwd(x, w, b, has_bias, eps, y, mean_out, rstd):
        """x (N, C) -> y = xhat * w + b, xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps) (biased var); mean and
        rstd (N,) kept for the backward."""
        buf = cuda.shared.array(MAX_THREADS, nbt)
        n, c = x.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        stride_x, rows_per_block = cuda.blockDim.x, cuda.blockDim.y
        for row0 in range(cuda.blockIdx.x * rows_per_block, n, cuda.gridDim.x * rows_per_block):
            row = row0 + ty
            valid = row < n
            acc = zero
            if valid:
                for j in range(tx, c, stride_x):
                    acc += x[row, j]
            mean = row_sum(buf, acc) / ft(c)                       # mean = sum(x) / C
            acc = zero
            if valid:
                for j in range(tx, c, stride_x):
                    d = x[row, j] - mean
                    acc += d * d
            var = row_sum(buf, acc) / ft(c)                        # var = sum((x - mean)^2) / C  (two passes)
            r = ft(1) / math.sqrt(var + eps)
            if valid:
                if tx == 0:
                    mean_out[row] = mean
                    rstd[row] = r
                for j in range(tx, c, stride_x):
                    h = (x[row, j] - mean) * r
                    if has_bias:
                        y[row, j] = h * w[j] + b[j]
                    else:
                        y[row, j] = h * w[j]
    return layer_norm_fwd


def _make_backward(ft):
    nbt, zero = numba_type(ft), ft(0)

    def layer_norm_bwd(g, x, mean, rstd, w, dx, dw_part, db_part):
        """dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w, xhat = (x - mean) * rstd, per
        row; the column sums
        dw = sum_rows g * xhat and db = sum_rows g are accumulated per (block, TY slot) into dw_part/db_part rows
        (summed over those rows by the launcher: deterministic, no atomics)."""
        buf = cuda.shared.array(MAX_THREADS, nbt)
        n, c = g.shape
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        stride_x, rows_per_block = cuda.blockDim.x, cuda.blockDim.y
        slot = cuda.blockIdx.x * rows_per_block + ty               # this thread's row of dw_part / db_part
        inv_c = ft(1) / ft(c)
        for row0 in range(cuda.blockIdx.x * rows_per_block, n, cuda.gridDim.x * rows_per_block):
            row = row0 + ty
            valid = row < n
            s1 = zero
            s2 = zero
            mu = zero
            r = zero
            if valid:
                mu = mean[row]
                r = rstd[row]
                for j in range(tx, c, stride_x):
                    gj = g[row, j]
                    hj = (x[row, j] - mu) * r                      # xhat
                    d = gj * w[j]                                  # dxhat = dy * w
                    s1 += d
                    s2 += d * hj
                    dw_part[slot, j] += gj * hj                    # dw += dy * xhat
                    db_part[slot, j] += gj                         # db += dy
            m1 = row_sum(buf, s1) * inv_c                          # mean(dxhat)
            m2 = row_sum(buf, s2) * inv_c                          # mean(dxhat * xhat)
            if valid:
                for j in range(tx, c, stride_x):
                    d = g[row, j] * w[j]
                    d = d - m1
                    d = d - (x[row, j] - mu) * r * m2
                    dx[row, j] = d * r
    return layer_norm_bwd


FORWARD = CudaKernel("layer_norm_fwd", _make_forward,
                 "void({f}[:, ::1], {f}[::1], {f}[::1], boolean, {f}, {f}[:, ::1], {f}[:, ::1], {f}[::1])")
BACKWARD = CudaKernel("layer_norm_bwd", _make_backward,
                  "void({f}[:, ::1], {f}[:, ::1], {f}[::1], {f}[::1], {f}[::1], {f}[:, ::1], {f}[:, ::1], "
                  "{f}[:, ::1])")

_BWD_MAX_GRID = 1024   # LayerNorm backward: at most this many blocks, so dw_part/db_part stay small


def layer_norm_forward(x, w, b, eps=1e-5, *, config=None):
    """Twin of fused.layer_norm_forward: x (..., C) -> y, cache (x, mean (..., 1), rstd (..., 1), w)."""
    xp = array_module(x)
    lead, c = x.shape[:-1], x.shape[-1]
    x2 = xp.ascontiguousarray(x.reshape(-1, c))                    # (N, C)
    n, dtype = x2.shape[0], x2.dtype
    y = xp.empty_like(x2)
    mean = xp.empty(n, dtype=dtype)
    rstd = xp.empty(n, dtype=dtype)
    if n:
        grid, block = row_config(n, c, **(config or {}))
        launch(FORWARD, dtype, grid, block, x2, xp.ascontiguousarray(w), xp.ascontiguousarray(w if b is None else b),
               b is not None, dtype.type(eps), y, mean, rstd)
    return y.reshape(x.shape), (x, mean.reshape(lead + (1,)), rstd.reshape(lead + (1,)), w)


def layer_norm_backward(g, cache, *, config=None):
    """Twin of fused.layer_norm_backward: -> dx (..., C), dw (C,), db (C,)."""
    x, mean, rstd, w = cache
    xp = array_module(g)
    c = g.shape[-1]
    g2 = xp.ascontiguousarray(g.reshape(-1, c))                    # (N, C)
    x2 = xp.ascontiguousarray(x.reshape(-1, c))
    n, dtype = g2.shape[0], g2.dtype
    dx = xp.empty_like(g2)
    grid, block = row_config(n, c, max_grid=_BWD_MAX_GRID, **(config or {}))
    dw_part = xp.zeros((grid * block[1], c), dtype=dtype)          # (slots, C) partial column sums
    db_part = xp.zeros((grid * block[1], c), dtype=dtype)
    if n:
        launch(BACKWARD, dtype, grid, block, g2, x2, xp.ascontiguousarray(mean.reshape(-1)),
               xp.ascontiguousarray(rstd.reshape(-1)),
               xp.ascontiguousarray(w), dx, dw_part, db_part)
    return dx.reshape(g.shape), dw_part.sum(axis=0), db_part.sum(axis=0)
