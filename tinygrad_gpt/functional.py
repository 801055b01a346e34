"""Fused layers: each is a forward/backward pair on backend arrays, wrapped as one graph node.

`*_forward(...) -> (out, cache)` and `*_backward(dout, cache) -> grads` work on plain arrays (NumPy or CuPy: the
array module comes from the inputs), so the same code serves training (through the Tensor wrappers at the bottom
of each section) and graph-free generation with a key/value cache. Gradient formulas are derived in
docs/derivations.md; each backward line names the formula it implements.

Dimension names: N rows (B*t positions), B batch, t sequence length, C channels, H heads, hs = C // H head size,
V vocabulary, Tk keys (t, or cache length when decoding).
"""
import numpy as np

from . import kernels  # numba.cuda twins of the *_forward/*_backward below, for CuPy arrays (loaded on first use)
from .backend import array_module
from .tensor import Tensor


_xp = array_module


# ---- linear ------------------------------------------------------------------------------------------------------

def linear(x, weight, bias=None):
    """y = x @ W.T + b over the last axis, as 2-D matmuls (the shape BLAS is fastest at). W is (out, in)."""
    lead, c_in = x.shape[:-1], x.shape[-1]
    x2 = x.data.reshape(-1, c_in)                                  # (N, in)
    w = weight.data
    y = x2 @ w.T                                                   # (N, out)
    if bias is not None:
        y += bias.data
    y = y.reshape(lead + (w.shape[0],))                            # (..., out)

    def backward(g):
        g2 = g.reshape(-1, w.shape[0])                             # (N, out)
        dx = (g2 @ w).reshape(lead + (c_in,))                      # dL/dx = g W
        dw = g2.T @ x2                                             # dL/dW = g^T x   (out, in)
        if bias is None:
            return dx, dw
        return dx, dw, g2.sum(axis=0)                              # dL/db = sum over rows of g
    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._make(y, parents, backward, "linear")


# ---- embeddings --------------------------------------------------------------------------------------------------

def scatter_rows(idx, g, n_rows):
    """dW for W[idx]: row r of the result sums the rows of g where idx == r (no np.add.at: sort + reduceat)."""
    xp = _xp(g)
    flat = idx.reshape(-1)                                         # (N,)
    g2 = g.reshape(flat.shape[0], -1)                              # (N, C)
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
    """x (..., C) -> y = (x - mean) / sqrt(var + eps) * w + b, biased variance."""
    xp = _xp(x)
    if xp is not np and kernels.enabled():
        return kernels.layer_norm_forward(x, w, b, eps)
    mu = x.mean(axis=-1, keepdims=True)                            # (..., 1)
    xc = x - mu                                                    # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)                   # (..., 1) biased
    rstd = 1.0 / xp.sqrt(var + eps)                                # (..., 1)
    xhat = xc
    xhat *= rstd                                                   # (..., C) in place: xc is not needed again
    y = xhat * w
    if b is not None:
        y += b
    return y, (xhat, rstd, w)


def layer_norm_backward(g, cache):
    if _xp(g) is not np and kernels.enabled():
        return kernels.layer_norm_backward(g, cache)
    xhat, rstd, w = cache
    c = xhat.shape[-1]
    lead = tuple(range(g.ndim - 1))
    dw = (g * xhat).sum(axis=lead)                                 # dw = sum_rows dy * xhat
    db = g.sum(axis=lead)                                          # db = sum_rows dy
    dxhat = g * w                                                  # dxhat = dy * w
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    m1 = dxhat.sum(axis=-1, keepdims=True) * (1.0 / c)
    m2 = (dxhat * xhat).sum(axis=-1, keepdims=True) * (1.0 / c)
    dx = dxhat
    dx -= m1
    dx -= xhat * m2
    dx *= rstd
    return dx, dw, db


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
    """(t, tk) additive mask: 0 where query i (at absolute position tk - t + i) may see key j, -inf after it."""
    key = (t, tk, np.dtype(dtype).str, xp.__name__)
    m = _mask_cache.get(key)
    if m is None:
        i = np.arange(t)[:, None] + (tk - t)
        j = np.arange(tk)[None, :]
        m = xp.asarray(np.where(j > i, -np.inf, 0.0).astype(dtype))
        if len(_mask_cache) > 64:
            _mask_cache.clear()
        _mask_cache[key] = m
    return m


