"""Data-parallel training over MPI (tinygrad_gpt/distributed.py), with real `mpiexec -n 2` runs on a tiny model.

Every run is a subprocess: mpi4py is never imported into the test process, and each rank gets one BLAS thread
(two ranks on this 2-core machine). The whole file takes 10-15 s here (more when the machine is busy).

Why the equivalence holds, and to what tolerance
------------------------------------------------
With N ranks and a global batch of B rows, rank r trains on rows [r B/N, (r+1) B/N) of exactly the batch one
process would draw (the ranks share the batch stream and keep their own rows), computes the gradient of its mean
loss over K/N positions (K = B T), and the Allreduce sums the N gradients before the scale by 1/N. The mean of N
means of equal-sized parts is the mean of the whole, so in exact arithmetic the two runs are identical. In float32
only the order of additions differs:

* `simulate` (tests/ddp_driver.py) does the ranks' arithmetic in one process, block by block; for N = 2 a sum of
  two floats does not depend on the order MPI adds them in, so the 2-rank run must equal it BITWISE. That shows the
  MPI plumbing (rows, averaging, hook placement, identical updates) adds nothing.
* against one process with the whole batch, each sum of K terms is re-associated. Any two orders of a K-term
  float32 sum are each within gamma_K = K u of the exact sum, relative to the sum of the terms' magnitudes
  (Higham, Accuracy and Stability of Numerical Algorithms, sec. 4.2; u = 2^-24), so they differ by at most
  2 gamma_K of it.
  - loss: a mean of K positive cross-entropies, so |dL| <= 2 gamma_K L per step (the parameters' tiny drift
    adds |grad L| |dp|, far smaller).
  - parameters: a relative change rho of a gradient element changes Adam's direction m_hat / (sqrt(v_hat) + eps)
    by at most about 2 rho times its size, which is <= ~1 in these first steps; so each step moves a parameter
    differently by at most lr * 2 * (2 gamma_K), plus one rounding to the grid (np.spacing(p)). Over S steps:
    |dp_i| <= S (spacing(p_i) + 4 lr gamma_K). But Higham's bound is relative to the sum of the terms'
    magnitudes, not to their sum: where a gradient element (or an Adam moment) cancels, rho is that many times
    larger, and the query/key weights' gradients do cancel (attention is nearly uniform at initialisation): in
    float32 their measured differences reach 1-2 times the bound above. So parameters are compared in float64 runs
    (tests/ddp_driver.py, dtype="float64"), with a generous allowance of 1e6 for cancellation
    (ddp_driver.parameter_bound): still about 1e-10 absolute, where a wrong average moves parameters by 1e-4.
  With --grad-accum A each rank sums A micro-batch gradients before the allreduce and the hook scales by 1/(N A):
  the same argument with N A parts.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_support import TINY_MODEL, log
from ddp_driver import worst_parameter_difference

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "ddp_driver.py"
FAULTS = REPO / "tests" / "fault_driver.py"


def _find_mpiexec():
    here = Path(sys.executable).parent / "mpiexec"           # the mpich wheel puts it beside the venv's python
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY,
    reason="data-parallel tests need mpi4py and an mpiexec: pip install -e '.[mpi]' (the mpi4py and mpich wheels)")]

# the equivalence run: tiny model, constant lr, clipping on (so clipping sees the averaged gradient)
B, T, STEPS, LR = 8, 16, 20, 1e-3
U = 2.0 ** -24                       # float32 unit roundoff
GAMMA = B * T * U                    # Higham's gamma_K for the K = B T terms of each sum
GAMMA64 = B * T * 2.0 ** -53         # ... in float64
EQ = dict(batch_size=B, block_size=T, n_embd=32, n_head=2, n_layer=2, dropout=0.0, max_iters=STEPS, lr=LR,
          lr_schedule="constant", warmup_iters=0, grad_clip=1.0, eval_interval=10, eval_iters=2, sample_chars=0)
TINY = [*TINY_MODEL, "--sample-chars", "10", "--lr-schedule", "constant", "--warmup-iters", "0"]
TIMEOUT = 120                        # no run here should come near this; a hang fails instead of blocking CI
FAIL_TIMEOUT = 60                    # a failed rank must end the job within this (it takes ~2 s on an idle machine)


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        e[var] = "1"                 # one BLAS thread per rank: 2 ranks on 2 cores, deterministic sums
    return e


def run(cmd, cwd=None, extra_env=None, timeout=TIMEOUT):
    e = env()
    e.update(extra_env or {})
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def mpiexec(n, *args, **kw):
    return run([MPIEXEC, "-n", n, *args], **kw)


def driver_args(**kw):
    return ["--"] + [f"{k}={json.dumps(v)}" for k, v in kw.items()]


def train_args(corpus, out, *extra, fault=None):
    """The train command; fault "RANK:STEP:MODE": through tests/fault_driver.py, which injects that failure."""
    cli = [sys.executable, "-m", "tinygrad_gpt"] if fault is None else [sys.executable, FAULTS, fault]
    return [*cli, "train", "--data", corpus, "--out", out, *TINY, *extra]


def params(npz):
    return {k[2:]: npz[k] for k in npz.files if k.startswith("p.")}


@pytest.fixture(scope="module")
def equivalence(corpus, tmp_path_factory):
    """One 2-rank run (each rank in its own empty working directory, the run directory given relative to it),
    one single-process run with the whole batch, and the one-process simulation of the 2 ranks' arithmetic."""
    root = tmp_path_factory.mktemp("equivalence")
    wd0, wd1 = root / "rank0", root / "rank1"
    wd0.mkdir()
    wd1.mkdir()
    kw = dict(EQ, data=str(corpus))
    ddp = [sys.executable, DRIVER, "train", root / "ddp.npz", *driver_args(out="run", check_sync=1, **kw)]
    r = run([MPIEXEC, "-n", 1, "-wdir", wd0, *ddp, ":", "-n", 1, "-wdir", wd1, *ddp])
    assert r.returncode == 0, r.stderr
    r1 = run([sys.executable, DRIVER, "train", root / "one.npz", *driver_args(out=str(root / "one"), **kw)])
    assert r1.returncode == 0, r1.stderr
    r2 = run([sys.executable, DRIVER, "simulate", root / "sim.npz", 2, *driver_args(**kw)])
    assert r2.returncode == 0, r2.stderr
    kw64 = dict(kw, dtype="float64")
    r3 = mpiexec(2, sys.executable, DRIVER, "train", root / "ddp64.npz", *driver_args(out=str(root / "ddp64"), **kw64))
    assert r3.returncode == 0, r3.stderr
    r4 = run([sys.executable, DRIVER, "train", root / "one64.npz", *driver_args(out=str(root / "one64"), **kw64)])
    assert r4.returncode == 0, r4.stderr
    return {"ddp": np.load(root / "ddp.npz"), "one": np.load(root / "one.npz"), "sim": np.load(root / "sim.npz"),
            "ddp64": np.load(root / "ddp64.npz"), "one64": np.load(root / "one64.npz"),
            "ddp_dir": wd0 / "run", "one_dir": root / "one", "rank1_wd": wd1, "stdout": r.stdout}


