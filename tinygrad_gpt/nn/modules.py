"""Modules as torch has them: `Module` (parameters, buffers and submodules registered on assignment, in order),
the containers (Sequential, ModuleList, ModuleDict), and the layers (Linear, Embedding, LayerNorm, Dropout, the
activations, CrossEntropyLoss). One Module class serves a learner's own modules and the fused GPT (model.py).

The layers run this engine's fused nodes (fused.py: linear, layer_norm, dropout, cross_entropy) and initialise as
torch's do, from the default generator (rng.py) unless given an `init` (Init: the fused GPT's N(0, 0.02) from its
own seed; ShapeOnly: the layout alone, no storage).

State dicts have torch's keys: a module's own parameters, then its persistent buffers, then each submodule's under
`name.` in the order they were assigned. Values are tensors sharing memory with the module's (torch's); load_state_dict
copies into them in place, so an optimizer's flat buffers stay attached.
"""
import collections
import contextlib
import math

import numpy as np

from .. import fused, patterns
from .. import rng as _rng
from ..backend import get_device, to_device
from ..errors import ModuleError
from ..tensor import Tensor, _is_dtype, no_grad, zero_grads
from . import functional as F


class Parameter(Tensor):
    """A tensor that a Module registers as a parameter when assigned to it (torch.nn.Parameter). It shares the
    data of the tensor it is made from."""

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty(0, np.float32)
        device = data.device if isinstance(data, Tensor) else None
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad, device=device)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = collections.namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model (torch.nn.Module): subclasses call super().__init__() and define
    forward(); calling the module calls forward."""
    training = True

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function')

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- registration on assignment ----------------------------------------------------------------------------
    def _registry(self, name):
        registry = self.__dict__.get(name)
        if registry is None:
            raise AttributeError(f"cannot assign to a {type(self).__name__} before Module.__init__() is called "
                                 "(call super().__init__() first in __init__)")
        return registry

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._forget(name)
            self._registry("_parameters")[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            self._registry("_modules")[name] = value
        elif name in self.__dict__.get("_parameters", ()):
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(an nn.Parameter or None is expected)")
            self._parameters[name] = None
        elif name in self.__dict__.get("_modules", ()):
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module '{name}' "
                                "(an nn.Module or None is expected)")
            self._modules[name] = None
        elif name in self.__dict__.get("_buffers", ()):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' (a Tensor or None is "
                                "expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        """Remove `name` from every registry and the instance dict (before it is registered anew)."""
        for registry in ("_parameters", "_buffers", "_modules"):
            self.__dict__.get(registry, {}).pop(name, None)
        self.__dict__.get("_non_persistent", set()).discard(name)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            r = d.get(registry)
            if r is not None and name in r:
                return r[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for registry in ("_parameters", "_buffers", "_modules"):
            r = self.__dict__.get(registry)
            if r is not None and name in r:
                del r[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor the module owns that is not a parameter (e.g. the causal `tril` mask); in state_dict unless
        persistent=False."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: '{name}' must be a Tensor or None, got {type(tensor).__name__}")
        if "." in name or not name:
            raise KeyError(f"register_buffer: invalid buffer name {name!r}")
        self._forget(name)
        self._registry("_buffers")[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: '{name}' must be an nn.Parameter or None")
        self._forget(name)
        self._registry("_parameters")[name] = param

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a Module")
        self._forget(name)
        self._registry("_modules")[name] = module

    register_module = add_module

    # ---- traversal ---------------------------------------------------------------------------------------------
    def named_children(self):
        seen = set()
        for name, m in self.__dict__.get("_modules", {}).items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo=None, prefix=""):
        """(name, module) for this module and every module below it, each once, parents before children."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(memo, prefix + ("." if prefix else "") + name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named_members(self, registry, prefix, recurse):
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, value in module.__dict__.get(registry, {}).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (mod_prefix + "." if mod_prefix else "") + name, value

    def named_parameters(self, prefix="", recurse=True):
        """(name, parameter) pairs, each parameter once (a shared one under its first name), torch's order."""
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def apply(self, fn):
        """fn(module) for every submodule (children first), then for this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---- modes -------------------------------------------------------------------------------------------------
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("train(mode): mode must be True or False")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode (no dropout) with no graph built, for the duration; the previous mode is restored after."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                yield self
        finally:
            self.train(was_training)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        zero_grads(self.parameters(), set_to_none)

    # ---- state -------------------------------------------------------------------------------------------------
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        """{name: tensor}: parameters and persistent buffers under torch's keys, in torch's order; the tensors share
        memory with the module's (copy them to keep a snapshot)."""
        out = collections.OrderedDict() if destination is None else destination
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                out[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():              # every name of a shared submodule (torch's)
            if m is not None:
                m.state_dict(out, prefix + name + ".", keep_vars)
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy `state_dict`'s values (tensors, NumPy arrays, anything np.asarray reads) into this module's
        parameters and persistent buffers, in place. strict: every key present and none unknown. A shape that
        does not fit is an error either way (torch's). Returns (missing_keys, unexpected_keys)."""
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(np.shape(state_dict[k]))}"
                 for k in own if k in state_dict and tuple(np.shape(state_dict[k])) != tuple(own[k].shape)]
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if wrong:
            problems.append("wrong shapes: " + "; ".join(wrong))
        if problems:
            raise ModuleError(f"load_state_dict for {type(self).__name__}: " + " | ".join(problems))
        for k, t in own.items():
            if k in state_dict:
                v = state_dict[k]
                arr = v.data if isinstance(v, Tensor) else np.asarray(v)
                t.data[...] = to_device(arr, t.device).astype(t.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    # ---- devices and dtypes ------------------------------------------------------------------------------------
    def to(self, *args, **kwargs):
        """Move every parameter and buffer to a device and/or cast the floating ones to a dtype, in place (build the
        optimizer after this)."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        for a in args:
            if _is_dtype(a):
                dtype = a
            elif isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            else:
                device = a
        device = None if device is None else get_device(device)
        for module in self.modules():
            for registry in (module._parameters, module._buffers):
                for t in registry.values():
                    if t is None:
                        continue
                    if device is not None and t.device != device:
                        t.data, t.device, t.grad = to_device(t.data, device), device, None
                    if dtype is not None and t.dtype.kind == "f" and t.dtype != np.dtype(dtype):
                        t.data, t.grad = t.data.astype(dtype), None
        return self

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None):
        return self.to("cuda")

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    # ---- printing ----------------------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules))


# ---- containers -----------------------------------------------------------------------------------------------------

class _Ordered(Module):
    """What Sequential and ModuleList share: their modules in order, numbered "0", "1", ... as they are appended."""

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class Sequential(_Ordered):
    """Modules called one after the other: Sequential(a, b, c) or Sequential(OrderedDict(name=module))."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for m in modules:
                self.append(m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        items = list(self._modules.items())
        if isinstance(i, slice):
            return Sequential(collections.OrderedDict(items[i]))
        return items[i][1]


class ModuleList(_Ordered):
    """A list of modules, registered under "0", "1", ... (torch.nn.ModuleList)."""

    def __init__(self, modules=None):
        super().__init__()
        self.extend(modules or ())

    def __getitem__(self, i):
        values = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(values[i])
        return values[i]

    def __setitem__(self, i, module):
        i = range(len(self))[i]
        self.add_module(str(i), module)

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def forward(self, *args, **kwargs):
        raise NotImplementedError("a ModuleList is not callable: iterate over it in your forward()")


class ModuleDict(Module):
    """A dict of modules, registered under their keys (torch.nn.ModuleDict)."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            self.add_module(name, m)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


# ---- where parameters come from -------------------------------------------------------------------------------------

def parameter(array, device):
    return Parameter(Tensor(array, device=device))


class Init:
    """Where the fused GPT's parameters come from: weights drawn from N(0, std) by `rng` (None: a fresh
    default_rng(0)), constants filled, as `dtype` arrays on `device`. The GPT hands one Init to all its layers, so its
    weights are drawn in definition order from one generator (its seed)."""

    def __init__(self, rng=None, dtype=np.float32, device="cpu"):
        self.rng = np.random.default_rng(0) if rng is None else rng
        self.dtype, self.device = dtype, device

    def normal(self, shape, std=0.02):
        return parameter(self.rng.normal(0.0, std, shape).astype(self.dtype), self.device)

    def constant(self, shape, value):
        return parameter(np.full(shape, value, self.dtype), self.device)


class ShapeOnly(Init):
    """Placeholders that have a parameter's shape and dtype but no storage and no random draws: each is a read-only
    broadcast of one zero (np.broadcast_to, all strides 0). A model built with it names every parameter with its
    shape, so its layout can be read (model.parameter_shapes, count_parameters) without allocating the model."""

    def __init__(self, dtype=np.float32):
        self.rng, self.dtype, self.device = None, dtype, "cpu"

    def normal(self, shape, std=0.02):
        return self.constant(shape, 0.0)

    def constant(self, shape, value):
        return parameter(np.broadcast_to(np.zeros((), self.dtype), shape), self.device)


class TorchInit(Init):
    """torch's default initialisations, drawn from the default generator (torch.manual_seed): what a layer built
    without an `init` gets."""

    def __init__(self, dtype=None, device=None):
        self.dtype = np.float32 if dtype is None else np.dtype(dtype)
        self.device = get_device(device)

    def uniform(self, shape, bound):
        return parameter(_rng.numpy_generator().uniform(-bound, bound, shape).astype(self.dtype), self.device)

    def normal(self, shape, std=1.0):
        return parameter(_rng.numpy_generator().normal(0.0, std, shape).astype(self.dtype), self.device)


# ---- layers ---------------------------------------------------------------------------------------------------------

class Linear(Module):
    """y = x W^T + b, W (out_features, in_features). Default init (torch's): W and b ~ U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *, init=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if init is None:
            init = TorchInit(dtype, device)
            bound = 1 / math.sqrt(in_features) if in_features else 0.0
            self.weight = init.uniform((out_features, in_features), bound)            # (out, in)
            self.bias = init.uniform(out_features, bound) if bias else None
        else:
            self.weight = init.normal((out_features, in_features))                     # (out, in)
            self.bias = init.constant(out_features, 0.0) if bias else None

    def forward(self, x):
        return fused.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Rows of a (num_embeddings, embedding_dim) table for integer indices. Default init (torch's): N(0, 1), the
    padding_idx row zero."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None, dtype=None, *, init=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        init = init or TorchInit(dtype, device)
        self.weight = init.normal((num_embeddings, embedding_dim))   # (n, dim): N(0, 1) torch's, N(0, 0.02) the GPT's
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0

    def forward(self, idx):
        return F.embedding(idx, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise over the last len(normalized_shape) axes (biased variance), then scale and shift."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None, *,
                 init=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        init = init or TorchInit(dtype, device)
        self.weight = init.constant(shape, 1.0) if elementwise_affine else None
        self.bias = init.constant(shape, 0.0) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class Dropout(Module):
    """Inverted dropout: in training mode each element is zeroed with probability p and the rest scaled by
    1 / (1 - p); identity in eval mode or when p == 0. Masks come from `self.source(shape) -> bool keep-mask` when it
    is set (the fused GPT draws them from its own seeded generator; tests replay given masks), else from the
    default generator."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.source = None

    def active(self):
        return self.training and self.p > 0.0

    def mask(self, shape, xp=np):
        if self.source is None:
            return F.keep_mask(shape, self.p, xp)
        return xp.asarray(self.source(shape))

    def forward(self, x):
        if not self.active():
            return x
        if self.p == 1.0:
            return x * 0
        keep = self.mask(x.shape, x.xp)
        if x._pattern is not None:                       # attention weights of a recognised chain (patterns.py)
            pending = patterns.dropout(x, keep, self.p)
            if pending is not None:
                return pending
        return fused.dropout(x, keep, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return x.relu()


class GELU(Module):
    """GELU; approximate='none' (torch's default): x Phi(x); 'tanh': GPT-2's tanh approximation."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return x.gelu(approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Tanh(Module):
    def forward(self, x):
        return x.tanh()


class Sigmoid(Module):
    def forward(self, x):
        return x.sigmoid()


class Identity(Module):
    def forward(self, x):
        return x


class Softmax(Module):
    def __init__(self, dim=None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return x.softmax(self.dim)


class LogSoftmax(Softmax):
    def forward(self, x):
        return x.log_softmax(self.dim)


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)


class CrossEntropyLoss(Module):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.weight, self.ignore_index, self.reduction, self.label_smoothing = \
            weight, ignore_index, reduction, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)