def attention_forward(q, k, v, keep=None, p=0.0):
    """Scaled masked softmax attention. q (B, H, t, hs); k, v (B, H, Tk, hs) with Tk >= t (queries are the last t
    positions). keep: optional dropout keep-mask (B, H, t, Tk). Returns y (B, H, t, hs) and the backward cache."""
    xp = _xp(q)
    if xp is not np and kernels.enabled():
        return kernels.attention_forward(q, k, v, keep, p)
    t, hs, tk = q.shape[-2], q.shape[-1], k.shape[-2]
    scale = float(hs) ** -0.5
    s = (q * scale) @ k.swapaxes(-1, -2)                           # (B, H, t, Tk)  S = q k^T / sqrt(hs)
    s += causal_bias(t, tk, s.dtype, xp)                           # masked -> -inf
    s -= s.max(axis=-1, keepdims=True)                             # stable softmax (row max is finite: j = i kept)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)                             # P (B, H, t, Tk); masked entries exactly 0
    a = s
    if keep is not None:
        keep = keep_scale(keep, p, s.dtype)                        # M / (1 - p), in s's dtype
        a = s * keep                                               # A = P * M / (1 - p)
    y = a @ v                                                      # (B, H, t, hs)  Y = A v
    return y, (q, k, v, s, a, keep, scale)


def attention_backward(dy, cache):
    if _xp(dy) is not np and kernels.enabled():
        return kernels.attention_backward(dy, cache)
    q, k, v, prob, a, keep, scale = cache
    dv = a.swapaxes(-1, -2) @ dy                                   # dV = A^T dY          (B, H, Tk, hs)
    dp = dy @ v.swapaxes(-1, -2)                                   # dA = dY V^T          (B, H, t, Tk)
    if keep is not None:
        dp *= keep                                                 # dP = dA * M / (1 - p)
    # dS = P * (dP - sum_j dP * P); masked entries have P = 0, so their gradient is exactly 0
    ds = dp
    ds -= (dp * prob).sum(axis=-1, keepdims=True)
    ds *= prob
    dq = (ds @ k) * scale                                          # dQ = dS K / sqrt(hs)  (B, H, t, hs)
    dk = (ds.swapaxes(-1, -2) @ q) * scale                         # dK = dS^T Q / sqrt(hs) (B, H, Tk, hs)
    return dq, dk, dv


def split_heads(qkv, n_head):
    """(B, t, 3C) -> q, k, v each (B, H, t, hs): rows [0:C] of W_qkv are q, [C:2C] k, [2C:3C] v."""
    b, t, c3 = qkv.shape
    hs = c3 // (3 * n_head)
    x = qkv.reshape(b, t, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, H, t, hs)
    return x[0], x[1], x[2]


def merge_heads(y):
    """(B, H, t, hs) -> (B, t, C)."""
    b, h, t, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, t, h * hs)


def self_attention(qkv, n_head, keep=None, p=0.0):
    """The attention core as one node: qkv (B, t, 3C) -> y (B, t, C), all heads at once."""
    xp = qkv.xp
    b, t, c3 = qkv.shape
    q, k, v = (xp.ascontiguousarray(a) for a in split_heads(qkv.data, n_head))   # (B, H, t, hs) each
    y, cache = attention_forward(q, k, v, keep, p)
    out = merge_heads(y)                                           # (B, t, C)

    def backward(g):
        hs = c3 // (3 * n_head)
        dy = xp.ascontiguousarray(g.reshape(b, t, n_head, hs).transpose(0, 2, 1, 3))   # (B, H, t, hs)
        dq, dk, dv = attention_backward(dy, cache)
        dqkv = xp.stack((dq, dk, dv))                              # (3, B, H, t, hs)
        return (dqkv.transpose(1, 3, 0, 2, 4).reshape(b, t, c3),)  # (B, t, 3C)
    return Tensor._make(out, (qkv,), backward, "self_attention")


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
