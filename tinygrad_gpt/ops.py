"""torch's top-level functions on tensors (torch.cat, torch.stack, torch.softmax, torch.einsum, ...): most are the
Tensor method of the same name; the few with no method (stack, einsum, allclose) are written here."""
import numpy as np

from .errors import TensorError, UnsupportedError
from .tensor import Tensor, _axis, _promote, maximum, minimum, where  # noqa: F401  (re-exported)


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


# ---- joining ------------------------------------------------------------------------------------------------------

def cat(tensors, dim=0, *, axis=None, out=None):
    return Tensor.cat(tensors, dim if axis is None else axis)


concat = concatenate = cat


def stack(tensors, dim=0, *, out=None):
    """Join same-shaped tensors along a new axis `dim`."""
    tensors = [_t(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty list of tensors")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise TensorError(f"stack: expects each tensor to be equal size, got shapes {sorted(shapes)}")
    d = _axis(dim, tensors[0].ndim + 1, "stack")
    return Tensor.cat([t.unsqueeze(d) for t in tensors], d)


def vstack(tensors):
    """Rows on top of each other (torch.vstack): a 0-d tensor becomes (1, 1), a 1-D one a row (1, n)."""
    return Tensor.cat([t.reshape(1, -1) if t.ndim < 2 else t for t in map(_t, tensors)], 0)


def hstack(tensors):
    """Side by side (torch.hstack): 0-d tensors become 1-D, then 1-D ones join along axis 0, the rest along 1."""
    tensors = [t.reshape(1) if t.ndim == 0 else t for t in map(_t, tensors)]
    return Tensor.cat(tensors, 0 if tensors[0].ndim == 1 else 1)


# ---- the methods, as functions ------------------------------------------------------------------------------------

def exp(input):
    return _t(input).exp()


def log(input):
    return _t(input).log()


def sqrt(input):
    return _t(input).sqrt()


def tanh(input):
    return _t(input).tanh()


def sigmoid(input):
    return _t(input).sigmoid()


def relu(input):
    return _t(input).relu()


def abs(input):
    return _t(input).abs()


def clamp(input, min=None, max=None):
    return _t(input).clamp(min, max)


clip = clamp


def pow(input, exponent):
    return input ** exponent


def softmax(input, dim, dtype=None):
    return input.softmax(dim, dtype=dtype)


def log_softmax(input, dim, dtype=None):
    return input.log_softmax(dim, dtype=dtype)


def sum(input, dim=None, keepdim=False, dtype=None):
    return _t(input).sum(dim, keepdim, dtype)


def mean(input, dim=None, keepdim=False, dtype=None):
    return _t(input).mean(dim, keepdim, dtype)


def var(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return input.var(dim, unbiased, keepdim, correction=correction)


def std(input, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return input.std(dim, unbiased, keepdim, correction=correction)


def max(input, dim=None, keepdim=False):
    return input.max(dim, keepdim)


def min(input, dim=None, keepdim=False):
    return input.min(dim, keepdim)


def amax(input, dim=(), keepdim=False):
    return input.amax(dim, keepdim)


def amin(input, dim=(), keepdim=False):
    return input.amin(dim, keepdim)


def argmax(input, dim=None, keepdim=False):
    return input.argmax(dim, keepdim)


def argmin(input, dim=None, keepdim=False):
    return input.argmin(dim, keepdim)


def topk(input, k, dim=-1, largest=True, sorted=True):
    return input.topk(k, dim, largest, sorted)


def sort(input, dim=-1, descending=False, stable=False):
    return input.sort(dim, descending, stable)


def all(input, dim=None, keepdim=False):
    return input.all(dim, keepdim)


def any(input, dim=None, keepdim=False):
    return input.any(dim, keepdim)


def matmul(input, other):
    return input @ other


bmm = mm = matmul


def transpose(input, dim0, dim1):
    return input.transpose(dim0, dim1)


def permute(input, dims):
    return input.permute(dims)


def reshape(input, shape):
    return input.reshape(shape)


def flatten(input, start_dim=0, end_dim=-1):
    return input.flatten(start_dim, end_dim)


def squeeze(input, dim=None):
    return input.squeeze(dim)


def unsqueeze(input, dim):
    return input.unsqueeze(dim)


def split(tensor, split_size_or_sections, dim=0):
    return tensor.split(split_size_or_sections, dim)


def chunk(input, chunks, dim=0):
    return input.chunk(chunks, dim)


def masked_fill(input, mask, value):
    return input.masked_fill(mask, value)


def numel(input):
    return input.numel()


def is_tensor(obj):
    return isinstance(obj, Tensor)


def is_floating_point(input):
    return input.dtype.kind == "f"


def clone(input):
    return input.clone()


def detach(input):
    return input.detach()


# ---- functions with no method ---------------------------------------------------------------------------------------

def cumsum(input, dim, dtype=None):
    return input.cumsum(dim, dtype)


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    """True when |input - other| <= atol + rtol |other| everywhere (torch.allclose; shapes broadcast)."""
    a, b = _promote(_t(input).data, _t(other).data)
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, equal_nan=equal_nan))


def isclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    a, b = _promote(_t(input).data, _t(other).data)
    return Tensor(input.xp.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan), device=input.device)


def equal(input, other):
    """True when both have the same shape and elements."""
    return tuple(input.shape) == tuple(other.shape) and bool((input.data == other.data).all())


def einsum(equation, *operands):
    """Einstein summation, e.g. einsum("bth,bsh->bts", q, k): explicit ("->") or implicit output, one letter per
    axis, each letter at most once per operand (no diagonals, no "..."). Differentiable in every operand: the
    gradient of operand i is the einsum of the output's gradient with the other operands onto operand i's letters
    (broadcast over a letter of operand i that appears nowhere else)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    operands = [_t(o) for o in operands]
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise UnsupportedError("einsum with '...'", "name every axis with a letter")
    lhs, _, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(operands):
        raise TensorError(f"einsum: {equation!r} names {len(ins)} operands, {len(operands)} given")
    if not _:
        letters = "".join(ins)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    for sub, op in zip(ins, operands, strict=True):
        if len(set(sub)) != len(sub):
            raise UnsupportedError(f"einsum with a repeated letter in {sub!r}", "take a diagonal another way")
        if len(sub) != op.ndim:
            raise TensorError(f"einsum: {sub!r} names {len(sub)} axes of an operand of shape {tuple(op.shape)}")
    xp = operands[0].xp
    floats = [o.dtype for o in operands if o.dtype.kind == "f"]
    dtype = np.result_type(*floats) if floats else np.result_type(*(o.dtype for o in operands))
    arrays = [o.data.astype(dtype, copy=False) for o in operands]
    out = xp.einsum(f"{lhs}->{rhs}", *arrays, optimize=len(arrays) > 2)
    sizes = {c: n for sub, a in zip(ins, arrays, strict=True) for c, n in zip(sub, a.shape, strict=True)}

    def backward(g):
        grads = []
        for i, (sub, a) in enumerate(zip(ins, arrays, strict=True)):
            others = [s for j, s in enumerate(ins) if j != i]
            known = set(rhs).union(*others)
            kept = "".join(c for c in sub if c in known)
            gi = xp.einsum(f"{','.join([rhs] + others)}->{kept}", g, *[x for j, x in enumerate(arrays) if j != i],
                           optimize=len(arrays) > 2)
            if kept != sub:   # letters only operand i has: summed away, so the gradient is the same along them
                gi = xp.broadcast_to(gi.reshape([sizes[c] if c in known else 1 for c in sub]), a.shape)
            grads.append(gi)
        return tuple(grads)
    return Tensor._make(out, tuple(operands), backward, "einsum")


def outer(input, vec2):
    return input.reshape(-1, 1) * vec2.reshape(1, -1)
