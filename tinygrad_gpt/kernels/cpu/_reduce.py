"""Column sums in pieces: a kernel sums each piece of tuning.ROWS rows on its own (in parallel) and `sum_rows` adds the
pieces' partial sums in piece order, so a sum's bits do not depend on the thread count. Used by the linear layer's
bias gradient, LayerNorm's dw and db, and (the piece count) cross-entropy's mean loss.

`n_pieces` is the kernels' one ceiling division, callable from Python and from the kernels alike.
"""
from numba.extending import register_jitable

from ._jit import kernel
from .tuning import ROWS


@register_jitable
def n_pieces(n, size=ROWS):
    """How many pieces of `size` cover n (rows, elements, columns): ceil(n / size), at least one, so that an empty
    input still has a partial sum."""
    return max(1, -(-n // size))


@kernel(work="serial")
def sum_rows(parts, out):
    """out[j] = sum over the rows of parts (P, D), in row order."""
    for j in range(parts.shape[1]):
        out[j] = parts[0, j]
    for p in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            out[j] += parts[p, j]
