"""The attention core: causal masked scaled softmax forward and backward, one block per row (or per few rows) of the
scores; the products q k^T, A v, dY V^T, dS K and dS^T Q stay strided-batched matmuls (cuBLAS through CuPy).
NumPy twins: fused.attention_forward / fused.attention_backward (docs/derivations.md#attention-core).

A score row belongs to query i of t (the last t of Tk positions) and sees keys j <= i + (Tk - t); the kernel reads
only those, writes exactly 0 to the others, folds the 1/sqrt(hs) scale into the softmax (forward) and into dS
(backward), and applies the dropout mask M / (1 - p) in the same pass. The caches are the twin's caches
(q, k, v, P, A, M / (1 - p) or None, scale).
Dimension names: B batch, H heads, t queries, Tk keys, hs head size, R = B * H * t score rows.
"""
import math

import numpy as np
from numba import cuda

from ...fused import grads_into
from ._common import MAX_THREADS, CudaKernel, array_module, launch, numba_type, row_config, row_max, row_sum


def _make_forward(ft):
    nbt, zero, neg_inf = numba_type(ft), ft(0), ft(-np.inf)

    def causal_softmax_fwd(s, t, scale, mask, has_mask, a):
        """In place: s (R, Tk) raw scores q k^T -> P = softmax over visible keys of s * scale, exactly 0 elsewhere.
        With has_mask, also a = P * mask, mask = keep / (1 - p) (inverted dropout of the attention weights)."""
        buf = cuda.shared.array(MAX_THREADS, nbt)
        n, tk = s.shape
        offset = tk - t
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        stride_x, rows_per_block = cuda.blockDim.x, cuda.blockDim.y
        for row0 in range(cuda.blockIdx.x * rows_per_block, n, cuda.gridDim.x * rows_per_block):
            row = row0 + ty
            last = -1                                              # last visible key; -1: not a row
            if row < n:
                last = row % t + offset
            m = neg_inf
            for j in range(tx, last + 1, stride_x):
                v = s[row, j] * scale
                if v > m:
                    m = v
            m = row_max(buf, m)                                    # row max (finite: key j = i is visible)
            acc = zero
            for j in range(tx, last + 1, stride_x):
                e = math.exp(s[row, j] * scale - m)
                s[row, j] = e
                acc += e
            total = row_sum(buf, acc)
            if row < n:
                for j in range(tx, tk, stride_x):
                    p = zero
                    if j <= last:
                        p = s[row, j] / total                      # P = exp(S - max) / sum
                    s[row, j] = p
                    if has_mask:
                        a[row, j] = p * mask[row, j]               # A = P * M / (1 - p)
    return causal_softmax_fwd


def _make_backward(ft):
    nbt, zero = numba_type(ft), ft(0)

    def causal_softmax_bwd(dp, prob, t, scale, mask, has_mask):
        """In place: dp (R, Tk) = dA -> dS = scale * P * (dP - sum_j dP * P), dP = dA * mask; exactly 0 at masked
        keys."""
        buf = cuda.shared.array(MAX_THREADS, nbt)
        n, tk = dp.shape
        offset = tk - t
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        stride_x, rows_per_block = cuda.blockDim.x, cuda.blockDim.y
        for row0 in range(cuda.blockIdx.x * rows_per_block, n, cuda.gridDim.x * rows_per_block):
            row = row0 + ty
            last = -1
            if row < n:
                last = row % t + offset
            acc = zero
            for j in range(tx, last + 1, stride_x):
                d = dp[row, j]
                if has_mask:
                    d = d * mask[row, j]                           # dP = dA * M / (1 - p)
                    dp[row, j] = d
                acc += d * prob[row, j]
            total = row_sum(buf, acc)                              # sum_j dP * P
            if row < n:
                for j in range(tx, tk, stride_x):
                    r = zero
                    if j <= last:
                        r = (dp[row, j] - total) * prob[row, j] * scale
                    dp[row, j] = r
    return causal_softmax_bwd


FORWARD = CudaKernel("causal_softmax_fwd", _make_forward,
                 "void({f}[:, ::1], int64, {f}, {f}[:, ::1], boolean, {f}[:, ::1])")
BACKWARD = CudaKernel("causal_softmax_bwd", _make_backward,
                  "void({f}[:, ::1], {f}[:, ::1], int64, {f}, {f}[:, ::1], boolean)")


_placeholders = {}


