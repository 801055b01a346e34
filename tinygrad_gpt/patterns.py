"""The lecture's attention, recognised in a learner's own code and run by the fused attention core.

    wei = q @ k.transpose(-2, -1) * k.shape[-1]**-0.5              # scores     (..., T, T)
    wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))   # causal mask
    wei = F.softmax(wei, dim=-1)
    wei = self.dropout(wei)                                        # in training
    out = wei @ v                                                  # (..., T, hs)

Each step of that chain returns a *pending* tensor: a graph node like any other (parents, backward), whose array is
computed only when something reads it. When the chain reaches `@ v`, that product runs fused.attention_forward (each
(batch, head) block in cache, the masked half of the scores skipped, dropout applied inside) and its backward
straight from q, k and v: the (..., T, T) intermediates are never made. Anything else that reads a pending tensor
(printing it, an op this file does not know, a backward through it) gets its array from the plain ops, computed then,
so a program sees what eager code gives (the fused core rounds its sums in another order: float rounding apart).

What is recognised: scores from the product of two intermediate tensors (not parameters) whose second is the
transposed view `k.transpose(-2, -1)` gives, square (T queries, T keys), float; then any number of multiplications
or divisions by numbers; a masked_fill with -inf (or <= -1e9) whose mask is exactly "key after query"; softmax over
the last axis; optionally dropout (nn.Dropout, F.dropout); then `@ v` with v of q's shape. The variants the
notebooks write (scale before or after, C**-0.5 instead of hs**-0.5, a (1, 1, T, T) mask buffer, 3-D or 4-D heads)
all fit. A pending node whose inputs were changed in place before its array was made refuses to make it (torch
raises for the same misuse of a tensor saved for backward).
"""
import math

import numpy as np

from . import fused
from .backend import to_host
from .tensor import Size, Tensor, _mm

_DATA = Tensor.data          # the `data` slot of every Tensor; a Pending reads it through its property


class Pending(Tensor):
    """A node of the attention chain whose array is computed on first read (see the module docstring)."""
    __slots__ = ("_compute", "_meta", "_inputs")

    @property
    def data(self):
        d = _DATA.__get__(self)
        if d is None:
            for t, version in self._inputs:
                if t._version != version:
                    raise RuntimeError("a tensor used by an attention product was changed in place before the "
                                       "product's result was read (torch: 'one of the variables needed for gradient "
                                       "computation has been modified by an inplace operation')")
            d = self._compute()
            _DATA.__set__(self, d)
        return d

    @data.setter
    def data(self, value):
        _DATA.__set__(self, value)

    @property
    def shape(self):
        return Size(self._meta[0])

    def size(self, dim=None):
        return Size(self._meta[0]) if dim is None else self._meta[0][dim]

    @property
    def dtype(self):
        return self._meta[1]

    @property
    def ndim(self):
        return len(self._meta[0])

    def dim(self):
        return len(self._meta[0])

    def numel(self):
        return math.prod(self._meta[0])

    # ---- the chain ---------------------------------------------------------------------------------------------
    def __mul__(self, other):
        out = _scaled(self, other, False)
        return Tensor.__mul__(self, other) if out is None else out

    __rmul__ = __mul__

    def __truediv__(self, other):
        out = _scaled(self, other, True)
        return Tensor.__truediv__(self, other) if out is None else out

    def masked_fill(self, mask, value):
        out = _masked(self, mask, value)
        return Tensor.masked_fill(self, mask, value) if out is None else out

    def softmax(self, dim=-1, dtype=None, *, axis=None):
        d = dim if axis is None else axis
        if dtype is None and self._pattern[0] == "causal" and d in (-1, self.ndim - 1):
            return _softmax(self)
        return Tensor.softmax(self, dim, dtype, axis=axis)

    def __matmul__(self, other):
        out = _attend(self, other)
        return Tensor.__matmul__(self, other) if out is None else out


def _pending(pattern, shape, dtype, like, parents, backward, op, compute, inputs=()):
    """A Pending node: `compute()` makes its array when read; `pattern` is what the next step of the chain reads."""
    out = Pending._wrap(None, like.device)                         # (its array slot empty until read)
    out._pattern = pattern
    out._compute, out._meta, out._inputs = compute, (tuple(shape), np.dtype(dtype)), [(t, t._version) for t in inputs]
    return out._record(parents, backward, op)


def scores(a, b):
    """q @ kT as a pending node when it has the shape of attention scores (see the module docstring), else None."""
    if not isinstance(b, Tensor) or isinstance(a, Pending) or isinstance(b, Pending) or a._op is None \
            or b._op is None or a.device != b.device:
        return None
    x, y = a.data, b.data
    if not (x.ndim >= 3 and x.ndim == y.ndim and x.shape[:-2] == y.shape[:-2] and x.dtype == y.dtype
            and x.dtype.kind == "f" and x.shape[-1] == y.shape[-2] and x.shape[-2] == y.shape[-1]
            and y.strides[-2] == y.itemsize and x.shape[-2] > 0):
        return None
    xp = a.xp

    def backward(g):
        return _mm(g, xp.swapaxes(y, -1, -2)), _mm(xp.swapaxes(x, -1, -2), g)   # g kT^T, q^T g
    pattern = ("scores", a, b, 1.0, (a._version, b._version))      # what the fused core will read, and its scale
    return _pending(pattern, x.shape[:-1] + (y.shape[-1],), x.dtype, a, (a, b), backward, "matmul", lambda: _mm(x, y),
                    (a, b))


