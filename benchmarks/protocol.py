"""What every part of the benchmark agrees on: the configs, the batches, the thread settings of an engine's process,
how many calls a timing sample makes, the statistics of a set of samples, model FLOPs, and the same-math check's
tolerance. No engine library is imported here (the coordinator process stays light; each engine loads its own
libraries in its own process).

Dimension names: B batch, T block size (sequence length), C n_embd, H n_head, L n_layer, V vocab size.
"""
import dataclasses
import os
import platform
import time

import numpy as np

# ---- configs -----------------------------------------------------------------------------------------------------

WARMUP = 2
"""Untimed steps of every engine before the first round, the same on every config and for every engine (after the
check's steps, where JIT engines compile), so no engine is timed colder than another."""

SLOW = "would take hours at this size (tinygrad took 20 s a step on mid); name it with --engines to run it"
NUMPY_SLOW = ("the plain NumPy twins (what the kernels buy shows on the other configs) would add half an hour at "
              "this size; name it with --engines to run it")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape and its timing schedule.

    warmup: untimed steps of each engine before the first round (after the same-math check's steps).
    rounds x block: the alternation; in each round every engine runs `block` timed steps while the others wait, so
        each engine gets rounds * block step samples.
    check_steps: AdamW steps of the same-math check.
    check_runs: perturbed float32 runs of the reference that measure the float32 spread (check_tolerance).
    group: at most this many engine processes alive at once (0: all); the engines then alternate in groups, each
        with tinygrad_gpt and torch-fused (runner.plan_groups). Bounds memory where a process holds gigabytes.
    slow_engines: engines the default run leaves out at this size, with why (bench.py runs them when named).
    """
    name: str
    batch_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    vocab_size: int = 65          # tinyshakespeare's characters
    warmup: int = WARMUP
    rounds: int = 5
    block: int = 4
    check_steps: int = 5
    check_runs: int = 16
    group: int = 0
    slow_engines: dict = dataclasses.field(default_factory=dict)   # left out unless named: {engine: why}

    def gpt_config(self):
        """GPTConfig fields, the same for every engine. dropout 0: masks would time random-number generators."""
        return dict(vocab_size=self.vocab_size, block_size=self.block_size, n_embd=self.n_embd,
                    n_head=self.n_head, n_layer=self.n_layer, dropout=0.0, bias=True, activation="relu")

    def describe(self):
        return (f"B={self.batch_size} T={self.block_size} C={self.n_embd} H={self.n_head} L={self.n_layer} "
                f"V={self.vocab_size}")

    @property
    def tokens(self):
        return self.batch_size * self.block_size


CONFIGS = {
    "small": BenchConfig("small", 16, 32, 64, 4, 4, rounds=5, block=6),
    "nanogpt-cpu": BenchConfig("nanogpt-cpu", 12, 64, 128, 4, 4, rounds=5, block=4),
    "mid": BenchConfig("mid", 32, 128, 192, 6, 6, rounds=5, block=2, check_steps=4),
    # ~5 s a step on 2 cores: one step per block, 9 rounds (torch's fused step there has been bimodal from run to run,
    # and fewer samples gave medians anywhere between its two modes); groups of 4 processes (~3 GB each)
    "lecture": BenchConfig("lecture", 64, 256, 384, 6, 6, rounds=9, block=1, check_steps=3, check_runs=4, group=4,
                           slow_engines=dict({n: SLOW for n in ("torch-compile", "tinygrad", "autograd")},
                                             **{"tinygrad_gpt-numpy": NUMPY_SLOW})),
}
QUICK_CONFIGS = ("small", "nanogpt-cpu")


def quick_schedule(bc):
    """--quick: enough samples to exercise every path and give rough numbers, not to measure."""
    return dataclasses.replace(bc, rounds=3, block=min(bc.block, 3), check_steps=min(bc.check_steps, 3),
                               check_runs=min(bc.check_runs, 8))


def make_batch(bc, seed):
    """Random token ids (the speed does not depend on the text): x, y int64 (B, T), y = x shifted by one."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, bc.vocab_size, (bc.batch_size, bc.block_size + 1), dtype=np.int64)   # (B, T+1)
    return data[:, :-1].copy(), data[:, 1:].copy()                                             # (B, T) each


TIMING_SEED = 0          # the batch every timed step trains on
CHECK_SEED = 1000        # the same-math check's batch i comes from seed CHECK_SEED + i
INIT_SEED = 0            # GPT(cfg, seed=INIT_SEED).state_dict(): the weights every engine starts from


# ---- the allocator -----------------------------------------------------------------------------------------------

# glibc's malloc settings every engine process runs with, set in its environment before it starts (ALLOCATOR="tuned",
# the default), or none for any (ALLOCATOR="default": glibc's own, and tinygrad_gpt's first-use mallopt switched off
# with TINYGRAD_GPT_TUNE=0). "tuned" is what tinygrad_gpt's kernels set for themselves on first use
# (backend.tune_host_allocator: no mmap threshold below 1 GiB, never trim), as environment variables that glibc reads
# at start-up: a training step allocates and frees the same large temporaries every step, and the setting spares
# each of them a fresh mmap whose pages the kernel zero-fills on first touch. It helps torch as much as it helps us
# (issue 20 measured it), so the rival gets it too.
ALLOCATORS = {
    "tuned": {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2 ** 64 - 1)},
    "default": {"TINYGRAD_GPT_TUNE": "0"},
}


