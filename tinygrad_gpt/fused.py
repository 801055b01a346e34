"""Fused layers: each is a forward/backward pair on backend arrays, wrapped as one graph node.

`*_forward(...) -> (out, cache)` and `*_backward(dout, cache) -> grads` work on plain arrays (NumPy or CuPy: the
array module comes from the inputs), so the same code serves training (through the Tensor wrappers at the bottom of
each section) and graph-free generation with a key/value cache. Each pair is written here as plain array code, the
readable statement of the math, one formula per line (derived in docs/derivations.md). Decorated with
`@kernels.twin`, a call runs the compiled kernel that kernels/__init__.py's table names for the arrays' device (numba
on the CPU, numba.cuda on the GPU) and this code where there is none or kernels are off (TINYGRAD_GPT_KERNELS=0):
the code here is also the oracle the kernels are tested against.

Dimension names: N rows (B*t positions), B batch, t sequence length, C channels, H heads, hs = C // H head size,
V vocabulary, Tk keys (t, or cache length when decoding), D a linear layer's outputs.
"""
import numpy as np

from .backend import array_module as _xp
from .kernels import GELU_C, GELU_K, twin
from .tensor import Tensor

# ---- linear ------------------------------------------------------------------------------------------------------

@twin
def linear_forward(x, w, b=None, activation=None, residual=None):
    """y = act(x W^T + b) + residual for x (N, in), W (out, in): a 2-D matmul (the shape BLAS is fastest at) and its
    epilogue. act None, "relu" or "gelu" (the tanh form, torch's gelu(approximate="tanh")); b, residual (N, out)
    optional (a residual only without an activation). Returns y (N, out) and what linear_backward needs: the ReLU's
    output (y itself), the GELU's input, or None."""
    xp = _xp(x)
    y = x @ w.T                                                    # (N, out)
    if b is not None:
        y += b
    saved = None
    if activation == "relu":
        xp.maximum(y, 0, out=y)                                    # y = max(x W^T + b, 0)
        saved = y
    elif activation == "gelu":
        saved = y.copy()                                           # u = x W^T + b, kept for the backward
        y[...] = _gelu(saved, xp)
    if residual is not None:
        y += residual
    return y, saved


@twin
def linear_backward(g, x, w, bias=True, saved=None, activation=None):
    """Gradients of linear_forward for its output's gradient g (N, out). With an activation g is changed in place
    to the gradient of x W^T + b (g *= act'(.)); without, it is only read. -> dx (N, in), dW (out, in), db (out,) or
    None."""
    xp = _xp(g)
    if activation == "relu":
        g *= saved > 0                                             # relu'(u) = [u > 0] = [y > 0]
    elif activation == "gelu":
        g *= _gelu_slope(saved, xp)
    dx = g @ w                                                     # dL/dx = g W       (N, in)
    dw = g.T @ x                                                   # dL/dW = g^T x     (out, in)
    return dx, dw, (g.sum(axis=0) if bias else None)               # dL/db = sum_rows g


def _gelu(u, xp):
    """0.5 u (1 + tanh(k (u + c u^3))), k = GELU_K = sqrt(2 / pi), c = GELU_C."""
    ft = u.dtype.type
    return ft(0.5) * u * (1 + xp.tanh(ft(GELU_K) * (u + ft(GELU_C) * u ** 3)))


def _gelu_slope(u, xp):
    """d gelu / du = 0.5 (1 + tanh w) + 0.5 u (1 - tanh^2 w) k (1 + 3 c u^2), w = k (u + c u^3)."""
    ft = u.dtype.type
    th = xp.tanh(ft(GELU_K) * (u + ft(GELU_C) * u ** 3))
    return ft(0.5) * (1 + th) + ft(0.5) * u * (1 - th * th) * ft(GELU_K) * (1 + ft(3 * GELU_C) * u * u)


