"""Tensor: a backend array, an optional gradient, and the closure that sends gradients to its parents.

An op computes its output array, then (when gradients are on and some input requires them) records
`parents` and a `backward(g) -> tuple of grads, one per parent`. `Tensor.backward()` walks the graph in reverse
topological order (built iteratively, so a chain of 10,000 ops is fine) and accumulates each returned gradient
into its parent through `unbroadcast`, the one place where broadcasting is undone. The walked graph is freed.

dtypes: float32 by default and kept float32 (a Python scalar takes the other operand's dtype); float64 works
throughout for exactness checks; integer and bool tensors hold indices, masks and counts. Where the two meet, torch's
rules hold: an integer operand takes the float operand's dtype (int64 + float32 is float32), an integer tensor with a
Python float, a true division of integers, and a float function (exp, log, sqrt, tanh, gelu, softmax) of integers
give float32 (torch's default dtype), and an integer sum is int64. Comparisons (<, <=, >, >=, ==, !=) and the logical
operators (&, |, ^, ~) give bool tensors that carry no gradient.

Edge cases follow torch: an axis out of range raises IndexError; an argument that does not fit the tensor's shape
(shapes that do not broadcast, a reshape to another size, a repeated axis, a split size of 0) raises TensorError,
which is both torch's RuntimeError and NumPy's ValueError. A 0-d tensor takes the axes 0 and -1, as in torch. An
empty axis list reduces over every axis (torch's `dim=()`).
"""
import math
import operator

import numpy as np

from .backend import CPU, DeviceError, device_of, get_device, to_device, to_host


class TensorError(RuntimeError, ValueError):
    """An argument that does not fit the tensor: shapes that do not broadcast, a reshape to another size, a repeated
    axis, a split size of 0, the mean of an integer tensor. torch raises RuntimeError where this is raised and NumPy
    ValueError: this is both, so a handler written for either catches it."""


_grad_enabled = True


class no_grad:
    """Context manager (and decorator) under which ops record no graph."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        def wrapped(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
        return wrapped


def is_grad_enabled():
    return _grad_enabled


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`: over the leading axes broadcasting added, and over axes where `shape` has 1."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _as_array(data, device, dtype):
    """Convert user data to a backend array: NumPy floats keep their dtype, Python data becomes float32."""
    xp = device.xp
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (bool, int, float)) or isinstance(data, (list, tuple)):
        arr = xp.asarray(data, dtype=dtype or np.float32)
    else:
        if device_of(data) != device:
            data = to_device(data, device)
        arr = xp.asarray(data)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
    return arr


def _axis(axis, ndim, op):
    """An int axis (negative counts from the end) as an index into the shape. As in torch, a 0-d tensor takes 0 and -1
    (it is 0 returned then). Anything else is an IndexError naming the valid range."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{op}: an axis must be an int, got {type(axis).__name__}") from None
    n = max(ndim, 1)
    if not -n <= axis < n:
        raise IndexError(f"{op}: axis {axis} is out of range for a tensor of {ndim} dimension(s) "
                         f"(expected {-n} to {n - 1})")
    return axis % n


def _reduce_axes(axis, ndim, op, shape=None):
    """A reduction's axis argument as a tuple of distinct axes in range(ndim), or None for all of them: None, an int,
    or a tuple/list of ints (empty: every axis, as torch's dim=()). A 0-d tensor reduces over no axis: (). With
    `shape`, an axis of length 0 is an IndexError (a maximum over nothing). Checked in torch's order: every axis's
    range (and length), then repeats."""
    if axis is None:
        return None
    if not isinstance(axis, (tuple, list)):
        axis = (axis,)
    elif not axis:
        return None
    axes = tuple(_axis(a, ndim, op) for a in axis)
    for a in axes if shape is not None and ndim else ():
        if shape[a] == 0:
            raise IndexError(f"{op}: axis {a} of shape {tuple(shape)} has no elements to take the maximum of")
    if len(set(axes)) != len(axes):
        raise TensorError(f"{op}: axis {tuple(axis)} names an axis more than once")
    return () if ndim == 0 else axes