@pytest.fixture(scope="module")
def accumulation(corpus, tmp_path_factory, equivalence):
    """2 ranks each accumulating 2 micro-batches (so 4 parts of 2 rows), and the simulation of that arithmetic."""
    root = tmp_path_factory.mktemp("accumulation")
    kw = dict(EQ, data=str(corpus), grad_accum=2)
    r = mpiexec(2, sys.executable, DRIVER, "train", root / "ddp.npz", *driver_args(out=str(root / "run"), **kw))
    assert r.returncode == 0, r.stderr
    r2 = run([sys.executable, DRIVER, "simulate", root / "sim.npz", 2, *driver_args(**kw)])
    assert r2.returncode == 0, r2.stderr
    return {"ddp": np.load(root / "ddp.npz"), "sim": np.load(root / "sim.npz"), "one": equivalence["one"]}


# ---- equivalence -------------------------------------------------------------------------------------------------
def test_two_ranks_do_exactly_the_one_process_simulation_of_two_ranks(equivalence):
    ddp, sim = equivalence["ddp"], equivalence["sim"]
    assert len(ddp["losses"]) == STEPS
    np.testing.assert_array_equal(ddp["losses"], sim["losses"])
    for name, p in params(ddp).items():
        np.testing.assert_array_equal(p, params(sim)[name], err_msg=name)


