"""The AdamW update on the CPU, one pass over an optimizer group's flat buffers (parameters, gradients, both moments),
with the global gradient norm for clipping computed beforehand in one read of the gradients.
NumPy twins: optim.adamw_update (torch's order of operations, repeated one float operation at a time with the same
constants rounded to the parameters' dtype) and optim.grad_norm.
"""
import numpy as np
from numba import prange

from ._jit import kernel
from ._reduce import n_pieces
from .tuning import ADAMW_PIECE as PIECE


@kernel(exact=True)
def adamw_upd(p, g, m, v, coef, decay, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, lr_over_bc1):
    """In place: g *= coef (clipping; coef 1 when off), then the update of p, m, v from g. Pieces of PIECE elements,
    each a loop from 0 over slices (a loop with a computed start did not vectorise)."""
    n = p.shape[0]
    for q in prange(n_pieces(n, PIECE)):
        a, b = q * PIECE, min(n, (q + 1) * PIECE)
        pq, gq, mq, vq = p[a:b], g[a:b], m[a:b], v[a:b]
        for i in range(b - a):
            gi = gq[i] * coef
            gq[i] = gi
            pi = pq[i] * decay                                     # p -= lr * wd * p   (decay = 1 - lr * wd)
            mi = mq[i]
            mi = mi + (gi - mi) * one_minus_beta1                  # m = beta1 m + (1 - beta1) g   (torch's lerp)
            vi = vq[i] * beta2
            vi = vi + (gi * gi) * one_minus_beta2                  # v = beta2 v + (1 - beta2) g^2
            denom = np.sqrt(vi) / bc2_sqrt + eps                   # sqrt(v / (1 - beta2^t)) + eps
            pq[i] = pi - (mi / denom) * lr_over_bc1                # p -= lr * m_hat / (sqrt(v_hat) + eps)
            mq[i] = mi
            vq[i] = vi


@kernel
def sq_norm_parts(g, parts):
    """parts[q] = sum of g^2 over piece q (float64 accumulation)."""
    n = g.shape[0]
    for q in prange(parts.shape[0]):
        gq = g[q * PIECE:min(n, (q + 1) * PIECE)]
        acc = 0.0
        for i in range(gq.shape[0]):
            x = np.float64(gq[i])
            acc += x * x
        parts[q] = acc


def grad_norm(grads):
    """Twin of optim.grad_norm: the global L2 norm of gradient arrays (float64 sums per piece, added in order)."""
    total = 0.0
    for g in grads:
        flat = np.ascontiguousarray(g).reshape(-1)
        parts = np.empty(n_pieces(flat.size, PIECE))
        sq_norm_parts.run(flat.size, flat, parts)
        total += float(parts.sum())
    return float(np.sqrt(total))


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, coef=1.0):
    """Twin of optim.adamw_update: g *= coef (clipping), then p, m, v updated in place from g."""
    f = p.dtype.type
    decay = 1.0 - lr * weight_decay if weight_decay else 1.0
    # the optimizer's buffers are contiguous (flat views, no copies); anything else is updated in a copy, written back
    arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in (p, g, m, v)]
    adamw_upd.run(p.size, *[a.reshape(-1) for a in arrays], f(coef), f(decay), f(1.0 - beta1), f(beta2),
                  f(1.0 - beta2), f(bc2_sqrt), f(eps), f(lr / bc1))
    for dst, src in zip((p, g, m, v), arrays, strict=True):
        if src is not dst:
            dst[...] = src