def linear(x, weight, bias=None, residual=None):
    """y = x @ W.T + b over the last axis, W (out, in), as one node.
    residual: optional tensor of y's shape, added in the same pass as the bias (y = residual + x W^T + b): one node
    and one pass over memory instead of a separate add (the transformer's residual connection)."""
    lead, c_in = x.shape[:-1], x.shape[-1]
    x2 = x.data.reshape(-1, c_in)                                  # (N, in)
    w = weight.data
    y, _ = linear_forward(x2, w, _data(bias), None, _rows(residual, lead + (w.shape[0],)))   # (N, out)

    def backward(g):
        dx, dw, db = linear_backward(g.reshape(-1, w.shape[0]), x2, w, bias is not None)   # g only read
        grads = (dx.reshape(lead + (c_in,)), dw) + (() if bias is None else (db,))
        return grads + ((g,) if residual is not None else ())
    parents = tuple(p for p in (x, weight, bias, residual) if p is not None)
    return Tensor._make(y.reshape(lead + (w.shape[0],)), parents, backward, "linear")


def mlp(x, fc_weight, fc_bias, proj_weight, proj_bias, residual=None, activation="relu"):
    """The MLP as one node: y = act(x W1^T + b1) W2^T + b2 (biases may be None), plus `residual` if given (as in
    linear). One node instead of two lets the backward apply the activation's derivative to its own gradient of the
    hidden layer, dh = g W2, in place: no (N, 4C) copy."""
    lead, c = x.shape[:-1], x.shape[-1]
    x2 = x.data.reshape(-1, c)                                     # (N, C)
    w1, w2 = fc_weight.data, proj_weight.data                      # (4C, C), (C, 4C)
    h, saved = linear_forward(x2, w1, _data(fc_bias), activation)  # h = act(x W1^T + b1)   (N, 4C)
    y, _ = linear_forward(h, w2, _data(proj_bias), None, _rows(residual, lead + (w2.shape[0],)))   # (N, C)

    def backward(g):
        g2 = g.reshape(-1, w2.shape[0])                            # (N, C)
        dh, dw2, db2 = linear_backward(g2, h, w2, proj_bias is not None)          # dh = g W2: ours to change
        dx, dw1, db1 = linear_backward(dh, x2, w1, fc_bias is not None, saved, activation)   # dh *= act'(.) first
        grads = (dx.reshape(lead + (c,)), dw1) + (() if fc_bias is None else (db1,)) + (dw2,)
        return grads + (() if proj_bias is None else (db2,)) + ((g,) if residual is not None else ())
    parents = tuple(p for p in (x, fc_weight, fc_bias, proj_weight, proj_bias, residual) if p is not None)
    return Tensor._make(y.reshape(lead + (w2.shape[0],)), parents, backward, "mlp")


def _rows(residual, shape):
    """A residual tensor's data as (N, out) rows, checked against the output's shape (None stays None)."""
    if residual is None:
        return None
    if tuple(residual.shape) != tuple(shape):
        raise ValueError(f"residual of shape {tuple(residual.shape)} for an output of shape {tuple(shape)}")
    return residual.data.reshape(-1, shape[-1])


def _data(t):
    return None if t is None else t.data


# ---- embeddings --------------------------------------------------------------------------------------------------

@twin
def embed_forward(idx, tok_w, pos_w, pos0=0):
    """x = tok_w[idx] + pos_w[pos0 : pos0 + t]; idx (B, t) integers -> (B, t, C)."""
    t = idx.shape[1]
    return tok_w[idx] + pos_w[pos0:pos0 + t]                       # (B, t, C)


@twin
def embed_backward(idx, g, n_tok, n_pos):
    """Gradients of embed_forward (pos0 = 0) for g (B, t, C): d_tok[r] = sum of g where idx == r (V, C), d_pos[p] =
    sum over the batch of g[:, p] (T, C; zero past t)."""
    xp = _xp(g)
    t, c = idx.shape[1], g.shape[-1]
    d_tok = xp.zeros((n_tok, c), g.dtype)
    xp.add.at(d_tok, idx.reshape(-1), g.reshape(-1, c))            # scatter-add: repeated ids add up
    d_pos = xp.zeros((n_pos, c), g.dtype)
    d_pos[:t] = g.sum(axis=0)
    return d_tok, d_pos


def embedding(idx, tok_emb, pos_emb):
    """Token plus position embedding as one node. idx: integer array (B, t)."""
    out = embed_forward(idx, tok_emb.data, pos_emb.data)
    return Tensor._make(out, (tok_emb, pos_emb), lambda g: embed_backward(idx, g, *_rows_of(tok_emb, pos_emb)),
                        "embedding")


