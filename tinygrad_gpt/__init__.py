"""tinygrad_gpt: a small reverse-mode autograd engine on NumPy (and CuPy) that trains a char-level GPT, with a
torch-shaped front end: a lecture-style torch script runs here when its imports become

    import tinygrad_gpt as torch
    import tinygrad_gpt.nn as nn
    from tinygrad_gpt.nn import functional as F

(SPEC section 8; the README lists the supported names). A torch name outside that set raises UnsupportedError
naming it. The engine's own API (SPEC section 4: GPT, GPTConfig, AdamW, CharTokenizer, Tensor) is here too.
"""
# ruff: noqa: F401 - the names imported here are this namespace's (torch's and the engine's): re-exports, not unused
__version__ = "0.1.0"  # first: checkpoint.py imports it, whatever the imports below come to load

import numpy as np

from . import backends, cuda, nn, optim, patterns  # patterns: Tensor's matmul recognises attention from then on
from .backend import cuda_available, device
from .creation import (
    arange,
    as_tensor,
    bernoulli,
    empty,
    empty_like,
    eye,
    from_numpy,
    full,
    full_like,
    linspace,
    multinomial,
    normal,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    randperm,
    tril,
    triu,
    zeros,
    zeros_like,
)
from .data import CharTokenizer
from .dtypes import (  # noqa: A004 - torch's names (bool, ...) shadow builtins here, as in torch
    bool,
    double,
    float,
    float16,
    float32,
    float64,
    half,
    int,
    int8,
    int16,
    int32,
    int64,
    long,
    short,
    uint8,
)
from .errors import DeviceError, TensorError, UnsupportedError, unsupported_getattr
from .gradcheck import gradcheck
from .model import GPT, GPTConfig
from .ops import (  # noqa: A004 - torch's names (abs, all, ...) shadow builtins here, as in torch
    abs,
    all,
    allclose,
    amax,
    amin,
    any,
    argmax,
    argmin,
    bmm,
    cat,
    chunk,
    clamp,
    clip,
    clone,
    concat,
    concatenate,
    cumsum,
    detach,
    einsum,
    equal,
    exp,
    flatten,
    hstack,
    is_floating_point,
    is_tensor,
    isclose,
    log,
    log_softmax,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mm,
    numel,
    outer,
    permute,
    pow,
    relu,
    reshape,
    sigmoid,
    softmax,
    sort,
    split,
    sqrt,
    squeeze,
    stack,
    std,
    sum,
    tanh,
    topk,
    transpose,
    unsqueeze,
    var,
    vstack,
    where,
)
from .optim import AdamW
from .rng import Generator, get_rng_state, initial_seed, manual_seed, seed, set_rng_state
from .serialization import load, save
from .tensor import Size, Tensor, enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled, tensor

dtype = np.dtype                # isinstance(torch.long, torch.dtype)


def compile(model=None, **kwargs):  # noqa: A001  (torch.compile)
    """torch.compile: returns the model (or function) unchanged; this engine runs eagerly, its hot layers already
    compiled with numba. As a decorator too."""
    if model is None:
        return lambda fn: fn
    return model


def set_num_threads(n):
    """The threads of this process's CPU kernels (numba's pool; the BLAS runs single-threaded inside them)."""
    import numba  # when asked: `import tinygrad_gpt` loads no numba
    numba.set_num_threads(n)


def get_num_threads():
    import numba  # (as above)
    return numba.get_num_threads()


__getattr__ = unsupported_getattr("torch")
