"""Fused layers: each is a forward/backward pair on backend arrays, wrapped as one graph node.

`*_forward(...) -> (out, cache)` and `*_backward(dout, cache) -> grads` work on plain arrays (NumPy or CuPy: the
array module comes from the inputs), so the same code serves training (through the Tensor wrappers at the bottom
of each section) and graph-free generation with a key/value cache. Gradient formulas are derived in
docs/derivations.md; each backward line names the formula it implements.

Dimension names: N rows (B*t positions), B batch, t sequence length, C channels, H heads, hs = C // H head size,
V vocabulary, Tk keys (t, or cache length when decoding).
"""
import numpy as np

from . import parallel
from . import kernels  # numba.cuda twins of the *_forward/*_backward below, for CuPy arrays (loaded on first use)
from .backend import array_module
from .tensor import Tensor


_xp = array_module


# Row blocks for the CPU's memory-bound passes (bias, ReLU, LayerNorm): a block of _BLOCK_ELEMS elements (512 KiB of
# float32) stays in the L2 cache through all of a layer's passes, and the blocks run on parallel_map's threads once the
# layer has at least _PARALLEL_ELEMS elements (below that, one block on the calling thread: threads cost more there).
_BLOCK_ELEMS = 1 << 17
_PARALLEL_ELEMS = 1 << 20