def _promote(a, b):
    """Arrays `a` and `b` for a binary op with torch's promotion: an integer or bool array meeting a float one takes
    its dtype (NumPy would make int64 with float32 a float64); a 0-d array meeting an array with dimensions of its
    own kind (float, or integer) takes that array's dtype (float32 times a 0-d float64 stays float32). Otherwise they
    promote as NumPy does (float32 with float64 is float64, int32 with int64 is int64)."""
    fa, fb = a.dtype.kind == "f", b.dtype.kind == "f"
    if fa and not fb:
        return a, b.astype(a.dtype)
    if fb and not fa:
        return a.astype(b.dtype), b
    both_int = a.dtype.kind in "iu" and b.dtype.kind in "iu"
    if a.dtype != b.dtype and (a.ndim == 0) != (b.ndim == 0) and (fa or both_int):
        return (a.astype(b.dtype), b) if a.ndim == 0 else (a, b.astype(a.dtype))
    return a, b


def _number(x):
    """A NumPy scalar as the Python number it holds (torch takes both as plain numbers); anything else unchanged."""
    return x.item() if isinstance(x, np.generic) and x.dtype.kind in "biuf" else x


def _as_float(a):
    """`a` itself when it holds floats, else as float32 (torch's default dtype), for the float-valued ops."""
    return a if a.dtype.kind == "f" else a.astype(np.float32)


_erf_numpy = None  # the cpu erf, made by the first _erf call (numba is imported only then) and kept for the process


def _erf(x, xp):
    """The error function elementwise, in x's float dtype. NumPy has none: on cpu a ufunc that numba compiles from
    the C library's erf (math.erf), or math.erf called per element when the CPU kernels are off
    (`kernels.enabled("cpu")` false: TINYGRAD_GPT_KERNELS=0, `kernels.set_enabled`, or numba missing). The choice is
    made on the first call and kept in _erf_numpy: switching the kernels later does not change it. On cuda CuPy's
    own."""
    global _erf_numpy
    if xp is not np:
        from cupyx.scipy.special import erf
        return erf(x)
    if _erf_numpy is None:
        _erf_numpy = _make_erf()
    return _erf_numpy(x)


