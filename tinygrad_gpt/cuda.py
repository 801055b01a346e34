"""torch.cuda for the torch-shaped front end: is_available() says whether this engine's cuda device (CuPy on an
NVIDIA GPU) is usable here; the rest are the few calls lecture-style scripts make."""
from . import rng as _rng
from .backend import cuda_available
from .errors import unsupported_getattr

__getattr__ = unsupported_getattr("torch.cuda")


def is_available():
    return cuda_available()


def device_count():
    return 1 if cuda_available() else 0


def current_device():
    return 0


def synchronize(device=None):
    """Wait for the GPU's queued work (nothing to do without one)."""
    if cuda_available():
        import cupy  # only with a GPU (backend.py's rule: `import tinygrad_gpt` loads no CuPy)
        cupy.cuda.Device().synchronize()


def manual_seed(seed):
    """Random numbers here all come from the one default generator (rng.py): seeding it is what torch.cuda's seed
    does for scripts that call both."""
    _rng.manual_seed(seed)


manual_seed_all = manual_seed


def get_device_name(device=None):
    import cupy  # only when asked (backend.py's rule)
    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