Tensor._attention_scores = staticmethod(scores)   # what Tensor.__matmul__ asks first (tensor.py cannot import this)


def _scaled(node, other, divide):
    """scores * c or scores / c (c a number): pending, its total scale kept for the fused core."""
    kind = node._pattern
    if kind[0] != "scores" or isinstance(other, (bool, np.bool_)) \
            or not isinstance(other, (int, float, np.integer, np.floating)):
        return None
    c = float(other)
    if divide and c == 0:
        return None
    ft = node.dtype.type
    s = kind[3] / c if divide else kind[3] * c

    def compute():
        return node.data / ft(c) if divide else node.data * ft(c)

    def backward(g):
        return (g / ft(c) if divide else g * ft(c),)
    return _pending(("scores", kind[1], kind[2], s, kind[4]), node.shape, node.dtype, node, (node,), backward,
                    "div" if divide else "mul", compute)


_UPPER = {}


def _is_causal_mask(mask, t, ndim):
    """True when `mask` (array or tensor) is True exactly where key j comes after query i, for T = t, broadcast over
    leading axes (shapes (T, T), (1, 1, T, T), ...)."""
    m = mask.data if isinstance(mask, Tensor) else mask
    if not hasattr(m, "shape") or m.ndim < 2 or m.ndim > ndim or m.shape[-2:] != (t, t) \
            or any(n != 1 for n in m.shape[:-2]) or m.dtype.kind not in "biu":
        return False
    upper = _UPPER.get(t)
    if upper is None:
        upper = _UPPER[t] = np.triu(np.ones((t, t), dtype=bool), 1)
    return np.array_equal(to_host(m.reshape(t, t)).astype(bool, copy=False), upper)   # (on a GPU: one small copy)


def _masked(node, mask, value):
    """scores.masked_fill(causal mask, -inf): pending."""
    kind = node._pattern
    if isinstance(value, Tensor):
        value = value.item() if value.numel() == 1 else None
    if kind[0] != "scores" or not isinstance(value, (int, float, np.floating)) or not value <= -1e9 \
            or not _is_causal_mask(mask, node.shape[-1], node.ndim) or node.shape[-1] != node.shape[-2]:
        return None
    m = mask.data if isinstance(mask, Tensor) else mask
    xp = node.xp

    def compute():
        return Tensor._wrap(node.data, node.device).masked_fill(m, value).data

    def backward(g):
        return (xp.where(m.astype(bool), 0, g).astype(g.dtype, copy=False),)
    return _pending(("causal",) + kind[1:], node.shape, node.dtype, node, (node,), backward, "masked_fill", compute)


def _softmax(node):
    """softmax over the keys of causally masked scores: pending."""
    def compute():
        return Tensor._wrap(node.data, node.device).softmax(-1).data

    def backward(g):
        y = out.data
        return (y * (g - (g * y).sum(axis=-1, keepdims=True)),)          # dx = y * (g - sum(g * y))
    out = _pending(("softmax",) + node._pattern[1:], node.shape, node.dtype, node, (node,), backward, "softmax",
                   compute)
    return out


def dropout(node, keep, p):
    """Dropout of the attention weights with a given keep-mask: pending (None when `node` is not the softmax of the
    chain)."""
    kind = node._pattern if isinstance(node, Pending) else None
    if kind is None or kind[0] != "softmax":
        return None

    def compute():
        return fused.dropout_apply(node.data, keep, p)

    def backward(g):
        return (fused.dropout_apply(g, keep, p),)
    return _pending(("dropout",) + kind[1:] + (keep, p), node.shape, node.dtype, node, (node,), backward, "dropout",
                    compute)


def _attend(node, v):
    """weights @ v at the end of the chain: the fused attention core from q, kT, v; None when it does not fit."""
    kind = node._pattern
    if kind[0] not in ("softmax", "dropout") or not isinstance(v, Tensor) or isinstance(v, Pending):
        return None
    q, kt, scale, versions = kind[1:5]
    keep, p = (kind[5], kind[6]) if kind[0] == "dropout" else (None, 0.0)
    if (q._version, kt._version) != versions:
        return None                                                # the plain path then refuses, as it should
    x, y, w = q.data, kt.data, v.data
    if w.shape != x.shape or w.dtype != x.dtype or v.device != q.device:
        return None
    lead, t, hs = x.shape[:-2], x.shape[-2], x.shape[-1]
    nb = math.prod(lead)
    xp = q.xp
    k = xp.swapaxes(y, -1, -2)                                     # (..., T, hs), a view of k
    q4, k4, v4 = (a.reshape(nb, 1, t, hs) for a in (x, k, w))      # (B*H, 1, T, hs)
    keep4 = None if keep is None else xp.asarray(keep).reshape(nb, 1, t, t)
    out, cache = fused.attention_forward(q4, k4, v4, keep4, p, scale=scale)

    def backward(g):
        dq, dk, dv = fused.attention_backward(xp.ascontiguousarray(g.reshape(nb, 1, t, hs)), cache)
        return dq.reshape(x.shape), xp.swapaxes(dk.reshape(x.shape), -1, -2), dv.reshape(x.shape)
    return Tensor._make(out.reshape(x.shape), (q, kt, v), backward, "attention")

