"""Compiled kernels for the fused layers: numba `@njit` on the CPU (NumPy arrays), numba.cuda on the GPU (CuPy
arrays). Each kernel has a twin of the same name in fused.py, optim or tensor.py: plain array code that states the math
and is the oracle the kernels are tested against (as llm.c keeps its CPU reference beside its CUDA kernels). A twin
is decorated with `@twin`; calling it runs the kernel this table names for its arrays' device, or the twin itself
where there is none or kernels are off. Launchers take the twins' arguments and return what the twins return; inside
them each compiled kernel is called one way: `kernel.run(work, *args)` on the CPU (a CpuKernel, kernels/cpu/_jit.py:
serial or parallel by the size of the work), `launch(kernel, dtype, grid, block, *args)` on the GPU (a CudaKernel,
kernels/cuda/_common.py: compiled per dtype). This table is the one list of kernel modules (`modules`, `warmup`).

| twin (fused.py, optim.py, tensor.py)           | cpu: kernels/cpu/ | cuda: kernels/cuda/ |
|------------------------------------------------|-------------------|---------------------|
| embed_forward, embed_backward                  | embedding.py      | -                   |
| linear_forward, linear_backward                | linear.py         | -                   |
|   (x W^T, bias, ReLU/GELU, residual; backward) |                   |                     |
| layer_norm_forward, layer_norm_backward        | layernorm.py      | layernorm.py        |
| attention_forward, attention_backward          | attention.py      | attention.py        |
|   (causal masked scaled softmax, fwd and bwd)  |                   |                     |
| cross_entropy_forward, cross_entropy_backward  | cross_entropy.py  | cross_entropy.py    |
| dropout_apply                                  | dropout.py        | dropout_mask.py     |
| dropout_keep_mask (the front end's masks)      | dropout.py        | -                   |
| adamw_update, grad_norm                        | adamw.py          | adamw.py (update)   |
| batched_matmul (tensor.py: the Tensor's @)     | matmul.py         | -                   |
| grad_sum, grad_store (tensor.py: gradients)    | grads.py          | -                   |
| erf (tensor.py: the exact GELU)                | erf.py            | -                   |

Caches: a kernel's forward returns the cache its own backward reads (the same layout as the twin's, except the CPU
attention's blocked cache); turn kernels on or off between training steps, not between a forward and its backward.

TINYGRAD_GPT_KERNELS=0 turns every kernel off (the twins run: NumPy on the CPU, CuPy on the GPU); `set_enabled`
does the same from Python. Nothing here imports numba until a kernel is first called, so `import tinygrad_gpt`
stays light. The CPU kernels' first use also makes the process-wide settings of kernels/cpu/setup.py (README,
"Process-wide settings"). The CUDA kernels turn themselves off, with one warning saying why, where numba's CUDA
target cannot be loaded or sees no GPU.

GELU_K and GELU_C are the constants of GELU's tanh form, gelu(x) = 0.5 x (1 + tanh(GELU_K (x + GELU_C x^3)))
(GPT-2's; torch's gelu(approximate="tanh")), defined here once for all three of its implementations: tensor.py's
Tensor.gelu, fused.py's linear twins and the CPU linear kernels.
"""
import functools
import importlib
import math
import os
import warnings

import numpy as np

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715

TABLE = {
    # twin                    (cpu module,       cuda module)
    "embed_forward":          ("embedding",      None),
    "embed_backward":         ("embedding",      None),
    "linear_forward":         ("linear",         None),
    "linear_backward":        ("linear",         None),
    "layer_norm_forward":     ("layernorm",      "layernorm"),
    "layer_norm_backward":    ("layernorm",      "layernorm"),
    "attention_forward":      ("attention",      "attention"),
    "attention_backward":     ("attention",      "attention"),
    "cross_entropy_forward":  ("cross_entropy",  "cross_entropy"),
    "cross_entropy_backward": ("cross_entropy",  "cross_entropy"),
    "dropout_apply":          ("dropout",        "dropout_mask"),
    "dropout_keep_mask":      ("dropout",        None),
    "adamw_update":           ("adamw",          "adamw"),
    "grad_norm":              ("adamw",          None),
    "batched_matmul":         ("matmul",         None),
    "grad_sum":               ("grads",          None),
    "grad_store":             ("grads",          None),
    "erf":                    ("erf",            None),
}
DEVICES = ("cpu", "cuda")
_OFF = ("0", "false", "no", "off")

