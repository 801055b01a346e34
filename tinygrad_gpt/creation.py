"""torch's factories: zeros, ones, full, empty, arange, linspace, eye, tril/triu, the *_like family, and the random
ones (randn, rand, randint, randperm, multinomial, normal) drawing from the default generator (rng.py) or a given
`generator`. Defaults are torch's: float32 for floats, int64 for integer ranges and randint, the cpu device.

`size` may be ints or one tuple/list/Size: zeros(2, 3) and zeros((2, 3)) are the same.
"""
import math
import operator

import numpy as np

from . import rng as _rng
from .backend import get_device, to_device
from .errors import TensorError
from .tensor import Tensor, _sizes, tensor


def _make(array, dtype, device, requires_grad):
    """A new leaf from a NumPy array: cast to dtype, moved to the device."""
    dev = get_device(device)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Tensor(to_device(array, dev), requires_grad=requires_grad, device=dev)


def zeros(*size, dtype=None, device=None, requires_grad=False, out=None):
    return _make(np.zeros(_sizes(size, "zeros"), dtype or np.float32), None, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False, out=None):
    return _make(np.ones(_sizes(size, "ones"), dtype or np.float32), None, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False, out=None):
    """Zeros (torch leaves the memory uninitialised; reading it is undefined there, so zeros are one valid answer)."""
    return zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False):
    """A tensor of `size` filled with fill_value: its dtype from the value (bool, int64, float32) unless given."""
    if dtype is None:
        dtype = np.bool_ if isinstance(fill_value, bool) else np.int64 if isinstance(fill_value, int) else np.float32
    return _make(np.full(_sizes((size,), "full"), fill_value, dtype), None, device, requires_grad)


def _like(t, dtype, device):
    return (t.dtype if dtype is None else dtype), (t.device if device is None else device)


def zeros_like(input, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(input, dtype, device)
    return zeros(tuple(input.shape), dtype=dtype, device=device, requires_grad=requires_grad)


def ones_like(input, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(input, dtype, device)
    return ones(tuple(input.shape), dtype=dtype, device=device, requires_grad=requires_grad)


empty_like = zeros_like


def full_like(input, fill_value, dtype=None, device=None, requires_grad=False):
    dtype, device = _like(input, dtype, device)
    return full(tuple(input.shape), fill_value, dtype=dtype, device=device, requires_grad=requires_grad)


def rand_like(input, dtype=None, device=None, requires_grad=False, generator=None):
    dtype, device = _like(input, dtype, device)
    return rand(tuple(input.shape), dtype=dtype, device=device, requires_grad=requires_grad, generator=generator)


def randn_like(input, dtype=None, device=None, requires_grad=False, generator=None):
    dtype, device = _like(input, dtype, device)
    return randn(tuple(input.shape), dtype=dtype, device=device, requires_grad=requires_grad, generator=generator)


def arange(start, end=None, step=1, *, dtype=None, device=None, requires_grad=False):
    """arange(end) or arange(start, end, step): int64 when every bound is an int, else float32 (torch's)."""
    if end is None:
        start, end = 0, start
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    if step == 0:
        raise TensorError("arange: step must be nonzero")
    if (end - start) * step < 0:                                   # torch refuses a range the step walks away from
        raise TensorError(f"arange: upper bound and lower bound inconsistent with step sign (start {start}, end "
                          f"{end}, step {step})")
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, end, step))
    if ints:
        values = np.arange(start, end, step, dtype=np.int64)
    else:
        n = max(0, math.ceil((end - start) / step))                # torch's length; values start + i * step
        values = (start + np.arange(n, dtype=np.float64) * step).astype(np.float32)
    return _make(values, dtype, device, requires_grad)


def linspace(start, end, steps, *, dtype=None, device=None, requires_grad=False):
    return _make(np.linspace(start, end, operator.index(steps)).astype(np.float32), dtype, device, requires_grad)


def eye(n, m=None, *, dtype=None, device=None, requires_grad=False):
    return _make(np.eye(n, m, dtype=dtype or np.float32), None, device, requires_grad)


def tril(input, diagonal=0):
    """The lower triangle (and the diagonals up to `diagonal`) of the last two axes; the rest zero (Tensor.tril)."""
    return input.tril(diagonal)


def triu(input, diagonal=0):
    return input.triu(diagonal)


# ---- random -------------------------------------------------------------------------------------------------------

def randn(*size, generator=None, dtype=None, device=None, requires_grad=False, out=None):
    """Standard normal draws (float32 unless dtype says otherwise)."""
    draw = _rng.numpy_generator(generator).standard_normal(_sizes(size, "randn"))
    return _make(draw.astype(dtype or np.float32), None, device, requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad=False, out=None):
    """Uniform draws in [0, 1)."""
    draw = _rng.numpy_generator(generator).random(_sizes(size, "rand"))
    return _make(draw.astype(dtype or np.float32), None, device, requires_grad)


