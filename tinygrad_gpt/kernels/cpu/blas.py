"""NumPy's BLAS, called from inside numba kernels, so that matrix products run on numba's threads.

Why: a training step alternates matrix products and memory-bound kernels. With the products in NumPy (OpenBLAS's own
thread pool) and the kernels on numba's OpenMP threads, two pools take turns on the same cores, and each pool's idle
threads spin for a while after their work (OpenBLAS's for ~0.1 s by default): the next pool's threads then wait for a
core. Here the products are split into pieces on numba's threads, each piece one single-threaded call of the BLAS's
C interface (cblas_sgemm / cblas_dgemm), so one pool does all the work; the BLAS's own thread count is set to 1 while
the kernels run (`single_threaded`) and restored after, so NumPy code outside the kernels keeps the BLAS's threads.

The functions are found among the loaded libraries (NumPy's wheels bundle OpenBLAS with prefixed, 64-bit-integer
symbols such as scipy_cblas_sgemm64_; a system OpenBLAS or MKL exports cblas_sgemm). Their addresses reach the
kernels as plain integers, and `gemm` calls through them (an LLVM indirect call), so the compiled kernels stay
cacheable on disk. Where no such function is found (another BLAS, another OS), `available()` is False and the
launchers use NumPy's matmul instead.
"""
import contextlib
import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

# (cblas gemm, set_num_threads, get_num_threads) symbol names, and whether integers are 64-bit
_CANDIDATES = [
    ("scipy_cblas_{}gemm64_", "scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_", True),
    ("cblas_{}gemm64_", "openblas_set_num_threads64_", "openblas_get_num_threads64_", True),
    ("cblas_{}gemm", "openblas_set_num_threads", "openblas_get_num_threads", False),
    ("cblas_{}gemm", "MKL_Set_Num_Threads", "MKL_Get_Max_Threads", False),
]
_found = None


class Blas:
    """The C functions of one BLAS: gemm addresses by dtype, the integer width of its interface, thread controls.
    Kernels take the address and `ilp64` (plain int and bool: numba types them fast at every call)."""

    def __init__(self, lib, names):
        gemm, set_name, get_name, ilp64 = names
        self.sgemm = ctypes.cast(getattr(lib, gemm.format("s")), ctypes.c_void_p).value
        self.dgemm = ctypes.cast(getattr(lib, gemm.format("d")), ctypes.c_void_p).value
        self.ilp64 = ilp64                   # 64-bit integers in the interface (else 32-bit)
        self._set = getattr(lib, set_name)
        self._set.restype, self._set.argtypes = None, [ctypes.c_int64 if ilp64 else ctypes.c_int]
        self._get = getattr(lib, get_name)
        self._get.restype, self._get.argtypes = (ctypes.c_int64 if ilp64 else ctypes.c_int), []

    def gemm_for(self, dtype):
        return self.sgemm if np.dtype(dtype) == np.float32 else self.dgemm

    @contextlib.contextmanager
    def single_threaded(self):
        """The BLAS on one thread (each numba thread calls it) for the duration; its count restored after."""
        before = self._get()
        if before != 1:
            self._set(1)
        try:
            yield
        finally:
            if before != 1:
                self._set(before)


def find():
    """The Blas of the loaded library that NumPy uses, or None."""
    global _found
    if _found is None:
        _found = False
        for path in _loaded_libraries():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for names in _CANDIDATES:
                if all(hasattr(lib, n.format("s")) for n in names[:3]) and hasattr(lib, names[0].format("d")):
                    _found = Blas(lib, names)
                    return _found
    return _found or None


def available():
    return find() is not None


def _loaded_libraries():
    """Shared libraries in this process whose name suggests a BLAS, NumPy's own first."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so it is in the maps)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return []
    blas = [p for p in paths if any(s in p.lower() for s in ("openblas", "mkl_rt", "libblas", "cblas"))]
    return sorted(blas, key=lambda p: ("numpy" not in p, p))


@intrinsic
def _call_gemm(typingctx, fn, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call the C function at address `fn` (an integer) with the gemm arguments as given: their numba types (int32 or
    int64 integers, float32 or float64 scalars, pointers as integers) become the C call's argument types."""
    arg_types = (order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    sig = types.void(fn, *arg_types)

    def codegen(context, builder, signature, args):
        llargs = args[1:]
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in llargs])
        ptr = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(ptr, llargs)
        return context.get_dummy_value()
    return sig, codegen


@numba.njit(inline="always")
def gemm(fn, ilp64, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """C (m x n, row stride ldc) = alpha op(A) op(B) + beta C, row-major; a, b, c are addresses (integers), op(X) is X
    or X^T (ta, tb: NO_TRANS or TRANS); ilp64: the BLAS takes 64-bit integers (else 32-bit); alpha and beta in C's
    dtype (float32 for sgemm: a float64 would be passed as a double). Nothing is called when C is empty."""
    if m > 0 and n > 0:
        if ilp64:
            _call_gemm(fn, np.int32(ROW_MAJOR), np.int32(ta), np.int32(tb), np.int64(m), np.int64(n), np.int64(k),
                       alpha, a, np.int64(lda), b, np.int64(ldb), beta, c, np.int64(ldc))
        else:
            _call_gemm(fn, np.int32(ROW_MAJOR), np.int32(ta), np.int32(tb), np.int32(m), np.int32(n), np.int32(k),
                       alpha, a, np.int32(lda), b, np.int32(ldb), beta, c, np.int32(ldc))
