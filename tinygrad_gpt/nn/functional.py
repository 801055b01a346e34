"""torch.nn.functional for the torch-shaped front end (`from tinygrad_gpt.nn import functional as F`).

Each function has torch's signature and semantics and runs this engine's own ops: where a fused node exists
(fused.py: linear, layer_norm, dropout, cross_entropy, the causal attention core) the common case goes there, and
the rest (other reductions, weights, ignore_index, masks) is composed from Tensor ops, whose gradients follow.
Not to be confused with tinygrad_gpt/fused.py, the engine's fused forward/backward pairs that these call.

Dimension names: N rows, C classes (cross_entropy) or channels, B batch, H heads, L queries, S keys, E head size.
"""
import math

import numpy as np

from .. import fused, patterns
from .. import rng as _rng
from ..backend import array_module
from ..errors import TensorError, UnsupportedError, unsupported_getattr
from ..tensor import Tensor

__getattr__ = unsupported_getattr("torch.nn.functional")


def _tensor(x, like=None):
    return x if isinstance(x, Tensor) else Tensor(x, device=None if like is None else like.device)


# ---- layers ----------------------------------------------------------------------------------------------------------

def linear(input, weight, bias=None):
    """y = input @ weight.T + bias over the last axis: one fused node (a 2-D BLAS product and its bias)."""
    return fused.linear(input, weight, bias)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """Rows of `weight` (n, dim) at the integer indices `input` (any shape) -> (*input.shape, dim). The gradient
    adds up at repeated indices; none reaches the padding_idx row."""
    if max_norm is not None or scale_grad_by_freq or sparse:
        raise UnsupportedError("F.embedding(max_norm=..., scale_grad_by_freq=..., sparse=...)")
    idx = input.data if isinstance(input, Tensor) else weight.xp.asarray(input)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got {idx.dtype} (use .long())")
    n, dim = weight.shape
    if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"embedding: index out of range: indices in [{int(idx.min())}, {int(idx.max())}] for a table "
                         f"of {n} rows")
    xp = weight.xp
    flat = idx.reshape(-1) % n                                         # (M,)
    out = weight.data[flat].reshape(idx.shape + (dim,))               # (*idx.shape, dim)

    def backward(g):
        d = xp.zeros((n, dim), g.dtype)
        _scatter_add_rows(d, flat, g.reshape(-1, dim))                 # d[flat[i]] += g[i]
        if padding_idx is not None:
            d[padding_idx] = 0
        return (d,)
    return Tensor._make(out, (weight,), backward, "embedding")


def _scatter_add_rows(d, rows, g):
    """d[rows[i]] += g[i] for every i, repeated rows adding up (the array module's add.at: NumPy's, CuPy's)."""
    array_module(d).add.at(d, rows, g)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the last len(normalized_shape) axes (biased variance, eps inside the root), then
    * weight + bias: one fused node (LayerNorm over several trailing axes is LayerNorm over them flattened)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if tuple(input.shape[input.ndim - k:]) != shape or k == 0:
        raise TensorError(f"layer_norm: normalized_shape {shape} does not match the last axes of {tuple(input.shape)}")
    n = math.prod(shape)
    lead = tuple(input.shape[:input.ndim - k])
    x = input if k == 1 else input.reshape(lead + (n,))
    if weight is None:
        weight = Tensor(x.xp.ones(n, x.dtype), device=x.device)
    w = weight if k == 1 else weight.reshape(n)
    b = bias if bias is None or k == 1 else bias.reshape(n)
    y = fused.layer_norm(x, w, b, eps)
    return y if k == 1 else y.reshape(lead + shape)


def keep_mask(shape, p, xp=np, generator=None):
    """A boolean keep-mask of `shape` (each element kept with probability 1 - p): one 64-bit seed drawn from the
    default generator (or `generator`), the elements from fused.dropout_keep_mask's counter-based hash of it."""
    seed = int(_rng.numpy_generator(generator).integers(0, 1 << 63, dtype=np.int64))
    return fused.dropout_keep_mask(xp.empty(tuple(shape), dtype=bool), seed, p)


