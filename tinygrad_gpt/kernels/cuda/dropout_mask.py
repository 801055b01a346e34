"""Inverted dropout with a given keep-mask: out = x * (keep ? 1 / (1 - p) : 0) in one elementwise pass, forward and
backward alike (the mask is not expanded to a float array). NumPy twin: fused.dropout_apply.
"""
from numba import cuda

from ._common import CudaKernel, array_module, flat_config, launch


def _make(ft):
    zero = ft(0)

    def dropout_apply(x, keep, scale, out):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        n = x.shape[0]
        while i < n:
            if keep[i]:
                out[i] = x[i] * scale                              # kept: scaled by 1 / (1 - p)
            else:
                out[i] = x[i] * zero                               # dropped (x * 0, as the twin's x * mask)
            i += step
    return dropout_apply


APPLY = CudaKernel("dropout_apply", _make, "void({f}[::1], boolean[::1], {f}, {f}[::1])")


def dropout_apply(x, keep, p, *, config=None):
    """Twin of fused.dropout_apply: x * keep / (1 - p) for an array x and a keep-mask of x's shape (bool, or
    0/1 of any dtype)."""
    xp = array_module(x)
    if keep.dtype != bool:
        keep = keep != 0
    if keep.shape != x.shape:
        keep = xp.broadcast_to(keep, x.shape)
    x1 = xp.ascontiguousarray(x).reshape(-1)
    k1 = xp.ascontiguousarray(keep).reshape(-1)
    out = xp.empty(x.shape, dtype=x.dtype)
    if x.size:
        grid, threads = flat_config(x.size, **(config or {}))
        launch(APPLY, x.dtype, grid, threads, x1, k1, x.dtype.type(1.0 / (1.0 - p)), out.reshape(-1))
    return out