def _make_erf():
    from . import kernels
    if kernels.enabled("cpu"):
        import numba

        def erf(v):
            return math.erf(v)
        return numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)(erf)
    per_element = np.vectorize(math.erf, otypes=[np.float64])
    return lambda x: per_element(x).astype(x.dtype, copy=False)


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "device", "_parents", "_backward", "_op", "grad_buffer")
    __array_priority__ = 1000  # so that `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        if device is None:
            device = device_of(data.data if isinstance(data, Tensor) else data)
        self.device = get_device(device)
        self.data = _as_array(data, self.device, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, not {self.data.dtype}")
        self._parents = ()
        self._backward = None
        self._op = None  # name of the op that made this tensor; None for a leaf
        # where backward() puts a leaf's first gradient instead of a new array (an optimizer's flat buffer view)
        self.grad_buffer = None

    # ---- construction of graph nodes -------------------------------------------------------------------------
    @classmethod
    def _make(cls, data, parents, backward, op):
        """A new tensor holding `data`, recording `parents` and `backward` when a gradient must flow."""
        out = cls.__new__(cls)
        # asarray: NumPy returns scalars, not 0-d arrays, from ops on 0-d arrays and from full reductions
        out.data, out.grad, out.device, out._op = parents[0].xp.asarray(data), None, parents[0].device, op
        out.grad_buffer = None
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        if out.requires_grad:
            out._parents, out._backward = parents, backward
        else:
            out._parents, out._backward = (), None
        return out

    def _lift(self, other):
        """`other` as a Tensor on this device. A Python scalar takes this tensor's dtype, except where that would change
        its value (torch's rule): a float with an integer or bool tensor is float32, an int with a bool tensor int64."""
        if isinstance(other, Tensor):
            if other.device != self.device:
                raise DeviceError(f"tensors on different devices: {self.device} and {other.device}")
            return other
        other = _number(other)
        if isinstance(other, (int, float, bool)):
            kind = self.dtype.kind
            if kind == "f" or (kind in "iu" and not isinstance(other, float)) or isinstance(other, bool):
                dtype = self.dtype
            else:
                dtype = np.float32 if isinstance(other, float) else np.int64
            return Tensor(self.xp.asarray(other, dtype=dtype), device=self.device)
        return Tensor(other, device=self.device)

    # ---- properties ------------------------------------------------------------------------------------------
    @property
    def xp(self):
        return self.device.xp

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._op is None

    def numpy(self):
        return to_host(self.data)

    def item(self):
        if self.size != 1:
            raise TensorError(f"item(): a tensor of {self.size} elements (shape {self.shape}) is not one number")
        return self.data.item()

    def __float__(self):
        if self.size != 1:
            raise ValueError(f"float(): only a tensor of one element converts to a number, not shape {self.shape}")
        return float(self.data.item())

    def __int__(self):
        if self.size != 1:
            raise ValueError(f"int(): only a tensor of one element converts to a number, not shape {self.shape}")
        return int(self.data.item())

    def __bool__(self):
        """The truth of a one-element tensor (`if (t > 0):`); for more or fewer elements it is ambiguous, as in torch:
        use `.all()`-style reductions, e.g. `(t > 0).min()`, or compare the arrays."""
        if self.size != 1:
            raise TensorError(f"the truth value of a tensor of {self.size} elements (shape {self.shape}) is "
                              "ambiguous")
        return bool(self.data.item())

    __hash__ = object.__hash__  # by identity (defining == would otherwise make tensors unhashable)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == CPU else f", device='{self.device}'"
        return f"Tensor({self.numpy()!r}{dev}{grad})"

    def to(self, device):
        device = get_device(device)
        if device == self.device:
            return self
        moved = Tensor(to_device(self.data, device), requires_grad=self.requires_grad, device=device)
        return moved

    def detach(self):
        return Tensor(self.data, device=self.device)

    def astype(self, dtype):
        return Tensor(self.data.astype(dtype), device=self.device)

    # ---- backward --------------------------------------------------------------------------------------------
    def _accumulate(self, g):
        g = unbroadcast(g, self.data.shape)
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        if self.grad is None:
            # A leaf owns its gradient (users and the optimizer may change it in place): a copy, written into its
            # grad_buffer when it has one (AdamW's flat gradient buffer: no gathering copy at step()). An inner
            # node's gradient may alias another node's and is only read.
            if self._op is not None:
                self.grad = g
            elif self.grad_buffer is not None:
                self.grad_buffer[...] = g
                self.grad = self.grad_buffer
            else:
                self.grad = self.xp.array(g)                          # a 0-d array, not a scalar
        elif self._op is None:
            self.grad += g
        else:
            self.grad = self.grad + g

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`; frees the graph it walked."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if self._op is not None and self._backward is None:
            raise RuntimeError("backward() through a graph that was already freed by an earlier backward()")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape {self.shape}; "
                                   "pass backward(grad) with a gradient of that shape")
            grad = self.xp.ones_like(self.data)
        else:
            grad = _as_array(grad, self.device, self.dtype)
            if grad.shape != self.shape:
                raise TensorError(f"backward(grad): gradient shape {grad.shape} does not match tensor shape "
                                  f"{self.shape}")

        # Iterative post-order DFS: a node comes after every node it depends on.
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            if node._op is not None and node._backward is None:  # an inner node an earlier backward() freed
                raise RuntimeError(f"backward() through a graph that was already freed by an earlier backward(): the "
                                   f"{node._op} node of shape {node.shape} was used again after its graph was freed")
            stack.append((node, True))
            for p in node._parents:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))

        self._accumulate(grad)
        for node in reversed(order):
            if node._backward is None:
                continue
            grads = node._backward(node.grad)
            for p, g in zip(node._parents, grads):
                if g is not None and p.requires_grad:
                    p._accumulate(g)
            # free the graph: inner nodes drop their parents, closure (and its saved arrays) and gradient
            node._parents, node._backward, node.grad = (), None, None

    # ---- elementwise arithmetic ------------------------------------------------------------------------------
    def _binary(self, other, fwd, bwd, op, floating=False):
        """fwd(a, b) -> out with bwd(a, b, out) -> backward, on this tensor's and `other`'s arrays after promotion
        (`floating`: integer operands become float32 first, as in a true division)."""
        other = self._lift(other)
        a, b = _promote(self.data, other.data)
        if floating:
            a, b = _as_float(a), _as_float(b)
        try:
            data = fwd(a, b)
        except ValueError:
            raise TensorError(f"{op}: shapes {self.shape} and {other.shape} cannot be broadcast together") from None
        return Tensor._make(data, (self, other), bwd(a, b, data), op)

    def __add__(self, other):
        return self._binary(other, lambda a, b: a + b, lambda a, b, o: lambda g: (g, g), "add")

    def __sub__(self, other):
        return self._binary(other, lambda a, b: a - b, lambda a, b, o: lambda g: (g, -g), "sub")

    def __mul__(self, other):
        return self._binary(other, lambda a, b: a * b, lambda a, b, o: lambda g: (g * b, g * a), "mul")

    def __truediv__(self, other):
        # d(a/b)/da = 1/b ; d(a/b)/db = -a/b^2 = -out/b
        return self._binary(other, lambda a, b: a / b, lambda a, b, o: lambda g: (g / b, -g * o / b), "div",
                            floating=True)

    def __radd__(self, other):
        return self._lift(other) + self

    def __rsub__(self, other):
        return self._lift(other) - self

    def __rmul__(self, other):
        return self._lift(other) * self

    def __rtruediv__(self, other):
        return self._lift(other) / self

    def __neg__(self):
        return Tensor._make(-self.data, (self,), lambda g: (-g,), "neg")

    def __pow__(self, exponent):
        exponent = _number(exponent)
        if not isinstance(exponent, (int, float)):
            return self._pow_tensor(self._lift(exponent))
        x, xp = self.data, self.xp
        if isinstance(exponent, float):
            x = _as_float(x)
        elif x.dtype.kind != "f" and exponent < 0:
            raise TensorError(f"pow: integers to negative integer powers are not allowed ({self.dtype} ** {exponent})")
        # d(x^n)/dx = n x^(n-1); exactly 0 for n = 0 (also at x = 0, where 0 * 0**-1 would give nan)
        return Tensor._make(x ** exponent, (self,),
                            lambda g: (g * exponent * x ** (exponent - 1) if exponent else xp.zeros_like(g),), "pow")

    def __rpow__(self, base):
        return self._lift(base)._pow_tensor(self)

    def _pow_tensor(self, other):
        """self ** other, both tensors (broadcast), differentiable in both."""
        xp = self.xp
        a, b = _promote(self.data, other.data)
        if a.dtype.kind != "f" and b.dtype.kind != "f" and bool((b < 0).any()):
            raise TensorError(f"pow: integers to negative integer powers are not allowed ({a.dtype} ** {b.dtype})")
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # 0 ** -1 = inf and (-8) ** 0.5 = nan, silently
                out = a ** b
        except ValueError:
            raise TensorError(f"pow: shapes {self.shape} and {other.shape} cannot be broadcast together") from None

        def backward(g):
            zero = xp.zeros((), dtype=g.dtype)
            ga = gb = None
            with np.errstate(divide="ignore", invalid="ignore"):
                if self.requires_grad:
                    # d(a^b)/da = b a^(b-1); 0 where b = 0 (also at a = 0, where 0 * 0**-1 would give nan), as torch
                    ga = xp.where(b == 0, zero, g * b * a ** (b - 1))
                if other.requires_grad:
                    # d(a^b)/db = a^b ln a; 0 where a = 0 and b >= 0 (a^b is constant 0 or 1 along b there), as torch;
                    # nan for a < 0, where a^b is not real-differentiable in b
                    gb = xp.where((a == 0) & (b >= 0), zero, g * out * xp.log(a))
            return ga, gb
        return Tensor._make(out, (self, other), backward, "pow")

    # ---- comparisons and logical operators: bool tensors, no gradient ----------------------------------------------
    def _compare(self, other, fn, op):
        other = _number(other)
        if isinstance(other, (int, float, bool)) and (self.dtype.kind == "f" or not isinstance(other, float)):
            a, b = self.data, other  # compared by its value (an int out of the dtype's range too), as in torch
        elif isinstance(other, (int, float, bool, Tensor, np.ndarray, np.generic, list, tuple)) \
                or device_of(other) != CPU:  # (a float and an integer tensor: both as float32, as in torch)
            other = self._lift(other)
            a, b = _promote(self.data, other.data)
        else:
            return NotImplemented  # t == None, t == "a": Python falls back to identity (False)
        try:
            out = fn(a, b)
        except ValueError:
            raise TensorError(f"{op}: shapes {self.shape} and {np.shape(b)} cannot be broadcast together") from None
        return Tensor(out, device=self.device)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b, "lt")

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b, "le")

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b, "gt")

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b, "ge")

    def __eq__(self, other):
        return self._compare(other, lambda a, b: a == b, "eq")

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b, "ne")

    def _logical(self, other, fn, op):
        for t in (self, other):
            if isinstance(t, Tensor) and t.dtype.kind not in "biu":
                raise TypeError(f"{op} needs bool or integer tensors, got {t.dtype}")
        return self._compare(other, fn, op)

    def __and__(self, other):
        return self._logical(other, lambda a, b: a & b, "&")

    def __or__(self, other):
        return self._logical(other, lambda a, b: a | b, "|")

    def __xor__(self, other):
        return self._logical(other, lambda a, b: a ^ b, "^")

    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__

    def __invert__(self):
        if self.dtype.kind not in "biu":
            raise TypeError(f"~ needs a bool or integer tensor, got {self.dtype}")
        return Tensor(~self.data, device=self.device)

    # ---- unary functions -------------------------------------------------------------------------------------
    def exp(self):
        out = self.xp.exp(_as_float(self.data))
        return Tensor._make(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        x = _as_float(self.data)
        return Tensor._make(self.xp.log(x), (self,), lambda g: (g / x,), "log")

    def sqrt(self):
        out = self.xp.sqrt(_as_float(self.data))
        return Tensor._make(out, (self,), lambda g: (g * 0.5 / out,), "sqrt")

    def tanh(self):
        out = self.xp.tanh(_as_float(self.data))
        return Tensor._make(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def relu(self):
        x = self.data
        return Tensor._make(self.xp.maximum(x, 0), (self,), lambda g: (g * (x > 0),), "relu")

    def gelu(self, approximate="tanh"):
        """GELU. approximate="tanh" (the default, the model's): GPT-2's tanh approximation, torch's
        gelu(approximate='tanh'). approximate="none": the exact x * Phi(x), Phi the standard normal CDF, torch's
        default gelu (nn.GELU())."""
        if approximate == "none":
            return self._gelu_exact()
        if approximate != "tanh":
            raise TensorError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        xp, x = self.xp, _as_float(self.data)
        k = math.sqrt(2.0 / math.pi)
        u = k * (x + 0.044715 * x ** 3)
        th = xp.tanh(u)
        out = 0.5 * x * (1 + th)

        def backward(g):
            # d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = k (1 + 3*0.044715 x^2)
            du = k * (1 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du),)
        return Tensor._make(out, (self,), backward, "gelu")

    def _gelu_exact(self):
        xp, x = self.xp, _as_float(self.data)
        cdf = 0.5 * (1 + _erf(x * (1 / math.sqrt(2.0)), xp))     # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        out = x * cdf

        def backward(g):
            # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the standard normal density
            return (g * (cdf + x * (xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi)))),)
        return Tensor._make(out, (self,), backward, "gelu")

    # ---- reductions ------------------------------------------------------------------------------------------
    # axis: None (all), an int or a tuple/list of ints, negative ones counting from the end (see _reduce_axes)
    def _expand_back(self, g, axes, keepdims):
        """Reshape a gradient reduced over `axes` (from _reduce_axes) so that it broadcasts against this tensor."""
        if keepdims:
            return g
        if axes is None:
            return g.reshape((1,) * self.ndim)
        return self.xp.expand_dims(g, axes)

    def sum(self, axis=None, keepdims=False):
        """Sum; of an integer or bool tensor an int64 sum, as torch's."""
        xp, shape = self.xp, self.shape
        axes = _reduce_axes(axis, self.ndim, "sum")
        dtype = np.int64 if self.dtype.kind in "biu" else None

        def backward(g):
            return (xp.broadcast_to(self._expand_back(g, axes, keepdims), shape),)
        return Tensor._make(self.data.sum(axis=axes, keepdims=keepdims, dtype=dtype), (self,), backward, "sum")

    def mean(self, axis=None, keepdims=False):
        """Mean of a float tensor; nan over no elements (as torch). An integer mean is an error, as in torch."""
        xp, shape = self.xp, self.shape
        if self.dtype.kind != "f":
            raise TensorError(f"mean: needs a floating-point tensor, got {self.dtype} (convert it with .astype)")
        axes = _reduce_axes(axis, self.ndim, "mean")
        n = math.prod(shape if axes is None else [shape[a] for a in axes])  # elements per mean
        with np.errstate(invalid="ignore"):                                # 0 / 0 = nan, without a warning
            out = self.data.sum(axis=axes, keepdims=keepdims) / n          # NumPy's mean: this sum, this division

        def backward(g):
            if n == 0:  # an empty input: an empty gradient
                return (xp.zeros(shape, dtype=g.dtype),)
            return (xp.broadcast_to(self._expand_back(g, axes, keepdims) / n, shape),)
        return Tensor._make(out, (self,), backward, "mean")

    def max(self, axis=None, keepdims=False):
        """Maximum (torch.amax); the gradient is shared equally among tied maxima (as torch.amax does)."""
        x = self.data
        axes = _reduce_axes(axis, self.ndim, "max", shape=self.shape)
        if axes is None and x.size == 0:
            raise TensorError(f"max: the tensor of shape {self.shape} is empty; give the axis to reduce")
        out = x.max(axis=axes, keepdims=keepdims)

        def backward(g):
            o = self._expand_back(out, axes, keepdims)
            hit = (x == o)
            count = hit.sum(axis=axes, keepdims=True)
            return (hit * (self._expand_back(g, axes, keepdims) / count),)
        return Tensor._make(out, (self,), backward, "max")

    # ---- shapes ----------------------------------------------------------------------------------------------
    def reshape(self, *shape):
        """reshape(2, 3) or reshape((2, 3)); one size may be -1 (inferred), as in torch; reshape() is shape ()."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(operator.index(n) for n in shape)  # TypeError for a float or a nested tuple
        in_shape = self.shape
        if any(n < -1 for n in shape) or shape.count(-1) > 1:
            raise TensorError(f"reshape: invalid shape {shape}: sizes are >= 0, and at most one is -1 (inferred)")
        if -1 in shape and math.prod(n for n in shape if n != -1) == 0:
            raise TensorError(f"reshape: cannot reshape shape {in_shape} into shape {shape}: the other sizes hold no "
                              "elements, so the -1 could be any size")
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise TensorError(f"reshape: cannot reshape shape {in_shape} into shape {shape}") from None
        return Tensor._make(data, (self,), lambda g: (g.reshape(in_shape),), "reshape")

    view = reshape

    def transpose(self, a=0, b=1):
        """Swap axes a and b (a 0-d tensor takes 0 and -1 and stays itself, as in torch)."""
        a, b = _axis(a, self.ndim, "transpose"), _axis(b, self.ndim, "transpose")
        axes = list(range(self.ndim))
        if axes:
            axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    def permute(self, *axes):
        """permute(2, 0, 1) or permute((2, 0, 1)): every axis once, negative ones counting from the end."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if len(axes) != self.ndim:
            raise TensorError(f"permute: {len(axes)} axes {tuple(axes)} given for a tensor of {self.ndim} "
                              f"dimension(s), shape {self.shape}")
        order = []
        for a in axes:  # one at a time, in torch's order of checks
            a = _axis(a, self.ndim, "permute")
            if a in order:
                raise TensorError(f"permute: axes {tuple(axes)} repeat an axis")
            order.append(a)
        axes = tuple(order)
        inverse = tuple(int(i) for i in np.argsort(axes))
        return Tensor._make(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),), "permute")

    @property
    def T(self):
        if self.ndim != 2:
            raise TensorError(f".T needs a 2-D tensor, got shape {self.shape}; use transpose(a, b), permute or .mT")
        return self.transpose(0, 1)

    @property
    def mT(self):
        """The last two axes swapped: a batch of matrices transposed."""
        if self.ndim < 2:
            raise TensorError(f".mT needs a tensor of at least 2 dimensions, got shape {self.shape}")
        return self.transpose(-2, -1)

    def __getitem__(self, index):
        """Basic indexing (ints, slices, None, ...), integer arrays (lists, arrays or integer tensors; repeated
        positions add up in the gradient) and bool masks, as NumPy and torch index. Negative slice steps work (NumPy's
        meaning; torch refuses them)."""
        xp, shape, dtype = self.xp, self.shape, self.dtype
        index = _unwrap_index(index)
        advanced = _has_array(index)

        def backward(g):
            full = xp.zeros(shape, dtype=dtype)
            if advanced:
                # repeated indices must add up: scatter-add
                if xp is np:
                    np.add.at(full, index, g)
                else:
                    xp.add.at(full, index, g)
            else:
                full[index] = g
            return (full,)
        return Tensor._make(self.data[index], (self,), backward, "getitem")

    @staticmethod
    def cat(tensors, axis=0):
        """Join tensors along an existing axis (torch.cat); mixed dtypes promote as in a binary op."""
        tensors = list(tensors)
        if not tensors:
            raise ValueError("cat: expected a non-empty list of tensors")
        first = next((t for t in tensors if isinstance(t, Tensor)), None)
        if first is None:
            first = Tensor(tensors[0])
        tensors = [first._lift(t) for t in tensors]
        for i, t in enumerate(tensors):
            if t.ndim == 0:
                raise TensorError(f"cat: the 0-d tensor at position {i} cannot be concatenated (it has no axis)")
        ndim = tensors[0].ndim
        axis = _axis(axis, ndim, "cat")
        if any(t.ndim != ndim for t in tensors):
            raise TensorError("cat: tensors must have the same number of dimensions, got shapes "
                              + ", ".join(str(t.shape) for t in tensors))
        arrays = [t.data for t in tensors]
        floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
        dtype = np.result_type(*(floats or [a.dtype for a in arrays]))  # int with float: the float's dtype (torch)
        arrays = [a.astype(dtype, copy=False) for a in arrays]
        try:
            data = first.xp.concatenate(arrays, axis=axis)
        except ValueError:
            raise TensorError("cat: shapes " + ", ".join(str(t.shape) for t in tensors)
                              + f" do not match outside axis {axis}") from None
        bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()

        def backward(g):
            return tuple(first.xp.split(g, bounds, axis=axis))
        return Tensor._make(data, tuple(tensors), backward, "cat")

    def split(self, size, axis=0):
        """Pieces along `axis` (torch.split): of `size` each, the last maybe shorter, or of the sizes in a list, which
        must add up to the axis's length. Returns a list."""
        if self.ndim == 0:
            raise TensorError("split: a 0-d tensor has no axis to split")
        if isinstance(size, (tuple, list)):
            axis = _axis(axis, self.ndim, "split")
            n = self.shape[axis]
            sizes = [operator.index(k) for k in size]
            if any(k < 0 for k in sizes) or sum(sizes) != n:
                raise TensorError(f"split: sizes {list(size)} must be >= 0 and add up to {n}, the length of axis "
                                  f"{axis} of shape {self.shape}")
        else:
            size = operator.index(size)
            if size < 0:
                raise TensorError(f"split: size {size} must be positive (0 only for an empty axis)")
            axis = _axis(axis, self.ndim, "split")
            n = self.shape[axis]
            if size == 0 and n > 0:
                raise TensorError(f"split: size 0 must be positive for axis {axis} of length {n}")
            sizes = [min(size, n - i) for i in range(0, n, size)] if n else [0]
        lead, start, pieces = (slice(None),) * axis, 0, []
        for k in sizes:
            pieces.append(self[lead + (slice(start, start + k),)])
            start += k
        return pieces

    # ---- matmul ----------------------------------------------------------------------------------------------
    def __matmul__(self, other):
        other = self._lift(other)
        a, b = _promote(self.data, other.data)
        if a.ndim == 0 or b.ndim == 0:
            raise TensorError(f"matmul: 0-d operands are not allowed (shapes {a.shape} and {b.shape}), use *")
        try:
            out = a @ b
        except ValueError:
            raise TensorError(f"matmul: shapes {a.shape} and {b.shape} are not aligned") from None
        xp = self.xp

        def backward(g):
            if a.ndim == 1 and b.ndim == 1:  # dot product: a scalar output
                return g * b, g * a
            # promote 1-D operands to matrices, as matmul itself does, then undo
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = g
            if a.ndim == 1:
                g2 = xp.expand_dims(g2, -2)
            if b.ndim == 1:
                g2 = xp.expand_dims(g2, -1)
            ga = g2 @ xp.swapaxes(b2, -1, -2)          # dL/dA = dL/dY B^T
            gb = xp.swapaxes(a2, -1, -2) @ g2          # dL/dB = A^T dL/dY
            if a.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
                ga = unbroadcast(ga, a.shape)
            if b.ndim == 1:
                gb = gb.reshape(gb.shape[:-1])
                gb = unbroadcast(gb, b.shape)
            return ga, gb
        return Tensor._make(out, (self, other), backward, "matmul")

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ---- softmax family and masking ---------------------------------------------------------------------------
    def _softmax_axis(self, axis, op):
        """The data as floats, the axis as NumPy takes it ((a,), or () for a 0-d tensor) and the maxima along it
        (0 for an empty tensor: nothing to shift)."""
        x = _as_float(self.data)
        axis = _reduce_axes(axis, self.ndim, op)  # (a,) or, for a 0-d tensor, ()
        peak = x.max(axis=axis, keepdims=True) if x.size else self.xp.zeros((), dtype=x.dtype)
        return x, axis, peak

    def softmax(self, axis=-1):
        xp = self.xp
        x, axis, peak = self._softmax_axis(axis, "softmax")
        e = xp.exp(x - peak)
        out = e / e.sum(axis=axis, keepdims=True)

        def backward(g):
            # dx = y * (g - sum(g * y))
            return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
        return Tensor._make(out, (self,), backward, "softmax")

    def log_softmax(self, axis=-1):
        xp = self.xp
        x, axis, peak = self._softmax_axis(axis, "log_softmax")
        shifted = x - peak
        with np.errstate(divide="ignore"):  # log(0) only over an empty axis, where the output is empty too
            out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

        def backward(g):
            # dx = g - softmax(x) * sum(g)
            return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
        return Tensor._make(out, (self,), backward, "log_softmax")

    def masked_fill(self, mask, value):
        """Where `mask` (bool, broadcastable) is True, the output is `value` and no gradient flows."""
        xp = self.xp
        mask = mask.data if isinstance(mask, Tensor) else mask
        mask = _as_array(mask, self.device, None).astype(bool, copy=False)
        try:
            out = xp.where(mask, xp.asarray(value, dtype=self.dtype), self.data)
        except ValueError:
            raise TensorError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape "
                              f"{self.shape}") from None
        if out.shape != self.shape:
            raise TensorError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape {self.shape}")
        return Tensor._make(out, (self,), lambda g: (xp.where(mask, 0, g).astype(g.dtype, copy=False),),
                            "masked_fill")


def _unwrap_index(index):
    """An index as NumPy takes it: tensors as their arrays, lists (alone or inside a tuple) as arrays."""
    if isinstance(index, tuple):
        return tuple(_unwrap_index_item(i) for i in index)
    return _unwrap_index_item(index)


def _unwrap_index_item(item):
    if isinstance(item, Tensor):
        return item.data
    if isinstance(item, list):
        arr = np.asarray(item)
        return arr.astype(np.int64) if arr.size == 0 else arr  # [] selects nothing (NumPy would make it a float array)
    return item


def _has_array(index):
    """True when the index uses integer or boolean arrays (advanced indexing), which may repeat positions."""
    items = index if isinstance(index, tuple) else (index,)
    return any(hasattr(i, "ndim") for i in items)


def tensor(data, requires_grad=False, device=None, dtype=None):
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)
