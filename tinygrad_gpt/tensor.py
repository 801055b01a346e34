"""Tensor: a backend array, an optional gradient, and the closure that sends gradients to its parents.

An op computes its output array, then (when gradients are on and some input requires them) records
`parents` and a `backward(g) -> tuple of grads, one per parent`. `Tensor.backward()` walks the graph in reverse
topological order (built iteratively, so a chain of 10,000 ops is fine) and accumulates each returned gradient
into its parent through `unbroadcast`, the one place where broadcasting is undone. The walked graph is freed.

The surface is torch's (SPEC section 8): `dim`/`keepdim` (NumPy's `axis`/`keepdims` are accepted too), `t.grad` a
Tensor, `t.shape` a `Size`, `t.size()` a method, `max(dim)` giving (values, indices), unbiased `var`/`std`, in-place
ops and `t[i] = v`, `format(t, ".4f")`, `int(t)`, a 0-d integer tensor as an index or slice bound. `t.data` stays the
backend array (NumPy or CuPy), as section 4 has it; torch's `t.data` is a tensor (see the README's differences).

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

In-place ops (`add_`, `t += x`, `t[i] = v`, ...) write into the array where no gradient is involved, as torch does.
Where one is (a value or the tensor requires grad): `t += x` rebinds t to `t + x` (the same values and gradients);
`t[i] = v` and `add_` turn the tensor into a new graph node over its old value, which is exact as long as nothing has
used the old value yet (else a clear error: torch tracks versions, this engine does not), and a leaf that requires
grad refuses them, as in torch.
"""
import collections
import math
import operator

import numpy as np

from . import rng as _rng
from .backend import CPU, device_of, get_device, to_device, to_host
from .errors import DeviceError, TensorError, UnsupportedError
from .kernels import GELU_C, GELU_K, twin

_grad_enabled = True


class no_grad:
    """Context manager (and decorator, `@torch.no_grad()`) under which ops record no graph."""
    _mode = False

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, self._mode

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev

    def __call__(self, fn):
        mode = self._mode

        def wrapped(*args, **kwargs):
            with set_grad_enabled(mode):
                return fn(*args, **kwargs)
        wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = fn.__name__, fn.__doc__, fn
        return wrapped


class enable_grad(no_grad):
    """Context manager (and decorator) under which ops record a graph again (inside no_grad)."""
    _mode = True


class set_grad_enabled(no_grad):
    """set_grad_enabled(mode): as a context manager or decorator, ops record a graph when mode is True."""

    def __init__(self, mode):
        self._mode = bool(mode)


inference_mode = no_grad


def is_grad_enabled():
    return _grad_enabled


class Size(tuple):
    """torch.Size: the sizes of a tensor's axes, a tuple (equal to the plain tuple of the same ints) with numel()."""
    __slots__ = ()

    def numel(self):
        return math.prod(self)

    def __getitem__(self, i):
        out = tuple.__getitem__(self, i)
        return Size(out) if isinstance(i, slice) else out

    def __add__(self, other):
        return Size(tuple(self) + tuple(other))

    def __repr__(self):
        return f"Size({list(self)})"


MinMax = collections.namedtuple("MinMax", ["values", "indices"])   # what max(dim), min(dim), topk, sort return


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
    if (isinstance(data, (bool, int, float)) and not isinstance(data, np.generic)) or isinstance(data, (list, tuple)):
        arr = xp.asarray(_plain(data), dtype=dtype or np.float32)
    else:
        if device_of(data) != device:
            data = to_device(data, device)
        arr = xp.asarray(data)
        if dtype is not None:
            arr = arr.astype(dtype, copy=False)
    return arr


def _plain(data):
    """Nested lists/tuples with the tensors in them replaced by their values (torch.tensor([t1, t2]) works)."""
    if isinstance(data, Tensor):
        return data.tolist()
    if isinstance(data, (list, tuple)):
        return [_plain(d) for d in data]
    return data


def _dim(dim, axis):
    """torch's `dim` or NumPy's `axis` (whichever was given)."""
    return dim if axis is None else axis


def _keep(keepdim, keepdims):
    return keepdim if keepdims is None else keepdims


def _no_out(out, op):
    """NumPy's np.sum(t) / np.all(t) call t.sum(axis=..., out=None): accepted; an output array is not."""
    if out is not None:
        raise UnsupportedError(f"Tensor.{op}(out=...)")


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