# ---- threads -----------------------------------------------------------------------------------------------------

# Read by the libraries when they load; set in each engine process's environment before it starts.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS",
                   "NUM_CPU_THREADS")        # the last is tinygrad's CPU device


def thread_env(n):
    """Environment variables that give every library of an engine process n threads."""
    return {var: str(n) for var in THREAD_ENV_VARS}


def engine_cpus(n):
    """The CPUs an engine process is pinned to: the first n this process may use (all engines share them, taking
    turns). Pinning makes the libraries that size their pools from the CPU count (XLA, tinygrad) see n CPUs too."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))[:n]


# ---- timing ------------------------------------------------------------------------------------------------------


def calls_per_sample(fn, min_s, sync=None):
    """How many calls of fn one timing sample makes so that it lasts at least min_s: a call shorter than that is
    repeated within the sample (the sample is then the mean per call), which keeps the clock's resolution and the
    loop's overhead small beside it. Calls fn once, timed (with sync() after it where work is queued asynchronously),
    to calibrate; that call is the caller's warm-up too, so it is made even when min_s is 0 (then the answer is 1)."""
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    once = time.perf_counter() - t0
    return max(1, int(min_s / max(once, 1e-9)) + 1) if min_s > 0 else 1


# ---- statistics, FLOPs -------------------------------------------------------------------------------------------


def summarize(seconds):
    """Median, quartiles and range (ms) of samples given in seconds."""
    s = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3), "iqr_ms": float(q3 - q1),
            "min_ms": float(s.min()), "max_ms": float(s.max()), "n": int(s.size)}


def model_flops(bc, n_params):
    """Model FLOPs of one training step (forward + backward):

        FLOPs = 6 * N_mm * B * T  +  12 * L * B * T^2 * C,   N_mm = 12 * L * C^2 + V * C

    N_mm counts the weights that take part in matmuls (qkv 3C^2, proj C^2, fc 4C^2, mlp proj 4C^2 per layer; lm_head
    V*C); 6 = 2 FLOPs per multiply-add x 3 (forward, and dX and dW backward). Attention: q k^T and a v are
    2 * B * T^2 * C each forward, the backward twice that; the masked half is counted (the engines compute it).
    Embedding lookups, biases, LayerNorm, softmax and AdamW are left out (elementwise, < 2% here)."""
    B, T, C, L, V = bc.batch_size, bc.block_size, bc.n_embd, bc.n_layer, bc.vocab_size
    n_mm = 12 * L * C * C + V * C
    dense, attention = 6 * n_mm * B * T, 12 * L * B * T * T * C
    return {"n_params": int(n_params), "n_matmul_params": n_mm, "dense": dense, "attention": attention,
            "total": dense + attention, "formula": "6*N_mm*B*T + 12*L*B*T^2*C, N_mm = 12*L*C^2 + V*C"}


