"""Inverted dropout with a given keep-mask on the CPU: out = x * keep / (1 - p) in one pass, forward and backward alike
(the mask is read as bytes, not expanded to a float array). NumPy twin: fused.dropout_apply.
"""
import numpy as np
from numba import prange

from ._jit import kernel


@kernel
def dropout_fwd(x, keep, scale, out):
    """out = x * scale where keep, else x * 0 (as the twin's x * mask), over flat arrays."""
    for i in prange(x.shape[0]):
        out[i] = x[i] * (scale if keep[i] else scale * 0)


def dropout_apply(x, keep, p):
    """Twin of fused.dropout_apply: x * keep / (1 - p) for x and a keep-mask of x's shape (bool or 0/1)."""
    keep = np.broadcast_to(keep, x.shape)
    k1 = np.ascontiguousarray(keep).reshape(-1)
    k1 = k1.view(np.uint8) if k1.dtype == bool else (k1 != 0).view(np.uint8)
    out = np.empty(x.shape, x.dtype)
    dropout_fwd.run(x.size, np.ascontiguousarray(x).reshape(-1), k1, x.dtype.type(1.0 / (1.0 - p)), out.reshape(-1))
    return out