_enabled = {}            # device -> bool, decided on first use (or set by set_enabled)
_launchers = {}          # (twin name, device) -> launcher or None


def enabled(device="cuda"):
    """True when `device` ("cpu" or "cuda") runs its kernels (decided on the first call, from TINYGRAD_GPT_KERNELS
    and whether numba can compile for it)."""
    if device not in _enabled:
        _enabled[device] = _probe(device)
    return _enabled[device]


def set_enabled(flag, device=None):
    """Kernels on (True) or off (False) for this process, or back to the environment's choice (None); for one
    device, or both."""
    for d in DEVICES if device is None else (device,):
        _enabled.pop(d, None)
        if flag is not None:
            _enabled[d] = bool(flag)
    _launchers.clear()


def switched_off(variable):
    """True when the environment variable is set to 0, false, no or off (any case): how TINYGRAD_GPT_KERNELS and
    TINYGRAD_GPT_TUNE say no."""
    return os.environ.get(variable, "1").strip().lower() in _OFF


def _probe(device):
    if switched_off("TINYGRAD_GPT_KERNELS"):
        return False
    if device == "cpu":
        try:
            import numba  # noqa: F401 - only whether it imports: a broken installation falls back to NumPy
            _module("cpu", "setup").configure()
        except ImportError as e:   # numba is a dependency: only a broken installation gets here
            warnings.warn(f"tinygrad_gpt: CPU kernels disabled, using NumPy code instead ({e}); reinstall numba",
                          RuntimeWarning, stacklevel=4)
            return False
        return True
    try:
        common = _module("cuda", "_common")
        if not common.SIM and not common.cuda.is_available():
            raise RuntimeError("numba.cuda.is_available() is False")
    except Exception as e:  # ImportError, or a CUDA driver/bindings mismatch seen by numba
        warnings.warn(f"tinygrad_gpt: custom CUDA kernels disabled, using CuPy array code instead "
                      f"({type(e).__name__}: {e}). `pip install .[gpu]` brings numba-cuda; "
                      "TINYGRAD_GPT_KERNELS=0 silences this.", RuntimeWarning, stacklevel=4)
        return False
    return True


def _module(device, name):
    return importlib.import_module(f"{__name__}.{device}.{name}")


def _device(first):
    """"cpu" for NumPy arrays (and NumPy scalars, and lists of them), else "cuda" (CuPy)."""
    if isinstance(first, (list, tuple)):
        first = first[0] if first else np.empty(0)
    return "cpu" if isinstance(first, (np.ndarray, np.generic)) else "cuda"


def launcher(name, device):
    """The kernel launcher for twin `name` on `device`, or None (no kernel there, or kernels off)."""
    key = (name, device)
    if key not in _launchers:
        module = TABLE[name][DEVICES.index(device)]
        _launchers[key] = getattr(_module(device, module), name) if module and enabled(device) else None
    return _launchers[key]


def twin(fn):
    """Decorator for a twin: calls its kernel where the table has one for the device of the first argument."""
    name = fn.__name__
    if name not in TABLE:
        raise KeyError(f"{name} is not in kernels.TABLE")

    @functools.wraps(fn)
    def call(*args, **kwargs):
        impl = launcher(name, _device(args[0]))
        return (impl or fn)(*args, **kwargs)
    call.reference = fn                     # the twin itself, whatever the table says (tests compare the two)
    return call


def modules(device):
    """The names of `device`'s kernel modules, as the table lists them (sorted)."""
    return sorted({pair[DEVICES.index(device)] for pair in TABLE.values()} - {None})


def warmup(dtype="float32"):
    """Compile every CUDA kernel for `dtype` now (a benchmark calls this so no timed step pays for compilation):
    importing the table's CUDA modules registers their kernels."""
    for name in modules("cuda"):
        _module("cuda", name)
    for kernel in _module("cuda", "_common").REGISTRY:
        kernel(dtype)