def randint(*args, size=None, generator=None, dtype=None, device=None, requires_grad=False):
    """randint(high, size) or randint(low, high, size): integers in [low, high), int64 unless dtype says
    otherwise."""
    if size is None:
        *bounds, size = args
    else:
        bounds = list(args)
    if len(bounds) == 1:
        low, high = 0, bounds[0]
    elif len(bounds) == 2:
        low, high = bounds
    else:
        raise TypeError("randint(high, size) or randint(low, high, size)")
    low, high = operator.index(low), operator.index(high)
    if high <= low:
        raise TensorError(f"randint: the range [{low}, {high}) is empty")
    draw = _rng.numpy_generator(generator).integers(low, high, _sizes((size,), "randint"), dtype=np.int64)
    return _make(draw, dtype, device, requires_grad)


def randperm(n, *, generator=None, dtype=None, device=None, requires_grad=False):
    return _make(_rng.numpy_generator(generator).permutation(operator.index(n)).astype(np.int64), dtype, device,
                 requires_grad)


def normal(mean, std, size=None, *, generator=None, dtype=None, device=None):
    """normal(mean, std, size) with numbers, or elementwise from mean/std tensors."""
    g = _rng.numpy_generator(generator)
    if size is not None:
        return _make(g.normal(mean, std, _sizes((size,), "normal")).astype(dtype or np.float32), None, device, False)
    m = mean.numpy() if isinstance(mean, Tensor) else np.asarray(mean, np.float32)
    s = std.numpy() if isinstance(std, Tensor) else np.asarray(std, np.float32)
    out = g.normal(m, s).astype(np.result_type(m, s) if np.result_type(m, s).kind == "f" else np.float32)
    dev = mean.device if isinstance(mean, Tensor) else std.device if isinstance(std, Tensor) else device
    return _make(out, dtype, dev, False)


def multinomial(input, num_samples, replacement=False, *, generator=None):
    """Indices drawn from the categorical distributions in the rows of `input` (probabilities or any non-negative
    weights, (V,) or (B, V)) -> int64 (num_samples,) or (B, num_samples); without replacement each index at most once
    per row. One uniform draw per sample, inverted through the cumulative weights."""
    w = np.asarray(input.numpy(), dtype=np.float64)
    one = w.ndim == 1
    w = w[None] if one else w
    if w.ndim != 2:
        raise TensorError(f"multinomial: expects a 1-D or 2-D tensor of probabilities, got shape {tuple(input.shape)}")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise TensorError("multinomial: probabilities must be finite and non-negative")
    n = operator.index(num_samples)
    if not replacement and n > w.shape[1]:
        raise TensorError(f"multinomial: cannot sample {n} > {w.shape[1]} categories without replacement")
    g = _rng.numpy_generator(generator)
    out = np.empty((w.shape[0], n), np.int64)
    for row in range(w.shape[0]):
        p = w[row].copy()
        for j in range(n if not replacement else 1):
            cdf = np.cumsum(p)
            if cdf[-1] <= 0:
                raise TensorError("multinomial: a row of probabilities sums to 0")
            if replacement:
                u = g.random(n) * cdf[-1]
                out[row] = np.minimum(np.searchsorted(cdf, u, side="right"), len(p) - 1)
            else:
                k = min(int(np.searchsorted(cdf, g.random() * cdf[-1], side="right")), len(p) - 1)
                while p[k] == 0:                         # the draw landed on a zero-width step at the end: step back
                    k -= 1
                out[row, j] = k
                p[k] = 0.0
    out = out[0] if one else out
    return Tensor(to_device(out, input.device), device=input.device)


def bernoulli(input, p=None, *, generator=None):
    probs = input.numpy() if p is None else np.full(tuple(input.shape), p)
    draw = _rng.numpy_generator(generator).random(probs.shape) < probs
    return Tensor(to_device(draw.astype(input.dtype), input.device), device=input.device)


def from_numpy(array):
    """A tensor sharing the NumPy array's memory (torch.from_numpy)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy expects a NumPy array, got {type(array).__name__}")
    return Tensor(array)


def as_tensor(data, dtype=None, device=None):
    """The data as a tensor, without a copy where it already is one (or a NumPy array of the right dtype)."""
    if isinstance(data, Tensor) and (dtype is None or data.dtype == np.dtype(dtype)) and \
            (device is None or data.device == get_device(device)):
        return data
    if isinstance(data, np.ndarray) and device in (None, "cpu") and (dtype is None or data.dtype == np.dtype(dtype)):
        return Tensor(data)
    return tensor(data, dtype=dtype, device=device)