def blas_floor(results):
    """The BLAS floor from a process's timed products ({"products": [...]}, samples from several rounds:
    matmul_shapes.time_products) -> per-product medians and their sum per step (ms)."""
    rows, total = [], 0.0
    for p in results["products"]:
        med = float(np.median(p["samples"])) * 1e3
        total += p["count"] * med
        rows.append({"layer": p["layer"], "product": p["product"], "count": p["count"], "median_ms": med,
                     "gflops": p["flops"] / med / 1e6})
    return {"rows": rows, "per_step_ms": total}


# ---- the same-math check -----------------------------------------------------------------------------------------

U32 = 2.0 ** -24         # float32 unit roundoff
SPREAD_FACTOR = 3        # how far beyond our own measured float32 spread a peer may lie (see check_tolerance)


PERTURBATION = 2.0 ** -20  # relative size of the reference's weight perturbations (16 float32 ulps)


def perturbed(state_dict, seed):
    """The state dict with every weight scaled by 1 + PERTURBATION or 1 - PERTURBATION (random signs from seed).
    Random signs keep the first loss within its own rounding (the changes cancel in the sum), while ReLU inputs move
    enough that the runs sample the flips another engine's rounding triggers (see check_tolerance)."""
    rng = np.random.default_rng(seed)
    return {k: (v * (1.0 + np.where(rng.random(v.shape) < 0.5, -PERTURBATION, PERTURBATION))).astype(v.dtype)
            for k, v in state_dict.items()}


def check_tolerance(runs32, exact, n_terms):
    """Per-step tolerance of the same-math check from our own trajectories: `exact`, the float64 run (K losses;
    tests/test_trajectory.py holds it to 1e-8 of torch's float64 run), and `runs32`, float32 runs from the same
    weights and from R `perturbed` copies, (R + 1, K) losses; n_terms = B * T, the positions each loss averages.

    A correct float32 engine differs from the exact trajectory only by rounding, but AdamW amplifies rounding: its
    update lr * m / (sqrt(v) + eps) does not shrink with the gradient, and at initialisation many ReLU inputs lie
    within rounding of zero, so a rounding difference can flip a ReLU, change a few gradient entries' signs and move
    those weights by 2 lr. From the second step on the loss then jumps by up to ~1e-4 at a step no one can predict;
    the first step (no update yet) carries forward rounding only. The perturbed runs sample those jumps (copies
    moved by a single ulp proved too gentle: benchmarks/README.md). And an engine may add up the n_terms
    per-position losses in any order: summed one after the other in float32 (tinygrad's CPU device does), the mean
    picks up a random walk of n_terms roundings, about sqrt(n_terms) u |loss|, where ours (pairwise) stays near u.
    So the tolerance is
        step 1:   SPREAD_FACTOR * S_1 + sqrt(n_terms) u |exact_1|,   S_1 = max over runs of |run_1 - exact_1|
        step k>1: SPREAD_FACTOR * S   + sqrt(n_terms) u |exact_k|,   S   = max over runs and steps of |run - exact|
    A peer's rounding is one more draw of the spread S, and SPREAD_FACTOR leaves room for the draws our few runs
    missed. How often a correct engine still fails, and which differences in the math the check catches, is measured
    by benchmarks/check_power.py (its numbers are in benchmarks/README.md)."""
    runs = np.abs(np.asarray(runs32, dtype=np.float64) - np.asarray(exact, dtype=np.float64))   # (R+1, K)
    floor = np.sqrt(n_terms) * U32 * np.abs(np.asarray(exact, dtype=np.float64))
    tol = SPREAD_FACTOR * runs.max() + floor
    tol[0] = SPREAD_FACTOR * runs[:, 0].max() + floor[0]
    return tol


