"""The cuda path, checked without a GPU: every array-module function and array method it calls exists in CuPy, and a
training step stays on the device.

A subprocess (tests/cuda_proxy.py) installs a recording stand-in for CuPy as the cuda device's array module (NumPy
underneath; arrays that are not NumPy arrays, as CuPy's are not) and runs, on "cuda": model construction, two training
steps with dropout (batch already on the device), evaluation, generation with and without the key/value cache, a
state-dict round trip of model and optimizer, gradient clipping, and moving a model and a tensor between devices; for a
ReLU model with dropout and a GELU model without. It does so twice: with TINYGRAD_GPT_KERNELS off (plain CuPy array
code) and on (the numba.cuda kernels, run by numba's CUDA simulator). Here every recorded name is looked up in the real
`cupy` module and `cupy.ndarray` (CuPy imports without a GPU), and the second training step (the steady state) is
checked for host synchronisations, float64 arrays and host-to-device copies.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install -e .[test] brings cupy-cuda12x)")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # one recorded training run in a subprocess (~7 s)
MODES = ["cupy"] + (["kernels"] if importlib.util.find_spec("numba") else [])


@pytest.fixture(scope="module")
def records():
    env = dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_ENABLE_CUDASIM="1")
    env.pop("TINYGRAD_GPT_KERNELS", None)
    script = str(ROOT / "tests" / "cuda_proxy.py")
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", script, *MODES], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the recorded cuda run failed:\n{proc.stderr[-8000:]}"
    return json.loads(proc.stdout)


def resolve(space, name):
    """The CuPy object that serves a recorded name, or None."""
    if space == "ndarray":
        obj = cupy.ndarray
        if hasattr(obj, name):
            return getattr(obj, name)
        if name.startswith("__i") and hasattr(obj, "__" + name[3:]):
            return getattr(obj, "__" + name[3:])      # no in-place form: Python falls back to a = a op b
        return None
    if space == "cupyx":
        import cupyx.scipy.special  # noqa: F401  (imports without a GPU, as cupy does)
    obj = {"xp": cupy, "random.Generator": cupy.random.Generator, "cupyx": sys.modules.get("cupyx")}[space]
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


@pytest.mark.parametrize("mode", MODES)
def test_every_name_the_cuda_path_uses_exists_in_cupy(records, mode):
    names = [tuple(n) for n in records[mode]["names"]]
    assert len(names) > 30, "the recorded run saw suspiciously few names"
    missing = [f"{space}:{name}" for space, name in names if resolve(space, name) is None]
    assert not missing, f"called on the cuda path, but CuPy has no such function or method: {missing}"


@pytest.mark.parametrize("mode", MODES)
def test_no_implicit_conversion_of_device_arrays_to_numpy(records, mode):
    """np.asarray(device array) raises TypeError on CuPy: host code must read device arrays with .get()."""
    bad = [e for e in records[mode]["events"] if e[1] == "host_conversion"]
    assert not bad, bad


def _events(records, mode, phase, kind):
    return [e[2] for e in records[mode]["events"] if e[0] == phase and e[1] == kind]


@pytest.mark.parametrize("mode", MODES)
def test_training_step_has_no_host_sync_and_stays_float32(records, mode):
    """The steady-state step (forward, loss, backward, AdamW) never waits for the GPU and makes no float64 array;
    the loss is read back only when logged."""
    assert not _events(records, mode, "step2", "sync"), _events(records, mode, "step2", "sync")
    assert not _events(records, mode, "step2", "float64"), _events(records, mode, "step2", "float64")
    assert len(_events(records, mode, "log", "sync")) == 2          # float(loss) once per model


@pytest.mark.parametrize("mode", MODES)
def test_training_step_copies_no_array_to_the_device(records, mode):
    """No host array is copied to the device in the steady state (batches built there, dropout masks drawn there).
    The plain CuPy path still turns a Python scalar into a device scalar per dropout site (fused.keep_scale:
    a few bytes, asynchronous); the kernel path copies nothing at all."""
    copies = _events(records, mode, "step2", "h2d")
    arrays = [c for c in copies if not c.endswith("float ())") and not c.endswith("int ())")]
    assert not arrays, arrays
    if mode == "kernels":
        assert not copies, copies


def test_every_kernel_runs_in_a_training_step(records):
    if "kernels" not in records:
        pytest.skip("numba is not installed")
    launched = set(_events(records, "kernels", "step2", "launch"))
    expected = {"layer_norm_fwd", "layer_norm_bwd", "causal_softmax_fwd", "causal_softmax_bwd", "cross_entropy_fwd",
                "cross_entropy_bwd", "adamw_update", "dropout_apply"}
    assert launched == expected, f"kernels missing from a training step: {expected - launched}"
    assert not _events(records, "cupy", "step2", "launch"), "TINYGRAD_GPT_KERNELS off still launched kernels"


@pytest.mark.parametrize("variant", ["head", "peek", "sdpa"])
def test_lecture_style_code_runs_on_cuda_with_the_fused_attention(records, variant):
    """The lecture-style model of tests/lecture_code/models.py on "cuda" (two AdamW steps, generation): its names were
    checked above; here its attention runs the causal softmax kernels (the recognised chain, SDPA), and the plain
    variant that reads its weights still does (its chain continues after the read)."""
    if "kernels" not in records:
        pytest.skip("numba is not installed")
    launched = set(_events(records, "kernels", f"lecture-{variant}", "launch"))
    assert {"causal_softmax_fwd", "causal_softmax_bwd", "layer_norm_fwd", "adamw_update"} <= launched, launched


def test_the_cuda_kernels_leave_the_process_warning_filters_alone():
    """Importing the CUDA kernels' common module installs no process-wide filter; the small-grid warning is ignored
    inside `launch` only (warnings.catch_warnings)."""
    import warnings
    pytest.importorskip("numba")
    before = list(warnings.filters)
    from tinygrad_gpt.kernels.cuda import _common
    assert warnings.filters == before
    assert not any(f[1] is not None and "under-utilization" in f[1].pattern for f in warnings.filters)

    class Launchable:                                   # kernel(dtype)[grid, block](*args), warning as numba does
        def __getitem__(self, config):
            def run(*args):
                warnings.warn("Grid size 1 will likely result in GPU under-utilization due to low occupancy.",
                              stacklevel=2)
                warnings.warn("another warning", stacklevel=2)
            return run
    old_sim, _common.SIM = _common.SIM, True              # launch's simulator branch: no GPU, no CuPy needed
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            _common.launch(lambda dtype: Launchable(), "float32", 1, 1)
    finally:
        _common.SIM = old_sim
    assert [str(w.message) for w in seen] == ["another warning"]     # only launch's own small-grid warning is gone
    assert warnings.filters == before