def _sizes(args, op):
    """Sizes given as ints, or as one tuple/list/Size: (2, 3), ((2, 3),) -> (2, 3); an int-valued tensor counts."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    try:
        return tuple(operator.index(n) for n in args)
    except TypeError:
        raise TypeError(f"{op}: sizes must be ints, got {args!r}") from None


@twin
def batched_matmul(a, b):
    """a @ b for float arrays of at least 2 dimensions and one dtype, batch axes broadcast (NumPy's matmul). On the
    CPU its kernel (kernels/cpu/matmul.py) runs the products on numba's threads, one BLAS call per piece."""
    return a @ b


@twin
def grad_sum(a, b, out=None):
    """a + b, written into `out` when given (it may be a): the sum of two gradients of one tensor (_accumulate). On
    the CPU its kernel (kernels/cpu/grads.py) adds on numba's threads, the same bits."""
    if out is None:
        return a + b
    if out is not a:
        out[...] = a
    out += b
    return out


@twin
def grad_store(out, g):
    """out[...] = g: a parameter's gradient into the optimizer's flat buffer (_accumulate). On the CPU its kernel
    (kernels/cpu/grads.py) copies on numba's threads."""
    out[...] = g
    return out


def _mm(a, b):
    """a @ b: the twin above where it applies, NumPy's (or CuPy's) matmul for the rest (1-D operands, integers)."""
    if a.ndim >= 2 and b.ndim >= 2 and a.dtype == b.dtype and a.dtype.kind == "f":
        return batched_matmul(a, b)
    return a @ b


_erf_per_element = np.vectorize(math.erf, otypes=[np.float64])


@twin
def erf(x):
    """The error function elementwise, in x's float dtype (the exact GELU's Phi). NumPy has none: math.erf (the C
    library's) per element on the CPU, CuPy's own on cuda. On the CPU its kernel (kernels/cpu/erf.py) is a ufunc that
    numba compiles from the same C function."""
    if isinstance(x, (np.ndarray, np.generic)):
        return _erf_per_element(x).astype(x.dtype, copy=False)
    from cupyx.scipy.special import erf as cupy_erf
    return cupy_erf(x)


class Tensor:
    __slots__ = ("data", "_grad", "_grad_tensor", "_grad_owned", "requires_grad", "device", "_parents", "_backward",
                 "_op", "grad_buffer", "_uses", "_pattern", "_version", "__weakref__")
    __array_priority__ = 1000  # so that `ndarray * Tensor` defers to Tensor.__rmul__

    def __init__(self, data, requires_grad=False, device=None, dtype=None):
        if isinstance(requires_grad, (int, np.integer)) and not isinstance(requires_grad, (bool, np.bool_)):
            raise TypeError(f"Tensor({data!r}, {requires_grad!r}, ...): torch.Tensor(*sizes) is not supported "
                            "(use torch.empty/zeros(sizes)); the second argument is requires_grad")
        if device is None:
            device = device_of(data.data if isinstance(data, Tensor) else data)
        device = get_device(device)
        self._leaf(_as_array(data, device, dtype), device)
        if requires_grad:
            self.requires_grad_()

    def _leaf(self, array, device):
        """Every slot of a leaf holding `array` (no copy, no checks)."""
        self.data, self.device, self.requires_grad = array, device, False
        self._grad = self._grad_tensor = None
        self._grad_owned = False   # an inner node's gradient is its own array (not another node's): add in place
        self._parents, self._backward = (), None
        self._op = None            # name of the op that made this tensor; None for a leaf
        # where backward() puts a leaf's first gradient instead of a new array (an optimizer's flat buffer view)
        self.grad_buffer = None
        self._uses = 0             # graph nodes recorded with this tensor as a parent (in-place ops check it)
        self._pattern = None       # set on the nodes of a pattern a fused op may replace (patterns.py)
        self._version = 0          # in-place writes so far (a pending node checks its inputs' against it)

    # ---- construction of graph nodes -------------------------------------------------------------------------
    @classmethod
    def _make(cls, data, parents, backward, op):
        """A new tensor holding `data`, recording `parents` and `backward` when a gradient must flow."""
        # _leaf and _record written out: every op goes through here, and two calls cost ~15% of a small op
        out = cls.__new__(cls)
        # asarray: NumPy returns scalars, not 0-d arrays, from ops on 0-d arrays and from full reductions
        out.data, out._grad, out._grad_tensor, out.device, out._op = \
            parents[0].xp.asarray(data), None, None, parents[0].device, op
        out._grad_owned = False
        out.grad_buffer = out._pattern = None
        out._uses = out._version = 0
        out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        if out.requires_grad:
            out._parents, out._backward = parents, backward
            for p in parents:
                p._uses += 1
        else:
            out._parents, out._backward = (), None
        return out

    @classmethod
    def _wrap(cls, array, device):
        """A leaf holding `array` itself (no copy, no checks): views of gradients and state dicts."""
        out = cls.__new__(cls)
        out._leaf(array, device)
        return out

    def _record(self, parents, backward, op):
        """Make this new tensor the result of `op` on `parents`: a graph node (parents and backward kept, their use
        counts raised) when gradients are on and a parent requires one. Returns it."""
        self._op = op
        self.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
        if self.requires_grad:
            self._parents, self._backward = parents, backward
            for p in parents:
                p._uses += 1
        return self

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
        return Size(self.data.shape)

    def size(self, dim=None):
        """torch's size(): the shape as a Size, or the length of axis `dim`."""
        if dim is None:
            return Size(self.data.shape)
        return self.data.shape[_axis(dim, self.ndim, "size")] if self.ndim else 1

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    def dim(self):
        return self.data.ndim

    ndimension = dim

    def numel(self):
        return int(self.data.size)

    nelement = numel

    @property
    def is_leaf(self):
        return self._op is None or not self.requires_grad

    @property
    def is_cuda(self):
        return self.device.name == "cuda"

    @property
    def grad_fn(self):
        """The name of the op that made this tensor, where it carries a graph (torch: a Function object), else None."""
        return self._op if self.requires_grad and self._op is not None else None

    @property
    def grad(self):
        """The gradient backward() accumulated, as a Tensor sharing the gradient array (torch's p.grad), or None."""
        g = self._grad
        if g is None:
            return None
        view = self._grad_tensor
        if view is None or view.data is not g:
            view = self._grad_tensor = Tensor._wrap(g, self.device)
        return view

    @grad.setter
    def grad(self, value):
        if value is None:
            self._grad = self._grad_tensor = None
            return
        arr = value.data if isinstance(value, Tensor) else _as_array(value, self.device, None)
        if tuple(arr.shape) != tuple(self.data.shape):
            raise TensorError(f"assigned grad has shape {tuple(arr.shape)}, the tensor has {tuple(self.data.shape)}")
        if arr.dtype != self.data.dtype:
            raise TensorError(f"assigned grad has dtype {arr.dtype}, the tensor has {self.data.dtype}")
        self._grad = arr
        self._grad_tensor = value if isinstance(value, Tensor) else None

    def requires_grad_(self, requires_grad=True):
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, not {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        return self

    # ---- conversions -----------------------------------------------------------------------------------------
    def numpy(self):
        return to_host(self.data)

    def __array__(self, dtype=None, copy=None):
        """NumPy's view of the tensor (np.asarray(t), np.testing on tensors, ndarray op tensor in place)."""
        a = to_host(self.data)
        return a if dtype is None else a.astype(dtype, copy=False)

    def tolist(self):
        return to_host(self.data).tolist()

    def item(self):
        if self.data.size != 1:
            raise TensorError(f"item(): a tensor of {self.data.size} elements (shape {self.data.shape}) is not one "
                              "number")
        return self.data.item()

    def __float__(self):
        if self.data.size != 1:
            raise ValueError(f"float(): only a tensor of one element converts to a number, not shape {self.data.shape}")
        return float(self.data.item())

    def __int__(self):
        if self.data.size != 1:
            raise ValueError(f"int(): only a tensor of one element converts to a number, not shape {self.data.shape}")
        return int(self.data.item())

    def __index__(self):
        """A one-element integer tensor as a Python int: a slice bound, a list index, range(t)."""
        if self.data.size != 1 or self.data.dtype.kind not in "biu":
            raise TypeError(f"only integer tensors of a single element can be converted to an index (this one is "
                            f"{self.dtype} of shape {self.data.shape})")
        return int(self.data.item())

    def __bool__(self):
        """The truth of a one-element tensor (`if (t > 0):`); for more or fewer elements it is ambiguous, as in torch:
        use `.all()`/`.any()`."""
        if self.data.size != 1:
            raise TensorError(f"the truth value of a tensor of {self.data.size} elements (shape {self.data.shape}) is "
                              "ambiguous; use .any() or .all()")
        return bool(self.data.item())

    def __format__(self, spec):
        """A 0-d tensor formats as its number (f"{loss:.4f}"), as in torch."""
        if self.ndim == 0:
            return format(self.data.item(), spec)
        if spec:
            raise TypeError(f"format spec {spec!r} needs a 0-d tensor, not shape {self.data.shape}")
        return str(self)

    __hash__ = object.__hash__  # by identity (defining == would otherwise make tensors unhashable)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self):
        """The sub-tensors along the first axis (`for i in ix:` over a 1-D tensor gives 0-d tensors)."""
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self.data)))

    def __repr__(self):
        a = self.numpy()
        if a.dtype.kind == "f" and a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            body = np.array2string(a, separator=", ", prefix="tensor(", threshold=1000)
        else:
            body = np.array2string(a, separator=", ", prefix="tensor(", threshold=1000, precision=4,
                                   floatmode="fixed" if a.dtype.kind == "f" else "maxprec")
        extra = ""
        if a.dtype not in (np.float32, np.int64, np.bool_) or a.size == 0:
            extra += f", dtype={dtype_name(a.dtype)}"
        if self.device != CPU:
            extra += f", device='{self.device}'"
        if self.requires_grad:
            extra += ", requires_grad=True" if self._op is None else f", grad_fn=<{self._op}>"
        return f"tensor({body}{extra})"

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(f"'Tensor' object has no attribute '{name}'")
        raise UnsupportedError(f"Tensor.{name}")

    # ---- devices and dtypes ----------------------------------------------------------------------------------
    def to(self, *args, **kwargs):
        """to(device), to(dtype), to(device, dtype), to(other_tensor), with device=/dtype= keywords (torch's);
        differentiable. The same device and dtype: this tensor itself."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for k in kwargs:
            if k not in ("non_blocking", "copy", "memory_format"):
                raise TypeError(f"to() got an unexpected keyword argument {k!r}")
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif _is_dtype(a):
                dtype = a
            else:
                device = a
        out = self if dtype is None else self._cast(dtype)
        return out if device is None else out._move(get_device(device))

    def _move(self, device):
        """This tensor's values on another device, a graph node whose gradient goes back to this one's device."""
        if device == self.device:
            return self
        src = self.device
        out = Tensor._wrap(to_device(self.data, device), device)      # (not _make: its array module is the source's)
        return out._record((self,), lambda g: (to_device(g, src),), "to")

    def cpu(self):
        return self._move(CPU)

    def cuda(self, device=None):
        return self._move(get_device("cuda"))

    def _cast(self, dtype):
        """A differentiable cast between float dtypes; to or from an integer or bool dtype no gradient flows."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind == "f" and self.dtype.kind == "f":
            src = self.dtype
            return Tensor._make(self.data.astype(dtype), (self,), lambda g: (g.astype(src),), "cast")
        return Tensor(self.data.astype(dtype), device=self.device)

    def type(self, dtype=None):
        """type(): the torch type name ('torch.FloatTensor'); type(dtype): a cast."""
        if dtype is None:
            return _TYPE_NAMES.get(self.dtype.str[1:], f"torch.{self.dtype}")
        return self._cast(dtype)

    def detach(self):
        """The same array with no graph (shares memory, as torch's)."""
        return Tensor._wrap(self.data, self.device)

    def clone(self):
        """A copy with its own memory; gradients flow back through it."""
        return Tensor._make(self.data.copy(), (self,), lambda g: (g,), "clone")

    def contiguous(self):
        """Every op here takes any strides: the tensor itself (torch copies a non-contiguous one)."""
        return self

    def astype(self, dtype):
        return Tensor(self.data.astype(dtype), device=self.device)

    # ---- backward --------------------------------------------------------------------------------------------
    def _accumulate(self, g):
        g = unbroadcast(g, self.data.shape)
        if g.dtype != self.data.dtype:
            g = g.astype(self.data.dtype)
        if self._grad is None:
            # A leaf owns its gradient (users and the optimizer may change it in place): a copy, written into its
            # grad_buffer when it has one (AdamW's flat gradient buffer: no gathering copy at step()). An inner
            # node's gradient may alias another node's and is only read.
            if self._op is not None:
                self._grad = g
            elif self.grad_buffer is not None:
                self._grad = grad_store(self.grad_buffer, g)
            else:
                self._grad = self.xp.array(g)                          # a 0-d array, not a scalar
        elif self._op is None or self._grad_owned:
            grad_sum(self._grad, g, out=self._grad)
        else:                                 # the first gradient may be another node's array: add into a new one
            self._grad = grad_sum(self._grad, g)
            self._grad_owned = True

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`; frees the graph it walked."""
        if create_graph or inputs is not None:
            raise UnsupportedError("Tensor.backward(create_graph=..., inputs=...)", "higher-order gradients")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if self._op is not None and self._backward is None:
            raise RuntimeError("backward() through a graph that was already freed by an earlier backward()")
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar output, got shape {self.data.shape}; "
                                   "pass backward(grad) with a gradient of that shape")
            grad = self.xp.ones_like(self.data)
        else:
            grad = _as_array(gradient, self.device, self.dtype)
            if grad.shape != self.data.shape:
                raise TensorError(f"backward(grad): gradient shape {grad.shape} does not match tensor shape "
                                  f"{self.data.shape}")

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
            if node._grad is None:            # no gradient reached this node (e.g. the old value under copy_)
                for p in node._parents:
                    p._uses -= 1
                node._parents, node._backward = (), None
                continue
            grads = node._backward(node._grad)
            for p, g in zip(node._parents, grads, strict=True):
                if g is not None and p.requires_grad:
                    p._accumulate(g)
            # free the graph: inner nodes drop their parents, closure (and its saved arrays) and gradient
            for p in node._parents:
                p._uses -= 1
            node._parents, node._backward, node._grad, node._grad_owned = (), None, None, False

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
            raise TensorError(f"{op}: shapes {self.data.shape} and {other.data.shape} "
                              f"cannot be broadcast together") from None
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
            raise TensorError(f"pow: shapes {self.data.shape} and {other.data.shape} "
                              f"cannot be broadcast together") from None

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
            raise TensorError(f"{op}: shapes {self.data.shape} and {np.shape(b)} "
                              f"cannot be broadcast together") from None
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
        u = GELU_K * (x + GELU_C * x ** 3)
        th = xp.tanh(u)
        out = 0.5 * x * (1 + th)

        def backward(g):
            # d/dx [0.5 x (1 + tanh u)] = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx, du/dx = k (1 + 3 c x^2)
            du = GELU_K * (1 + 3 * GELU_C * x * x)
            return (g * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * du),)
        return Tensor._make(out, (self,), backward, "gelu")

    def _gelu_exact(self):
        xp, x = self.xp, _as_float(self.data)
        cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2.0))))          # Phi(x) = (1 + erf(x / sqrt 2)) / 2
        out = x * cdf

        def backward(g):
            # d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) the standard normal density
            return (g * (cdf + x * (xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi)))),)
        return Tensor._make(out, (self,), backward, "gelu")

    def __floordiv__(self, other):
        """Floor division (no gradient: piecewise constant), torch's // ."""
        other = self._lift(other)
        a, b = _promote(self.data, other.data)
        return Tensor(self.xp.floor_divide(a, b), device=self.device)

    def __rfloordiv__(self, other):
        return self._lift(other) // self

    def __mod__(self, other):
        """Remainder with the divisor's sign (torch's % , Python's); the gradient is 1 for self."""
        other = self._lift(other)
        xp = self.xp
        # d(a mod b)/da = 1, d(a mod b)/db = -floor(a / b)
        return self._binary(other, lambda a, b: xp.remainder(a, b),
                            lambda a, b, o: lambda g: (g, -g * xp.floor_divide(a, b)), "mod")

    def __abs__(self):
        return self.abs()

    def __pos__(self):
        return self

    # torch's method names for the operators
    def add(self, other, alpha=1):
        return self + (other if alpha == 1 else other * alpha)

    def sub(self, other, alpha=1):
        return self - (other if alpha == 1 else other * alpha)

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def pow(self, exponent):
        return self ** exponent

    def neg(self):
        return -self

    def eq(self, other):
        return self == other

    def ne(self, other):
        return self != other

    def lt(self, other):
        return self < other

    def le(self, other):
        return self <= other

    def gt(self, other):
        return self > other

    def ge(self, other):
        return self >= other

    def logical_not(self):
        return Tensor(~self.data.astype(bool), device=self.device)

    def sigmoid(self):
        xp = self.xp
        x = _as_float(self.data)
        out = 1 / (1 + xp.exp(-x))
        return Tensor._make(out, (self,), lambda g: (g * out * (1 - out),), "sigmoid")

    def abs(self):
        x = self.data
        return Tensor._make(self.xp.abs(x), (self,), lambda g: (g * self.xp.sign(x),), "abs")

    def clamp(self, min=None, max=None):
        """Values limited to [min, max] (numbers or tensors; either may be None, not both); the gradient flows where
        the value was inside, and to a tensor bound where it was used."""
        if min is None and max is None:
            raise TensorError("clamp: give at least one of min and max")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            out = self
            if max is not None:
                out = where(out > max, max, out)
            if min is not None:
                out = where(out < min, min, out)
            return out
        x, xp = self.data, self.xp
        lo = -np.inf if min is None else min
        hi = np.inf if max is None else max
        out = xp.clip(x, lo, hi).astype(x.dtype, copy=False) if x.dtype.kind == "f" else xp.clip(x, lo, hi)
        inside = (x >= lo) & (x <= hi)
        return Tensor._make(out, (self,), lambda g: (g * inside,), "clamp")

    clip = clamp

    # ---- in-place ops ----------------------------------------------------------------------------------------
    def _graph_with(self, other):
        """Whether an op of this tensor with `other` records a graph."""
        return _grad_enabled and (self.requires_grad or (isinstance(other, Tensor) and other.requires_grad))

    def _write(self, result, op):
        """Write `result` (a Tensor or array of this shape, or one that broadcasts to it) into this tensor's array."""
        data = result.data if isinstance(result, Tensor) else result
        if getattr(data, "dtype", self.dtype).kind == "f" and self.dtype.kind != "f":
            raise TensorError(f"{op}: a float result cannot be written into a {self.dtype} tensor in place")
        try:
            self.data[...] = data
        except ValueError:
            raise TensorError(f"{op}: a result of shape {tuple(np.shape(data))} does not fit the tensor's shape "
                              f"{self.data.shape} in place") from None
        self._version += 1
        return self

    def _rebind(self, make, op):
        """In-place op with a gradient: this tensor becomes the node make(old) over a new object holding its old value
        and graph (exact while nothing else has used the old value; torch's version counter, here a use count)."""
        if self.requires_grad and self._op is None:
            raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be changed in place (torch: 'a leaf "
                               "Variable that requires grad is being used in an in-place operation'); do it under "
                               "torch.no_grad(), or write t = t + ... instead")
        if self._uses:
            raise RuntimeError(f"{op}: this tensor was already used by another op that may need its old value for "
                               "the gradient; write it out of place (t = t + ..., torch.cat, torch.where)")
        old = Tensor._wrap(self.data, self.device)
        old.requires_grad, old._parents, old._backward, old._op = \
            self.requires_grad, self._parents, self._backward, self._op
        out = make(old)
        self.data, self.requires_grad, self._parents, self._backward, self._op = \
            out.data, out.requires_grad, out._parents, out._backward, out._op
        self._grad = self._grad_tensor = None
        self._uses = 0
        self._version += 1
        return self

    def _inplace(self, other, fn, op):
        """t.op_(other): fn(a, b) -> the out-of-place result tensor."""
        if self._graph_with(other):
            return self._rebind(lambda old: fn(old, other), op)
        with no_grad():
            return self._write(fn(self, other), op)

    def add_(self, other, alpha=1):
        return self._inplace(other, lambda a, b: a + (b if alpha == 1 else b * alpha), "add_")

    def sub_(self, other, alpha=1):
        return self._inplace(other, lambda a, b: a - (b if alpha == 1 else b * alpha), "sub_")

    def mul_(self, other):
        return self._inplace(other, lambda a, b: a * b, "mul_")

    def div_(self, other):
        return self._inplace(other, lambda a, b: a / b, "div_")

    def pow_(self, exponent):
        return self._inplace(exponent, lambda a, b: a ** b, "pow_")

    def clamp_(self, min=None, max=None):
        return self._inplace(None, lambda a, _: a.clamp(min, max), "clamp_")

    def masked_fill_(self, mask, value):
        return self._inplace(None, lambda a, _: a.masked_fill(mask, value), "masked_fill_")

    def copy_(self, src):
        """Copy src's values in (cast to this tensor's dtype, broadcast to its shape)."""
        if self._graph_with(src):
            return self._rebind(lambda old: _replaced(old, self._lift(src)), "copy_")
        try:
            self.data[...] = _as_array(src, self.device, None)
        except ValueError:
            raise TensorError(f"copy_: a source of shape {tuple(np.shape(src))} does not broadcast to the tensor's "
                              f"shape {self.data.shape}") from None
        self._version += 1
        return self

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        if self._graph_with(value):
            return self._rebind(lambda old: _replaced(old, self._lift(value)), "fill_")
        self.data[...] = value.data if isinstance(value, Tensor) else value
        self._version += 1
        return self

    def normal_(self, mean=0.0, std=1.0, generator=None):
        """Fill from N(mean, std^2), drawn by `generator` (default: the one torch.manual_seed seeds)."""
        draw = _rng.numpy_generator(generator).normal(mean, std, self.shape)
        return self._fill_random(draw, "normal_")

    def uniform_(self, a=0.0, b=1.0, generator=None):
        draw = _rng.numpy_generator(generator).uniform(a, b, self.shape)
        return self._fill_random(draw, "uniform_")

    def _fill_random(self, draw, op):
        if _grad_enabled and self.requires_grad and self._op is None:
            raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be changed in place; do it under "
                               "torch.no_grad() (nn.init functions do)")
        self.data[...] = to_device(draw.astype(self.dtype), self.device)
        self._version += 1
        return self

    def _augmented(self, other, fn, op):
        """t += other: in place where no gradient is involved; else NotImplemented, so Python rebinds t to the
        out-of-place result (the same values and gradients, and nothing that used the old t is disturbed)."""
        if self._graph_with(other):
            if self.requires_grad and self._op is None:
                raise RuntimeError(f"{op}: a leaf tensor that requires grad cannot be changed in place (torch: 'a "
                                   "leaf Variable that requires grad is being used in an in-place operation'); do it "
                                   "under torch.no_grad(), or write w = w + ... for a new tensor")
            return NotImplemented
        return self._write(fn(self, other), op)

    def __iadd__(self, other):
        return self._augmented(other, Tensor.__add__, "+=")

    def __isub__(self, other):
        return self._augmented(other, Tensor.__sub__, "-=")

    def __imul__(self, other):
        return self._augmented(other, Tensor.__mul__, "*=")

    def __itruediv__(self, other):
        return self._augmented(other, Tensor.__truediv__, "/=")

    def __setitem__(self, index, value):
        """t[index] = value (a number, array or tensor broadcast to the indexed part), in place. With a gradient
        involved the tensor becomes a graph node over its old value (see _rebind): the indexed part's gradient goes
        to `value`, the rest to the old value."""
        index = _unwrap_index(index)
        if not self._graph_with(value):
            v = value.data if isinstance(value, Tensor) else value
            if isinstance(value, Tensor) and value.device != self.device:
                raise DeviceError(f"tensors on different devices: {self.device} and {value.device}")
            self.data[index] = v
            self._version += 1
            return
        value = self._lift(value)

        def make(old):
            data = old.data.copy()
            data[index] = value.data

            def backward(g):
                g_old = old.xp.array(g)                          # (a 0-d gradient may come as a scalar)
                g_old[index] = 0
                return g_old, old.xp.asarray(g)[index]
            return Tensor._make(data, (old, value), backward, "setitem")
        self._rebind(make, "setitem")

    # ---- reductions ------------------------------------------------------------------------------------------
    # dim (or NumPy's axis): None (all), an int or a tuple/list of ints, negative ones counting from the end
    def _expand_back(self, g, axes, keepdims):
        """Reshape a gradient reduced over `axes` (from _reduce_axes) so that it broadcasts against this tensor."""
        if keepdims:
            return g
        if axes is None:
            return g.reshape((1,) * self.ndim)
        return self.xp.expand_dims(g, axes)

    def sum(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None, out=None):
        _no_out(out, "sum")
        """Sum; of an integer or bool tensor an int64 sum, as torch's."""
        xp, shape, keepdim = self.xp, self.shape, _keep(keepdim, keepdims)
        axes = _reduce_axes(_dim(dim, axis), self.ndim, "sum")
        src = self if dtype is None else self._cast(dtype)
        out_dtype = np.int64 if src.dtype.kind in "biu" else None

        def backward(g):
            return (xp.broadcast_to(self._expand_back(g, axes, keepdim), shape),)
        return Tensor._make(src.data.sum(axis=axes, keepdims=keepdim, dtype=out_dtype), (src,), backward, "sum")

    def mean(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None, out=None):
        _no_out(out, "mean")
        """Mean of a float tensor; nan over no elements (as torch). An integer mean is an error, as in torch."""
        src = self if dtype is None else self._cast(dtype)
        xp, shape, keepdim = src.xp, src.shape, _keep(keepdim, keepdims)
        if src.dtype.kind != "f":
            raise TensorError(f"mean: needs a floating-point tensor, got {src.dtype} (convert it with .float())")
        axes = _reduce_axes(_dim(dim, axis), src.ndim, "mean")
        n = math.prod(shape if axes is None else [shape[a] for a in axes])  # elements per mean
        with np.errstate(invalid="ignore"):                                # 0 / 0 = nan, without a warning
            out = src.data.sum(axis=axes, keepdims=keepdim) / n            # NumPy's mean: this sum, this division

        def backward(g):
            if n == 0:  # an empty input: an empty gradient
                return (xp.zeros(shape, dtype=g.dtype),)
            return (xp.broadcast_to(src._expand_back(g, axes, keepdim) / n, shape),)
        return Tensor._make(out, (src,), backward, "mean")

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
        """Variance over `dim` with Bessel's correction by default (torch's: divide by n - 1); unbiased=False or
        correction=0 divides by n. var(dim, True/False, keepdim) is torch's older positional form."""
        if isinstance(dim, bool) and unbiased is None:   # var(True): the unbiased flag alone
            dim, unbiased = None, dim
        if correction is None:
            correction = 0 if unbiased is False else 1
        dim, keepdim = _dim(dim, axis), _keep(keepdim, keepdims)
        x = self if self.dtype.kind == "f" else self._cast(np.float32)
        axes = _reduce_axes(dim, x.ndim, "var")
        n = math.prod(x.shape if axes is None else [x.shape[a] for a in axes])
        d = x - x.mean(dim, keepdim=True)
        with np.errstate(divide="ignore", invalid="ignore"):                # n <= correction: inf or nan, as torch
            return (d * d).sum(dim, keepdim=keepdim) / max(n - correction, 0)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None, axis=None, keepdims=None):
        """Standard deviation: sqrt of var (the same correction); where it is 0 the gradient is 0 (torch's), not the
        nan of 1 / (2 sqrt(0))."""
        v = self.var(dim, unbiased, keepdim, correction=correction, axis=axis, keepdims=keepdims)
        xp = v.xp
        out = xp.sqrt(v.data)

        def backward(g):
            with np.errstate(divide="ignore", invalid="ignore"):
                return (xp.where(out == 0, 0, g * 0.5 / out).astype(g.dtype, copy=False),)
        return Tensor._make(out, (v,), backward, "std")

    def _amax(self, axis, keepdims, op, largest=True):
        """Maximum (or minimum) over axes, torch.amax's: the gradient is shared equally among tied extrema."""
        x = self.data
        axes = _reduce_axes(axis, self.ndim, op, shape=self.shape)
        if axes is None and x.size == 0:
            raise TensorError(f"{op}: the tensor of shape {self.data.shape} is empty; give the axis to reduce")
        out = x.max(axis=axes, keepdims=keepdims) if largest else x.min(axis=axes, keepdims=keepdims)

        def backward(g):
            o = self._expand_back(out, axes, keepdims)
            hit = (x == o)
            count = hit.sum(axis=axes, keepdims=True)
            return (hit * (self._expand_back(g, axes, keepdims) / count),)
        return Tensor._make(out, (self,), backward, op)

    def _arg_extreme(self, dim, keepdim, op, largest):
        """(values, indices) along one axis, torch.max(dim)'s: the gradient goes to the first extremum only."""
        xp, scalar = self.xp, self.ndim == 0
        a = _axis(dim, self.ndim, op)                                    # 0 for a 0-d tensor
        src = self.reshape(1) if scalar else self
        x = src.data
        if x.shape[a] == 0:
            raise IndexError(f"{op}: axis {a} of shape {self.data.shape} is empty")
        idx = xp.expand_dims((x.argmax if largest else x.argmin)(axis=a), a)   # keepdims layout
        values = src._gathered(xp.take_along_axis(x, idx, axis=a), idx, a, op)
        if scalar:
            values, idx = values.reshape(()), idx.reshape(())
        elif not keepdim:
            values, idx = values.squeeze(a), idx.squeeze(a)
        return MinMax(values, Tensor(idx.astype(np.int64, copy=False), device=self.device))

    def _gathered(self, vals, idx, a, op):
        """A node holding `vals`, the values at indices `idx` along axis a (both of idx's shape): the gradient
        scatters back to those positions."""
        xp, shape = self.xp, self.data.shape

        def backward(g):
            full = xp.zeros(shape, dtype=g.dtype)
            xp.put_along_axis(full, idx, g, axis=a)
            return (full,)
        return Tensor._make(vals, (self,), backward, op)

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None, out=None):
        _no_out(out, "max")
        """max(): the largest element (gradient shared among ties, as torch). max(dim, keepdim=False): torch's
        (values, indices) along dim. max(other_tensor): the elementwise maximum. With NumPy's axis=/keepdims=
        keywords: torch.amax (values only)."""
        if isinstance(dim, Tensor):
            return maximum(self, dim)
        if axis is not None or keepdims is not None or dim is None or isinstance(dim, (tuple, list)):
            return self._amax(_dim(dim, axis), _keep(keepdim, keepdims), "max")
        return self._arg_extreme(dim, keepdim, "max", True)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None, out=None):
        _no_out(out, "min")
        """As max, for the smallest."""
        if isinstance(dim, Tensor):
            return minimum(self, dim)
        if axis is not None or keepdims is not None or dim is None or isinstance(dim, (tuple, list)):
            return self._amax(_dim(dim, axis), _keep(keepdim, keepdims), "min", largest=False)
        return self._arg_extreme(dim, keepdim, "min", False)

    def amax(self, dim=(), keepdim=False):
        return self._amax(dim, keepdim, "amax")

    def amin(self, dim=(), keepdim=False):
        return self._amax(dim, keepdim, "amin", largest=False)

    def argmax(self, dim=None, keepdim=False):
        """Index of the (first) largest element: over the flattened tensor, or along dim. int64, no gradient."""
        return self._argext(dim, keepdim, "argmax", True)

    def argmin(self, dim=None, keepdim=False):
        return self._argext(dim, keepdim, "argmin", False)

    def _argext(self, dim, keepdim, op, largest):
        x = self.data
        if dim is None:
            if x.size == 0:
                raise TensorError(f"{op}: the tensor is empty")
            idx = (x.argmax if largest else x.argmin)()
            idx = idx.reshape((1,) * self.ndim) if keepdim else idx
        else:
            a = _axis(dim, self.ndim, op)
            idx = (x.argmax if largest else x.argmin)(axis=a if self.ndim else None, keepdims=keepdim)
        return Tensor(self.xp.asarray(idx, dtype=np.int64), device=self.device)

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """(values, indices) of the k largest (or smallest) along dim, largest first; the gradient scatters back."""
        a = _axis(dim, self.ndim, "topk")
        n = self.shape[a] if self.ndim else 1
        k = operator.index(k)
        if not 0 <= k <= n:
            raise TensorError(f"topk: k={k} is out of range for axis {a} of length {n}")
        return self._sorted_part(a, k if self.ndim else 1, not largest, "topk")   # a 0-d tensor: itself (torch's)

    def sort(self, dim=-1, descending=False, stable=False):
        """(values, indices) sorted along dim (a stable sort); the gradient scatters back."""
        a = _axis(dim, self.ndim, "sort")
        return self._sorted_part(a, self.shape[a] if self.ndim else 1, not descending, "sort")

    def _sorted_part(self, a, k, ascending, op):
        xp, scalar = self.xp, self.ndim == 0
        src = self.reshape(1) if scalar else self
        x = src.data
        key = x if ascending else (-x if x.dtype.kind in "fi" else ~x)
        idx = xp.take(xp.argsort(key, axis=a, kind="stable"), xp.arange(k), axis=a)   # the first k along axis a
        values = src._gathered(xp.take_along_axis(x, idx, axis=a), idx, a, op)
        if scalar:
            values, idx = values.reshape(()), idx.reshape(())
        return MinMax(values, Tensor(idx.astype(np.int64, copy=False), device=self.device))

    def all(self, dim=None, keepdim=False, *, axis=None, keepdims=None, out=None):
        _no_out(out, "all")
        dim, keepdim = _dim(dim, axis), _keep(keepdim, keepdims)
        axes = _reduce_axes(dim, self.ndim, "all")
        out = self.xp.asarray(self.data.astype(bool).all(axis=axes, keepdims=keepdim))
        return Tensor(out.astype(np.uint8) if self.dtype == np.uint8 else out, device=self.device)   # (torch's)

    def any(self, dim=None, keepdim=False, *, axis=None, keepdims=None, out=None):
        _no_out(out, "any")
        dim, keepdim = _dim(dim, axis), _keep(keepdim, keepdims)
        axes = _reduce_axes(dim, self.ndim, "any")
        out = self.xp.asarray(self.data.astype(bool).any(axis=axes, keepdims=keepdim))
        return Tensor(out.astype(np.uint8) if self.dtype == np.uint8 else out, device=self.device)   # (torch's)

    # ---- shapes ----------------------------------------------------------------------------------------------
    def reshape(self, *shape):
        """reshape(2, 3) or reshape((2, 3)); one size may be -1 (inferred), as in torch; reshape() is shape ()."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(operator.index(n) for n in shape)  # TypeError for a float or a nested tuple
        in_shape = self.data.shape
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

    def view_as(self, other):
        return self.reshape(other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _axis(start_dim, self.ndim, "flatten"), _axis(end_dim, self.ndim, "flatten")
        if s > e:
            raise TensorError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        shape = self.shape
        return self.reshape(shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:])

    def unsqueeze(self, dim):
        """A new axis of length 1 at `dim` (from -ndim-1 to ndim)."""
        a = _axis(dim, self.ndim + 1, "unsqueeze")
        shape = tuple(self.shape)
        return self.reshape(shape[:a] + (1,) + shape[a:])

    def squeeze(self, dim=None):
        """Without dim: every axis of length 1 removed; with dim (an int or a tuple): those of them that have length
        1 (an axis of another length stays, as in torch)."""
        shape = tuple(self.shape)
        if dim is None:
            axes = {i for i, n in enumerate(shape) if n == 1}
        else:
            dims = dim if isinstance(dim, (tuple, list)) else (dim,)
            axes = {a for a in (_axis(d, self.ndim, "squeeze") for d in dims) if self.ndim and shape[a] == 1}
        return self.reshape(tuple(n for i, n in enumerate(shape) if i not in axes))

    def expand(self, *sizes):
        """A broadcast view to `sizes` (-1 keeps an axis; new axes go in front), as torch.expand."""
        sizes = _sizes(sizes, "expand")
        lead = len(sizes) - self.ndim
        if lead < 0:
            raise TensorError(f"expand: {len(sizes)} sizes for a tensor of {self.ndim} dimensions")
        shape = tuple(self.shape[i - lead] if n == -1 and i >= lead else n for i, n in enumerate(sizes))
        try:
            data = self.xp.broadcast_to(self.data, shape)
        except ValueError:
            raise TensorError(f"expand: shape {self.data.shape} cannot be expanded to {sizes}") from None
        return Tensor._make(data, (self,), lambda g: (g,), "expand")          # _accumulate sums g back

    def expand_as(self, other):
        return self.expand(other.shape)

    def repeat(self, *sizes):
        """Tile the tensor `sizes` times along each axis (new axes in front), as torch.repeat."""
        sizes = _sizes(sizes, "repeat")
        if len(sizes) < self.ndim:
            raise TensorError(f"repeat: {len(sizes)} repeats for a tensor of {self.ndim} dimensions")
        shape = (1,) * (len(sizes) - self.ndim) + tuple(self.shape)
        data = self.xp.tile(self.data.reshape(shape), sizes)

        def backward(g):  # (r0 * s0, r1 * s1, ...) -> (r0, s0, r1, s1, ...) summed over the r axes
            g = g.reshape(tuple(v for r, s in zip(sizes, shape, strict=True) for v in (r, s)))
            return (g.sum(axis=tuple(range(0, 2 * len(sizes), 2))).reshape(self.shape),)
        return Tensor._make(data, (self,), backward, "repeat")

    def transpose(self, dim0=0, dim1=1):
        """Swap axes dim0 and dim1 (a 0-d tensor takes 0 and -1 and stays itself, as in torch)."""
        a, b = _axis(dim0, self.ndim, "transpose"), _axis(dim1, self.ndim, "transpose")
        axes = list(range(self.ndim))
        if axes:
            axes[a], axes[b] = axes[b], axes[a]
        return self.permute(*axes)

    def t(self):
        if self.ndim > 2:
            raise TensorError(f"t() needs a tensor of at most 2 dimensions, got shape {self.data.shape}")
        return self.transpose(0, 1) if self.ndim == 2 else self

    def permute(self, *axes):
        """permute(2, 0, 1) or permute((2, 0, 1)): every axis once, negative ones counting from the end."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if len(axes) != self.ndim:
            raise TensorError(f"permute: {len(axes)} axes {tuple(axes)} given for a tensor of {self.ndim} "
                              f"dimension(s), shape {self.data.shape}")
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
            raise TensorError(f".T needs a 2-D tensor, got shape {self.data.shape}; "
                              "use transpose(a, b), permute or .mT")
        return self.transpose(0, 1)

    @property
    def mT(self):
        """The last two axes swapped: a batch of matrices transposed."""
        if self.ndim < 2:
            raise TensorError(f".mT needs a tensor of at least 2 dimensions, got shape {self.data.shape}")
        return self.transpose(-2, -1)

    def __getitem__(self, index):
        """Basic indexing (ints, slices, None, ...; a 0-d integer tensor counts as an int), integer arrays (lists,
        arrays or integer tensors; repeated positions add up in the gradient) and bool masks, as NumPy and torch index.
        Negative slice steps work (NumPy's meaning; torch refuses them)."""
        xp, shape, dtype = self.xp, self.data.shape, self.dtype
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
    def cat(tensors, axis=0, *, dim=None):
        """Join tensors along an existing axis (torch.cat); mixed dtypes promote as in a binary op."""
        axis = axis if dim is None else dim
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
                              + ", ".join(str(tuple(t.shape)) for t in tensors))
        arrays = [t.data for t in tensors]
        floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
        dtype = np.result_type(*(floats or [a.dtype for a in arrays]))  # int with float: the float's dtype (torch)
        arrays = [a.astype(dtype, copy=False) for a in arrays]
        try:
            data = first.xp.concatenate(arrays, axis=axis)
        except ValueError:
            raise TensorError("cat: shapes " + ", ".join(str(tuple(t.shape)) for t in tensors)
                              + f" do not match outside axis {axis}") from None
        bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()

        def backward(g):
            return tuple(first.xp.split(g, bounds, axis=axis))
        return Tensor._make(data, tuple(tensors), backward, "cat")

    def split(self, size, axis=0, *, dim=None):
        """Pieces along `dim` (torch.split): of `size` each, the last maybe shorter, or of the sizes in a list, which
        must add up to the axis's length. Returns a list."""
        axis = axis if dim is None else dim
        if self.ndim == 0:
            raise TensorError("split: a 0-d tensor has no axis to split")
        if isinstance(size, (tuple, list)):
            axis = _axis(axis, self.ndim, "split")
            n = self.shape[axis]
            sizes = [operator.index(k) for k in size]
            if any(k < 0 for k in sizes) or sum(sizes) != n:
                raise TensorError(f"split: sizes {list(size)} must be >= 0 and add up to {n}, the length of axis "
                                  f"{axis} of shape {self.data.shape}")
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

    def chunk(self, chunks, dim=0):
        """At most `chunks` pieces of ceil(n / chunks) along dim (torch.chunk)."""
        chunks = operator.index(chunks)
        if chunks < 1:
            raise TensorError(f"chunk: chunks must be at least 1, got {chunks}")
        n = self.shape[_axis(dim, self.ndim, "chunk")] if self.ndim else 0
        return self.split(max(1, -(-n // chunks)), dim)

    # ---- matmul ----------------------------------------------------------------------------------------------
    # patterns.scores: q @ kT as the first pending node of the attention chain, or None. patterns.py builds on Tensor,
    # so it sets this when it is imported (tinygrad_gpt/__init__.py imports it), instead of tensor.py importing it
    _attention_scores = staticmethod(lambda a, b: None)

    def __matmul__(self, other):
        if isinstance(other, Tensor) and self._op is not None and other._op is not None:
            pending = self._attention_scores(self, other)   # attention scores q @ kT: made when read (patterns.py)
            if pending is not None:
                return pending
        other = self._lift(other)
        a, b = _promote(self.data, other.data)
        if a.ndim == 0 or b.ndim == 0:
            raise TensorError(f"matmul: 0-d operands are not allowed (shapes {a.shape} and {b.shape}), use *")
        try:
            out = _mm(a, b)
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
            ga = _mm(g2, xp.swapaxes(b2, -1, -2))      # dL/dA = dL/dY B^T
            gb = _mm(xp.swapaxes(a2, -1, -2), g2)      # dL/dB = A^T dL/dY
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

    matmul = __matmul__
    bmm = __matmul__

    # ---- softmax family and masking ---------------------------------------------------------------------------
    def _softmax_axis(self, axis, op):
        """The data as floats, the axis as NumPy takes it ((a,), or () for a 0-d tensor) and the maxima along it
        (0 for an empty tensor: nothing to shift)."""
        x = _as_float(self.data)
        axis = _reduce_axes(axis, self.ndim, op)  # (a,) or, for a 0-d tensor, ()
        peak = x.max(axis=axis, keepdims=True) if x.size else self.xp.zeros((), dtype=x.dtype)
        return x, axis, peak

    def softmax(self, dim=-1, dtype=None, *, axis=None):
        if dtype is not None:
            return self._cast(dtype).softmax(_dim(dim, axis))
        xp = self.xp
        x, axis, peak = self._softmax_axis(_dim(dim, axis), "softmax")
        e = xp.exp(x - peak)
        out = e / e.sum(axis=axis, keepdims=True)

        def backward(g):
            # dx = y * (g - sum(g * y))
            return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
        return Tensor._make(out, (self,), backward, "softmax")

    def log_softmax(self, dim=-1, dtype=None, *, axis=None):
        if dtype is not None:
            return self._cast(dtype).log_softmax(_dim(dim, axis))
        xp = self.xp
        x, axis, peak = self._softmax_axis(_dim(dim, axis), "log_softmax")
        shifted = x - peak
        with np.errstate(divide="ignore"):  # log(0) only over an empty axis, where the output is empty too
            out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

        def backward(g):
            # dx = g - softmax(x) * sum(g)
            return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
        return Tensor._make(out, (self,), backward, "log_softmax")

    def masked_fill(self, mask, value):
        """Where `mask` (bool, broadcastable) is True, the output is `value` (a number or a 0-d tensor) and no gradient
        flows."""
        xp = self.xp
        mask = mask.data if isinstance(mask, Tensor) else mask
        mask = _as_array(mask, self.device, None).astype(bool, copy=False)
        if isinstance(value, Tensor):
            value = value.item()
        try:
            out = xp.where(mask, xp.asarray(value, dtype=self.dtype), self.data)
        except ValueError:
            raise TensorError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape "
                              f"{self.data.shape}") from None
        if out.shape != self.data.shape:
            raise TensorError(f"masked_fill: mask shape {mask.shape} does not broadcast to shape {self.data.shape}")
        return Tensor._make(out, (self,), lambda g: (xp.where(mask, 0, g).astype(g.dtype, copy=False),),
                            "masked_fill")

    def cumsum(self, dim, dtype=None):
        """Running sums along dim; the gradient is the reversed running sum of the output's gradient."""
        x = self if dtype is None else self._cast(dtype)
        a = _axis(dim, x.ndim, "cumsum")
        xp = x.xp
        data = x.data.astype(np.int64) if x.dtype.kind in "biu" else x.data
        if x.ndim == 0:   # a 0-d tensor is its own running sum (NumPy's cumsum would make it 1-D)
            return Tensor._make(xp.array(data), (x,), lambda g: (g,), "cumsum")

        def backward(g):
            return (xp.flip(xp.cumsum(xp.flip(g, a), axis=a), a),)
        return Tensor._make(xp.cumsum(data, axis=a), (x,), backward, "cumsum")

    def tril(self, diagonal=0):
        """The lower triangle (and the diagonals up to `diagonal`) of the last two axes; the rest zero.
        Differentiable."""
        keep = self.xp.asarray(np.tri(*self.shape[-2:], k=diagonal, dtype=bool))
        return self.masked_fill(~keep, 0)

    def triu(self, diagonal=0):
        keep = self.xp.asarray(~np.tri(*self.shape[-2:], k=diagonal - 1, dtype=bool))
        return self.masked_fill(~keep, 0)

    # ---- dtype conversions (torch's names; last in the class: `float`, `int`, `bool` would shadow the builtins in
    # the class body above) -----------------------------------------------------------------------------------------
    def float(self):
        return self._cast(np.float32)

    def double(self):
        return self._cast(np.float64)

    def half(self):
        return self._cast(np.float16)

    def long(self):
        return self._cast(np.int64)

    def int(self):
        return self._cast(np.int32)

    def bool(self):
        return self._cast(np.bool_)


def zero_grads(tensors, set_to_none=True):
    """torch's zero_grad over `tensors` (Module.zero_grad, the optimizers'): drop each gradient (set_to_none=True,
    torch's default) or set it to zero in place (an optimizer's flat gradient buffer stays attached)."""
    for t in tensors:
        if set_to_none or t._grad is None:
            t.grad = None
        else:
            t._grad[...] = 0


def _replaced(old, value):
    """A node holding `value` broadcast to old's shape and dtype: fill_/copy_ with a gradient (none flows to old)."""
    data = old.xp.broadcast_to(value.data, old.shape).astype(old.dtype)
    return Tensor._make(data, (old, value), lambda g: (None, g), "copy")


def maximum(a, b):
    """The elementwise maximum (torch.maximum); the gradient goes to the larger operand (half to each on a tie)."""
    return a._binary(b, lambda x, y: a.xp.maximum(x, y), lambda x, y, o: lambda g: _tie_split(g, x, y, o), "maximum")


def minimum(a, b):
    return a._binary(b, lambda x, y: a.xp.minimum(x, y), lambda x, y, o: lambda g: _tie_split(g, x, y, o), "minimum")


def _tie_split(g, x, y, o):
    """Gradients of max/min(x, y) = o: to whichever operand equals o, half each where both do (torch's rule)."""
    ex, ey = (x == o), (y == o)
    share = g / (ex.astype(g.dtype) + ey.astype(g.dtype))
    return share * ex, share * ey


def where(condition, input, other):
    """torch.where(condition, input, other): input where condition holds, else other; gradients to both."""
    base = input if isinstance(input, Tensor) else other if isinstance(other, Tensor) else None
    if base is None:
        base = Tensor(np.asarray(input))
    cond = condition.data if isinstance(condition, Tensor) else base.xp.asarray(condition)
    cond = cond.astype(bool, copy=False)
    a, b = base._lift(input), base._lift(other)
    x, y = _promote(a.data, b.data)
    xp = base.xp
    try:
        out = xp.where(cond, x, y)
    except ValueError:
        raise TensorError(f"where: shapes {cond.shape}, {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") \
            from None
    zero = xp.zeros((), dtype=out.dtype)
    return Tensor._make(out, (a, b), lambda g: (xp.where(cond, g, zero), xp.where(cond, zero, g)), "where")


def _unwrap_index(index):
    """An index as NumPy takes it: tensors as their arrays (a 0-d integer tensor as an int), lists (alone or inside a
    tuple) as arrays."""
    if isinstance(index, tuple):
        return tuple(_unwrap_index_item(i) for i in index)
    return _unwrap_index_item(index)


def _unwrap_index_item(item):
    if isinstance(item, Tensor):
        if item.ndim == 0 and item.dtype.kind in "iu":
            return int(item.data)
        return item.data
    if isinstance(item, list):
        arr = np.asarray(_plain(item))
        return arr.astype(np.int64) if arr.size == 0 else arr  # [] selects nothing (NumPy would make it a float array)
    if isinstance(item, slice) and any(isinstance(v, Tensor) for v in (item.start, item.stop, item.step)):
        return slice(*(operator.index(v) if v is not None else None for v in (item.start, item.stop, item.step)))
    return item


def _has_array(index):
    """True when the index uses integer or boolean arrays (advanced indexing), which may repeat positions."""
    items = index if isinstance(index, tuple) else (index,)
    return any(hasattr(i, "ndim") for i in items)


# ---- dtypes --------------------------------------------------------------------------------------------------------
_TYPE_NAMES = {"f4": "torch.FloatTensor", "f8": "torch.DoubleTensor", "f2": "torch.HalfTensor",
               "i8": "torch.LongTensor", "i4": "torch.IntTensor", "i2": "torch.ShortTensor", "i1": "torch.CharTensor",
               "u1": "torch.ByteTensor", "b1": "torch.BoolTensor"}


def _is_dtype(x):
    """A dtype given as a NumPy dtype or scalar type (torch.float32 here is np.dtype('float32'))."""
    return isinstance(x, np.dtype) or (isinstance(x, type) and issubclass(x, np.generic))


def dtype_name(dtype):
    return f"torch.{np.dtype(dtype).name}".replace("torch.bool_", "torch.bool")


def tensor(data, dtype=None, device=None, requires_grad=False):
    """torch.tensor: a new tensor holding a copy of `data`. Python ints give int64, floats float32 (torch's default
    dtype), bools bool, an empty list float32; a NumPy array, NumPy scalar or tensor keeps its dtype."""
    if isinstance(data, Tensor):
        dev = data.device if device is None else get_device(device)
        arr = to_device(data.data, dev).copy()
    elif isinstance(data, (list, tuple, bool, int, float)) and not isinstance(data, np.generic):
        arr = np.array(_plain(data))
        kind = arr.dtype.kind
        if kind == "f" or (arr.size == 0 and kind != "b"):
            arr = arr.astype(np.float32 if dtype is None else dtype)    # (Python floats: no float32 detour)
        elif kind in "iu":
            arr = arr.astype(np.int64)
        elif kind != "b":
            raise TypeError(f"tensor: cannot make a tensor of {type(data).__name__} holding {arr.dtype} values")
        dev = get_device(device)
        arr = to_device(arr, dev)
    else:
        data = np.asarray(data) if isinstance(data, np.generic) else data
        dev = get_device(device) if device is not None else device_of(data)
        arr = dev.xp.array(to_device(data, dev))
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return Tensor(arr, requires_grad=requires_grad, device=dev)

