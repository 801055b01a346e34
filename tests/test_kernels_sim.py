"""The custom CUDA kernels (tinygrad_gpt/kernels/), checked on the CPU: each launcher runs under numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, in a subprocess: tests/kernel_sim_run.py) on small inputs chosen to cover rows longer than a
block, grids that stride over rows, blocks with rows past the end, odd sizes, and the causal mask's edge rows (the
first query, which sees one key; queries offset by a key/value cache; a single query that sees every key), in
float32 and float64. Its outputs are compared here with its NumPy twin (fused.py / optim.py) and with torch.
A second subprocess compiles every kernel to PTX for a real GPU (compute capability 8.0, no GPU needed) and checks
that the float32 kernels do no float64 arithmetic. On a machine with a GPU the same cases, plus the lecture config's
shapes with the default launch shapes, also run on the GPU (the "cuda" parameter, marked gpu).

Tolerances. Kernel and twin compute the same formulas but sum each row in a different order. Normwise
(max|a - b| / max|b|, as helpers.rel_err) they agree within TOL(n) = 8 * (n + 8) * u (helpers.tol, whose docstring
derives it; u the unit roundoff: 6.0e-8 in float32, 1.1e-16 in float64), n the longest chain of reductions behind
the output: C for LayerNorm's y and dx, its N rows for dw and db; 2 Tk + hs for attention; V for softmax and
dlogits, V + N for the mean loss. The same bound holds against torch.
What must be exact is checked exactly: masked attention entries (P and dS) are 0, the AdamW kernel repeats the twin's
float32 operations one by one (in the simulator no multiply-add is contracted; on a GPU the compiler contracts
m + (g - m) * c into one fused multiply-add, one rounding instead of two, so there the bound is 4 units of float32
per step), dropout is one multiplication.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

pytest.importorskip("numba")

from helpers import close, tol, unit_roundoff  # noqa: E402 (tinygrad_gpt imports numba: after the skip above)
from tinygrad_gpt import cuda_available  # noqa: E402 (as helpers)
from tinygrad_gpt import fused as F  # noqa: E402 (as helpers)
from tinygrad_gpt.optim import adamw_update  # noqa: E402 (as helpers)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "kernel_sim_run.py"
pytestmark = pytest.mark.slow  # the simulator and the PTX compiler run in subprocesses (~30 s)


def _run_worker(args, env_extra, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    # -W error: a NaN, overflow or division by zero inside a simulated kernel fails the run
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", str(WORKER), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"kernel worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


DEVICES = ["sim", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not cuda_available(), reason="needs a CUDA GPU with CuPy")])]


@pytest.fixture(scope="module", params=DEVICES)
def sim(request, tmp_path_factory):
    """Every kernel's outputs under the simulator or on the GPU: {case: {array name: array}}, {case: meta}."""
    path = tmp_path_factory.mktemp(request.param) / "kernels.npz"
    if request.param == "sim":
        _run_worker([str(path)], {"NUMBA_ENABLE_CUDASIM": "1"})
    else:
        _run_worker(["--cuda", str(path)], {"NUMBA_ENABLE_CUDASIM": "0"})
    data = np.load(path)
    meta = json.loads(str(data["__meta__"]))
    cases = {}
    for key in data.files:
        if key != "__meta__":
            case, name = key.split("/")
            cases.setdefault(case, {})[name] = data[key]
    return request.param, cases, meta


