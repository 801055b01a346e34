"""Tensor: a backend array, an optional gradient, and the closure that sends gradients to its parents.

An op computes its output array, then (when gradients are on and some input requires them) records
`parents` and a `backward(g) -> tuple of grads, one per parent`. `Tensor.backward()` walks the graph in reverse
topological order (built iteratively, so a chain of 10,000 ops is fine) and accumulates each returned gradient
into its parent through `unbroadcast`, the one place where broadcasting is undone. The walked graph is freed.

dtypes: float32 by default and kept float32 (a Python scalar takes the other operand's dtype); float64 works
throughout for exactness checks; integer tensors hold indices.
"""
import math

import numpy as np

from .backend import CPU, DeviceError, device_of, get_device, to_device, to_host

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


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "device", "_parents", "_backward", "_op")
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

    # ---- construction of graph nodes -------------------------------------------------------------------------
    @classmethod
    def _make(cls, data, parents, backward, op):
        """A new tensor holding `data`, recording `parents` and `backward` when a gradient must flow."""
        out = cls.__new__(cls)
        # asarray: NumPy returns scalars, not 0-d arrays, from ops on 0-d arrays and from full reductions
        out.data, out.grad, out.device, out._op = parents[0].xp.asarray(data), None, parents[0].device, op
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        if out.requires_grad:
            out._parents, out._backward = parents, backward
        else:
            out._parents, out._backward = (), None
        return out

    def _lift(self, other):
        """`other` as a Tensor on this device; a Python scalar takes this tensor's dtype."""
        if isinstance(other, Tensor):
            if other.device != self.device:
                raise DeviceError(f"tensors on different devices: {self.device} and {other.device}")
            return other
        if isinstance(other, (int, float, bool)):
            return Tensor(self.xp.asarray(other, dtype=self.dtype), device=self.device)
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
        return self.data.item()

    def __len__(self):
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
            # A leaf owns its gradient (users and the optimizer may change it in place); an inner node's
            # gradient may alias another node's and is only read.
            self.grad = self.xp.array(g) if self._op is None else g  # a copy, and a 0-d array, not a scalar
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
                raise ValueError(f"backward(grad): gradient shape {grad.shape} does not match tensor shape {self.shape}")

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
    def _binary(self, other, fwd, bwd, op):
        other = self._lift(other)
        try:
            data = fwd(self.data, other.data)
        except ValueError:
            raise ValueError(f"{op}: shapes {self.shape} and {other.shape} cannot be broadcast together") from None
        return Tensor._make(data, (self, other), bwd(self.data, other.data, data), op)

    def __add__(self, other):
        return self._binary(other, lambda a, b: a + b, lambda a, b, o: lambda g: (g, g), "add")

    def __sub__(self, other):
        return self._binary(other, lambda a, b: a - b, lambda a, b, o: lambda g: (g, -g), "sub")

    def __mul__(self, other):
        return self._binary(other, lambda a, b: a * b, lambda a, b, o: lambda g: (g * b, g * a), "mul")

    def __truediv__(self, other):
        # d(a/b)/da = 1/b ; d(a/b)/db = -a/b^2 = -out/b
        return self._binary(other, lambda a, b: a / b, lambda a, b, o: lambda g: (g / b, -g * o / b), "div")

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
        if isinstance(exponent, Tensor) or not isinstance(exponent, (int, float)):
            raise TypeError("Tensor ** x supports a Python scalar exponent only")
        x = self.data
        # d(x^n)/dx = n x^(n-1); exactly 0 for n = 0 (also at x = 0, where 0 * 0**-1 would give nan)
        xp = self.xp
        return Tensor._make(x ** exponent, (self,),
                            lambda g: (g * exponent * x ** (exponent - 1) if exponent else xp.zeros_like(g),), "pow")

    # ---- unary functions -------------------------------------------------------------------------------------
    def exp(self):
        out = self.xp.exp(self.data)
        return Tensor._make(out, (self,), lambda g: (g * out,), "exp")

    def log(self):
        x = self.data
        return Tensor._make(self.xp.log(x), (self,), lambda g: (g / x,), "log")

    def sqrt(self):
        out = self.xp.sqrt(self.data)
        return Tensor._make(out, (self,), lambda g: (g * 0.5 / out,), "sqrt")

    def tanh(self):
        out = self.xp.tanh(self.data)
        return Tensor._make(out, (self,), lambda g: (g * (1 - out * out),), "tanh")

    def relu(self):
        x = self.data
        return Tensor._make(self.xp.maximum(x, 0), (self,), lambda g: (g * (x > 0),), "relu")

    def gelu(self):
        """GPT-2's tanh approximation, torch's gelu(approximate='tanh')."""
        xp, x = self.xp, self.data
        k = math.sqrt(2.0 / math.pi)
        u = k * (x + 0.044715 * x ** 3)
        th = xp.tanh(u)
        out = 0.5 * x * (1 + th)

        def backward(g):
            # d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = k (1 + 3*0.044715 x^2)
            du = k * (1 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du),)
        return Tensor._make(out, (self,), backward, "gelu")

    # ---- reductions ------------------------------------------------------------------------------------------
    def _expand_back(self, g, axis, keepdims):
        """Reshape a reduced gradient so that it broadcasts against this tensor's shape."""
        if keepdims:
            return g
        if axis is None:
            return g.reshape((1,) * self.ndim)
        axes = (axis,) if isinstance(axis, int) else axis
        axes = tuple(a % self.ndim for a in axes)
        return self.xp.expand_dims(g, axes)

    def sum(self, axis=None, keepdims=False):
        xp, shape = self.xp, self.shape

        def backward(g):
            return (xp.broadcast_to(self._expand_back(g, axis, keepdims), shape),)
        return Tensor._make(self.data.sum(axis=axis, keepdims=keepdims), (self,), backward, "sum")

    def mean(self, axis=None, keepdims=False):
        xp, shape = self.xp, self.shape
        out = self.data.mean(axis=axis, keepdims=keepdims)
        n = self.data.size // max(out.size, 1) if self.data.size else 1

        def backward(g):
            return (xp.broadcast_to(self._expand_back(g, axis, keepdims) / n, shape),)
        return Tensor._make(out, (self,), backward, "mean")

    def max(self, axis=None, keepdims=False):
        """Maximum; the gradient is shared equally among tied maxima (as torch.amax does)."""
        x = self.data
        out = x.max(axis=axis, keepdims=keepdims)

        def backward(g):
            o = self._expand_back(out, axis, keepdims)
            hit = (x == o)
            count = hit.sum(axis=axis, keepdims=True)
            return (hit * (self._expand_back(g, axis, keepdims) / count),)
        return Tensor._make(out, (self,), backward, "max")

    # ---- shapes ----------------------------------------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        in_shape = self.shape
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {in_shape} into shape {shape}") from None
        return Tensor._make(data, (self,), lambda g: (g.reshape(in_shape),), "reshape")

    view = reshape

    def transpose(self, a=0, b=1):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(a % self.ndim for a in axes)
        inverse = tuple(int(i) for i in np.argsort(axes))
        return Tensor._make(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),), "permute")

    @property
    def T(self):
        if self.ndim != 2:
            raise ValueError(f".T needs a 2-D tensor, got shape {self.shape}; use transpose(a, b) or permute")
        return self.transpose(0, 1)

    def __getitem__(self, index):
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
        tensors = list(tensors)
        first = tensors[0]
        tensors = [first._lift(t) for t in tensors]
        try:
            data = first.xp.concatenate([t.data for t in tensors], axis=axis)
        except ValueError:
            raise ValueError("cat: shapes " + ", ".join(str(t.shape) for t in tensors)
                             + f" do not match outside axis {axis}") from None
        bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()

        def backward(g):
            return tuple(first.xp.split(g, bounds, axis=axis))
        return Tensor._make(data, tuple(tensors), backward, "cat")

    def split(self, size, axis=0):
        """Pieces of `size` along `axis` (the last may be shorter), like torch.split with an int."""
        n = self.shape[axis]
        return [self[(slice(None),) * (axis % self.ndim) + (slice(i, min(i + size, n)),)] for i in range(0, n, size)]

    # ---- matmul ----------------------------------------------------------------------------------------------
    def __matmul__(self, other):
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: 0-d operands are not allowed, use *")
        try:
            out = a @ b
        except ValueError:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned") from None
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
    def softmax(self, axis=-1):
        xp = self.xp
        e = xp.exp(self.data - self.data.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)

        def backward(g):
            # dx = y * (g - sum(g * y))
            return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
        return Tensor._make(out, (self,), backward, "softmax")

    def log_softmax(self, axis=-1):
        xp = self.xp
        shifted = self.data - self.data.max(axis=axis, keepdims=True)
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
            raise ValueError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape {self.shape}") from None
        if out.shape != self.shape:
            raise ValueError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape {self.shape}")
        return Tensor._make(out, (self,), lambda g: (xp.where(mask, 0, g).astype(g.dtype, copy=False),),
                            "masked_fill")


def _unwrap_index(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if isinstance(index, list):
        return np.asarray(index)
    return index


def _has_array(index):
    """True when the index uses integer or boolean arrays (advanced indexing), which may repeat positions."""
    items = index if isinstance(index, tuple) else (index,)
    return any(hasattr(i, "ndim") for i in items)


def tensor(data, requires_grad=False, device=None, dtype=None):
    return Tensor(data, requires_grad=requires_grad, device=device, dtype=dtype)
