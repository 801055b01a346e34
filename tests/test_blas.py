"""Which BLAS the CPU kernels call from numba (tinygrad_gpt/kernels/cpu/blas.py), and with which integer width.

A wrong width crashes the process or multiplies garbage-sized matrices, so it is detected, never assumed: the
detection runs here on fake libraries (objects with the C functions as attributes, as ctypes.CDLL has them), and on
the real process's BLAS: NumPy's OpenBLAS (ILP64 in NumPy's wheels), and MKL where the `mkl` package is installed
(the tests that need it skip without it; `pip install mkl` to run them).
"""
import ctypes
import os

import numba
import numpy as np
import pytest

from tinygrad_gpt.kernels.cpu import blas

HAVE_MKL = blas.mkl_library_path() is not None


class Fn:
    """A C function's stand-in: callable, with ctypes' restype and argtypes attributes; records its calls."""

    def __init__(self, result=None):
        self.result, self.calls, self.restype, self.argtypes = result, [], None, None

    def __call__(self, *args):
        self.calls.append(args)
        return self.result


class FakeLib:
    """A loaded library: its functions as attributes. gemm names get real C function pointers (their addresses are
    taken, never called); the rest are Fn."""

    def __init__(self, gemms=(), **functions):
        self._keep = []
        for name in gemms:
            fn = ctypes.CFUNCTYPE(None)(lambda: None)
            self._keep.append(fn)
            setattr(self, name, fn)
        for name, fn in functions.items():
            setattr(self, name, fn)


def _openblas_lib(prefix, suffix, config):
    return FakeLib(gemms=[f"{prefix}cblas_sgemm{suffix}", f"{prefix}cblas_dgemm{suffix}"],
                   **{f"{prefix}openblas_get_config{suffix}": Fn(config),
                      f"{prefix}openblas_set_num_threads{suffix}": Fn(),
                      f"{prefix}openblas_get_num_threads{suffix}": Fn(4)})


ILP64_CONFIG = b"OpenBLAS 0.3.31  USE64BITINT DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64"
LP64_CONFIG = b"OpenBLAS 0.3.26 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=128"


@pytest.mark.parametrize("prefix, suffix, config, ilp64", [
    ("scipy_", "64_", ILP64_CONFIG, True),      # NumPy's and SciPy's wheels
    ("", "64_", ILP64_CONFIG, True),            # a system ILP64 build with SYMBOLSUFFIX=64_
    ("", "", ILP64_CONFIG, True),               # INTERFACE64=1 without a suffix: cblas_sgemm takes 64-bit integers
    ("", "", LP64_CONFIG, False),               # the usual system libopenblas
    ("scipy_", "", LP64_CONFIG, False),         # scipy-openblas32
])
def test_openblas_integer_width_comes_from_its_build_configuration(prefix, suffix, config, ilp64):
    lib = _openblas_lib(prefix, suffix, config)
    found = blas.openblas(lib, "/x/libopenblas.so")
    assert found is not None and found.name == "openblas" and found.ilp64 is ilp64
    assert found.sgemm == blas._address(getattr(lib, f"{prefix}cblas_sgemm{suffix}"))
    assert found.dgemm == blas._address(getattr(lib, f"{prefix}cblas_dgemm{suffix}"))
    assert found.gemm_for(np.float32) == found.sgemm and found.gemm_for(np.float64) == found.dgemm
    assert "USE64BITINT" in found.version if ilp64 else "USE64BITINT" not in found.version


def test_an_openblas_whose_width_cannot_be_told_is_not_used():
    """A 64_ suffix whose configuration does not say USE64BITINT contradicts itself; a configuration that is not
    a string says nothing: neither is used."""
    assert blas.openblas(_openblas_lib("", "64_", LP64_CONFIG)) is None
    assert blas.openblas(_openblas_lib("", "", None)) is None


def test_an_unknown_library_is_not_used():
    """cblas_sgemm without OpenBLAS's configuration or MKL's service functions (a reference CBLAS, BLIS, ATLAS):
    its integer width is unknown, so neither reader takes it (the kernels then use NumPy's matmul)."""
    lib = FakeLib(gemms=["cblas_sgemm", "cblas_dgemm"], openblas_set_num_threads=Fn(),
                  openblas_get_num_threads=Fn(1))
    assert blas.openblas(lib) is None and blas.mkl(lib) is None


def test_single_threaded_sets_one_thread_and_restores_the_count():
    lib = _openblas_lib("scipy_", "64_", ILP64_CONFIG)
    found = blas.openblas(lib)
    setter = lib.scipy_openblas_set_num_threads64_
    assert setter.argtypes == [ctypes.c_int]          # int in ILP64 builds too (openblas_set_num_threads(int))
    with found.single_threaded():
        assert setter.calls == [(1,)]
    assert setter.calls == [(1,), (4,)]
    lib.scipy_openblas_get_num_threads64_.result = 1                 # already one thread: nothing set
    with found.single_threaded():
        pass
    assert setter.calls == [(1,), (4,)]