def check_trajectory(losses, exact, tol):
    """The verdict on one engine's check losses: passed, the worst step, its difference and tolerance."""
    losses = np.asarray(losses, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    if losses.shape != exact.shape or not np.all(np.isfinite(losses)):
        return {"passed": False, "losses": losses.tolist(), "why": "non-finite or missing losses"}
    diff = np.abs(losses - exact)
    k = int(np.argmax(diff / tol))
    return {"passed": bool(np.all(diff <= tol)), "losses": losses.tolist(), "max_abs_diff": float(diff.max()),
            "worst_step": k + 1, "diff_at_worst": float(diff[k]), "tol_at_worst": float(tol[k])}


# ---- the machine -------------------------------------------------------------------------------------------------


def cpu_busy(seconds, cpus=None):
    """CPUs busy (0 .. len(cpus)) on average over `seconds`, from /proc/stat: the coordinator measures it while no
    engine runs (the engines wait on their pipes), so it is the load of everything else on the machine. cpus: the
    CPU numbers to watch (default: all). None where /proc/stat is missing."""
    def read():
        out = {}
        try:
            with open("/proc/stat") as f:
                for line in f:
                    name = line.split(maxsplit=1)[0]
                    if name.startswith("cpu") and name != "cpu":
                        v = [int(x) for x in line.split()[1:]]
                        out[int(name[3:])] = (sum(v) - v[3] - (v[4] if len(v) > 4 else 0), sum(v))  # busy, total
        except (OSError, ValueError):
            return None
        return out
    a = read()
    time.sleep(seconds)
    b = read()
    if not a or not b:
        return None
    busy = 0.0
    for c in (cpus if cpus is not None else sorted(b)):
        if c in a and c in b and b[c][1] > a[c][1]:
            busy += (b[c][0] - a[c][0]) / (b[c][1] - a[c][1])
    return busy


BUSY_CPUS = 0.25
"""A run is marked busy (and refused for publishing unless forced, bench.py) when the other processes on the machine
kept more than this many CPUs busy on average, or more than 2 x BUSY_CPUS in any window (measured by cpu_busy on the
engines' CPUs while no engine runs: before the run and in the pause before every turn). On a 2-core machine a
neighbour taking a quarter of a core already stretches parallel regions (a thread waits for its descheduled sibling:
docs/cpu-performance.md)."""


class LoadWatch:
    """The load of everything else on the engines' CPUs, sampled in windows where no engine runs."""

    def __init__(self, cpus):
        self.cpus, self.samples = cpus, []

    def sample(self, seconds):
        got = cpu_busy(seconds, self.cpus)
        if got is not None:
            self.samples.append(got)
        return got

    def summary(self):
        s = np.asarray(self.samples, dtype=np.float64)
        if s.size == 0:
            return {"windows": 0, "busy": None}
        mean, peak = float(s.mean()), float(s.max())
        busy = mean > BUSY_CPUS or peak > 2 * BUSY_CPUS
        return {"windows": int(s.size), "mean_cpus": round(mean, 3), "max_cpus": round(peak, 3), "busy": busy,
                "threshold_cpus": BUSY_CPUS}


def hardware_peak(cpus):
    """The float32 peak of `cpus` cores: cores x FMA lanes x FMA units x 2 FLOPs x clock. Lanes from the CPU flags
    (AVX-512: 16 float32, AVX2 with FMA: 8, else SSE: 4 and no FMA, 2 FLOPs a lane as a multiply and an add), FMA
    units per core 2 where AVX-512 is present (server parts: Skylake-SP and later have two 512-bit FMA ports on the
    Xeons this is written for) else 2 for AVX2 (Haswell onwards), the clock from /proc/cpuinfo's "cpu MHz" (the
    current clock; a virtual machine reports its nominal one). An estimate from public data sheets, stated with its
    parts; None where /proc/cpuinfo is missing."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    mhz = None
    for line in text.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("cpu MHz") and mhz is None:
            mhz = float(line.split(":", 1)[1])
    if not mhz:
        return None
    if "avx512f" in flags:
        lanes, units = 16, 2
    elif "avx2" in flags and "fma" in flags:
        lanes, units = 8, 2
    else:
        lanes, units = 4, 1
    gflops = cpus * lanes * units * 2 * mhz / 1e3
    return {"gflops": gflops, "cores": cpus, "fp32_lanes": lanes, "fma_units": units, "ghz": mhz / 1e3,
            "formula": "cores x FMA lanes x FMA units x 2 x GHz"}


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform()}
    if hasattr(os, "sched_getaffinity"):
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return info
