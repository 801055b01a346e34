"""CPU threads for the fused layers' memory-bound work.

NumPy's ufuncs and reductions run on one thread; only its BLAS uses every core. On this 2-core machine that left half
the machine idle in softmax, LayerNorm and ReLU, where torch uses all of it. `parallel_map(fn, items)` runs the
independent blocks of a fused layer (batch rows of the attention, row blocks of LayerNorm) on a small thread pool:
NumPy releases the GIL inside each ufunc and matmul, so the blocks really run at once.

The thread count is the BLAS's own (OPENBLAS_NUM_THREADS, threadpoolctl or torch-matched benchmark settings set both).
While the blocks run, the BLAS is set to one thread (the calling thread only waits meanwhile), so a matmul inside a
block runs on its own core and the process never runs more threads than that count; it is set back afterwards. (Not
OpenBLAS's openblas_set_num_threads_local: in 0.3.31 it changes the count for every thread.) Where NumPy's BLAS is not
an OpenBLAS, or only one thread is allowed, `parallel_map` is a plain loop: the results are the same either way, bit
for bit, because every block writes its own outputs.

One more setting, made once when the pool starts: OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after each
call before they sleep, and on 2 cores that spinning thread took a core from the pool's threads: the attention's
blocks ran 1.6x slower right after a matmul than alone. OPENBLAS_THREAD_TIMEOUT (unless the user set it) is lowered
to 2^_BLAS_SPIN_LOG2 cycles (~0.4 ms) and OpenBLAS's threads are restarted to read it (they start again at its next
call). Measured on the lecture step: attention forward 620 -> 350 ms, backward 1000 -> 690 ms; matmuls unchanged.
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

_blas = None            # (get_num_threads, set_num_threads, library) of the OpenBLAS NumPy loaded, or False
_pool = None            # (pid, n, ThreadPoolExecutor)
_lock = threading.Lock()
_spin_set = None        # short_blas_spin(): None not tried yet, else whether it was applied
_BLAS_SPIN_LOG2 = 20
_PREFIXES = ("scipy_openblas", "openblas")     # the NumPy wheels' bundled OpenBLAS, a system one
_SUFFIXES = ("64_", "", "_64")


def _openblas():
    """Find NumPy's OpenBLAS among the loaded libraries (its file name varies by wheel) and its thread controls."""
    global _blas
    if _blas is None:
        _blas = False
        try:
            import numpy  # noqa: F401  (loads the BLAS, so it is in the maps)
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in ((p, s) for p in _PREFIXES for s in _SUFFIXES):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, get.argtypes = ctypes.c_int, []
                    put.restype, put.argtypes = None, [ctypes.c_int]
                    _blas = (get, put, lib)
                    return _blas
    return _blas


def num_threads():
    """Threads `parallel_map` uses: the BLAS's thread count, or 1 where it cannot be kept to that."""
    blas = _openblas()
    return max(1, int(blas[0]())) if blas else 1


def short_blas_spin():
    """Lower OpenBLAS's idle spin (see the module docstring), once; nothing where the user set
    OPENBLAS_THREAD_TIMEOUT or the controls are missing. Called when the pool starts, and by the trainer and the
    benchmark (where a spinning BLAS thread would also slow whatever runs next). Returns True when applied."""
    global _spin_set
    if _spin_set is None:
        _spin_set = False
        blas = _openblas()
        if blas and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
            read_env = getattr(blas[2], "openblas_read_env", None)
            shutdown = getattr(blas[2], "blas_thread_shutdown_", None)
            if read_env is not None and shutdown is not None:
                os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(_BLAS_SPIN_LOG2)
                read_env()
                shutdown()
                _spin_set = True
    return _spin_set


def _workers(n):
    global _pool
    with _lock:
        if _pool is None:
            short_blas_spin()
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != n:   # new count, or a forked child
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="tinygrad_gpt"))
        return _pool[2]


def _run_share(fn, items):
    for item in items:
        fn(item)


def parallel_map(fn, items):
    """fn(item) for every item, spread over num_threads() threads (item i on thread i mod n); returns None.
    The items must write disjoint outputs. An exception in any item is raised here."""
    items = list(items)
    threads = num_threads()
    n = min(threads, len(items))
    if n <= 1:
        _run_share(fn, items)
        return
    pool = _workers(threads)
    set_blas_threads = _openblas()[1]
    set_blas_threads(1)
    try:
        futures = [pool.submit(_run_share, fn, items[i::n]) for i in range(n)]
        wait(futures)                                              # all of them, even when one failed
    finally:
        set_blas_threads(threads)
    for future in futures:
        future.result()                                            # raises the first failure