def test_single_threaded_from_two_python_threads_restores_the_count_once_both_left():
    """Two Python threads running kernels: the count goes to 1 when the first enters and back only after the last
    leaves (entered A, entered B, A leaves, B leaves: a plain save-and-restore per entry would restore while B is
    inside, or restore B's saved 1)."""
    import threading
    lib = _openblas_lib("scipy_", "64_", ILP64_CONFIG)
    found = blas.openblas(lib)
    setter = lib.scipy_openblas_set_num_threads64_
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with found.single_threaded():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with found.single_threaded():
            b_in.set()
            a_out.wait(5)
            assert setter.calls == [(1,)]                 # A has left: still one thread while B is inside
    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert setter.calls == [(1,), (4,)]                   # set once, restored once, to the count before


def _mkl_lib(layer=None, explicit_64=True):
    gemms = ["cblas_sgemm", "cblas_dgemm"] + (["cblas_sgemm_64", "cblas_dgemm_64"] if explicit_64 else [])
    extra = {} if layer is None else {"MKL_Set_Interface_Layer": Fn(layer)}
    return FakeLib(gemms=gemms, MKL_Set_Num_Threads=Fn(), MKL_Get_Max_Threads=Fn(1),
                   MKL_Set_Threading_Layer=Fn(blas.MKL_THREADING_SEQUENTIAL), **extra)


def test_mkl_uses_its_explicit_64_bit_entry_points():
    """cblas_sgemm_64 takes 64-bit integers in either interface layer: used as such, the layer left alone."""
    lib = _mkl_lib(layer=blas.MKL_INTERFACE_ILP64)
    found = blas.mkl(lib, "/x/libmkl_rt.so.2")
    assert found.name == "mkl" and found.ilp64 is True
    assert found.sgemm == blas._address(lib.cblas_sgemm_64) and found.dgemm == blas._address(lib.cblas_dgemm_64)
    assert lib.MKL_Set_Interface_Layer.calls == []
    assert lib.MKL_Set_Threading_Layer.calls == []                   # not loaded by us: its threading left alone


def test_mkl_loaded_here_runs_its_sequential_layer():
    lib = _mkl_lib()
    blas.mkl(lib, owned=True)
    assert lib.MKL_Set_Threading_Layer.calls == [(blas.MKL_THREADING_SEQUENTIAL,)]


@pytest.mark.parametrize("layer, ilp64", [(0, False), (2, False), (1, True), (3, True), (-1, None)])
def test_mkl_without_64_bit_entry_points_reads_its_interface_layer(layer, ilp64):
    """Older MKL: the layer is set to LP64 and read back; the call returns the layer in force, ILP64 where
    MKL_INTERFACE_LAYER=ILP64 or an earlier caller chose it (+2: the GNU variant); anything else is not used."""
    lib = _mkl_lib(layer=layer, explicit_64=False)
    found = blas.mkl(lib)
    assert lib.MKL_Set_Interface_Layer.calls == [(blas.MKL_INTERFACE_LP64,)]
    if ilp64 is None:
        assert found is None
    else:
        assert found.ilp64 is ilp64 and found.sgemm == blas._address(lib.cblas_sgemm)


def test_mkl_without_a_way_to_tell_its_width_is_not_used():
    assert blas.mkl(_mkl_lib(layer=None, explicit_64=False)) is None


# ---- the call: the integer width reaches the C function --------------------------------------------------------

@numba.njit
def _gemm_call(fn, ilp64, m, n, k, lda, ldb, ldc):
    blas.gemm(fn, ilp64, blas.NO_TRANS, blas.TRANS, m, n, k, np.float32(2.0), 4096, lda, 8192, ldb,
              np.float32(0.5), 12288, ldc)


@pytest.mark.parametrize("ilp64", [False, True])
def test_gemm_passes_integers_of_the_detected_width(ilp64):
    """The kernels' call, made to a C callback declared with cblas_sgemm's prototype at that width: every argument
    arrives intact (with 64-bit integers, sizes past 2^31 too)."""
    i = ctypes.c_int64 if ilp64 else ctypes.c_int32
    seen = []
    proto = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, i, i, i, ctypes.c_float,
                             ctypes.c_void_p, i, ctypes.c_void_p, i, ctypes.c_float, ctypes.c_void_p, i)
    callback = proto(lambda *args: seen.append(args))
    big = 3 * 2 ** 30 if ilp64 else 7
    _gemm_call(blas._address(callback), ilp64, big, 5, 3, big + 1, big + 2, big + 3)
    assert seen == [(blas.ROW_MAJOR, blas.NO_TRANS, blas.TRANS, big, 5, 3, 2.0, 4096, big + 1, 8192, big + 2, 0.5,
                     12288, big + 3)]
    _gemm_call(blas._address(callback), ilp64, 0, 5, 3, 1, 1, 1)        # an empty product: nothing called
    assert len(seen) == 1


