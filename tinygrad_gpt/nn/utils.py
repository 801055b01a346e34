"""torch.nn.utils: gradient clipping."""
import numpy as np

from ..errors import unsupported_getattr
from ..optim import grad_norm
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
    norm = grad_norm(grads)                                    # float64 sum of squares, then the root
    if error_if_nonfinite and not np.isfinite(float(norm)):
        raise RuntimeError(f"clip_grad_norm_: the total norm of the gradients is {float(norm)}")
    coef = min(1.0, max_norm / (float(norm) + 1e-6))
    if coef < 1.0:
        for g in grads:
            g *= g.dtype.type(coef)
    return Tensor(np.asarray(norm, dtype=grads[0].dtype))


def clip_grad_value_(parameters, clip_value, foreach=None):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    for p in parameters:
        if p._grad is not None:
            np.clip(p._grad, -clip_value, clip_value, out=p._grad)


def parameters_to_vector(parameters):
    from ..ops import cat
    return cat([p.reshape(-1) for p in parameters])