def _row_blocks(xp, n, c):
    """[(r0, r1)] covering rows 0:n of an (n, c) array."""
    if xp is not np or n * c < _PARALLEL_ELEMS:
        return [(0, n)]
    step = max(1, _BLOCK_ELEMS // c)
    return [(r, min(r + step, n)) for r in range(0, n, step)]


def _column_sums(x, xp):
    """Sum over axis -2 with keepdims, as a matrix product with a ones row (BLAS: several times NumPy's sum)."""
    return xp.ones((1, x.shape[-2]), x.dtype) @ x


# ---- linear ------------------------------------------------------------------------------------------------------

def _epilogue(y, b, xp, relu=False, residual=None):
    """In place on a matmul's output y (N, out): y += b (if b is not None), then y = max(y, 0) (if relu) or
    y += residual (an (N, out) array, if given); in row blocks on the CPU's threads, each block through all of it
    while it is in the cache."""
    if b is None and not relu and residual is None:
        return

    def block(rows):
        r = slice(*rows)
        if b is not None:
            y[r] += b
        if relu:
            xp.maximum(y[r], 0, out=y[r])
        if residual is not None:
            y[r] += residual[r]
    parallel.parallel_map(block, _row_blocks(xp, *y.shape))


def _relu_mask_(g, y, xp):
    """g *= [y > 0] in place (the ReLU's backward, y its output), in row blocks. The mask is read as uint8: a bool
    operand costs NumPy a slow casting loop."""
    def block(rows):
        r = slice(*rows)
        xp.multiply(g[r], (y[r] > 0).view(xp.uint8), out=g[r])
    parallel.parallel_map(block, _row_blocks(xp, *g.shape))


def _linear_backward(g2, x2, w, has_bias, xp):
    """Gradients of y = x W^T + b for 2-D g2 (N, out), x2 (N, in): dx = g W, dW = g^T x, db = column sums of g."""
    dx = g2 @ w                                                    # dL/dx = g W       (N, in)
    dw = g2.T @ x2                                                 # dL/dW = g^T x     (out, in)
    return (dx, dw, _column_sums(g2, xp)[0]) if has_bias else (dx, dw)


def linear(x, weight, bias=None, residual=None):
    """y = x @ W.T + b over the last axis, as 2-D matmuls (the shape BLAS is fastest at). W is (out, in).
    residual: optional tensor of y's shape, added in the same pass as the bias (y = residual + x W^T + b): one node
    and one pass over memory instead of a separate add (the transformer's residual connection)."""
    xp = x.xp
    lead, c_in = x.shape[:-1], x.shape[-1]
    x2 = x.data.reshape(-1, c_in)                                  # (N, in)
    w = weight.data
    y = x2 @ w.T                                                   # (N, out)
    _epilogue(y, None if bias is None else bias.data, xp, residual=_rows(residual, lead + (w.shape[0],)))

    def backward(g):
        dx, *rest = _linear_backward(g.reshape(-1, w.shape[0]), x2, w, bias is not None, xp)
        return (dx.reshape(lead + (c_in,)), *rest) + ((g,) if residual is not None else ())
    parents = tuple(p for p in (x, weight, bias, residual) if p is not None)
    return Tensor._make(y.reshape(lead + (w.shape[0],)), parents, backward, "linear")


def mlp(x, fc_weight, fc_bias, proj_weight, proj_bias, residual=None):
    """The ReLU MLP as one node: y = max(x W1^T + b1, 0) W2^T + b2 (biases may be None), plus `residual` if given (as
    in linear). One node instead of two lets the backward mask its own gradient of the hidden layer, dh = g W2, in
    place: no (N, 4C) copy for the ReLU mask (100 MB per layer on `lecture`)."""
    xp = x.xp
    lead, c = x.shape[:-1], x.shape[-1]
    x2 = x.data.reshape(-1, c)                                     # (N, C)
    w1, w2 = fc_weight.data, proj_weight.data                      # (4C, C), (C, 4C)
    h = x2 @ w1.T                                                  # (N, 4C)
    _epilogue(h, None if fc_bias is None else fc_bias.data, xp, relu=True)
    y = h @ w2.T                                                   # (N, C)
    _epilogue(y, None if proj_bias is None else proj_bias.data, xp, residual=_rows(residual, lead + (w2.shape[0],)))

    def backward(g):
        g2 = g.reshape(-1, w2.shape[0])                            # (N, C)
        dh, dw2, *db2 = _linear_backward(g2, h, w2, proj_bias is not None, xp)
        _relu_mask_(dh, h, xp)                                     # dL/d(pre-activation) = dh * [h > 0]: ours
        dx, dw1, *db1 = _linear_backward(dh, x2, w1, fc_bias is not None, xp)
        return (dx.reshape(lead + (c,)), dw1, *db1, dw2, *db2) + ((g,) if residual is not None else ())
    parents = tuple(p for p in (x, fc_weight, fc_bias, proj_weight, proj_bias, residual) if p is not None)
    return Tensor._make(y.reshape(lead + (w2.shape[0],)), parents, backward, "mlp")


def _rows(residual, shape):
    """A residual tensor's data as (N, out) rows, checked against the output's shape (None stays None)."""
    if residual is None:
        return None
    if tuple(residual.shape) != tuple(shape):
        raise ValueError(f"residual of shape {tuple(residual.shape)} for an output of shape {tuple(shape)}")
    return residual.data.reshape(-1, shape[-1])


# ---- embeddings --------------------------------------------------------------------------------------------------

_ONE_HOT_MAX = 1 << 24             # one-hot matrices up to this many entries (64 MiB of float32)


def scatter_rows(idx, g, n_rows):
    """dW for W[idx]: row r of the result sums the rows of g where idx == r. No np.add.at (a slow scalar loop): for
    a small table (a char vocabulary) it is one-hot(idx)^T @ g, a matmul; else sort + reduceat."""
    xp = _xp(g)
    flat = idx.reshape(-1)                                         # (N,)
    g2 = g.reshape(flat.shape[0], -1)                              # (N, C)
    if n_rows * flat.shape[0] <= _ONE_HOT_MAX:
        one_hot_t = (xp.arange(n_rows)[:, None] == flat[None, :]).astype(g.dtype)   # (V, N): [r == idx[n]]
        return one_hot_t @ g2                                      # (V, C)
    out = xp.zeros((n_rows, g2.shape[1]), dtype=g.dtype)           # (V, C)
    if xp is np:
        order = np.argsort(flat, kind="stable")
        sorted_idx = flat[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        out[sorted_idx[starts]] = np.add.reduceat(g2[order], starts, axis=0)
    else:
        xp.add.at(out, flat, g2)
    return out


def embed_forward(idx, tok_w, pos_w, pos0=0):
    """x = tok_w[idx] + pos_w[pos0 : pos0 + t]; idx (B, t) integers -> (B, t, C)."""
    t = idx.shape[1]
    return tok_w[idx] + pos_w[pos0:pos0 + t]                       # (B, t, C)


def embedding(idx, tok_emb, pos_emb):
    """Token plus position embedding as one node. idx: integer array (B, t)."""
    t = idx.shape[1]
    out = embed_forward(idx, tok_emb.data, pos_emb.data)

    def backward(g):                                               # g (B, t, C)
        d_tok = scatter_rows(idx, g, tok_emb.shape[0])             # dTok[r] = sum of g where idx == r
        d_pos = tok_emb.xp.zeros_like(pos_emb.data)
        d_pos[:t] = g.sum(axis=0)                                  # dPos[p] = sum over the batch of g[:, p]
        return d_tok, d_pos
    return Tensor._make(out, (tok_emb, pos_emb), backward, "embedding")


# ---- LayerNorm (docs/derivations.md#layernorm) --------------------------------------------------------------------

def layer_norm_forward(x, w, b, eps=1e-5):
    """x (..., C) -> y = (x - mean) / sqrt(var + eps) * w + b, biased variance. Row means are matrix-vector products
    (BLAS reads a row block once, faster than NumPy's reduction), in row blocks on the CPU's threads."""
    xp = _xp(x)
    if xp is not np and kernels.enabled():
        return kernels.layer_norm_forward(x, w, b, eps)
    c = x.shape[-1]
    x2 = x.reshape(-1, c)                                          # (N, C)
    xhat = xp.empty(x2.shape, x.dtype)                             # (N, C)
    y = xp.empty(x2.shape, x.dtype)
    rstd = xp.empty((x2.shape[0], 1), x.dtype)                     # (N, 1)
    mean_weights = xp.full(c, 1.0 / c, dtype=x.dtype)              # x @ mean_weights: row means

    def block(rows):
        r = slice(*rows)
        xc = xp.subtract(x2[r], (x2[r] @ mean_weights)[:, None], out=xhat[r])      # x - mean
        var = xp.einsum("ij,ij->i", xc, xc)[:, None] * x.dtype.type(1.0 / c)      # biased variance (n, 1)
        rstd[r] = 1.0 / xp.sqrt(var + eps)
        xc *= rstd[r]                                              # xhat
        xp.multiply(xc, w, out=y[r])
        if b is not None:
            y[r] += b
    parallel.parallel_map(block, _row_blocks(xp, *x2.shape))
    return y.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), w)


