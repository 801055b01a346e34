"""AdamW with torch.optim.AdamW's exact semantics (SPEC section 3), on one flat buffer per parameter group.

At construction each group's parameters are copied into one contiguous array and every parameter's `.data`
becomes a view into it, so a step is one pass over each buffer (the update's kernel) instead of a loop of small ones.
(Build the optimizer after `model.to(device)`; `load_state_dict` copies in place and keeps the views.)
`adamw_update` and `grad_norm` are twins of compiled kernels (kernels/__init__.py).
"""
import math

import numpy as np

from .backend import array_module, to_device, to_host
from .kernels import twin


class _Group:
    def __init__(self, params, lr, weight_decay):
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        xp, dtype = params[0].xp, params[0].dtype
        for p in params:
            if p.device != params[0].device or p.dtype != dtype:
                raise ValueError("AdamW: all parameters of a group must share one device and dtype")
        sizes = [p.size for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.flat = xp.empty(self.offsets[-1], dtype=dtype)           # all parameters of the group, end to end
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            self.flat[a:b] = p.data.reshape(-1)
            p.data = self.flat[a:b].reshape(p.shape)                  # the parameter now lives in the buffer
        self.grad = xp.zeros_like(self.flat)                          # gradients (see the grad property)
        self.whole = True                                             # every parameter had a gradient
        self.exp_avg = xp.zeros_like(self.flat)                       # m
        self.exp_avg_sq = xp.zeros_like(self.flat)                    # v
        self.steps = [0] * len(params)   # updates each parameter has had (torch counts per parameter: a parameter
        #                                  without a gradient in a step is skipped and its bias correction waits)

    def views(self, flat):
        return [flat[a:b].reshape(p.shape) for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]

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
        for p, view in zip(self.params, self.grad_views):
            p.grad_buffer = view


class AdamW:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, max_grad_norm=None):
        params = list(params)
        if not params:
            raise ValueError("AdamW: no parameters to optimize")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.groups = []
        for g in params:
            ps = list(g["params"])
            if ps:
                self.groups.append(_Group(ps, g.get("lr", lr), g.get("weight_decay", weight_decay)))
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.max_grad_norm = max_grad_norm
        self.t = 0
        self.last_grad_norm = None

    @property
    def lr(self):
        return self.groups[0].lr

    def set_lr(self, lr):
        for g in self.groups:
            g.lr = lr

    def parameters(self):
        return [p for g in self.groups for p in g.params]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def clip_grad_norm(self, max_norm):
        """Scale all gradients by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_; returns the
        total norm before clipping."""
        return _clip_arrays([p.grad for p in self.parameters() if p.grad is not None], max_norm)

    def gather_grads(self):
        """Bring every parameter's .grad into its group's flat gradient buffer `grp.grad` (backward() already wrote it
        there unless p.grad was replaced). A group where some parameter has no gradient is marked partial
        (`grp.whole = False`) and keeps its gradients in p.grad. Returns True when every group is whole."""
        for grp in self.groups:
            grp.whole = all(p.grad is not None for p in grp.params)
            if grp.whole:
                for p, g in zip(grp.params, grp.grad_views):
                    if p.grad is not g:
                        g[...] = p.grad
        return all(grp.whole for grp in self.groups)

    def _grad_arrays(self):
        """The gradients the update will use: flat-buffer views for whole groups, p.grad for partial ones."""
        for grp in self.groups:
            if grp.whole:
                yield from grp.grad_views
            else:
                yield from (p.grad for p in grp.params if p.grad is not None)

    def step(self, grad_hook=None):
        """One AdamW update from the parameters' .grad.

        Order: gradients are gathered into the flat buffers, then grad_hook(self) runs (if given), then the global
        norm is clipped (max_grad_norm), then the update. Data-parallel training passes a hook that averages the
        flat buffers `grp.grad` across processes in place, so clipping and the update see the averaged gradient;
        a hook that raises leaves the parameters and the optimizer state untouched. With a hook, every parameter
        needs a gradient. (p.grad is normally a view of the flat buffer, so it sees the hook's averaging and the
        clipping.)"""
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
                grads = grp.grad_views if grp.whole else [p.grad for p in grp.params]
                ms, vs = grp.views(grp.exp_avg), grp.views(grp.exp_avg_sq)
                for i, (p, g) in enumerate(zip(grp.params, grads)):
                    if g is not None:
                        grp.steps[i] += 1
                        self._update(p.data, g, ms[i], vs[i], grp, grp.steps[i], coef)

    def _update(self, p, g, m, v, grp, t, coef):
        """One AdamW update of p, m, v from g * coef at step t (bias corrections 1 - beta1^t, sqrt(1 - beta2^t))."""
        adamw_update(p, g, m, v, grp.lr, self.beta1, self.beta2, self.eps, grp.weight_decay,
                     1.0 - self.beta1 ** t, math.sqrt(1.0 - self.beta2 ** t), coef)

    def state_dict(self):
        """{"step": t, "steps": [per parameter], "exp_avg": [...], "exp_avg_sq": [...]}: host arrays in parameter
        order."""
        m = [to_host(a).copy() for g in self.groups for a in g.views(g.exp_avg)]
        v = [to_host(a).copy() for g in self.groups for a in g.views(g.exp_avg_sq)]
        return {"step": self.t, "steps": [n for g in self.groups for n in g.steps], "exp_avg": m, "exp_avg_sq": v}

    def load_state_dict(self, state):
        params = self.parameters()
        for key in ("exp_avg", "exp_avg_sq"):
            if len(state[key]) != len(params):
                raise ValueError(f"AdamW.load_state_dict: {len(state[key])} {key} arrays for {len(params)} parameters")
        views = [(a, b) for g in self.groups for a, b in zip(g.views(g.exp_avg), g.views(g.exp_avg_sq))]
        for p, (m, v), sm, sv in zip(params, views, state["exp_avg"], state["exp_avg_sq"]):
            if tuple(sm.shape) != p.shape or tuple(sv.shape) != p.shape:
                raise ValueError(f"AdamW.load_state_dict: moment shape {tuple(sm.shape)} for a parameter of {p.shape}")
            m[...] = to_device(np.asarray(sm), p.device)
            v[...] = to_device(np.asarray(sv), p.device)
        self.t = int(state["step"])
        steps = [int(n) for n in state.get("steps") or [self.t] * len(params)]   # older states: one shared count
        if len(steps) != len(params):
            raise ValueError(f"AdamW.load_state_dict: {len(steps)} step counts for {len(params)} parameters")
        for g in self.groups:
            g.steps, steps = steps[:len(g.params)], steps[len(g.params):]


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