def _mask_rows(xp, mask, shape, n_rows, tk, dtype):
    """The dropout mask M / (1 - p) as a contiguous (R, Tk) array, or a 1x1 placeholder when there is none."""
    if mask is None:
        key = (id(xp), dtype)
        ph = _placeholders.get(key)
        if ph is None:
            ph = _placeholders[key] = xp.zeros((1, 1), dtype=dtype)
        return ph, False
    if mask.shape != shape:
        mask = xp.broadcast_to(mask, shape)
    return xp.ascontiguousarray(mask).reshape(n_rows, tk), True


def keep_scale(xp, keep, p, dtype):
    """The keep-mask times 1 / (1 - p) in `dtype`, as fused.keep_scale (a NumPy scalar: no host-to-device copy)."""
    return keep * np.dtype(dtype).type(1.0 / (1.0 - p))


def causal_softmax_forward(s, t, scale, mask=None, *, config=None):
    """In place on s (..., t, Tk) contiguous: P; returns (P, A) with A = P * mask (A is P without a mask)."""
    xp = array_module(s)
    tk, dtype = s.shape[-1], s.dtype
    rows = s.reshape(-1, tk)                                       # (R, Tk), a view: s is contiguous
    mask2, has_mask = _mask_rows(xp, mask, s.shape, rows.shape[0], tk, dtype)
    a = xp.empty_like(s) if has_mask else s
    if rows.shape[0]:
        grid, block = row_config(rows.shape[0], tk, **(config or {}))
        launch(FORWARD, dtype, grid, block, rows, t, dtype.type(scale), mask2, has_mask,
               a.reshape(-1, tk) if has_mask else mask2)          # (without a mask, A is P: nothing to write)
    return s, a


def causal_softmax_backward(dp, prob, t, scale, mask=None, *, config=None):
    """In place on dp (..., t, Tk) contiguous: dS, with the scale folded in."""
    xp = array_module(dp)
    tk, dtype = dp.shape[-1], dp.dtype
    rows = dp.reshape(-1, tk)
    mask2, has_mask = _mask_rows(xp, mask, dp.shape, rows.shape[0], tk, dtype)
    if rows.shape[0]:
        grid, block = row_config(rows.shape[0], tk, **(config or {}))
        launch(BACKWARD, dtype, grid, block, rows, xp.ascontiguousarray(prob).reshape(-1, tk), t, dtype.type(scale),
               mask2, has_mask)
    return dp


def attention_forward(q, k, v, keep=None, p=0.0, out=None, scale=None, *, config=None):
    """Twin of fused.attention_forward: q (B, H, t, hs); k, v (B, H, Tk, hs) -> y (B, H, t, hs), cache; y is
    also written into `out` (an array or view) when given; scale: of the scores (hs**-0.5 by default)."""
    xp = array_module(q)
    q, k, v = (xp.ascontiguousarray(a) for a in (q, k, v))        # views of qkv: the products want them packed
    t, hs = q.shape[-2], q.shape[-1]
    scale = float(hs) ** -0.5 if scale is None else float(scale)
    mask = None if keep is None else keep_scale(xp, keep, p, q.dtype)   # (B, H, t, Tk) M / (1 - p)
    s = xp.matmul(q, k.swapaxes(-1, -2))                           # (B, H, t, Tk) raw scores, contiguous
    prob, a = causal_softmax_forward(s, t, scale, mask, config=config)
    y = xp.matmul(a, v)                                            # (B, H, t, hs)  Y = A v
    if out is not None:
        out[...] = y
        y = out
    return y, (q, k, v, prob, a, mask, scale)


def attention_backward(dy, cache, out=None, *, config=None):
    """Twin of fused.attention_backward: -> dq, dk, dv (also written into `out` = (dq, dk, dv) when given)."""
    q, k, v, prob, a, mask, scale = cache
    xp = array_module(dy)
    dy = xp.ascontiguousarray(dy)
    t = q.shape[-2]
    dv = xp.matmul(a.swapaxes(-1, -2), dy)                         # dV = A^T dY          (B, H, Tk, hs)
    dp = xp.matmul(dy, v.swapaxes(-1, -2))                         # dA = dY V^T          (B, H, t, Tk)
    ds = causal_softmax_backward(dp, prob, t, scale, mask, config=config)   # dS (scale folded in)
    dq = xp.matmul(ds, k)                                          # dQ = dS K / sqrt(hs)   (B, H, t, hs)
    dk = xp.matmul(ds.swapaxes(-1, -2), q)                         # dK = dS^T Q / sqrt(hs) (B, H, Tk, hs)
    return grads_into(out, (dq, dk, dv))
