"""A BLAS called from inside numba kernels, so that matrix products run on numba's threads.

Why: a training step alternates matrix products and memory-bound kernels. With the products in NumPy (OpenBLAS's own
thread pool) and the kernels on numba's OpenMP threads, two pools take turns on the same cores, and each pool's idle
threads spin for a while after their work (OpenBLAS's for ~0.1 s by default): the next pool's threads then wait for a
core. Here the products are split into pieces on numba's threads, each piece one single-threaded call of the BLAS's
C interface (cblas_sgemm / cblas_dgemm), so one pool does all the work; the BLAS's own thread count is set to 1 while
the kernels run (`single_threaded`) and restored after, so NumPy code outside the kernels keeps the BLAS's threads.

Which BLAS (`find()`, its `.name`; TINYGRAD_GPT_BLAS=auto|mkl|openblas|none overrides):
- auto (the default): Intel's MKL where the `mkl` package is installed (`pip install "tinygrad_gpt[mkl]"`: its
  libmkl_rt, loaded here), else NumPy's own BLAS (OpenBLAS in NumPy's wheels) found among the loaded libraries.
- mkl: MKL, or (with a warning) NumPy's BLAS where the mkl package is missing; openblas: NumPy's OpenBLAS; none:
  no BLAS from numba (`find()` None: the launchers fall back, as below).

The integer width of the interface is detected, never assumed (a wrong width crashes the process or computes with
garbage sizes): OpenBLAS states it in its build configuration (`openblas_get_config()` contains USE64BITINT for an
ILP64 build, whatever its symbol suffix: NumPy's scipy_cblas_sgemm64_, a system build's cblas_sgemm64_ or an
unsuffixed INTERFACE64=1 build); MKL has explicit 64-bit-integer entry points (cblas_sgemm_64) whatever its interface
layer, and where they are missing (older MKL) its layer is set to LP64 and read back (MKL_Set_Interface_Layer
returns the layer in force, ILP64 if MKL_INTERFACE_LAYER or an earlier caller chose it). A library whose width
cannot be told this way is not used. MKL loaded here runs its sequential layer (no Intel OpenMP runtime beside
numba's GNU one); where another library loaded it first, its thread count is set to 1 while the kernels run, as
OpenBLAS's is.

The functions' addresses reach the kernels as plain integers, and `gemm` calls through them (an LLVM indirect call),
so the compiled kernels stay cacheable on disk. Where no BLAS is found (another BLAS, another OS), `find()` is None
and each launcher that calls one falls back, the one way they all do (`lib = blas.find()`, then `if lib is None`):
NumPy's matmul for the linear layers (their epilogues still in kernels) and the @, the twin for the attention.
"""
import contextlib
import ctypes
import glob
import os
import sys
import threading
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
ENV = "TINYGRAD_GPT_BLAS"
CHOICES = ("auto", "mkl", "openblas", "none")

# OpenBLAS's symbols: prefix + name + suffix. NumPy's and SciPy's wheels prefix scipy_ and, ILP64 builds, suffix 64_
# (scipy_cblas_sgemm64_; scipy-openblas32: no suffix); a system build suffixes 64_ (SYMBOLSUFFIX) or nothing
_OPENBLAS_AFFIXES = [("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")]
_OPENBLAS_NAMES = ("cblas_sgemm", "cblas_dgemm", "openblas_get_config", "openblas_set_num_threads",
                   "openblas_get_num_threads")
# MKL's constants (mkl_service.h)
MKL_INTERFACE_LP64, MKL_INTERFACE_ILP64, MKL_INTERFACE_GNU = 0, 1, 2
MKL_THREADING_SEQUENTIAL = 1
_MKL_THREADS = ("MKL_Set_Num_Threads", "MKL_Get_Max_Threads")

_found = None                  # the Blas in use; False once none was found; None until find() decides


class Blas:
    """The C functions of one BLAS: gemm addresses by dtype, the integer width of its interface, thread controls.
    Kernels take the address and `ilp64` (plain int and bool: numba types them fast at every call).
    name: "openblas" or "mkl"; path: the shared library; version: its own description of itself."""

    def __init__(self, name, path, sgemm, dgemm, ilp64, set_threads, get_threads, version=""):
        self.name, self.path, self.version = name, path, version
        self.sgemm = _address(sgemm)
        self.dgemm = _address(dgemm)
        self.ilp64 = bool(ilp64)             # 64-bit integers in the interface (else 32-bit)
        self._set, self._get = set_threads, get_threads
        self._lock, self._inside, self._before = threading.Lock(), 0, 1   # single_threaded's shared state

    def __repr__(self):
        return (f"Blas({self.name!r}, {'ILP64' if self.ilp64 else 'LP64'}, {self.path!r}, "
                f"version={self.version!r})")

    def gemm_for(self, dtype):
        return self.sgemm if np.dtype(dtype) == np.float32 else self.dgemm

    @contextlib.contextmanager
    def single_threaded(self):
        """The BLAS on one thread (each numba thread calls it) for the duration; its count restored after. The count
        is the BLAS's, process-wide: when several Python threads run kernels at once, the first to enter sets it to 1
        and the last to leave restores it (a lock guards the count of those inside), so no kernel runs with the BLAS
        back on its own threads while another is still inside."""
        with self._lock:
            if self._inside == 0:
                self._before = self._get()
                if self._before != 1:
                    self._set(1)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._before != 1:
                    self._set(self._before)


def find():
    """The Blas the kernels call (chosen once per process: TINYGRAD_GPT_BLAS, else `auto`), or None."""
    global _found
    if _found is None:
        _found = select(os.environ.get(ENV, "")) or False
    return _found or None