def dropout(input, p=0.5, training=True, inplace=False):
    """Inverted dropout in training mode (elements zeroed with probability p, the rest scaled by 1 / (1 - p)), masks
    from the default generator; identity when not training or p == 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0
    keep = keep_mask(input.shape, p, input.xp)
    if input._pattern is not None:                       # attention weights of a recognised chain (patterns.py)
        pending = patterns.dropout(input, keep, p)
        if pending is not None:
            return pending
    return fused.dropout(input, keep, p)


# ---- activations -----------------------------------------------------------------------------------------------------

def relu(input, inplace=False):
    return input.relu()


def gelu(input, approximate="none"):
    """torch's default is the exact x Phi(x) (approximate='none'); 'tanh' is GPT-2's approximation."""
    return input.gelu(approximate=approximate)


def tanh(input):
    return input.tanh()


def sigmoid(input):
    return input.sigmoid()


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise TypeError("softmax: give the axis, e.g. F.softmax(x, dim=-1) (torch's implicit choice is deprecated)")
    return input.softmax(dim, dtype=dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise TypeError("log_softmax: give the axis, e.g. F.log_softmax(x, dim=-1)")
    return input.log_softmax(dim, dtype=dtype)


def one_hot(tensor, num_classes=-1):
    """(..., num_classes) int64 with a 1 at each index (num_classes -1: the largest index + 1)."""
    idx = tensor.data
    if idx.dtype.kind not in "iu":
        raise TypeError(f"one_hot: needs an integer tensor, got {idx.dtype}")
    n = int(idx.max()) + 1 if num_classes == -1 else num_classes
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise TensorError(f"one_hot: class values must be in [0, {n})")
    return Tensor((idx[..., None] == tensor.xp.arange(n)).astype(np.int64), device=tensor.device)


# ---- losses ----------------------------------------------------------------------------------------------------------

def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    """Softmax cross-entropy of logits `input` (N, C), (N, C, d1, ...) or (C,) against class indices (N), (N, d1, ...)
    or () or class probabilities of input's shape; torch's weight, ignore_index, reduction ('mean', 'sum', 'none')
    and label_smoothing. The usual case (2-D logits, indices, mean, nothing ignored, no weights) is one fused
    node."""
    if size_average is not None or reduce is not None:
        raise UnsupportedError("F.cross_entropy(size_average=..., reduce=...)", "use reduction=")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    target = _tensor(target, input)
    probabilities = target.dtype.kind == "f"
    if input.ndim == 0:
        raise TensorError("cross_entropy: the input needs a class axis")
    if (not probabilities and input.ndim == 2 and target.ndim == 1 and weight is None and label_smoothing == 0
            and reduction == "mean" and input.dtype.kind == "f" and input.shape[0] == target.shape[0]
            and target.shape[0] > 0 and not bool((target.data == ignore_index).any())):
        _check_classes(target.data, input.shape[1])
        return fused.cross_entropy(input, target)
    # the class axis last: (..., C)
    logits = input if input.ndim == 1 else input.permute(0, *range(2, input.ndim), 1)
    logp = logits.log_softmax(-1)                                     # (..., C)
    c = logits.shape[-1]
    w = None if weight is None else _tensor(weight, input)
    if probabilities:
        if tuple(target.shape) != tuple(input.shape):
            raise TensorError(f"cross_entropy: probability targets of shape {tuple(target.shape)} for input "
                              f"{tuple(input.shape)}")
        probs = target if target.ndim == 1 else target.permute(0, *range(2, target.ndim), 1)
        if label_smoothing:
            probs = probs * (1 - label_smoothing) + label_smoothing / c
        terms = -(logp * (probs if w is None else probs * w))          # (..., C)
        loss = terms.sum(-1)                                           # (...)
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.sum() / math.prod(loss.shape)
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise TensorError(f"cross_entropy: targets of shape {tuple(target.shape)} for input {tuple(input.shape)} "
                          f"(expected {tuple(logits.shape[:-1])})")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: class-index targets must be integers, got {target.dtype}")
    valid = target.data != ignore_index                                # (...)
    tgt = np.where(valid, target.data, 0) if target.xp is np else target.xp.where(valid, target.data, 0)
    _check_classes(tgt, c)
    picked = _take_last(logp, tgt)                                     # (...) log p[target]
    wt = _ones_like_rows(tgt, logp) if w is None else Tensor(w.data[tgt], device=w.device)
    wt = wt * Tensor(valid.astype(logp.dtype), device=logp.device)     # 0 where ignored
    nll = -(picked * wt)
    if label_smoothing:
        smooth = -(logp if w is None else logp * w).sum(-1) / c * Tensor(valid.astype(logp.dtype),
                                                                          device=logp.device)
        nll = nll * (1 - label_smoothing) + smooth * label_smoothing
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / wt.sum()                                        # torch: the weighted mean over kept rows


def _check_classes(tgt, c):
    if tgt.size and (int(tgt.min()) < 0 or int(tgt.max()) >= c):
        raise IndexError(f"cross_entropy: target {int(tgt.min()) if int(tgt.min()) < 0 else int(tgt.max())} is out "
                         f"of bounds for {c} classes")


def _take_last(x, idx):
    """x[..., idx[...]] for x (..., C) and integer idx (...): a node whose gradient scatters back."""
    xp = x.xp
    idx_k = idx[..., None]
    vals = xp.take_along_axis(x.data, idx_k, axis=-1)[..., 0]
    shape = x.shape

    def backward(g):
        full = xp.zeros(shape, g.dtype)
        xp.put_along_axis(full, idx_k, g[..., None], axis=-1)
        return (full,)
    return Tensor._make(vals, (x,), backward, "take")


def _ones_like_rows(idx, like):
    return Tensor(like.xp.ones(idx.shape, like.dtype), device=like.device)


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities `input` (N, C): cross_entropy without its log_softmax."""
    target = _tensor(target, input)
    picked = _take_last(input, target.data)
    valid = Tensor((target.data != ignore_index).astype(input.dtype), device=input.device)
    wt = valid if weight is None else valid * Tensor(weight.data[target.data], device=input.device)
    nll = -(picked * wt)
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else nll.sum() / wt.sum()


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    return sq.sum() if reduction == "sum" else sq.mean()


