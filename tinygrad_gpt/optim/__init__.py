"""AdamW with torch.optim.AdamW's exact semantics (SPEC section 3), on one flat buffer per parameter group; Adam
and SGD beside it; `lr_scheduler` (torch.optim.lr_scheduler's CosineAnnealingLR, LambdaLR, StepLR).

At construction each group's parameters are copied into one contiguous array and every parameter's `.data`
becomes a view into it, so a step is one pass over each buffer (the update's kernel) instead of a loop of small ones.
(Build the optimizer after `model.to(device)`; `load_state_dict` copies in place and keeps the views.)
`adamw_update` and `grad_norm` are twins of compiled kernels (kernels/__init__.py).
"""
import math

import numpy as np

from ..backend import array_module, to_device, to_host
from ..errors import UnsupportedError, unsupported_getattr
from ..kernels import twin
from ..tensor import enable_grad, zero_grads
from . import lr_scheduler  # noqa: F401  (torch.optim.lr_scheduler)

__getattr__ = unsupported_getattr("torch.optim")


class _Group:
    """One parameter group: its parameters, lr and weight_decay, and its flat buffers. It reads and writes like
    torch's param_groups dicts (`group["lr"] = 1e-4`, what schedulers and nanoGPT-style loops do)."""

    def __init__(self, params, lr, weight_decay, owner=None, extra=None):
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self.owner, self.extra = owner, dict(extra or {})
        xp, dtype = params[0].xp, params[0].dtype
        for p in params:
            if p.device != params[0].device or p.dtype != dtype:
                raise ValueError("AdamW: all parameters of a group must share one device and dtype")
        sizes = [p.numel() for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.flat = xp.empty(self.offsets[-1], dtype=dtype)           # all parameters of the group, end to end
        for p, a, b in zip(params, self.offsets[:-1], self.offsets[1:], strict=True):
            self.flat[a:b] = p.data.reshape(-1)
            p.data = self.flat[a:b].reshape(p.shape)                  # the parameter now lives in the buffer
        self.grad = xp.zeros_like(self.flat)                          # gradients (see the grad property)
        self.whole = True                                             # every parameter had a gradient
        self.exp_avg = xp.zeros_like(self.flat)                       # m
        self.exp_avg_sq = xp.zeros_like(self.flat)                    # v
        self.steps = [0] * len(params)   # updates each parameter has had (torch counts per parameter: a parameter
        #                                  without a gradient in a step is skipped and its bias correction waits)

    def views(self, flat):
        spans = zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True)
        return [flat[a:b].reshape(p.shape) for p, a, b in spans]

    # ---- torch's param_groups dict surface ---------------------------------------------------------------------
    _ATTRS = ("params", "lr", "weight_decay")

    def __getitem__(self, key):
        if key in self._ATTRS:
            return getattr(self, key)
        if key in self.owner.hyper:
            return self.owner.hyper[key]
        return self.extra[key]

    def __setitem__(self, key, value):
        if key in ("lr", "weight_decay"):
            setattr(self, key, float(value))
        elif key in self.owner.hyper:
            if value != self.owner.hyper[key]:
                raise UnsupportedError(f"per-group {key!r} in {type(self.owner).__name__}",
                                       "it is one setting for the whole optimizer")
        elif key == "params":
            raise UnsupportedError("assigning a group's 'params'", "build a new optimizer")
        else:
            self.extra[key] = value

    def __contains__(self, key):
        return key in self._ATTRS or key in self.owner.hyper or key in self.extra

    def get(self, key, default=None):
        return self[key] if key in self else default

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def keys(self):
        return list(self._ATTRS) + list(self.owner.hyper) + list(self.extra)

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    @property
    def grad(self):
        """The group's flat gradient buffer. Each parameter's grad_buffer is its view in it, so backward() writes the
        gradients there directly; setting a new buffer (data-parallel training shares one across groups) moves the
        views with it."""
        return self._grad

    @grad.setter
    def grad(self, buf):
        self._grad = buf
        self.grad_views = self.views(buf)
        for p, view in zip(self.params, self.grad_views, strict=True):
            p.grad_buffer = view