def _rows_of(*tables):
    return tuple(t.shape[0] for t in tables)


# ---- LayerNorm (docs/derivations.md#layernorm) --------------------------------------------------------------------

@twin
def layer_norm_forward(x, w, b, eps=1e-5):
    """x (..., C) -> y = (x - mean) / sqrt(var + eps) * w + b (biased variance; b may be None).
    Cache: (x, mean, rstd, w), mean and rstd (..., 1); the backward recomputes xhat from them."""
    xp = _xp(x)
    mean = x.mean(axis=-1, keepdims=True)                          # (..., 1)
    xc = x - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)                   # biased variance
    rstd = 1 / xp.sqrt(var + x.dtype.type(eps))                    # (..., 1)
    y = xc * rstd * w                                              # xhat * w
    if b is not None:
        y += b
    return y, (x, mean, rstd, w)


@twin
def layer_norm_backward(g, cache):
    """-> dx (..., C), dw (C,), db (C,)."""
    x, mean, rstd, w = cache
    c = x.shape[-1]
    xhat = (x - mean) * rstd
    g2, xhat2 = g.reshape(-1, c), xhat.reshape(-1, c)              # (N, C)
    db = g2.sum(axis=0)                                            # db = sum_rows dy
    dw = (g2 * xhat2).sum(axis=0)                                  # dw = sum_rows dy * xhat
    dxhat = g * w                                                  # dxhat = dy * w
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


def layer_norm(x, weight, bias=None, eps=1e-5):
    y, cache = layer_norm_forward(x.data, weight.data, _data(bias), eps)

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


@twin
def attention_forward(q, k, v, keep=None, p=0.0, out=None, scale=None):
    """Scaled masked softmax attention. q (B, H, t, hs); k, v (B, H, Tk, hs) with Tk >= t (the queries are the last t
    positions); any strides (views into a (B, t, 3C) qkv array work). keep: optional boolean dropout keep-mask
    (B, H, t, Tk). out: optional (B, H, t, hs) array (or view) to write y into. scale: of the scores, hs**-0.5 by
    default. Returns y and the backward's cache (q, k, v, P, A, M / (1 - p) or None, scale)."""
    xp = _xp(q)
    t, hs = q.shape[-2], q.shape[-1]
    scale = q.dtype.type(hs ** -0.5 if scale is None else scale)   # a NumPy scalar: stays in q's dtype
    s = (q @ k.swapaxes(-1, -2)) * scale                           # (B, H, t, Tk) S = q k^T / sqrt(hs)
    s += causal_bias(t, k.shape[-2], s.dtype, xp)                  # -inf where key j comes after query i
    s -= s.max(axis=-1, keepdims=True)                             # finite: key j = i is always visible
    prob = xp.exp(s)
    prob /= prob.sum(axis=-1, keepdims=True)                       # P = softmax(S); masked entries exactly 0
    mask = None if keep is None else keep_scale(keep, p, q.dtype)  # M / (1 - p)
    a = prob if mask is None else prob * mask                      # A = P * M / (1 - p)
    y = a @ v                                                      # Y = A v   (B, H, t, hs)
    if out is not None:
        out[...] = y
        y = out
    return y, (q, k, v, prob, a, mask, scale)


@twin
def attention_backward(dy, cache, out=None):
    """-> dq, dk, dv (also written into `out` = (dq, dk, dv) arrays or views when given)."""
    q, k, v, prob, a, mask, scale = cache
    dv = a.swapaxes(-1, -2) @ dy                                   # dV = A^T dY          (B, H, Tk, hs)
    dp = dy @ v.swapaxes(-1, -2)                                   # dA = dY V^T          (B, H, t, Tk)
    if mask is not None:
        dp *= mask                                                 # dP = dA * M / (1 - p)
    # dS = P * (dP - sum_j dP_ij P_ij); masked entries have P = 0, so their gradient is exactly 0
    ds = prob * (dp - (dp * prob).sum(axis=-1, keepdims=True)) * scale   # dS / sqrt(hs)
    dq = ds @ k                                                    # dQ = dS K / sqrt(hs)   (B, H, t, hs)
    dk = ds.swapaxes(-1, -2) @ q                                   # dK = dS^T Q / sqrt(hs) (B, H, Tk, hs)
    return grads_into(out, (dq, dk, dv))


