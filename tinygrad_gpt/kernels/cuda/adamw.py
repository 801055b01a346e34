"""The AdamW update, one elementwise pass over an optimizer group's flat buffers (parameters, gradients, both moments).
NumPy twin: optim.adamw_update, whose order of operations (torch's) it repeats one float operation at a time, with
the same float32-rounded constants, so that it matches the twin exactly wherever the compiler does not contract a
multiply-add (it does not in the simulator; on a GPU, FMA contraction can change the last bit).
"""
import math

from numba import cuda

from ._common import CudaKernel, array_module, flat_config, launch


def _make(ft):
    def adamw_update(p, g, m, v, decay, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, lr_over_bc1):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        n = p.shape[0]
        while i < n:
            gi = g[i]
            pi = p[i] * decay                                      # p -= lr * wd * p   (decay = 1 - lr * wd)
            mi = m[i]
            mi = mi + (gi - mi) * one_minus_beta1                  # m = beta1 m + (1 - beta1) g   (torch's lerp)
            vi = v[i] * beta2
            vi = vi + (gi * gi) * one_minus_beta2                  # v = beta2 v + (1 - beta2) g^2
            denom = math.sqrt(vi)
            denom = denom / bc2_sqrt
            denom = denom + eps                                    # sqrt(v / (1 - beta2^t)) + eps
            upd = mi / denom
            upd = upd * lr_over_bc1
            p[i] = pi - upd                                        # p -= lr * m_hat / (sqrt(v_hat) + eps)
            m[i] = mi
            v[i] = vi
            i += step
    return adamw_update


UPDATE = CudaKernel("adamw_update", _make,
                "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, {f}, {f})")


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, coef=1.0, *, config=None):
    """Twin of optim.adamw_update: g *= coef (gradient clipping; coef a float or a 0-d device array, so clipping needs
    no synchronisation), then p, m, v updated in place from g; bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t).
    The constants are rounded to p's dtype once, on the host, as the twin's Python floats are when they meet it."""
    xp = array_module(p)
    if not (isinstance(coef, float) and coef == 1.0):
        g *= xp.asarray(coef).astype(g.dtype)
    # the optimizer's flat buffers are contiguous (no copies); a strided view is updated in a copy, written back
    arrays = [a if a.flags.c_contiguous else xp.ascontiguousarray(a) for a in (p, g, m, v)]
    f = p.dtype.type
    if p.size:
        grid, threads = flat_config(p.size, **(config or {}))
        decay = 1.0 - lr * weight_decay if weight_decay else 1.0
        launch(UPDATE, p.dtype, grid, threads, *[a.reshape(-1) for a in arrays], f(decay), f(1.0 - beta1), f(beta2),
               f(1.0 - beta2), f(bc2_sqrt), f(eps), f(lr / bc1))
    for dst, src in ((p, arrays[0]), (m, arrays[2]), (v, arrays[3])):
        if src is not dst:                                         # a strided input was updated in a copy
            dst[...] = src
