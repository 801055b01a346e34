"""The process-wide settings the CPU kernels make once, on their first use (so a user's own training loop gets them
without calling anything); TINYGRAD_GPT_TUNE=0 in the environment leaves the process as it was. Each is named in
the README ("Process-wide settings") and measured in docs/cpu-performance.md.

1. glibc keeps freed large blocks for reuse (backend.tune_host_allocator): a training step allocates and frees the
   same large temporaries every step, and without this each one is a fresh mmap whose pages the kernel zero-fills on
   first touch.
2. OpenBLAS's idle threads spin for a shorter time after each call (OPENBLAS_THREAD_TIMEOUT, unless the user set
   it): by default they spin for 2^28 cycles (~0.1 s), taking a core from the kernels and attention threads that run
   right after a matmul. OpenBLAS reads the variable when its threads start, so it is set and its threads restarted
   (they start again at the next call).
3. numba's OpenMP threads sleep when idle (OMP_WAIT_POLICY=passive, unless the user set it; set before numba starts
   its thread pool): by default libgomp spins each idle thread for ~300,000 iterations, and a spinning OpenMP thread
   and OpenBLAS's threads then share a core.
Where NumPy's BLAS is not an OpenBLAS, (2) does nothing.
"""
import ctypes
import os

from ...backend import tune_host_allocator

BLAS_SPIN_LOG2 = 20            # OpenBLAS idle spin: 2^20 cycles (~0.4 ms) instead of 2^28
_PREFIXES = ("scipy_openblas", "openblas")      # the NumPy wheels' bundled OpenBLAS, a system one
_SUFFIXES = ("64_", "", "_64")
_done = None                   # what configure() applied, once it ran


def configure():
    """Make the settings above once; returns {setting: applied?}."""
    global _done
    if _done is None:
        _done = {}
        if os.environ.get("TINYGRAD_GPT_TUNE", "1").strip().lower() not in ("0", "false", "no", "off"):
            _done["host_allocator"] = tune_host_allocator()
            _done["blas_spin"] = short_blas_spin()
            _done["omp_passive"] = "OMP_WAIT_POLICY" not in os.environ
            if _done["omp_passive"]:
                os.environ["OMP_WAIT_POLICY"] = "passive"
    return _done


def _openblas():
    """NumPy's OpenBLAS among the loaded libraries (its file name varies by wheel), or None."""
    try:
        import numpy  # noqa: F401  (loads the BLAS, so it is in the maps)
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if any(hasattr(lib, f"{p}_get_num_threads{s}") for p in _PREFIXES for s in _SUFFIXES):
            return lib
    return None


def short_blas_spin():
    """Lower OpenBLAS's idle spin to 2^BLAS_SPIN_LOG2 cycles; nothing where the user set OPENBLAS_THREAD_TIMEOUT or
    the controls are missing. Returns True when applied."""
    lib = _openblas()
    if lib is None or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    read_env = getattr(lib, "openblas_read_env", None)
    shutdown = getattr(lib, "blas_thread_shutdown_", None)
    if read_env is None or shutdown is None:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(BLAS_SPIN_LOG2)
    read_env()
    shutdown()
    return True