def grads_into(out, grads):
    """The last step of an attention backward (this twin's and both kernels'): the gradients (dq, dk, dv) as they are
    when `out` is None, else written into out's arrays or views (skipping one that already is its gradient), and out
    returned."""
    if out is None:
        return tuple(grads)
    for o, grad in zip(out, grads, strict=True):
        if o is not grad:
            o[...] = grad
    return out


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
    """The attention core as one node: qkv (B, t, 3C) -> y (B, t, C), all heads at once. q, k, v are read as views of
    qkv, y is written straight into its (B, t, C) layout and dq, dk, dv into one (B, t, 3C) gradient."""
    xp = qkv.xp
    b, t, c3 = qkv.shape
    c = c3 // 3
    hs = c // n_head
    q, k, v = split_heads(qkv.data, n_head)                        # (B, H, t, hs) views
    out = xp.empty((b, t, n_head, hs), qkv.dtype)                  # y in its merged layout
    _, cache = attention_forward(q, k, v, keep, p, out=out.transpose(0, 2, 1, 3))

    def backward(g):
        dy = g.reshape(b, t, n_head, hs).transpose(0, 2, 1, 3)     # (B, H, t, hs) view
        dqkv = xp.empty((b, t, c3), g.dtype)
        attention_backward(dy, cache, out=split_heads(dqkv, n_head))
        return (dqkv,)
    return Tensor._make(out.reshape(b, t, c), (qkv,), backward, "self_attention")


# ---- dropout -----------------------------------------------------------------------------------------------------

def keep_scale(keep, p, dtype):
    """The boolean keep-mask times 1 / (1 - p), in `dtype` (a bare Python float would make it float64)."""
    return keep * np.dtype(dtype).type(1.0 / (1.0 - p))          # a NumPy scalar: no device copy, no upcast


# splitmix64's constants (Steele, Lea, Flood 2014): the increment and the two multipliers of its output mix
MIX_STEP, MIX_A, MIX_B = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def keep_threshold(p):
    """Element i is kept when the top 32 bits of its hash are >= this: probability 1 - p (to within 2**-32)."""
    return min(1 << 32, int(round(p * (1 << 32))))


@twin
def dropout_keep_mask(keep, seed, p):
    """Fill the boolean array `keep` in place with a dropout keep-mask: element i (in C order) is kept when the top 32
    bits of splitmix64's hash of (seed + (i + 1) * MIX_STEP) reach keep_threshold(p). A counter-based generator: each
    element's draw depends on (seed, i) alone, so a mask is the same bits however the work is split over threads, and
    the compiled kernel gives the bits this code gives. `seed` (0 <= seed < 2**64) comes from the default generator
    (rng.py), one per mask."""
    xp = _xp(keep)
    u = np.uint64
    z = (xp.arange(1, keep.size + 1, dtype=u) * u(MIX_STEP)) + u(seed)    # wraps modulo 2**64
    z = (z ^ (z >> u(30))) * u(MIX_A)
    z = (z ^ (z >> u(27))) * u(MIX_B)
    z ^= z >> u(31)
    keep.reshape(-1)[...] = (z >> u(32)) >= u(keep_threshold(p))
    return keep


@twin
def dropout_apply(x, keep, p):
    """x * keep / (1 - p): inverted dropout of an array with a given keep-mask (forward and backward alike)."""
    return x * keep_scale(keep, p, x.dtype)


def dropout(x, keep, p):
    """Inverted dropout with a given boolean keep-mask: y = x * keep / (1 - p)."""
    return Tensor._make(dropout_apply(x.data, keep, p), (x,), lambda g: (dropout_apply(g, keep, p),), "dropout")


# ---- softmax cross-entropy (docs/derivations.md#softmax-cross-entropy) --------------------------------------------

@twin
def cross_entropy_forward(logits, targets):
    """Mean over rows of logsumexp(z_i) - z_i[y_i]. logits (..., V), targets (...) integers."""
    xp = _xp(logits)
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


@twin
def cross_entropy_backward(g, cache):
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