# ---- this process's BLAS --------------------------------------------------------------------------------------

def test_numpy_blas_is_found_with_its_width():
    """NumPy's own BLAS: in NumPy's wheels OpenBLAS with 64_-suffixed ILP64 symbols, which its configuration (the
    same one NumPy reports) confirms."""
    found = blas.select("openblas")
    assert found is not None and found.name == "openblas"
    config = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}).get("openblas configuration")
    if config:
        assert found.ilp64 == ("USE64BITINT" in config.split())
    if "scipy_openblas64" in os.path.basename(found.path):
        lib = ctypes.CDLL(found.path)
        assert found.ilp64 and found.sgemm == blas._address(lib.scipy_cblas_sgemm64_)


def test_the_choice_follows_the_environment(monkeypatch):
    monkeypatch.setattr(blas, "_found", None)
    monkeypatch.delenv(blas.ENV, raising=False)
    assert blas.find().name == ("mkl" if HAVE_MKL else "openblas")       # auto: MKL where its package is installed
    for choice, name in [("openblas", "openblas"), ("OpenBLAS", "openblas"), ("none", None)]:
        monkeypatch.setenv(blas.ENV, choice)
        monkeypatch.setattr(blas, "_found", None)
        assert (blas.find() and blas.find().name) == name and blas.available() is (name is not None)
    monkeypatch.setenv(blas.ENV, "blis")
    monkeypatch.setattr(blas, "_found", None)
    with pytest.raises(ValueError, match="auto, mkl, openblas, none"):
        blas.find()


def test_mkl_asked_for_but_missing_warns_and_uses_numpy_blas(monkeypatch):
    monkeypatch.setattr(blas, "mkl_library_path", lambda: None)
    with pytest.warns(RuntimeWarning, match="no usable MKL"):
        found = blas.select("mkl")
    assert found.name == "openblas"
    assert blas.select("auto").name == "openblas"


@pytest.mark.skipif(not HAVE_MKL, reason="the mkl package is not installed (pip install mkl)")
def test_mkl_package_is_found_sequential_and_computes_what_numpy_does(monkeypatch):
    """The mkl package's libmkl_rt: its 64-bit entry points, its sequential layer (one thread, no Intel OpenMP
    runtime beside numba's), and the kernels' products on it equal to NumPy's."""
    from tinygrad_gpt.kernels.cpu import linear, matmul
    found = blas.select("mkl")
    assert found.name == "mkl" and found.ilp64 and "libmkl_rt" in found.path
    assert "Math Kernel Library" in found.version
    assert found._get() == 1
    monkeypatch.setattr(blas, "_found", found)
    rng = np.random.default_rng(0)
    for dt, rtol in [(np.float32, 1e-5), (np.float64, 1e-12)]:
        x, w, g = (rng.standard_normal(s).astype(dt) for s in [(300, 70), (90, 70), (300, 90)])
        y, _ = linear.linear_forward(x, w)
        dx, dw, _ = linear.linear_backward(g.copy(), x, w, bias=False)
        a, b = rng.standard_normal((3, 4, 40, 24)).astype(dt), rng.standard_normal((3, 4, 24, 50)).astype(dt)
        for ours, ref in [(y, x @ w.T), (dx, g @ w), (dw, g.T @ x), (matmul.batched_matmul(a, b), a @ b)]:
            np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    maps = blas._mapped_libraries()
    assert any("libmkl_sequential" in p for p in maps) and not any("libiomp5" in p for p in maps)


@pytest.mark.slow                # subprocesses
def test_matmul_shapes_compares_the_kernels_blas_choices():
    """benchmarks/matmul_shapes.py --blas: each choice in its own process, every linear product of a step through
    the CPU kernels, and the training step; the process really ran on the BLAS it was given."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    choices = ["openblas", "mkl"] if HAVE_MKL else ["openblas"]
    cmd = [sys.executable, str(root / "benchmarks" / "matmul_shapes.py"), "--config", "small", "--threads", "1",
           "--rounds", "1", "--samples", "1", "--steps", "1", "--blas", *choices]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5 * 3                       # qkv, attn proj, mlp fc, mlp proj, lm_head; forward, dx, dW
    assert all(float(c) > 0 for row in rows for c in row.strip("|").split("|")[2::2])      # the ms columns
    for c in choices:
        assert f"  {c}: {c}: " in proc.stdout
        step = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"  {c}: ") and "every process" in ln)
        assert float(step.split()[1]) > 0