def test_two_ranks_match_one_process_with_the_whole_batch(equivalence):
    """Per-step and evaluation losses within the float32 bound, parameters (float64 runs) within
    ddp_driver.parameter_bound: see the module docstring."""
    ddp, one = equivalence["ddp"], equivalence["one"]
    np.testing.assert_allclose(ddp["losses"], one["losses"], rtol=2 * GAMMA, atol=0)
    a, b = log(equivalence["ddp_dir"]), log(equivalence["one_dir"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 10, 20]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss"):
            assert abs(ra[key] - rb[key]) <= 2 * GAMMA * rb[key], (ra, rb)
    ddp64, one64 = equivalence["ddp64"], equivalence["one64"]
    np.testing.assert_allclose(ddp64["losses"], one64["losses"], rtol=2 * GAMMA64, atol=0)
    worst = worst_parameter_difference(one64, ddp64, STEPS, LR, GAMMA64)
    assert worst > 0                 # the runs do differ (summation order): the comparison is not vacuous
    print(f"largest parameter difference (float64): {worst:.2g} of its bound")


def test_two_ranks_accumulating_do_exactly_the_simulation_and_match_the_whole_batch(accumulation):
    ddp, sim, one = accumulation["ddp"], accumulation["sim"], accumulation["one"]
    assert len(ddp["losses"]) == STEPS and set(ddp.files) == set(sim.files)
    for name in ddp.files:
        np.testing.assert_array_equal(ddp[name], sim[name], err_msg=name)
    np.testing.assert_allclose(ddp["losses"], one["losses"], rtol=2 * GAMMA, atol=0)


def test_accumulation_that_does_not_split_each_rank_s_rows_is_one_error(corpus, tmp_path):
    r = mpiexec(2, *train_args(corpus, tmp_path / "run", "--batch-size", "8", "--grad-accum", "3"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: each rank's 4 rows of batch_size 8 do not split into 3 equal micro-batches (--grad-accum 3): use a "
        "batch size that is a multiple of 6"]
    assert not (tmp_path / "run").exists()


# ---- files, output, checkpoints ----------------------------------------------------------------------------------
def test_only_rank_0_writes_and_prints(equivalence):
    assert list(equivalence["rank1_wd"].iterdir()) == []          # rank 1 wrote nothing (and read no corpus file)
    run_dir = equivalence["ddp_dir"]
    assert {"last", "best", "log.jsonl", "loss.png"} <= {p.name for p in run_dir.iterdir()}
    meta = json.loads((run_dir / "last" / "meta.json").read_text())
    assert meta["data_parallel"] == {"ranks": 2, "rows_per_rank": B // 2}
    assert len(meta["rng"]["model_ranks"]) == 2
    assert meta["rng"]["model_ranks"][0] == meta["rng"]["model"]
    assert meta["rng"]["model_ranks"][0] != meta["rng"]["model_ranks"][1]      # each rank its own dropout stream


def test_resume_of_a_two_rank_run_continues_exactly(corpus, tmp_path):
    """With dropout on (each rank's own mask stream, saved per rank): 6 steps + resume for 6 more == 12 steps."""
    extra = ["--dropout", "0.1", "--max-iters", "12", "--eval-interval", "3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    r = mpiexec(2, *train_args(corpus, whole, *extra))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("finished at step 12") == 1                 # rank 0 alone prints
    r = mpiexec(2, *train_args(corpus, part, *extra, "--stop-at", "6"))
    assert r.returncode == 0, r.stderr
    r = mpiexec(2, *train_args(corpus, part, "--resume", "--no-progress"))
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    for name in ("model.safetensors", "optim.safetensors"):
        assert (whole / "last" / name).read_bytes() == (part / "last" / name).read_bytes(), name
    strip = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in rec.items() if k not in strip} for rec in log(whole)] == \
           [{k: v for k, v in rec.items() if k not in strip} for rec in log(part)]



def test_a_time_budget_plans_on_rank_0_and_every_rank_trains_to_it(corpus, tmp_path):
    """--time under MPI: rank 0 rehearses (a trial checkpoint of the data-parallel layout, one dropout state per
    rank), every rank trains the planned max_iters, and the checkpoint keeps each rank's own dropout state."""
    out = tmp_path / "run"
    r = mpiexec(2, *train_args(corpus, out, "--dropout", "0.1", "--time", "10s"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("time budget 10s: max_iters") == 1                     # rank 0 alone prints the plan
    meta = json.loads((out / "last" / "meta.json").read_text())
    assert meta["train"]["max_iters"] == meta["budget"]["max_iters"] == log(out)[-1]["step"]
    ranks = meta["rng"]["model_ranks"]
    assert len(ranks) == 2 and ranks[0] != ranks[1]

# ---- failures ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_with_a_message(corpus, tmp_path, mode):
    """Rank 1 fails at step 5: rank 0, waiting in that step's allreduce, must not wait forever. The timeout is the
    bound (a hang raises TimeoutExpired)."""
    t0 = time.perf_counter()
    r = mpiexec(2, *train_args(corpus, tmp_path / "run", "--max-iters", "40", "--eval-interval", "10",
                               fault=f"1:5:{mode}"), timeout=FAIL_TIMEOUT)
    took = time.perf_counter() - t0
    assert r.returncode != 0
    print(f"{mode}: the job ended {took:.1f} s after its start")
    if mode == "raise":
        assert "error: rank 1 of 2: injected failure at step 5" in r.stderr
        assert "MPI_Abort" in r.stderr
    else:                            # killed without a word: the MPI runtime reports it and tears the job down
        assert "rank 1: kill at step 5" in r.stderr
    assert "finished" not in r.stdout


def test_check_sync_catches_ranks_that_drift_apart(corpus, tmp_path):
    r = mpiexec(2, *train_args(corpus, tmp_path / "run", "--max-iters", "10", "--eval-interval", "5",
                               "--check-sync", "2", fault="1:3:desync"))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: after step 4 the parameters differ between ranks (rank 0 vs rank(s) 1): "
                      "the ranks are out of sync"], r.stderr


def test_a_batch_that_does_not_split_over_the_ranks_is_one_error(corpus, tmp_path):
    r = mpiexec(2, *train_args(corpus, tmp_path / "run", "--batch-size", "5"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: batch_size 5 does not split evenly over 2 data-parallel ranks: use a multiple of 2 (the global "
        "batch is divided into equal parts)"]
    assert not (tmp_path / "run").exists()


# ---- one process: no MPI needed, and --ddp alone is the plain run -------------------------------------------------
def test_plain_run_never_imports_mpi4py(corpus, tmp_path):
    code = ("import sys, tinygrad_gpt; from tinygrad_gpt.cli import main; "
            f"rc = main({[str(a) for a in train_args(corpus, tmp_path / 'run', '--max-iters', '2')[3:]]!r}); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; sys.exit(rc)")
    r = run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr


def test_ddp_without_mpiexec_is_a_one_rank_run_equal_to_the_plain_one(corpus, tmp_path):
    extra = ["--dropout", "0.1", "--max-iters", "6", "--eval-interval", "3"]
    r = run(train_args(corpus, tmp_path / "ddp", *extra, "--ddp"))
    assert r.returncode == 0, r.stderr
    assert "data-parallel: 1 ranks" in r.stdout
    r = run(train_args(corpus, tmp_path / "plain", *extra))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ddp" / "last" / "model.safetensors").read_bytes() == \
           (tmp_path / "plain" / "last" / "model.safetensors").read_bytes()


def test_launch_is_detected_from_the_mpi_environment():
    from tinygrad_gpt.distributed import launched_by_mpi
    assert launched_by_mpi({}) is None
    assert launched_by_mpi({"PMI_RANK": "1", "PMI_SIZE": "4"}) == (1, 4)                           # MPICH, Intel MPI
    assert launched_by_mpi({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}) == (0, 2)   # Open MPI
    assert launched_by_mpi({"PMI_RANK": "0"}) is None


# ---- cuda --------------------------------------------------------------------------------------------------------
def _gpus():
    from tinygrad_gpt.backend import cuda_available
    if not cuda_available():
        return 0
    import cupy
    return cupy.cuda.runtime.getDeviceCount()


@pytest.mark.gpu
@pytest.mark.parametrize("transport, ranks", [("host", 2), ("nccl", 2), ("nccl", 1)])
def test_cuda_ranks_match_one_cuda_process(corpus, tmp_path, transport, ranks):
    """The allreduce on CuPy buffers (NCCL needs one GPU per rank; 'host' stages through host memory and can share
    one GPU). GPU reductions are not run-to-run bitwise, so the comparison is looser than on the CPU."""
    gpus = _gpus()
    if gpus == 0:
        pytest.skip("no usable CUDA device")
    if transport == "nccl" and gpus < ranks:
        pytest.skip(f"NCCL needs one GPU per rank ({ranks} ranks, {gpus} GPU(s))")
    kw = dict(EQ, data=str(corpus), device="cuda")
    r = mpiexec(ranks, sys.executable, DRIVER, "train", tmp_path / "ddp.npz",
                *driver_args(out=str(tmp_path / "ddp"), check_sync=5, ddp=True, **kw),
                extra_env={"TINYGRAD_GPT_CUDA_ALLREDUCE": transport})
    assert r.returncode == 0, r.stderr
    r = run([sys.executable, DRIVER, "train", tmp_path / "one.npz", *driver_args(out=str(tmp_path / "one"), **kw)])
    assert r.returncode == 0, r.stderr
    ddp, one = np.load(tmp_path / "ddp.npz"), np.load(tmp_path / "one.npz")
    np.testing.assert_allclose(ddp["losses"], one["losses"], rtol=1e-4)
    for name, p in params(one).items():
        np.testing.assert_allclose(params(ddp)[name], p, rtol=0, atol=STEPS * 4 * LR * 1e-3, err_msg=name)
