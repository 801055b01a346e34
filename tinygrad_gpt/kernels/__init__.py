"""numba.cuda kernels for the cuda device's hot spots. Each launcher has a NumPy twin of the same name that defines
what it computes, and returns what the twin returns (the same caches too, so either backward takes either forward's
cache):

| launcher                                       | kernels in        | NumPy twin                                   |
|------------------------------------------------|-------------------|----------------------------------------------|
| layer_norm_forward, layer_norm_backward        | layernorm.py      | functional.layer_norm_forward / _backward    |
| attention_forward, attention_backward          | attention.py      | functional.attention_forward / _backward     |
|   (causal masked scaled softmax, fwd and bwd)  |                   |                                              |
| cross_entropy_forward, cross_entropy_backward  | cross_entropy.py  | functional.cross_entropy_forward / _backward |
| adamw_update                                   | adamw.py          | optim.AdamW._update                          |
| dropout                                        | dropout_mask.py   | functional.dropout                           |

functional.py and optim.py call a launcher in place of their array code when the arrays are not NumPy arrays and
`enabled()`. Nothing here imports numba or CuPy until that first happens (`import tinygrad_gpt` never does).
TINYGRAD_GPT_KERNELS=0 turns the kernels off: the cuda device then runs the plain CuPy array code. So does a machine
where numba's CUDA target cannot be loaded or sees no GPU, with one warning saying why.
"""
import importlib
import os
import warnings

_enabled = None
_modules = {}


def enabled():
    """True when the cuda path should use these kernels (decided on the first call, from TINYGRAD_GPT_KERNELS and
    whether numba's CUDA target loads)."""
    global _enabled
    if _enabled is None:
        _enabled = _probe()
    return _enabled


def set_enabled(flag):
    """Turn the kernels on (True) or off (False) for this process, or back to the environment's choice (None)."""
    global _enabled
    _enabled = None if flag is None else bool(flag)


def _probe():
    if os.environ.get("TINYGRAD_GPT_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        common = _module("_common")
        if not common.SIM and not common.cuda.is_available():
            raise RuntimeError("numba.cuda.is_available() is False")
    except Exception as e:  # ImportError, or a CUDA driver/bindings mismatch seen by numba
        warnings.warn(f"tinygrad_gpt: custom CUDA kernels disabled, using CuPy array code instead "
                      f"({type(e).__name__}: {e}). `pip install .[gpu]` brings numba-cuda; "
                      "TINYGRAD_GPT_KERNELS=0 silences this.", RuntimeWarning, stacklevel=3)
        return False
    return True


def _module(name):
    mod = _modules.get(name)
    if mod is None:
        mod = _modules[name] = importlib.import_module(f"{__name__}.{name}")
    return mod


def warmup(dtype="float32"):
    """Compile every kernel for `dtype` now (a benchmark calls this so no timed step pays for compilation)."""
    for name in ("layernorm", "attention", "cross_entropy", "adamw", "dropout_mask"):
        _module(name)
    for kernel in _module("_common").REGISTRY:
        kernel(dtype)


# ---- launchers (signatures of their twins) -----------------------------------------------------------------------

def layer_norm_forward(x, w, b, eps=1e-5):
    return _module("layernorm").layer_norm_forward(x, w, b, eps)


def layer_norm_backward(g, cache):
    return _module("layernorm").layer_norm_backward(g, cache)


def attention_forward(q, k, v, keep=None, p=0.0):
    return _module("attention").attention_forward(q, k, v, keep, p)


def attention_backward(dy, cache):
    return _module("attention").attention_backward(dy, cache)


def cross_entropy_forward(logits, targets):
    return _module("cross_entropy").cross_entropy_forward(logits, targets)


def cross_entropy_backward(g, cache):
    return _module("cross_entropy").cross_entropy_backward(g, cache)


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt):
    return _module("adamw").adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt)


def dropout(x, keep, p):
    return _module("dropout_mask").dropout(x, keep, p)
