"""Modules: parameters found by walking attributes, train/eval, strict state dicts; the basic layers."""
import contextlib

import numpy as np

from . import functional as F
from .backend import get_device, to_device, to_host
from .tensor import Tensor, no_grad


class Module:
    training = True

    def children(self):
        """(name, module) for every Module attribute, lists of Modules numbered, in definition order."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix=""):
        out = []
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                out.append((prefix + name, value))
        for name, child in self.children():
            out.extend(child.named_parameters(prefix + name + "."))
        return out

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def modules(self):
        yield self
        for _, child in self.children():
            yield from child.modules()

    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
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

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def state_dict(self):
        """{name: float32 NumPy array} on the host (copies)."""
        return {name: np.array(to_host(p.data), dtype=np.float32) for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Strict: every parameter present with its shape, nothing extra. Copies in place (keeps array identity,
        so an optimizer's flat buffers stay attached)."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        wrong = [f"{k}: expected {params[k].shape}, got {tuple(state[k].shape)}"
                 for k in params if k in state and tuple(state[k].shape) != params[k].shape]
        problems = []
        if missing:
            problems.append("missing keys: " + ", ".join(missing))
        if unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if wrong:
            problems.append("wrong shapes: " + "; ".join(wrong))
        if problems:
            raise ValueError("load_state_dict: " + " | ".join(problems))
        for name, p in params.items():
            p.data[...] = to_device(np.asarray(state[name]), p.device).astype(p.dtype, copy=False)
        return self

    def to(self, device):
        """Move every parameter to `device` (build the optimizer after this)."""
        device = get_device(device)
        for _, p in self.named_parameters():
            if p.device != device:
                p.data, p.device, p.grad = to_device(p.data, device), device, None
        return self


def parameter(array, device):
    return Tensor(array, requires_grad=True, device=device)


class Init:
    """Where a layer's parameters come from: weights drawn from N(0, std) by `rng` (None: a fresh default_rng(0)),
    constants filled, as `dtype` arrays on `device`. A model hands one Init to all its layers, so its weights are
    drawn in definition order from one generator (its seed)."""

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


class Linear(Module):
    def __init__(self, n_in, n_out, bias=True, rng=None, dtype=np.float32, device="cpu", init=None):
        init = init or Init(rng, dtype, device)
        self.weight = init.normal((n_out, n_in))                                  # (out, in)
        self.bias = init.constant(n_out, 0.0) if bias else None

    def __call__(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    def __init__(self, n, dim, rng=None, dtype=np.float32, device="cpu", init=None):
        init = init or Init(rng, dtype, device)
        self.weight = init.normal((n, dim))                                       # (n, dim)

    def __call__(self, idx):
        """Rows of the table for integer indices (any shape); for the GPT's token + position sum see
        functional.embedding, which fuses both into one node."""
        return self.weight[idx.data if isinstance(idx, Tensor) else idx]


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5, dtype=np.float32, device="cpu", init=None):
        init = init or Init(None, dtype, device)
        self.weight = init.constant(dim, 1.0)
        self.bias = init.constant(dim, 0.0) if bias else None
        self.eps = eps

    def __call__(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Inverted dropout. Masks come from `self.source(shape) -> bool keep-mask`, set by the owning model to draw
    from its seeded generator (or to replay given masks in tests). Identity in eval mode or when p == 0."""

    def __init__(self, p):
        self.p = float(p)
        self.source = None

    def active(self):
        return self.training and self.p > 0.0

    def mask(self, shape, xp=np):
        keep = self.source(shape)
        return xp.asarray(keep)

    def __call__(self, x):
        if not self.active():
            return x
        return F.dropout(x, self.mask(x.shape, x.xp), self.p)