def layer_norm_backward(g, cache):
    if _xp(g) is not np and kernels.enabled():
        return kernels.layer_norm_backward(g, cache)
    xhat, rstd, w = cache
    xp = _xp(g)
    c = xhat.shape[-1]
    g2, xhat2, rstd2 = g.reshape(-1, c), xhat.reshape(-1, c), rstd.reshape(-1, 1)   # (N, C), (N, C), (N, 1)
    blocks = _row_blocks(xp, *g2.shape)
    dx = xp.empty(g2.shape, g.dtype)
    dw_parts = xp.empty((len(blocks), c), g.dtype)                 # per-block column sums: added up in a fixed order
    db_parts = xp.empty((len(blocks), c), g.dtype)
    mean_weights = xp.full(c, 1.0 / c, dtype=g.dtype)

    def block(i):
        r = slice(*blocks[i])
        gb, xb = g2[r], xhat2[r]
        db_parts[i] = _column_sums(gb, xp)[0]                      # db = sum_rows dy
        dxhat = gb * xb
        dw_parts[i] = _column_sums(dxhat, xp)[0]                   # dw = sum_rows dy * xhat
        xp.multiply(gb, w, out=dxhat)                              # dxhat = dy * w
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        m1 = (dxhat @ mean_weights)[:, None]
        m2 = xp.einsum("ij,ij->i", dxhat, xb)[:, None] * g.dtype.type(1.0 / c)
        out = xp.subtract(dxhat, m1, out=dx[r])
        dxhat = xp.multiply(xb, m2, out=dxhat)
        out -= dxhat
        out *= rstd2[r]
    parallel.parallel_map(block, range(len(blocks)))
    if len(blocks) == 1:
        return dx.reshape(g.shape), dw_parts[0], db_parts[0]
    return dx.reshape(g.shape), dw_parts.sum(axis=0), db_parts.sum(axis=0)


