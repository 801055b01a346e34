"""Devices: a device is a name plus the array module (`xp`) that holds its arrays.

`cpu` is NumPy. `cuda` is CuPy, imported only when a tensor first asks for it, so `import tinygrad_gpt` works on a
machine without CuPy or without a GPU; asking for `cuda` there raises one clear `DeviceError`.
Code above this file never imports numpy-or-cupy by itself for array work: it asks a tensor for `t.xp`.
"""
import ctypes
import sys

import numpy as np

from .errors import DeviceError


class Device:
    __slots__ = ("name", "xp")

    def __init__(self, name, xp):
        self.name, self.xp = name, xp

    def __repr__(self):
        return f"device(type={self.name!r})"

    def __str__(self):
        return self.name

    @property
    def type(self):
        """torch.device's .type: 'cpu' or 'cuda'."""
        return self.name

    @property
    def index(self):
        return None if self.name == "cpu" else 0

    def __eq__(self, other):
        """Equal to the Device of the same name, and to its name as a string ('cpu', 'cuda', 'cuda:0')."""
        if isinstance(other, Device):
            return other.name == self.name
        if isinstance(other, str):
            name = other.lower()
            return name == self.name or (self.name == "cuda" and name in ("cuda:0", "gpu"))
        return NotImplemented

    def __hash__(self):
        return hash(self.name)


CPU = Device("cpu", np)
_cuda = None


def _load_cuda():
    global _cuda
    if _cuda is None:
        try:
            import cupy
        except ImportError as e:
            raise DeviceError("device 'cuda' needs CuPy: install it with `pip install .[gpu]` "
                              f"(import failed: {e})") from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError when no driver is present
            raise DeviceError(f"device 'cuda' is not usable: no CUDA GPU or driver found ({e})") from None
        if n < 1:
            raise DeviceError("device 'cuda' is not usable: no CUDA GPU found")
        _cuda = Device("cuda", cupy)
    return _cuda


def get_device(device=None):
    """'cpu', 'cuda', a Device, or None (cpu) -> Device."""
    if device is None:
        return CPU
    if isinstance(device, Device):
        return device
    name = str(device).lower()
    if name == "cpu":
        return CPU
    if name in ("cuda", "gpu", "cuda:0"):
        return _load_cuda()
    raise DeviceError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


class device(str):
    """torch.device("cpu" | "cuda" | "cuda:0", index=None): a device name, resolved (and checked for a GPU) only when a
    tensor goes there, as in torch. It is a str, so it equals "cpu" and works wherever a device name does."""

    def __new__(cls, type, index=None):
        name = type.name if isinstance(type, Device) else str(type).lower()
        base, _, idx = name.partition(":")
        if base not in ("cpu", "cuda", "mps"):
            raise DeviceError(f"unknown device {type!r}: use 'cpu' or 'cuda'")
        if index is not None:
            idx = str(int(index))
        return str.__new__(cls, base + (":" + idx if idx else ""))

    @property
    def type(self):
        return self.partition(":")[0]

    @property
    def index(self):
        idx = self.partition(":")[2]
        return int(idx) if idx else None

    def __repr__(self):
        return f"device(type={self.type!r}" + (f", index={self.index})" if self.index is not None else ")")


def device_of(array):
    """The Device that holds a backend array (NumPy arrays are cpu)."""
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return CPU
    if type(array).__module__.startswith("cupy"):
        return _load_cuda()
    return CPU


def array_module(array):
    """NumPy for a NumPy array, else CuPy (the only other backend): for code that holds arrays, not tensors."""
    if isinstance(array, np.ndarray):
        return np
    import cupy  # (already loaded: the array is CuPy's) never at the top, see the module docstring
    return cupy


def to_host(array):
    """A NumPy array with the same contents (no copy for NumPy input)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):
        return array.get()
    return np.asarray(array)


def to_device(array, device):
    """Move a backend array to `device` (a Device); no copy when it is already there."""
    if device.name == "cpu":
        return to_host(array)
    return device.xp.asarray(array)


def cuda_available():
    """True when the cuda device can be used here (CuPy importable and a GPU present)."""
    try:
        _load_cuda()
        return True
    except DeviceError:
        return False


_allocator_tuned = False


def tune_host_allocator():
    """Make glibc keep freed large blocks for reuse instead of unmapping them (mallopt: no mmap threshold below
    1 GiB, no trim).

    A training step allocates and frees the same large temporaries every step; by default glibc serves each one with a
    fresh mmap, and the kernel then zero-fills every page on first touch (docs/cpu-performance.md has the numbers).
    The trim threshold is a size_t inside glibc, and mallopt's int -1 becomes SIZE_MAX, "never trim": the largest
    positive int (2 GiB) is below a `lecture` step's peak, so the heap would still be trimmed after each backward. The
    cost: freed memory stays with the process (its resident size stays at the step's peak). Process-wide: the CPU
    kernels call it once on first use (kernels/cpu/setup.py; TINYGRAD_GPT_TUNE=0 turns that off). No effect off
    Linux/glibc. Returns True when applied."""
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3                  # glibc's malloc.h
        _allocator_tuned = bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and \
            bool(libc.mallopt(m_trim_threshold, -1))
    except (OSError, AttributeError):
        _allocator_tuned = False
    return _allocator_tuned
