"""Softmax cross-entropy on the CPU: one pass per row for the forward (max, softmax kept for the backward, the row's
loss), one elementwise pass for the backward. NumPy twins: fused.cross_entropy_forward / _backward
(docs/derivations.md#softmax-cross-entropy); the cache is the twin's, (prob, y, rows, shape).
Dimension names: N rows, V vocabulary.
"""
import numpy as np
from numba import prange

from ._jit import kernel
from ._math import exp
from ._reduce import n_pieces
from .tuning import ROWS


@kernel
def cross_entropy_fwd(z, y, prob, loss_part):
    """z (N, V) logits, y (N,) targets -> prob = softmax(z) (N, V); loss_part (pieces,): per piece of ROWS rows the sum
    of logsumexp(z_r) - z_r[y_r] = log(sum_j exp(z_rj - max_r)) - (z_r[y_r] - max_r)."""
    n, v = z.shape
    ft = z.dtype.type
    for p in prange(loss_part.shape[0]):
        acc = ft(0)
        for r in range(p * ROWS, min(n, (p + 1) * ROWS)):
            zr, pr = z[r], prob[r]
            m = zr[0]
            for j in range(v):
                m = max(m, zr[j])
            s = ft(0)
            for j in range(v):
                e = exp(zr[j] - m)
                pr[j] = e
                s += e
            acc += np.log(s) - (zr[y[r]] - m)
            inv = ft(1) / s
            for j in range(v):
                pr[j] *= inv
        loss_part[p] = acc


@kernel
def cross_entropy_bwd(prob, y, scale, dz):
    """dz = (prob - onehot(y)) * scale, scale = g / N."""
    n, v = prob.shape
    for r in prange(n):
        for j in range(v):
            dz[r, j] = prob[r, j] * scale
        dz[r, y[r]] -= scale


def cross_entropy_forward(logits, targets):
    """Twin of fused.cross_entropy_forward: mean over rows of logsumexp(z) - z[y] -> (loss, cache)."""
    v = logits.shape[-1]
    z = np.ascontiguousarray(logits.reshape(-1, v))                # (N, V)
    y = np.ascontiguousarray(targets.reshape(-1), dtype=np.int64)  # (N,)
    n = z.shape[0]
    if n and (y.min() < 0 or y.max() >= v):                        # the kernel reads z[r, y[r]] unchecked
        raise IndexError(f"cross_entropy: targets must be in [0, {v}), got [{y.min()}, {y.max()}]")
    prob = np.empty_like(z)
    parts = np.zeros(n_pieces(n), z.dtype)
    if n:
        cross_entropy_fwd.run(z.size, z, y, prob, parts)
    loss = z.dtype.type(parts.sum(dtype=z.dtype) / z.dtype.type(n)) if n else z.dtype.type(np.nan)
    return loss, (prob, y, np.arange(n), logits.shape)


def cross_entropy_backward(g, cache):
    """Twin of fused.cross_entropy_backward: dlogits = (softmax - onehot) * g / N."""
    prob, y, rows, shape = cache
    n = prob.shape[0]
    dz = np.empty_like(prob)
    if n:
        cross_entropy_bwd.run(prob.size, prob, y, prob.dtype.type(np.asarray(g) / n), dz)
    return dz.reshape(shape)