def layer_norm(x, weight, bias=None, eps=1e-5):
    y, cache = layer_norm_forward(x.data, weight.data, None if bias is None else bias.data, eps)

    def backward(g):
        dx, dw, db = layer_norm_backward(g, cache)
        return (dx, dw) if bias is None else (dx, dw, db)
    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._make(y, parents, backward, "layer_norm")


# ---- causal self-attention core (docs/derivations.md#attention-core) ---------------------------------------------

_mask_cache = {}


def causal_bias(t, tk, dtype, xp=np):
    """(tk, t) additive mask in the scores' keys-by-queries layout (see _scores_t), contiguous: 0 where query i (at
    absolute position tk - t + i) may see key j, -inf after it. (Adding a transposed view of a (t, tk) mask instead
    broadcast with a strided inner loop: 2.6x slower on nanogpt-cpu's blocks.)"""
    key = (t, tk, np.dtype(dtype).str, xp.__name__)
    m = _mask_cache.get(key)
    if m is None:
        i = np.arange(t)[None, :] + (tk - t)
        j = np.arange(tk)[:, None]
        m = xp.asarray(np.where(j > i, -np.inf, 0.0).astype(dtype))
        if len(_mask_cache) > 64:
            _mask_cache.clear()
        _mask_cache[key] = m
    return m


# The CPU attention runs in blocks of (batch rows, query rows). A block holds about _BLOCK_SCORES scores (1 MiB of
# float32), so its softmax runs in the L2 cache (4 MiB per core here) instead of making ~10 passes over a (B, H, t, Tk)
# array in main memory; a block of queries i0:i1 only computes the keys it can see (0 : Tk - t + i1), which skips much
# of the masked half of the scores; and the groups of batch rows run on parallel_map's threads.
_BLOCK_SCORES = 1 << 18
_QUERY_BLOCK = 64
# OpenBLAS (0.3.x, x86-64 AVX-512 kernels) multiplies matrices with M*N*K <= 1e6 with its unpacked "small matrix"
# kernels, and above that packs them first: for the attention's skinny (keys x queries x head) products the packed
# path ran ~25% slower here (one thread: 109 against 144 GFLOP/s). Each block's products have M*N*K = kn * n * hs, so
# the query block shrinks until the block that sees every key stays under that limit (lecture: 60 queries instead
# of 64, attention forward+backward 131 -> 122 ms per layer), but not below _QUERY_BLOCK_MIN.
_SMALL_GEMM = 1_000_000
_QUERY_BLOCK_MIN = 32
_KEEP_PROBS = True                # keep P for the backward (else recompute it from q, k and the row max and sum)
_PARALLEL_SCORES = 1 << 20        # below this many scores in all, one group (threads would cost more than they save)


