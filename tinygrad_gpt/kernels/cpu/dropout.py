"""Dropout on the CPU: inverted dropout with a given keep-mask, out = x * keep / (1 - p) in one pass, forward and
backward alike (the mask is read as bytes, not expanded to a float array); and the keep-masks of the torch-shaped
front end, drawn by a counter-based hash (each element from (seed, index) alone). NumPy twins: fused.dropout_apply,
fused.dropout_keep_mask.
"""
import numpy as np
from numba import prange

from ...fused import MIX_A, MIX_B, MIX_STEP, keep_threshold
from ._jit import kernel


@kernel(exact=True)
def keep_mask_fill(out, seed, threshold):
    """out (flat uint8): 1 where the top 32 bits of splitmix64(seed + (i + 1) * MIX_STEP) >= threshold, else 0."""
    step, a, b = np.uint64(MIX_STEP), np.uint64(MIX_A), np.uint64(MIX_B)
    for i in prange(out.shape[0]):
        z = np.uint64(i + 1) * step + seed
        z = (z ^ (z >> np.uint64(30))) * a
        z = (z ^ (z >> np.uint64(27))) * b
        z = z ^ (z >> np.uint64(31))
        out[i] = np.uint8((z >> np.uint64(32)) >= threshold)


def dropout_keep_mask(keep, seed, p):
    """Twin of fused.dropout_keep_mask: fills the C-contiguous bool array `keep` in place."""
    flat = keep.reshape(-1).view(np.uint8)
    keep_mask_fill.run(flat.size, flat, np.uint64(seed), np.uint64(keep_threshold(p)))
    return keep


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