# ---- attention -------------------------------------------------------------------------------------------------------

def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """softmax(q k^T * scale + mask) v for q (..., L, E), k (..., S, E), v (..., S, Ev); scale defaults to E**-0.5.
    is_causal: query i sees keys 0..i (torch's top-left alignment). dropout_p applies whether or not the module is
    training (torch's rule: pass `dropout_p if self.training else 0`). The causal case with L == S, no mask and the
    default scale is the fused attention core (one node, each (batch, head) block in cache); the rest is composed."""
    if enable_gqa:
        raise UnsupportedError("F.scaled_dot_product_attention(enable_gqa=True)")
    if is_causal and attn_mask is not None:
        raise TensorError("scaled_dot_product_attention: give attn_mask or is_causal, not both")
    L, E = query.shape[-2], query.shape[-1]
    S = key.shape[-2]
    default_scale = scale is None or scale == E ** -0.5
    if (is_causal and attn_mask is None and L == S and default_scale and query.ndim >= 3
            and query.shape == key.shape == value.shape
            and query.dtype == key.dtype == value.dtype and query.dtype.kind == "f"):
        return _fused_causal(query, key, value, dropout_p)
    s = query @ key.transpose(-2, -1) * (E ** -0.5 if scale is None else scale)   # (..., L, S)
    if is_causal:
        allowed = np.tril(np.ones((L, S), dtype=bool))
        s = s.masked_fill(Tensor(~allowed, device=s.device), float("-inf"))
    elif attn_mask is not None:
        m = _tensor(attn_mask, s)
        s = s.masked_fill(m.logical_not(), float("-inf")) if m.dtype == np.bool_ else s + m
    a = s.softmax(-1)
    if dropout_p:
        a = dropout(a, dropout_p)
    return a @ value                                                   # (..., L, Ev)


def _fused_causal(q, k, v, p):
    """The fused causal attention core on (..., T, E) inputs, all leading axes taken as (batch x heads)."""
    lead, T = tuple(q.shape[:-2]), q.shape[-2]
    Ev = v.shape[-1]
    nb = math.prod(lead)
    q4, k4, v4 = (t.data.reshape(nb, 1, T, t.shape[-1]) for t in (q, k, v))   # (BH, 1, T, E)
    keep = keep_mask((nb, 1, T, T), p, q.xp) if p else None
    y, cache = fused.attention_forward(q4, k4, v4, keep, p)           # (BH, 1, T, Ev)

    def backward(g):
        dq, dk, dv = fused.attention_backward(q.xp.ascontiguousarray(g.reshape(nb, 1, T, Ev)), cache)
        return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)
    return Tensor._make(y.reshape(lead + (T, Ev)), (q, k, v), backward, "scaled_dot_product_attention")


def pad(input, pad, mode="constant", value=0.0):
    """Constant padding of the last len(pad) // 2 axes: pad = (left, right) for the last, then the one before, ..."""
    if mode != "constant":
        raise UnsupportedError(f"F.pad(mode={mode!r})")
    if len(pad) % 2:
        raise ValueError("pad: the padding must have an even number of entries")
    widths = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        widths[input.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if any(a < 0 or b < 0 for a, b in widths):
        raise UnsupportedError("F.pad with negative padding")
    out = input.xp.pad(input.data, widths, constant_values=value)
    inner = tuple(slice(a, a + n) for (a, _), n in zip(widths, input.shape, strict=True))
    return Tensor._make(out, (input,), lambda g: (g[inner],), "pad")
