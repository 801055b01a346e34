"""Column sums in pieces: a kernel sums each piece of tuning.ROWS rows on its own (in parallel) and `sum_rows` adds the
pieces' partial sums in piece order, so a sum's bits do not depend on the thread count. Used by the linear layer's
bias gradient, LayerNorm's dw and db, and (the piece count) cross-entropy's mean loss.
"""
from ._jit import kernel
from .tuning import ROWS


def n_pieces(n, size=ROWS):
    """How many pieces of `size` rows cover n rows (at least one, so an empty input still has a partial sum)."""
    return max(1, -(-n // size))


@kernel
def sum_rows(parts, out):
    """out[j] = sum over the rows of parts (P, D), in row order."""
    for j in range(parts.shape[1]):
        out[j] = parts[0, j]
    for p in range(1, parts.shape[0]):
        for j in range(parts.shape[1]):
            out[j] += parts[p, j]
