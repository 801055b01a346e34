"""Compiling the CPU kernels: each kernel is written once, with `prange` over independent pieces of work, and
compiled twice by numba, serial and parallel, both cached on disk.

Why two: numba's parallel loops run on its pool of OpenMP threads, which does all of a step's work (the matrix
products too: kernels/cpu/blas.py). Between kernels its idle threads spin for a while, so handing work to them costs a
few microseconds; still, a kernel over a few thousand elements is faster on the calling thread. Launchers call
every kernel one way, `kernel.run(work, *args)`: the parallel version when `work` reaches the kernel's threshold
(elements touched against tuning.PARALLEL_WORK; multiply-adds against tuning.PARALLEL_MACS for a kernel of matrix
products), the serial one otherwise (always, for a kernel declared serial). The choice depends on the size only, never
on the thread count, and every kernel splits its
work into pieces that do not depend on the thread count and combines partial results in a fixed order: so the bits
of a result do not depend on how many threads numba has (NUMBA_NUM_THREADS, the cores by default). (The two
compilations may round differently from each other: LLVM vectorises each on its own.)

Floating point: fastmath is limited to reassociation (so row sums vectorise) and contraction (fused multiply-add);
NaN and infinity keep their IEEE meaning (a diverging loss must still be seen as NaN). A kernel that must repeat its
twin's float operations exactly (AdamW) turns both off. Division follows NumPy (x / 0 is inf or nan, no
ZeroDivisionError check, which would stop a loop from vectorising). Scalars reach a kernel in the arrays' dtype
(launchers convert them), and kernels write constants as `ft(...)` with `ft = x.dtype.type`, so a float32 kernel
computes in float32; exp and tanh come from _math.py (vectorisable in float32).

Cache: `cache=True` stores the compiled code beside this package (`__pycache__`), or, where that directory is not
writable (a read-only site-packages), in numba's user-wide cache directory (NUMBA_CACHE_DIR overrides both). Where
none of them is writable, numba refuses `cache=True` ("cannot cache function ...: no locator available", raised when
a kernel is decorated, i.e. when its module is first imported, at the kernel's first use): `cached` then compiles
without the disk cache (each process compiles again), and one warning per process says so.
"""
import types
import warnings

import numba

from . import tuning

FASTMATH = {"reassoc", "contract"}


_disk_cache = True       # False once numba has found no writable directory for its cache (then never asked again)


def cached(decorator, fn, *args, **options):
    """decorator(*args, cache=True, **options)(fn), or, where numba finds no writable cache directory, the same
    without the disk cache, with one warning per process (the first time)."""
    global _disk_cache
    if _disk_cache:
        try:
            return decorator(*args, cache=True, **options)(fn)
        except RuntimeError as e:                  # numba's "cannot cache function ...: no locator available ..."
            if "cannot cache" not in str(e):
                raise
            _disk_cache = False
            warnings.warn("tinygrad_gpt: numba finds no writable directory for its disk cache (neither beside the "
                          "package, nor NUMBA_CACHE_DIR, nor the user cache directory): compiling the CPU kernels "
                          f"without the disk cache, again in every process ({e})", RuntimeWarning, stacklevel=2)
    return decorator(*args, cache=False, **options)(fn)


class CpuKernel:
    """A numba CPU kernel compiled serial and parallel (on first use of each, for the argument types it meets);
    `run(work, *args)` calls the version the size of the work asks for. work: what `work` counts, "elements" or
    "macs" (see the module docstring), or "serial" for a kernel that runs serial at any size."""

    WORK = ("elements", "macs", "serial")

    def __init__(self, fn, exact=False, work="elements"):
        if work not in self.WORK:
            raise ValueError(f"kernel {fn.__name__}: work must be one of {self.WORK}, got {work!r}")
        self.__name__, self.__doc__, self.work = fn.__name__, fn.__doc__, work
        options = dict(nogil=True, error_model="numpy", fastmath=set() if exact else FASTMATH)
        self.serial = cached(numba.njit, fn, **options)
        # a renamed copy of the function: numba's disk cache is keyed by the function's qualified name, so the
        # parallel compilation gets its own cache entry instead of overwriting the serial one
        par = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__,
                                 fn.__closure__)
        par.__qualname__ = fn.__qualname__ + "_parallel"
        self.parallel = cached(numba.njit, par, parallel=True, **options)

    def run(self, work, *args):
        """Call the parallel version when `work` is enough to pay for the thread hand-off (the thresholds are read at
        each call)."""
        if self.work == "elements":
            threshold = tuning.PARALLEL_WORK
        elif self.work == "macs":
            threshold = tuning.PARALLEL_MACS
        else:
            return self.serial(*args)
        if work >= threshold:
            return self.parallel(*args)
        return self.serial(*args)


def kernel(fn=None, *, exact=False, work="elements"):
    """Decorator: @kernel, or @kernel(exact=True) for a kernel that repeats its twin's float operations one by one
    (no reassociation, no fused multiply-add); work="macs" for a kernel of matrix products (its launchers pass
    multiply-adds), work="serial" for one that always runs serial."""
    if fn is None:
        return lambda f: CpuKernel(f, exact, work)
    return CpuKernel(fn, exact, work)