def available():
    return find() is not None


def select(choice="auto"):
    """The Blas for a choice of CHOICES ("" is auto), or None: see the module's docstring. Not cached."""
    choice = (choice or "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice == "none":
        return None
    if choice in ("auto", "mkl"):
        lib = _mkl_package()
        if lib is not None:
            return lib
        if choice == "mkl":
            warnings.warn(f"{ENV}=mkl, but no usable MKL was found (pip install mkl): using NumPy's BLAS",
                          RuntimeWarning, stacklevel=2)
    return _numpy_blas(mkl_too=choice != "openblas")


def openblas(lib, path=""):
    """The Blas of an OpenBLAS library (a ctypes.CDLL, or anything with its functions as attributes), or None where
    it is none or its integer width cannot be told: USE64BITINT in openblas_get_config() means 64-bit integers; a
    64_ suffix without it is contradictory, so not used."""
    for prefix, suffix in _OPENBLAS_AFFIXES:
        names = [prefix + n + suffix for n in _OPENBLAS_NAMES]
        if not all(hasattr(lib, n) for n in names):
            continue
        config = _text(_function(lib, names[2], ctypes.c_char_p, []))
        if config is None:
            return None
        ilp64 = "USE64BITINT" in config.split()
        if suffix and not ilp64:
            return None
        set_threads = _function(lib, names[3], None, [ctypes.c_int])     # int in ILP64 builds too
        get_threads = _function(lib, names[4], ctypes.c_int, [])
        return Blas("openblas", path, getattr(lib, names[0]), getattr(lib, names[1]), ilp64, set_threads,
                    get_threads, config.strip())
    return None


def mkl(lib, path="", owned=False):
    """The Blas of MKL's single dynamic library (libmkl_rt), or None where it is none or its width cannot be told.
    owned: this module loaded it (nobody else calls it), so it may choose the sequential threading layer."""
    if not all(hasattr(lib, n) for n in _MKL_THREADS):
        return None
    if owned and hasattr(lib, "MKL_Set_Threading_Layer"):
        _function(lib, "MKL_Set_Threading_Layer", ctypes.c_int, [ctypes.c_int])(MKL_THREADING_SEQUENTIAL)
    if hasattr(lib, "cblas_sgemm_64") and hasattr(lib, "cblas_dgemm_64"):
        sgemm, dgemm, ilp64 = lib.cblas_sgemm_64, lib.cblas_dgemm_64, True      # 64-bit in any interface layer
    elif all(hasattr(lib, n) for n in ("cblas_sgemm", "cblas_dgemm", "MKL_Set_Interface_Layer")):
        layer = _function(lib, "MKL_Set_Interface_Layer", ctypes.c_int, [ctypes.c_int])(MKL_INTERFACE_LP64)
        if layer not in (0, 1, 2, 3):       # LP64 or ILP64, each with or without the GNU bit
            return None
        sgemm, dgemm, ilp64 = lib.cblas_sgemm, lib.cblas_dgemm, bool(layer & MKL_INTERFACE_ILP64)
    else:
        return None
    set_threads = _function(lib, "MKL_Set_Num_Threads", None, [ctypes.c_int])
    get_threads = _function(lib, "MKL_Get_Max_Threads", ctypes.c_int, [])
    version = ""
    if hasattr(lib, "MKL_Get_Version_String"):
        buf = ctypes.create_string_buffer(256)
        _function(lib, "MKL_Get_Version_String", None, [ctypes.c_char_p, ctypes.c_int])(buf, len(buf))
        version = buf.value.decode(errors="replace")
    return Blas("mkl", path, sgemm, dgemm, ilp64, set_threads, get_threads, version)


def _function(lib, name, restype, argtypes):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def _text(fn):
    value = fn()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _address(fn):
    return ctypes.cast(fn, ctypes.c_void_p).value


def _mkl_package():
    """MKL from the installed `mkl` package (or a libmkl_rt under sys.prefix/lib: conda's), loaded, or None."""
    path = mkl_library_path()
    if path is None:
        return None
    owned = os.path.realpath(path) not in {os.path.realpath(p) for p in _mapped_libraries()}
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        warnings.warn(f"MKL at {path} could not be loaded ({e}): using NumPy's BLAS", RuntimeWarning, stacklevel=3)
        return None
    return mkl(lib, path, owned)


def mkl_library_path():
    """The path of libmkl_rt from the `mkl` distribution's files, else under sys.prefix/lib; None without one."""
    from importlib import metadata
    try:
        dist = metadata.distribution("mkl")
        for f in dist.files or ():
            if os.path.basename(str(f)).startswith("libmkl_rt.so"):
                path = os.path.realpath(str(dist.locate_file(f)))
                if os.path.exists(path):
                    return path
    except metadata.PackageNotFoundError:
        pass
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    return found[-1] if found else None


def _numpy_blas(mkl_too=True):
    """The Blas of the loaded library that NumPy uses (an OpenBLAS; an MKL too where mkl_too), or None."""
    for path in _loaded_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        found = openblas(lib, path) or (mkl(lib, path) if mkl_too else None)
        if found is not None:
            return found
    return None


def _mapped_libraries():
    try:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return set()


def _loaded_libraries():
    """Shared libraries in this process whose name suggests a BLAS, NumPy's own first."""
    import numpy  # noqa: F401  (loads NumPy's BLAS, so it is in the maps)
    blas = [p for p in _mapped_libraries() if any(s in p.lower() for s in ("openblas", "mkl_rt", "libblas", "cblas"))]
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