class AdamW:
    """torch.optim.AdamW (SPEC section 3): decoupled weight decay, bias-corrected moments, one flat buffer per group.
    params: parameters, or dicts {"params": [...], "lr": ..., "weight_decay": ...} (groups). max_grad_norm: clip the
    global gradient norm inside step() (this engine's; torch users call nn.utils.clip_grad_norm_ before step).
    torch's speed switches (foreach, fused, capturable) are accepted and change nothing here."""
    decoupled = True                                             # weight decay on the weights (AdamW), not the grads

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 max_grad_norm=None):
        if amsgrad or maximize or differentiable:
            raise UnsupportedError(f"{type(self).__name__}(amsgrad/maximize/differentiable=True)")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid betas: {betas}")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: no parameters to optimize (an empty parameter list)")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.hyper = {"betas": tuple(betas), "eps": eps}
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.groups = []
        for g in params:
            ps = list(g["params"])
            extra = {k: v for k, v in g.items() if k not in ("params", "lr", "weight_decay")}
            if ps:
                self.groups.append(_Group(ps, g.get("lr", lr), g.get("weight_decay", weight_decay), self, extra))
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.max_grad_norm = max_grad_norm
        self.t = 0
        self.last_grad_norm = None

    @property
    def param_groups(self):
        """torch's name for the groups (each reads and writes like a dict: group["lr"])."""
        return self.groups

    @property
    def lr(self):
        return self.groups[0].lr

    def set_lr(self, lr):
        for g in self.groups:
            g.lr = lr

    def parameters(self):
        return [p for g in self.groups for p in g.params]

    def zero_grad(self, set_to_none=True):
        """Drop the gradients (set_to_none=True, torch's default) or set them to zero in place."""
        zero_grads(self.parameters(), set_to_none)

    def clip_grad_norm(self, max_norm):
        """Scale all gradients by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_; returns the
        total norm before clipping."""
        return _clip_arrays([p._grad for p in self.parameters() if p._grad is not None], max_norm)

    def gather_grads(self):
        """Bring every parameter's gradient into its group's flat gradient buffer `grp.grad` (backward() already wrote
        it there unless p.grad was replaced). A group where some parameter has no gradient is marked partial
        (`grp.whole = False`) and keeps its gradients in p.grad. Returns True when every group is whole."""
        for grp in self.groups:
            grp.whole = all(p._grad is not None for p in grp.params)
            if grp.whole:
                for p, g in zip(grp.params, grp.grad_views, strict=True):
                    if p._grad is not g:
                        g[...] = p._grad
        return all(grp.whole for grp in self.groups)

    def _grad_arrays(self):
        """The gradients the update will use: flat-buffer views for whole groups, p.grad for partial ones."""
        for grp in self.groups:
            if grp.whole:
                yield from grp.grad_views
            else:
                yield from (p._grad for p in grp.params if p._grad is not None)

    def step(self, closure=None, grad_hook=None):
        """One update from the parameters' gradients; closure (torch's): a function that recomputes the loss, called
        first (with gradients on), whose result step() returns.

        Order: gradients are gathered into the flat buffers, then grad_hook(self) runs (if given), then the global
        norm is clipped (max_grad_norm), then the update. Data-parallel training passes a hook that averages the
        flat buffers `grp.grad` across processes in place, so clipping and the update see the averaged gradient;
        a hook that raises leaves the parameters and the optimizer state untouched. With a hook, every parameter
        needs a gradient. (p.grad is normally a view of the flat buffer, so it sees the hook's averaging and the
        clipping.)"""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        whole = self.gather_grads()
        if grad_hook is not None:
            if not whole:
                raise ValueError("AdamW.step(grad_hook=...): every parameter needs a gradient")
            grad_hook(self)
        coef = 1.0
        if self.max_grad_norm is not None:
            self.last_grad_norm, coef = _clip_coefficient(list(self._grad_arrays()), self.max_grad_norm)
        self.t += 1
        for grp in self.groups:
            if grp.whole and len(set(grp.steps)) == 1:   # the usual case: one update of the whole flat buffer
                grp.steps = [grp.steps[0] + 1] * len(grp.params)
                self._update(grp.flat, grp.grad, grp.exp_avg, grp.exp_avg_sq, grp, grp.steps[0], coef)
            else:  # torch skips parameters without a gradient: update the others one by one, each at its own step
                grads = grp.grad_views if grp.whole else [p._grad for p in grp.params]
                ms, vs = grp.views(grp.exp_avg), grp.views(grp.exp_avg_sq)
                for i, (p, g) in enumerate(zip(grp.params, grads, strict=True)):
                    if g is not None:
                        grp.steps[i] += 1
                        self._update(p.data, g, ms[i], vs[i], grp, grp.steps[i], coef)
        return loss

    def _update(self, p, g, m, v, grp, t, coef):
        """One AdamW update of p, m, v from g * coef at step t (bias corrections 1 - beta1^t, sqrt(1 - beta2^t))."""
        adamw_update(p, g, m, v, grp.lr, self.beta1, self.beta2, self.eps, grp.weight_decay,
                     1.0 - self.beta1 ** t, math.sqrt(1.0 - self.beta2 ** t), coef)

    def state_dict(self):
        """{"step": t, "steps": [per parameter], "exp_avg": [...], "exp_avg_sq": [...], "lr": [per group]}: host
        arrays in parameter order."""
        m = [to_host(a).copy() for g in self.groups for a in g.views(g.exp_avg)]
        v = [to_host(a).copy() for g in self.groups for a in g.views(g.exp_avg_sq)]
        return {"step": self.t, "steps": [n for g in self.groups for n in g.steps], "exp_avg": m, "exp_avg_sq": v,
                "lr": [g.lr for g in self.groups]}

    def load_state_dict(self, state):
        params = self.parameters()
        for key in ("exp_avg", "exp_avg_sq"):
            if len(state[key]) != len(params):
                raise ValueError(f"AdamW.load_state_dict: {len(state[key])} {key} arrays for {len(params)} parameters")
        views = [(a, b) for g in self.groups for a, b in zip(g.views(g.exp_avg), g.views(g.exp_avg_sq), strict=True)]
        for p, (m, v), sm, sv in zip(params, views, state["exp_avg"], state["exp_avg_sq"], strict=True):
            sm, sv = np.asarray(sm), np.asarray(sv)
            if tuple(sm.shape) != p.shape or tuple(sv.shape) != p.shape:
                raise ValueError(f"AdamW.load_state_dict: moment shape {tuple(sm.shape)} for a parameter of {p.shape}")
            m[...] = to_device(sm, p.device)
            v[...] = to_device(sv, p.device)
        self.t = int(state["step"])
        steps = [int(n) for n in state.get("steps") or [self.t] * len(params)]   # older states: one shared count
        if len(steps) != len(params):
            raise ValueError(f"AdamW.load_state_dict: {len(steps)} step counts for {len(params)} parameters")
        for g in self.groups:
            g.steps, steps = steps[:len(g.params)], steps[len(g.params):]
        for g, lr in zip(self.groups, state.get("lr") or (), strict=False):   # older states have no "lr"
            g.lr = float(lr)