def cases_of(kind):
    """Case names of one kind, known without running the worker (for parametrize)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import kernel_sim_run as w
    table = {"layer_norm": w.LAYER_NORM, "attention": w.ATTENTION, "cross_entropy": w.CROSS_ENTROPY}[kind]
    return [f"{row[0]}-{dt}" for dt in ("float32", "float64") for row in table + w.GPU_ONLY[kind]]


def get_case(sim, case):
    device, cases, meta = sim
    if case not in cases:
        pytest.skip(f"{case}: a GPU-only size")
    return cases[case], meta[case]


def to_torch(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


# ---- LayerNorm ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases_of("layer_norm"))
def test_layer_norm(sim, case):
    a, m = get_case(sim, case)
    x, w, b, g = a["x"], a["w"], a.get("b"), a["g"]
    bound, bound_params = tol(x.dtype, m["reduction"]), tol(x.dtype, m["reduction_params"])
    y, cache = F.layer_norm_forward.reference(x.copy(), w, b)
    dx, dw, db = F.layer_norm_backward.reference(g, cache)
    for name, ours, twin in (("y", a["y"], y), ("mean", a["mean"], cache[1]), ("rstd", a["rstd"], cache[2]),
                             ("dx", a["dx"], dx), ("dw", a["dw"], dw), ("db", a["db"], db)):
        assert ours.dtype == x.dtype and ours.shape == np.shape(twin), name
        close(ours, twin, bound_params if name in ("dw", "db") else bound, f"{case} {name} vs NumPy twin")

    tx, tw = to_torch(x, True), to_torch(w, True)
    tb = to_torch(b if b is not None else np.zeros_like(w), True)
    ty = TF.layer_norm(tx, (x.shape[-1],), tw, tb, 1e-5)
    ty.backward(to_torch(g))
    close(a["y"], ty.detach().numpy(), bound, f"{case} y vs torch")
    if x.shape[-1] == 1:
        # width 1: every row is constant, xhat = 0, so dx = rstd * (dxhat - mean(dxhat) - 0) and dw = sum dy * xhat
        # are exactly 0 (the twin agrees above); torch leaves rounding noise of size u * rstd * |dy| there
        assert np.all(a["dx"] == 0) and np.all(a["dw"] == 0)
    else:
        close(a["dx"], tx.grad.numpy(), bound, f"{case} dx vs torch")
        close(a["dw"], tw.grad.numpy(), bound_params, f"{case} dw vs torch")
    if b is not None:
        close(a["db"], tb.grad.numpy(), bound_params, f"{case} db vs torch")


# ---- attention core (causal masked scaled softmax) ---------------------------------------------------------------

def visible(t, tk):
    """(t, Tk) bool: query i (absolute position Tk - t + i) sees key j."""
    return np.arange(tk)[None, :] <= np.arange(t)[:, None] + (tk - t)


@pytest.mark.parametrize("case", cases_of("attention"))
def test_attention(sim, case):
    a, m = get_case(sim, case)
    q, k, v, dy, keep, p = a["q"], a["k"], a["v"], a["dy"], a.get("keep"), m["p"]
    t, tk, hs = q.shape[-2], k.shape[-2], q.shape[-1]
    bound = tol(q.dtype, m["reduction"])

    # masked entries are exactly 0, in the probabilities and in dS; every row of P sums to 1
    hidden = ~visible(t, tk)
    assert np.all(a["prob"][..., hidden] == 0), "P is not exactly 0 at masked keys"
    assert np.all(a["ds"][..., hidden] == 0), "dS is not exactly 0 at masked keys"
    assert np.abs(a["prob"].sum(-1) - 1).max() <= tol(q.dtype, tk)
    if t == tk:  # the first query sees only the first key
        assert np.all(a["prob"][..., 0, 0] == 1)

    y, cache = F.attention_forward.reference(q, k, v, keep, p)
    dq, dk, dv = F.attention_backward.reference(dy.copy(), cache)
    for name, ours, twin in (("y", a["y"], y), ("dq", a["dq"], dq),
                             ("dk", a["dk"], dk), ("dv", a["dv"], dv)):
        assert ours.dtype == q.dtype and ours.shape == twin.shape, name
        close(ours, twin, bound, f"{case} {name} vs NumPy twin")

    tq, tk_, tv = to_torch(q, True), to_torch(k, True), to_torch(v, True)
    s = (tq @ tk_.transpose(-1, -2)) * hs ** -0.5
    s = s.masked_fill(torch.from_numpy(hidden), float("-inf"))
    att = torch.softmax(s, dim=-1)
    close(a["prob"], att.detach().numpy(), bound, f"{case} prob vs torch")
    if keep is not None:
        att = att * torch.from_numpy(keep).to(att.dtype) / (1 - p)
    ty = att @ tv
    ty.backward(to_torch(dy))
    close(a["y"], ty.detach().numpy(), bound, f"{case} y vs torch")
    for name, ours, theirs in (("dq", a["dq"], tq.grad), ("dk", a["dk"], tk_.grad), ("dv", a["dv"], tv.grad)):
        close(ours, theirs.numpy(), bound, f"{case} {name} vs torch")


# ---- cross-entropy -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases_of("cross_entropy"))
def test_cross_entropy(sim, case):
    a, m = get_case(sim, case)
    z, y, g = a["z"], a["y"], a["g"]
    bound, bound_loss = tol(z.dtype, m["reduction"]), tol(z.dtype, m["reduction_loss"])
    assert a["loss"].shape == () and a["loss"].dtype == z.dtype, "the loss is a 0-d array of the logits' dtype"
    loss, cache = F.cross_entropy_forward.reference(z, y)
    dz = F.cross_entropy_backward.reference(g, cache)
    close(a["loss"], loss, bound_loss, f"{case} loss vs NumPy twin")
    close(a["prob"], cache[0], bound, f"{case} prob vs NumPy twin")
    close(a["dz"], dz, bound, f"{case} dz vs NumPy twin")

    tz = to_torch(z, True)
    tl = TF.cross_entropy(tz, torch.from_numpy(y.astype(np.int64)))
    (tl * float(g)).backward()
    close(a["loss"], tl.detach().numpy(), bound_loss, f"{case} loss vs torch")
    close(a["dz"], tz.grad.numpy(), bound, f"{case} dz vs torch")
    if z.shape[1] == 1:  # one class: probability 1, loss 0, gradient 0, exactly
        assert np.all(a["prob"] == 1) and a["loss"] == 0 and np.all(a["dz"] == 0)


# ---- AdamW -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wd", [0.1, 0.0])
def test_adamw(sim, wd):
    device = sim[0]
    a, m = get_case(sim, f"adamw_wd{wd}")
    # the twin: optim.adamw_update (the plain NumPy code) on the same values
    param, m_twin, v_twin = a["p0"].copy(), np.zeros_like(a["p0"]), np.zeros_like(a["p0"])
    b1, b2 = m["betas"]
    for t, g in enumerate((a["g1"], a["g2"]), start=1):
        adamw_update.reference(param, g.copy(), m_twin, v_twin, m["lr"], b1, b2, m["eps"], wd, 1 - b1 ** t,
                               (1 - b2 ** t) ** 0.5)
    for name, ours, twin in (("parameters", a["p"], param), ("first moment", a["m"], m_twin),
                             ("second moment", a["v"], v_twin)):
        if device == "sim":
            np.testing.assert_array_equal(ours, twin, err_msg=f"AdamW kernel vs twin: {name}")
        else:
            close(ours, twin, 2 * 4 * unit_roundoff(np.float32), f"AdamW kernel vs twin: {name}")

    # torch.optim.AdamW (single-tensor path): the same formulas with its own fused helpers (lerp, addcmul, addcdiv),
    # which may round differently by one unit per operation: a few units of float32 relative to the largest value
    tp = to_torch(a["p0"].copy(), True)
    topt = torch.optim.AdamW([tp], lr=m["lr"], betas=tuple(m["betas"]), eps=m["eps"], weight_decay=wd, foreach=False)
    for g in (a["g1"], a["g2"]):
        tp.grad = to_torch(g)
        topt.step()
    close(a["p"], tp.detach().numpy(), 16 * unit_roundoff(np.float32), "AdamW kernel vs torch: parameters")


# ---- dropout -----------------------------------------------------------------------------------------------------

def test_dropout(sim):
    a, m = get_case(sim, "dropout")
    x, keep, p = a["x"], a["keep"], m["p"]
    twin = F.dropout_apply.reference(x, keep, p)
    np.testing.assert_array_equal(a["y"], twin, err_msg="dropout kernel vs twin")
    assert a["y"].dtype == np.float32


# ---- PTX for a real GPU -------------------------------------------------------------------------------------------

def test_kernels_compile_to_ptx_without_float64(tmp_path):
    """Every kernel compiles with numba-cuda for compute capability 8.0 (type inference, lowering, NVVM), and the
    float32 kernels contain no float64 instruction (a Python float constant or an upcast would show up as .f64)."""
    pytest.importorskip("numba.cuda")
    path = tmp_path / "ptx.json"
    env = {"NUMBA_ENABLE_CUDASIM": "0"}
    try:
        _run_worker(["--ptx", str(path)], env)
    except AssertionError as e:
        if any(s in str(e) for s in ("libnvrtc", "libnvvm", "NVVM", "DynamicLibNotFoundError", "CudaSupportError")):
            pytest.skip("no CUDA compiler libraries here (pip install numba-cuda[cu12] brings NVVM and NVRTC)")
        raise
    result = json.loads(path.read_text())
    assert len(result) == 2 * 8, sorted(result)   # LayerNorm, softmax, cross-entropy (fwd + bwd), AdamW, dropout
    assert all(r["entry"] for r in result.values())
    f64 = {k: r["f64_lines"] for k, r in result.items() if k.endswith("float32") and r["f64_lines"]}
    assert not f64, f"float32 kernels with float64 instructions: {f64}"


# ---- the whole model on a simulated GPU ------------------------------------------------------------------------------

def test_model_with_kernels_matches_torch_on_a_simulated_gpu():
    """Two of tests/test_gpu.py's tests, run without a GPU through tests/gpu_dryrun.py (the cuda device is the
    recording CuPy stand-in, the kernels run in the simulator): the float64 GPT (bias, GELU) and the float64 GPT with
    given dropout masks, forward and every gradient, against the torch reference within 1e-10 / 1e-9."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("TINYGRAD_GPT_KERNELS", None)
    select = "test_gpt_float64_on_cuda_matches_torch and kernels-True-gelu or test_dropout_with_given_masks and kernels"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_dryrun", "-p", "no:cacheprovider", "-q",
                           str(ROOT / "tests" / "test_gpu.py"), "-m", "gpu", "-k", select],
                          env=env, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-6000:] + proc.stderr[-3000:]
