"""torch.nn.utils: gradient clipping."""
import numpy as np

from ..backend import array_module
from ..errors import unsupported_getattr
from ..ops import cat
from ..optim import _clip_coefficient
from ..tensor import Tensor

__getattr__ = unsupported_getattr("torch.nn.utils")


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale the gradients of `parameters` in place so that their global L2 norm is at most max_norm (by
    max_norm / (norm + 1e-6), torch's); returns the norm before clipping as a 0-d tensor."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p._grad for p in parameters if p._grad is not None]
    if float(norm_type) != 2.0:
        raise ValueError("clip_grad_norm_: only the L2 norm (norm_type=2) is supported")
    if not grads:
        return Tensor(np.zeros((), np.float32))
    norm, coef = _clip_coefficient(grads, max_norm)            # AdamW's clipping: one formula for both
    if error_if_nonfinite and not np.isfinite(float(norm)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of the gradients is {float(norm)}")
    for g in grads:
        g *= array_module(g).asarray(coef).astype(g.dtype)
    return Tensor(array_module(grads[0]).asarray(norm, dtype=grads[0].dtype))


def clip_grad_value_(parameters, clip_value, foreach=None):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    for p in parameters:
        if p._grad is not None:
            np.clip(p._grad, -clip_value, clip_value, out=p._grad)


def parameters_to_vector(parameters):
    return cat([p.reshape(-1) for p in parameters])
