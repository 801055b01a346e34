"""Token + position embedding on the CPU: the gather and its backward, the scatter-add into the token table and the
batch sum into the position table, without atomics (each output row or column range has one writer).
NumPy twins: fused.embed_forward / embed_backward. Dimension names: B batch, t positions, C channels, V rows of
the token table.
"""
import numpy as np
from numba import prange

from ._jit import kernel
from ._reduce import n_pieces
from .tuning import EMBED_COLS as COLS


@kernel
def embed_fwd(idx, tok, pos, pos0, out):
    """out[b, i] = tok[idx[b, i]] + pos[pos0 + i]; idx (B, t), out (B, t, C)."""
    bsz, t = idx.shape
    c = tok.shape[1]
    for r in prange(bsz * t):
        b, i = r // t, r % t
        row = idx[b, i]
        for j in range(c):
            out[b, i, j] = tok[row, j] + pos[pos0 + i, j]


@kernel
def embed_bwd(idx, g, d_tok, d_pos):
    """d_tok[v] = sum of g[b, i] over positions with idx[b, i] == v (positions in order); d_pos[i] = sum_b g[b, i]
    for i < t (the rest of d_pos is zero). Parallel over pieces of COLS channels: each piece owns its columns (loops
    from 0 over slices: a loop with a computed start did not vectorise)."""
    bsz, t = idx.shape
    c = g.shape[2]
    ft = g.dtype.type
    for p in prange(n_pieces(c, COLS)):
        j0, j1 = p * COLS, min(c, (p + 1) * COLS)
        d_tok[:, j0:j1] = ft(0)
        d_pos[:, j0:j1] = ft(0)
        for b in range(bsz):
            for i in range(t):
                src, tok, pos = g[b, i, j0:j1], d_tok[idx[b, i], j0:j1], d_pos[i, j0:j1]
                for j in range(j1 - j0):
                    tok[j] += src[j]
                    pos[j] += src[j]


def embed_forward(idx, tok_w, pos_w, pos0=0):
    """Twin of fused.embed_forward: x = tok_w[idx] + pos_w[pos0 : pos0 + t] (B, t, C)."""
    bsz, t = idx.shape
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= tok_w.shape[0]):   # the kernel reads tok_w[idx] unchecked
        raise IndexError(f"embedding: ids must be in [0, {tok_w.shape[0]}), got [{idx.min()}, {idx.max()}]")
    if pos0 < 0 or pos0 + t > pos_w.shape[0]:
        raise IndexError(f"embedding: positions {pos0}..{pos0 + t - 1} outside the table's {pos_w.shape[0]}")
    out = np.empty((bsz, t, tok_w.shape[1]), tok_w.dtype)
    embed_fwd.run(out.size, idx, np.ascontiguousarray(tok_w),
                  np.ascontiguousarray(pos_w), pos0, out)
    return out


def embed_backward(idx, g, n_tok, n_pos):
    """Twin of fused.embed_backward: -> d_tok (V, C), d_pos (T, C)."""
    c = g.shape[-1]
    d_tok = np.empty((n_tok, c), g.dtype)
    d_pos = np.empty((n_pos, c), g.dtype)
    embed_bwd.run(g.size, np.ascontiguousarray(idx, dtype=np.int64), np.ascontiguousarray(g), d_tok, d_pos)
    return d_tok, d_pos