def _attention_blocks(xp, b, h, t, tk, hs):
    """[(b0, b1, [(i0, i1, kn), ...])]: groups of batch rows b0:b1 (the units spread over threads), each with its
    query blocks: queries i0:i1 see keys 0:kn. The block of the last queries (which sees every key) comes first: the
    backward writes dk, dv there and adds the other blocks' parts."""
    if xp is not np:
        return [(0, b, [(0, t, tk)])]                               # one block on the GPU
    qb = min(t, _QUERY_BLOCK, max(_QUERY_BLOCK_MIN, _SMALL_GEMM // (tk * hs)))
    queries = [(max(0, i1 - qb), i1, tk - t + i1) for i1 in range(t, 0, -qb)]
    step = max(1, _BLOCK_SCORES // (h * qb * tk))
    if b * h * t * tk >= _PARALLEL_SCORES:
        step = min(step, -(-b // parallel.num_threads()))
    return [(b0, min(b0 + step, b), queries) for b0 in range(0, b, step)]


def _matmul_into(a, b, out):
    """out[...] = a @ b: straight into `out` (a strided view) with NumPy; through a temporary elsewhere (CuPy's
    matmul is not documented to write into non-contiguous outputs)."""
    if isinstance(out, np.ndarray):
        np.matmul(a, b, out=out)
    else:
        out[...] = a @ b


def _scores_t(q, k, scale, xp):
    """S^T = k (q / sqrt(hs))^T + causal bias^T for one block: q (G, H, n, hs) the last n of the keys' positions,
    k (G, H, kn, hs) -> (G, H, kn, n), keys down, queries across; masked entries -inf.
    Transposed because NumPy reduces across rows (axis -2, elementwise over whole rows) 3-4x faster than along a
    short last axis: each query's softmax max and sum run down a column here.
    (q / sqrt(hs))^T is written out contiguous: OpenBLAS's small-matrix path runs k @ (contiguous q^T) about 2x faster
    than k @ (a transposed view of q) at the head sizes here (95 against 205 us on nanogpt-cpu's blocks)."""
    qt = xp.empty(q.shape[:-2] + (q.shape[-1], q.shape[-2]), q.dtype)   # (G, H, hs, n)
    xp.multiply(q.swapaxes(-1, -2), scale, out=qt)
    s = k @ qt
    s += causal_bias(q.shape[-2], k.shape[-2], s.dtype, xp)
    return s


def attention_forward(q, k, v, keep=None, p=0.0, out=None):
    """Scaled masked softmax attention. q (B, H, t, hs); k, v (B, H, Tk, hs) with Tk >= t (queries are the last t
    positions); any strides with unit last stride (views into a (B, t, 3C) qkv array work, no copies). keep: optional
    boolean dropout keep-mask (B, H, t, Tk). out: optional (B, H, t, hs) array (or view) to write y into.
    Returns y and the backward cache.

    On the CPU it runs in blocks (see _attention_blocks) on transposed scores (see _scores_t). It keeps each query's
    max m and sum l of exp(S - m), and, with _KEEP_PROBS, each block's P for the backward; without, the backward
    recomputes P = exp(S - m) / l from q and k, bit for bit (as flash attention does on GPUs). Keeping P measured
    2% faster on the lecture step (5.67 s against 5.78 s) for ~63 MB more per layer there."""
    xp = _xp(q)
    if xp is not np and kernels.enabled():
        y, cache = kernels.attention_forward(q, k, v, keep, p)
        if out is not None:
            out[...] = y
        return (y if out is None else out), cache
    b, h, t, hs = q.shape
    scale = q.dtype.type(hs ** -0.5)                               # a NumPy scalar: stays in q's dtype
    y = xp.empty(q.shape, q.dtype) if out is None else out         # (B, H, t, hs)
    m = xp.empty((b, h, 1, t), q.dtype)                            # per query, laid out across like S^T's columns
    l = xp.empty((b, h, 1, t), q.dtype)
    probs = {} if _KEEP_PROBS else None                            # (b0, i0) -> P^T of that block

    def group(blocks):
        b0, b1, queries = blocks
        for i0, i1, kn in queries:
            rows, keys = (slice(b0, b1), slice(None), slice(i0, i1)), (slice(b0, b1), slice(None), slice(0, kn))
            cols = (slice(b0, b1), slice(None), slice(None), slice(i0, i1))
            st = _scores_t(q[rows], k[keys], scale, xp)            # (G, H, kn, n) S^T
            m[cols] = st.max(axis=-2, keepdims=True)               # per query: finite (key j = i is always visible)
            st -= m[cols]
            xp.exp(st, out=st)
            l[cols] = _column_sums(st, xp)
            st /= l[cols]                                          # P^T = exp(S - m)^T / l; masked entries exactly 0
            if probs is not None:
                probs[b0, i0] = st if keep is None else st.copy()
            if keep is not None:
                st *= keep[rows + (slice(0, kn),)].swapaxes(-1, -2)
                st *= q.dtype.type(1.0 / (1.0 - p))                # A^T = (P * M / (1 - p))^T
            _matmul_into(st.swapaxes(-1, -2), v[keys], y[rows])    # Y = A v
    parallel.parallel_map(group, _attention_blocks(xp, b, h, t, k.shape[-2], hs))
    return y, (q, k, v, m, l, keep, p, y, probs)


def attention_backward(dy, cache, out=None):
    """-> dq, dk, dv (written into `out` = (dq, dk, dv) arrays or views when given)."""
    if _xp(dy) is not np and kernels.enabled():
        grads = kernels.attention_backward(dy, cache)
        if out is not None:
            for o, g in zip(out, grads):
                o[...] = g
        return grads if out is None else out
    q, k, v, m, l, keep, p, y, probs = cache
    xp = _xp(dy)
    b, h, t, hs = q.shape
    scale = q.dtype.type(hs ** -0.5)
    dq, dk, dv = out if out is not None else (xp.empty(a.shape, a.dtype) for a in (q, k, v))

    def group(blocks):
        b0, b1, queries = blocks
        # D_i = sum_j dP_ij P_ij = sum_j dA_ij A_ij = sum_d dY_id Y_id  (dA = dY V^T, Y = A V): (G, H, 1, t)
        d = xp.einsum("bhtd,bhtd->bht", dy[b0:b1], y[b0:b1])[:, :, None, :]
        dyt = xp.empty((b1 - b0, h, hs, t), dy.dtype)                # dY^T contiguous: V dY^T as a plain (NN) product
        xp.copyto(dyt, dy[b0:b1].swapaxes(-1, -2))
        for i0, i1, kn in queries:
            rows, keys = (slice(b0, b1), slice(None), slice(i0, i1)), (slice(b0, b1), slice(None), slice(0, kn))
            cols = (slice(b0, b1), slice(None), slice(None), slice(i0, i1))
            if probs is not None:
                prob = probs.pop((b0, i0))                         # P^T as the forward left it
            else:
                prob = _scores_t(q[rows], k[keys], scale, xp)      # recompute S^T, then P^T as the forward did
                prob -= m[cols]
                xp.exp(prob, out=prob)
                prob /= l[cols]
            dp = v[keys] @ dyt[..., i0:i1]                         # dA^T = V dY^T        (G, H, kn, n)
            a = prob
            if keep is not None:
                mask, ks = keep[rows + (slice(0, kn),)].swapaxes(-1, -2), q.dtype.type(1.0 / (1.0 - p))
                a = prob * mask
                a *= ks                                            # A^T = (P * M / (1 - p))^T
                dp *= mask
                dp *= ks                                           # dP^T = (dA * M / (1 - p))^T
            # dS = P * (dP - D); masked entries have P = 0, so their gradient is exactly 0; 1/sqrt(hs) folded in
            dp -= d[..., i0:i1]
            dp *= prob
            dp *= scale                                            # dS^T / sqrt(hs)
            _matmul_into(dp.swapaxes(-1, -2), k[keys], dq[rows])   # dQ = dS K / sqrt(hs)   (G, H, n, hs)
            if i1 == t:                                            # the first block: it sees every key
                _matmul_into(a, dy[rows], dv[keys])                # dV = A^T dY            (G, H, kn, hs)
                _matmul_into(dp, q[rows], dk[keys])                # dK = dS^T Q / sqrt(hs)
            else:                                                  # earlier queries add to the keys they see
                dv[keys] += a @ dy[rows]
                dk[keys] += dp @ q[rows]
    parallel.parallel_map(group, _attention_blocks(xp, b, h, t, k.shape[-2], hs))
    return dq, dk, dv


def split_heads(qkv, n_head):
    """(B, t, 3C) -> q, k, v each (B, H, t, hs) views: rows [0:C] of W_qkv are q, [C:2C] k, [2C:3C] v."""
    b, t, c3 = qkv.shape
    hs = c3 // (3 * n_head)
    x = qkv.reshape(b, t, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, H, t, hs)
    return x[0], x[1], x[2]


def merge_heads(y):
    """(B, H, t, hs) -> (B, t, C)."""
    b, h, t, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, t, h * hs)


def self_attention(qkv, n_head, keep=None, p=0.0):
    """The attention core as one node: qkv (B, t, 3C) -> y (B, t, C), all heads at once. On the CPU q, k, v are read
    as views of qkv, y is written straight into its (B, t, C) layout and dq, dk, dv into one (B, t, 3C) gradient."""
    xp = qkv.xp
    b, t, c3 = qkv.shape
    c = c3 // 3
    hs = c // n_head
    gpu_kernels = xp is not np and kernels.enabled()               # the kernels want contiguous q, k, v
    q, k, v = split_heads(qkv.data, n_head)                        # (B, H, t, hs) views
    if gpu_kernels:
        q, k, v = (xp.ascontiguousarray(a) for a in (q, k, v))
    out = xp.empty((b, t, n_head, hs), qkv.dtype)                  # y in its merged layout
    _, cache = attention_forward(q, k, v, keep, p, out=out.transpose(0, 2, 1, 3))

    def backward(g):
        dy = g.reshape(b, t, n_head, hs).transpose(0, 2, 1, 3)     # (B, H, t, hs) view
        dqkv = xp.empty((b, t, c3), g.dtype)
        attention_backward(xp.ascontiguousarray(dy) if gpu_kernels else dy, cache, out=split_heads(dqkv, n_head))
        return (dqkv,)
    return Tensor._make(out.reshape(b, t, c), (qkv,), backward, "self_attention")


# ---- dropout -----------------------------------------------------------------------------------------------------

def keep_scale(keep, p, dtype):
    """The boolean keep-mask times 1 / (1 - p), in `dtype` (a bare Python float would make it float64)."""
    return keep * np.dtype(dtype).type(1.0 / (1.0 - p))          # a NumPy scalar: no device copy, no upcast


def dropout(x, keep, p):
    """Inverted dropout with a given boolean keep-mask: y = x * keep / (1 - p)."""
    if x.xp is not np and kernels.enabled():
        return kernels.dropout(x, keep, p)
    m = keep_scale(keep, p, x.dtype)                               # (shape of x)
    return Tensor._make(x.data * m, (x,), lambda g: (g * m,), "dropout")


# ---- softmax cross-entropy (docs/derivations.md#softmax-cross-entropy) --------------------------------------------

def cross_entropy_forward(logits, targets):
    """Mean over rows of logsumexp(z_i) - z_i[y_i]. logits (..., V), targets (...) integers."""
    xp = _xp(logits)
    if xp is not np and kernels.enabled():
        return kernels.cross_entropy_forward(logits, targets)
    v = logits.shape[-1]
    z = logits.reshape(-1, v)                                      # (N, V)
    y = targets.reshape(-1)                                        # (N,)
    n = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)                     # (N, V) max-shifted for stability
    e = xp.exp(shifted)
    sum_e = e.sum(axis=1, keepdims=True)                           # (N, 1)
    rows = xp.arange(n)
    loss = (xp.log(sum_e[:, 0]) - shifted[rows, y]).mean()         # logsumexp - z[y] (the max cancels)
    e /= sum_e                                                     # softmax, kept for backward
    return loss, (e, y, rows, logits.shape)


def cross_entropy_backward(g, cache):
    if _xp(cache[0]) is not np and kernels.enabled():
        return kernels.cross_entropy_backward(g, cache)
    prob, y, rows, shape = cache
    n = prob.shape[0]
    dz = prob * (g / n)                                            # dz = (softmax(z) - onehot(y)) * g / N
    dz[rows, y] -= g / n
    return dz.reshape(shape)


def cross_entropy(logits, targets):
    """Mean softmax cross-entropy of logits (..., V) against integer targets (...), as one node."""
    tgt = targets.data if isinstance(targets, Tensor) else logits.xp.asarray(targets)
    loss, cache = cross_entropy_forward(logits.data, tgt)
    loss = logits.xp.asarray(loss, dtype=logits.dtype)
    return Tensor._make(loss, (logits,), lambda g: (cross_entropy_backward(g, cache),), "cross_entropy")