class Adam(AdamW):
    """torch.optim.Adam: AdamW's update with weight decay added to the gradient (L2, coupled) instead of applied to
    the weights; weight_decay defaults to 0, where the two are the same."""
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, **kw):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kw)

    def _update(self, p, g, m, v, grp, t, coef):
        if grp.weight_decay:
            g = g * g.dtype.type(coef) + p * g.dtype.type(grp.weight_decay)   # g + wd * p (torch's order)
            coef = 1.0
        adamw_update(p, g, m, v, grp.lr, self.beta1, self.beta2, self.eps, 0.0,
                     1.0 - self.beta1 ** t, math.sqrt(1.0 - self.beta2 ** t), coef)


class SGD:
    """torch.optim.SGD: p -= lr * g, with weight_decay (g + wd p), momentum (buf = momentum buf + (1 - dampening) g,
    the first step buf = g) and nesterov (g + momentum buf)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        if maximize or differentiable:
            raise UnsupportedError("SGD(maximize/differentiable=True)")
        params = list(params)
        if not params:
            raise ValueError("SGD: no parameters to optimize (an empty parameter list)")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.param_groups = [{"params": list(g["params"]), "lr": g.get("lr", lr),
                              "weight_decay": g.get("weight_decay", weight_decay)} for g in params]
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.buffers = {}

    def zero_grad(self, set_to_none=True):
        zero_grads((p for g in self.param_groups for p in g["params"]), set_to_none)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for grp in self.param_groups:
            lr, wd = grp["lr"], grp["weight_decay"]
            for p in grp["params"]:
                if p._grad is None:
                    continue
                d = p._grad if not wd else p._grad + p.data * p.dtype.type(wd)
                if self.momentum:
                    buf = self.buffers.get(id(p))
                    if buf is None:
                        buf = self.buffers[id(p)] = d.copy()
                    else:
                        buf *= p.dtype.type(self.momentum)
                        buf += d * p.dtype.type(1 - self.dampening)
                    d = d + buf * p.dtype.type(self.momentum) if self.nesterov else buf
                p.data -= d * p.dtype.type(lr)
        return loss


@twin
def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, coef=1.0):
    """In place, in torch's order of operations: g *= coef (gradient clipping), then p, m, v from g;
    bc1 = 1 - beta1^t, bc2_sqrt = sqrt(1 - beta2^t). Python floats meet float32 arrays as float32 (NumPy's rule),
    which the kernels repeat."""
    xp = array_module(p)
    if not (isinstance(coef, float) and coef == 1.0):
        g *= xp.asarray(coef).astype(g.dtype)                      # clipped gradient
    if weight_decay:
        p *= 1.0 - lr * weight_decay                               # p -= lr * wd * p
    m += (g - m) * (1.0 - beta1)                                   # m = beta1 m + (1 - beta1) g   (torch's lerp)
    v *= beta2
    v += (g * g) * (1.0 - beta2)                                   # v = beta2 v + (1 - beta2) g^2
    denom = xp.sqrt(v) / bc2_sqrt + eps                            # sqrt(v / (1 - beta2^t)) + eps
    p -= (m / denom) * (lr / bc1)                                  # p -= lr * m_hat / (sqrt(v_hat) + eps)


@twin
def grad_norm(grads):
    """The global L2 norm of gradient arrays, summed in float64 (torch.nn.utils.clip_grad_norm_'s norm). On the GPU a
    0-d device array (no synchronisation), else a float."""
    xp = array_module(grads[0])
    total = xp.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))   # 0-d
    return float(total) if xp is np else total


def _clip_coefficient(grads, max_norm):
    """(norm, min(1, max_norm / (norm + 1e-6))) for `grads` (no gradients: norm 0, coefficient 1)."""
    if not grads:
        return 0.0, 1.0
    norm = grad_norm(grads)
    if isinstance(norm, float):
        return norm, min(1.0, max_norm / (norm + 1e-6))
    return norm, array_module(grads[0]).minimum(1.0, max_norm / (norm + 1e-6))


def _clip_arrays(grads, max_norm):
    """Scale `grads` in place by min(1, max_norm / (norm + 1e-6)); returns the norm."""
    norm, coef = _clip_coefficient(grads, max_norm)
    for g in grads:
        g *= array_module(g).asarray(coef).astype(g.dtype)
    return norm
