"""Benchmarks of tinygrad_gpt, the torch-free half of the suite (benchmarks/bench.py adds the torch engines).

What is here: the benchmark configs; a fair timer (warm-up, then repeats interleaved across engines, device
synchronised before every clock read, median and spread); thread pinning; the float32 matmul rate of this machine;
model FLOPs per training step and MFU; peak memory; the tinygrad_gpt engine (training step, forward+backward of each
layer alone, sampling with and without the key/value cache); the runner that times any set of engines; and the
JSON / markdown / PNG writers. This module never imports torch (SPEC section 6): an engine is any object with the
small interface of `TinygradEngine`, so benchmarks/bench.py plugs its torch engines into the same runner.

Torch-free use (tinygrad_gpt alone, no ratios):
    python -m tinygrad_gpt.bench --configs small nanogpt-cpu --threads 2 [--quick] [--out bench-results]

Formulas (also in benchmarks/README.md):
    model FLOPs per step = 6 * N_mm * B * T  +  12 * L * B * T^2 * C
        N_mm = 12 * L * C^2 + V * C, the weights that take part in matmuls (qkv 3C^2, proj C^2, fc 4C^2, mlp proj
        4C^2 per layer; lm_head V*C). Embedding tables (lookups), biases and LayerNorm are left out (< 2%).
        6 = 2 FLOPs per multiply-add, times 3 for forward + backward (dX and dW). 12 * L * B * T^2 * C: per layer the
        forward does q k^T and a v (2 * 2 * B * T^2 * C), the backward twice that. Masked (causal) entries are counted:
        the engines compute them.
    MFU = model FLOPs per step / step time / float32 matmul rate measured on this machine (NumPy sgemm, same threads)

Dimension names: B batch, T block size (sequence length), C n_embd, H n_head, L n_layer, V vocab size.
"""
import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from . import functional as F
from .kernels.cpu import setup as cpu_setup
from .backend import cuda_available, get_device, tune_host_allocator
from .model import GPT, GPTConfig, count_parameters
from .optim import AdamW
from .tensor import Tensor, no_grad

# ---- configs -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape. warmup/repeats are the full-run defaults (--repeats overrides; --quick shrinks)."""
    name: str
    batch_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    vocab_size: int = 65          # tinyshakespeare's characters
    warmup: int = 3
    repeats: int = 20

    def gpt_config(self):
        """Keyword arguments of GPTConfig (both engines). dropout 0: masks would time RNGs, not the model."""
        return dict(vocab_size=self.vocab_size, block_size=self.block_size, n_embd=self.n_embd,
                    n_head=self.n_head, n_layer=self.n_layer, dropout=0.0, bias=True, activation="relu")

    def describe(self):
        return (f"B={self.batch_size} T={self.block_size} C={self.n_embd} H={self.n_head} L={self.n_layer} "
                f"V={self.vocab_size}")


CONFIGS = {
    "small": BenchConfig("small", 16, 32, 64, 4, 4, warmup=5, repeats=30),
    "nanogpt-cpu": BenchConfig("nanogpt-cpu", 12, 64, 128, 4, 4, warmup=3, repeats=20),
    # ~5 s a step on 2 cores; 9 repeats because torch's fused step there is bimodal from run to run (medians of
    # 4.5 s and 5.1-5.6 s seen), and 3 repeats gave medians anywhere in between
    "lecture": BenchConfig("lecture", 64, 256, 384, 6, 6, warmup=1, repeats=9),
}
QUICK_CONFIGS = ("small", "nanogpt-cpu")
LAYERS = ("embedding", "layernorm", "attention", "mlp", "lm_head+ce")

# The targets on the 2-core machine (benchmarks, never timed unit tests).
TARGETS = {
    "step_ratio_fused": 1.0,      # tinygrad_gpt / torch fused, every config: <= 1.0
    "step_ratio_lecture": 0.8,    # tinygrad_gpt / the lecture's torch model: <= 0.8
    "lecture_mfu": 0.55,          # lecture config: >= 55% of the measured matmul rate
    "cache_speedup": 10.0,        # sampling 500 tokens at block 256: cache >= 10x full recomputation
}


def quick_settings(bc):
    """Smoke-run repeats: enough to exercise every code path, not to measure."""
    if bc.name == "lecture":
        return dict(warmup=1, repeats=1)
    return dict(warmup=1, repeats=3)


def make_batch(bc, seed=0):
    """Random token ids (speed does not depend on the text): x, y int64 (B, T), y = x shifted by one."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, bc.vocab_size, (bc.batch_size, bc.block_size + 1), dtype=np.int64)   # (B, T+1)
    return data[:, :-1].copy(), data[:, 1:].copy()                                             # (B, T) each


# ---- timing ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    samples: list          # seconds per call, one per repeat
    inner: int = 1         # calls averaged inside one sample (short functions)
    warmup: int = 0

    @property
    def median(self):
        return float(np.median(self.samples))

    def to_dict(self):
        s = np.asarray(self.samples) * 1e3
        q1, med, q3 = np.percentile(s, [25, 50, 75])
        return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3), "iqr_ms": float(q3 - q1),
                "min_ms": float(s.min()), "max_ms": float(s.max()), "repeats": len(s), "inner": self.inner,
                "warmup": self.warmup}


def cuda_sync(device):
    """A function that waits for the device's queued work (None on the cpu: NumPy calls are synchronous)."""
    device = get_device(device)
    if device.name == "cpu":
        return None
    return lambda: device.xp.cuda.Device().synchronize()


SETTLE_S = 0.002       # pause before each timed sample, untimed: see time_interleaved


def time_interleaved(fns, warmup=1, repeats=5, syncs=None, min_sample_s=0.0, settle_s=SETTLE_S):
    """Time several functions fairly: each is warmed up, then every repeat times each function once, in an order that
    rotates from repeat to repeat, so load on a shared machine falls on all of them alike. Before each sample the
    runner pauses settle_s (untimed), so the thread pools of the engine that ran before (OpenBLAS threads spin up to
    ~0.1 s after a call, OpenMP's for a while too) are asleep and do not take cores from the engine being timed: on 2
    cores that interference made single torch steps up to 3x slower (an IQR of 34-118 ms for a 31 ms median).

    fns: {name: fn()}; syncs: {name: sync() or None}, called before reading the clock (GPU work is asynchronous).
    A function faster than min_sample_s is called `inner` times per sample (inner calibrated on the last warm-up call)
    and the sample is the mean per call. Returns {name: Timing}.
    """
    syncs = syncs or {}
    names = list(fns)
    inner = {}
    for name in names:
        fn, sync = fns[name], syncs.get(name)
        elapsed = 0.0
        for _ in range(max(1, warmup)):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            elapsed = time.perf_counter() - t0
        inner[name] = max(1, math.ceil(min_sample_s / elapsed)) if elapsed > 0 else 1
    samples = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, sync, n = fns[name], syncs.get(name), inner[name]
            if sync:
                sync()
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            if sync:
                sync()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: Timing(samples[name], inner[name], warmup) for name in names}


# ---- threads -----------------------------------------------------------------------------------------------------

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def pinned_threads(n):
    """Limit NumPy's BLAS (and any OpenMP pool) to n threads inside the block; yields a dict saying how.

    With threadpoolctl (the [bench] extra) the limit applies to the already loaded libraries. Without it only the
    environment variables are set: they reach subprocesses (memory probes), but a BLAS that NumPy loaded earlier keeps
    its own count (start the interpreter with OPENBLAS_NUM_THREADS=n OMP_NUM_THREADS=n ... then).
    """
    saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    os.environ.update({var: str(n) for var in THREAD_ENV_VARS})
    try:
        try:
            from threadpoolctl import threadpool_info, threadpool_limits
        except ImportError:
            yield {"threads": n, "method": "environment variables only (threadpoolctl not installed): they bind a "
                                           "BLAS loaded after they were set, not NumPy's if it was loaded before",
                   "pools": []}
            return
        with threadpool_limits(limits=n):
            keys = ("user_api", "internal_api", "num_threads", "version", "threading_layer", "architecture", "prefix")
            pools = [{k: d.get(k) for k in keys} for d in threadpool_info()]
            yield {"threads": n, "method": "threadpoolctl.threadpool_limits", "pools": pools}
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ---- matmul rate, FLOPs, MFU -------------------------------------------------------------------------------------


def matmul_rate(sizes=(1024, 1536, 2048), warmup=2, repeats=5, device="cpu"):
    """float32 square matmul rate: C = A @ B (n x n) costs 2 n^3 FLOPs. Returns per size the rate of the median and
    of the fastest repeat; `peak_gflops` (the MFU denominator) is the best fastest-repeat rate: a peak is what the
    machine can do, and load on a shared machine only ever slows a repeat down."""
    device = get_device(device)
    xp, sync = device.xp, cuda_sync(device)
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
        c = xp.empty((n, n), dtype=np.float32)
        t = time_interleaved({"mm": lambda: xp.matmul(a, b, out=c)}, warmup, repeats, {"mm": sync})["mm"]
        flops = 2 * n ** 3
        out[str(n)] = dict(t.to_dict(), gflops=flops / t.median / 1e9, gflops_best=flops / min(t.samples) / 1e9)
    best = max(out, key=lambda k: out[k]["gflops_best"])
    return {"device": device.name, "library": "numpy" if device.name == "cpu" else "cupy", "sizes": out,
            "peak_gflops": out[best]["gflops_best"], "best_size": int(best)}


def model_flops(bc):
    """Model FLOPs of one training step (forward + backward), the formula in this module's docstring."""
    B, T, C, L, V = bc.batch_size, bc.block_size, bc.n_embd, bc.n_layer, bc.vocab_size
    n_mm = 12 * L * C * C + V * C
    dense = 6 * n_mm * B * T
    attention = 12 * L * B * T * T * C
    return {"n_params": count_parameters(GPTConfig(**bc.gpt_config())), "n_matmul_params": n_mm,
            "dense": dense, "attention": attention, "total": dense + attention,
            "formula": "6*N_mm*B*T + 12*L*B*T^2*C, N_mm = 12*L*C^2 + V*C"}


# ---- memory ------------------------------------------------------------------------------------------------------


def tracemalloc_peak(fn):
    """Peak bytes that fn() allocates on top of what exists when it starts, as tracemalloc sees them. NumPy reports
    its array buffers to tracemalloc, so for the cpu engine this is the step's activations, gradients and
    temporaries at their high point (frees of arrays older than the call are not credited: an upper bound)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


def _proc_status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_probe(fn, warmup=1):
    """Resident-memory peak of one fn() call above the resident memory just before it. Meant for a fresh process per
    engine started with MALLOC_MMAP_THRESHOLD_ fixed (large buffers then go back to the OS when freed, so resident
    memory follows live memory). Linux: the high-water mark is reset through /proc/self/clear_refs; elsewhere
    ru_maxrss is used, and the result is a lower bound if an earlier peak was higher."""
    for _ in range(warmup):
        fn()
    gc.collect()
    before_kb = _proc_status_kb("VmRSS")
    method = "VmHWM after resetting it (/proc/self/clear_refs 5) minus VmRSS before the step"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        method = "ru_maxrss minus VmRSS before the step (high-water mark not resettable: lower bound)"
    if before_kb is None:
        before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss delta (no /proc: lower bound)"
    fn()
    peak_kb = _proc_status_kb("VmHWM") if method.startswith("VmHWM") else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_before_bytes": before_kb * 1024, "rss_peak_bytes": peak_kb * 1024,
            "step_peak_bytes": max(0, peak_kb - before_kb) * 1024, "method": method}


# ---- the tinygrad_gpt engine -------------------------------------------------------------------------------------


class TinygradEngine:
    """tinygrad_gpt on `device`. The interface every engine of the runner has:
    name, device, sync (None or fn), step(), loss_value(), layer_fns() -> {layer: fn}, memory() -> dict,
    state_dict() (this one's weights seed the torch engines, so all engines start from the same numbers)."""

    def __init__(self, bc, device="cpu", seed=0):
        self.bc = bc
        self.device = get_device(device)
        self.name = f"tinygrad_gpt-{self.device.name}"
        self.sync = cuda_sync(self.device)
        self.model = GPT(GPTConfig(**bc.gpt_config()), seed=seed, device=self.device)
        self.model.train()
        self.opt = AdamW(self.model.parameters(), lr=1e-3)        # torch defaults: betas, eps, weight_decay 0.01
        self.x, self.y = make_batch(bc, seed)                      # (B, T) host int64, as a training loop feeds it

    def step(self):
        """One training step: zero grads, forward, loss, backward, AdamW."""
        self.opt.zero_grad()
        _, loss = self.model(self.x, self.y)
        loss.backward()
        self.opt.step()

    def loss_value(self):
        with no_grad():
            _, loss = self.model(self.x, self.y)
        return float(loss.numpy())

    def state_dict(self):
        return self.model.state_dict()

    def layer_fns(self):
        """Forward + backward of each layer alone, on the config's activation shape; grads reset each call."""
        m, bc, xp = self.model, self.bc, self.device.xp
        B, T, C = bc.batch_size, bc.block_size, bc.n_embd
        rng = np.random.default_rng(1)
        x = Tensor(xp.asarray(rng.standard_normal((B, T, C), dtype=np.float32)), requires_grad=True)   # (B, T, C)
        dout = xp.asarray(rng.standard_normal((B, T, C), dtype=np.float32))                           # (B, T, C)
        idx, tgt = xp.asarray(self.x), xp.asarray(self.y)                                              # (B, T)
        blk = m.blocks[0]

        def fwd_bwd(forward, params, scalar=False):
            def run():
                x.grad = None
                for p in params:
                    p.grad = None
                out = forward()
                out.backward(None if scalar else dout)
            return run
        return {
            "embedding": fwd_bwd(lambda: F.embedding(idx, m.tok_emb.weight, m.pos_emb.weight),
                                 [m.tok_emb.weight, m.pos_emb.weight]),
            "layernorm": fwd_bwd(lambda: blk.ln1(x), blk.ln1.parameters()),
            "attention": fwd_bwd(lambda: blk.attn(x), blk.attn.parameters()),
            "mlp": fwd_bwd(lambda: blk.mlp(x), blk.mlp.parameters()),
            "lm_head+ce": fwd_bwd(lambda: F.cross_entropy(m.lm_head(x), tgt), m.lm_head.parameters(), scalar=True),
        }

    def state_bytes(self):
        """Bytes held between steps: parameters plus AdamW's flat gradient and two moment buffers."""
        return int(sum(g.flat.nbytes + g.grad.nbytes + g.exp_avg.nbytes + g.exp_avg_sq.nbytes
                       for g in self.opt.groups))

    def memory(self):
        """In-process peak memory of one step (after warm-up): tracemalloc on the cpu, the CuPy pool on cuda."""
        out = {"state_bytes": self.state_bytes()}
        if self.device.name == "cpu":
            out["step_peak_bytes"] = tracemalloc_peak(self.step)
            out["method"] = "tracemalloc: peak NumPy allocations during one step above those before it"
        else:
            pool = self.device.xp.get_default_memory_pool()
            self.sync()
            pool.free_all_blocks()
            used = pool.used_bytes()
            self.step()
            self.sync()
            out["step_peak_bytes"] = int(pool.total_bytes() - used)
            out["method"] = ("CuPy memory pool: bytes the pool holds after one step (cached blocks = the step's "
                             "high point) minus bytes in use before it")
        return out


def sampling_rate(generate, n_tokens, warmup_tokens=4, sync=None):
    """Tokens/s of `generate(n)` producing n tokens (batch 1), after a short warm-up call."""
    generate(min(warmup_tokens, n_tokens))
    if sync:
        sync()
    t0 = time.perf_counter()
    generate(n_tokens)
    if sync:
        sync()
    seconds = time.perf_counter() - t0
    return {"tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds}


def tinygrad_sampling(bc, n_tokens, device="cpu", seed=0):
    """Sampling speed of tinygrad_gpt at shape bc (batch 1, one-token prompt), with and without the KV cache, under
    both window rules of GPT.generate_iter: "slide" (the lecture's: past block_size the cache is rebuilt for every
    token) and "shift" (the oldest quarter is dropped once the context is full)."""
    model = GPT(GPTConfig(**bc.gpt_config()), seed=seed, device=device)
    prompt = np.zeros((1, 1), dtype=np.int64)
    out = {}
    for mode, cache, window in (("kv_cache", True, "shift"), ("no_cache", False, "shift"),
                                ("kv_cache_slide", True, "slide"), ("no_cache_slide", False, "slide")):
        out[mode] = sampling_rate(lambda n: model.generate(prompt, n, seed=seed, use_cache=cache, window=window),
                                  n_tokens, sync=cuda_sync(device))
    out["speedup"] = out["kv_cache"]["tokens_per_s"] / out["no_cache"]["tokens_per_s"]
    out["speedup_slide"] = out["kv_cache_slide"]["tokens_per_s"] / out["no_cache_slide"]["tokens_per_s"]
    return out


# ---- the runner --------------------------------------------------------------------------------------------------


def say(*parts):
    print(*parts, flush=True)


def run_config(bc, factories, warmup, repeats, layers=True, min_sample_s=0.005, memory=True):
    """Build every engine of `factories` ({name: fn(bc, state_dict) -> engine}) for config bc, check they compute the
    same loss, then time training steps and layers interleaved across engines. The first factory's engine is built
    with state_dict None; its weights are handed to the others."""
    engines, skipped = {}, {}
    sd = None
    for name, make in factories.items():
        try:
            e = make(bc, sd)
        except Exception as exc:        # an engine that cannot run here (no GPU, out of memory) is reported, not fatal
            skipped[name] = f"{type(exc).__name__}: {exc}"
            say(f"  skip {name}: {skipped[name]}")
            continue
        engines[e.name] = e
        if sd is None:
            sd = e.state_dict()
    res = {"config": dataclasses.asdict(bc), "shape": bc.describe(), "flops": model_flops(bc),
           "warmup": warmup, "repeats": repeats, "engines": {}, "skipped": skipped}
    losses = {name: e.loss_value() for name, e in engines.items()}
    res["initial_loss"] = losses
    res["initial_loss_max_abs_diff"] = float(max(losses.values()) - min(losses.values())) if losses else None

    syncs = {name: e.sync for name, e in engines.items()}
    steps = time_interleaved({n: e.step for n, e in engines.items()}, warmup, repeats, syncs, min_sample_s=0.0)
    tokens = bc.batch_size * bc.block_size
    for name, t in steps.items():
        d = t.to_dict()
        d["tokens_per_s"] = tokens / t.median
        d["achieved_gflops"] = res["flops"]["total"] / t.median / 1e9
        res["engines"][name] = {"step": d}
        say(f"  {name:22s} step {d['median_ms']:10.2f} ms  (IQR {d['q1_ms']:.2f}-{d['q3_ms']:.2f}, n={d['repeats']})")
    if layers and engines:
        per_engine = {name: e.layer_fns() for name, e in engines.items()}
        for layer in LAYERS:
            fns = {name: fl[layer] for name, fl in per_engine.items() if layer in fl}
            t = time_interleaved(fns, warmup, repeats, syncs, min_sample_s=min_sample_s)
            for name, tt in t.items():
                res["engines"][name].setdefault("layers", {})[layer] = tt.to_dict()
            say(f"  layer {layer:12s} " + "  ".join(f"{n} {tt.median * 1e3:.3f} ms" for n, tt in t.items()))
    if memory:
        for name, e in engines.items():
            if hasattr(e, "memory"):
                m = e.memory()
                if m:
                    res["engines"][name]["memory"] = m
    res["ratios"] = ratios(res)
    for name, e in engines.items():
        if hasattr(e, "close"):
            e.close()
    engines.clear()
    gc.collect()
    return res


def ratios(cfg_res):
    """Median step (and layer) time of each tinygrad_gpt engine over each torch engine on the same device."""
    eng = cfg_res["engines"]
    out = {}
    for a in eng:
        if not a.startswith("tinygrad_gpt-"):
            continue
        dev = a.rsplit("-", 1)[1]
        for b in eng:
            if b.startswith("torch-") and b.endswith("-" + dev):
                r = {"step": eng[a]["step"]["median_ms"] / eng[b]["step"]["median_ms"],
                     "step_min": eng[a]["step"]["min_ms"] / eng[b]["step"]["min_ms"]}
                for layer, t in eng[a].get("layers", {}).items():
                    tb = eng[b].get("layers", {}).get(layer)
                    if tb:
                        r[layer] = t["median_ms"] / tb["median_ms"]
                out[f"{a} / {b}"] = r
    return out


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
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


# ---- outputs -----------------------------------------------------------------------------------------------------


def _fmt_bytes(n):
    if n is None:
        return ""
    return f"{n / 2 ** 20:.1f} MiB"


def _fmt_ms(ms):
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _short(engine):
    return engine.replace("tinygrad_gpt", "tinygrad")


def targets_check(results):
    """The issue's targets against this run: rows (what, measured, target, met)."""
    rows = []
    for cname, c in results["configs"].items():
        for key, r in c["ratios"].items():
            if key.endswith("torch-fused-cpu"):
                rows.append((f"{cname}: step time tinygrad / torch fused (cpu)", f"{r['step']:.2f}",
                             f"<= {TARGETS['step_ratio_fused']}", r["step"] <= TARGETS["step_ratio_fused"]))
            if key.endswith("torch-lecture-cpu"):
                rows.append((f"{cname}: step time tinygrad / lecture's torch (cpu)", f"{r['step']:.2f}",
                             f"<= {TARGETS['step_ratio_lecture']}", r["step"] <= TARGETS["step_ratio_lecture"]))
        mfu = c["engines"].get("tinygrad_gpt-cpu", {}).get("step", {}).get("mfu")
        if cname == "lecture" and mfu is not None:
            rows.append(("lecture: tinygrad MFU (cpu)", f"{mfu:.0%}", f">= {TARGETS['lecture_mfu']:.0%}",
                         mfu >= TARGETS["lecture_mfu"]))
    s = results.get("sampling", {}).get("tinygrad_gpt")
    if s and results["sampling"]["config"] == "lecture":       # the target is stated for the lecture shape
        shape = results["sampling"]["shape"]
        what = (f"sampling {s['kv_cache']['tokens']} tokens at block {shape['block_size']}: cache / no cache "
                "(window 'shift')")
        rows.append((what, f"{s['speedup']:.1f}x", f">= {TARGETS['cache_speedup']:.0f}x",
                     s["speedup"] >= TARGETS["cache_speedup"]))
    return rows


def markdown(results):
    """The results as a markdown report (tables of steps, ratios, layers, sampling, memory, targets)."""
    meta, mm = results["meta"], results.get("matmul")
    L = [f"# tinygrad_gpt benchmarks ({'quick smoke run' if meta.get('quick') else 'full run'})", ""]
    th = meta["threads"]
    m = meta["machine"]
    torch_pin = f" + torch.set_num_threads({th['threads']})" if "torch" in meta else ""
    parts = [meta["date"], m["cpu"], f"{m.get('usable_cpus', '?')} usable cores",
             f"load average at start {m.get('loadavg_at_start')}",
             f"threads pinned to {th['threads']} ({th['method']}{torch_pin})", f"numpy {m['numpy']}"]
    if "torch" in meta:
        parts.append(f"torch {meta['torch']['version']}")
    L.append(" · ".join(parts))
    if meta.get("busy"):
        L += ["", f"**Warning: {meta['busy']}.**"]
    blas = [p for p in th.get("pools", []) if p.get("user_api") == "blas"]
    if blas:
        L.append("BLAS: " + ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')}, "
                                      f"{p['num_threads']} threads)" for p in blas))
    L.append(f"glibc malloc tuned (tinygrad_gpt.backend.tune_host_allocator, for every engine of the run): "
             f"{'yes' if meta.get('host_allocator_tuned') else 'no'}")
    L.append("")
    L.append("Times are medians over the repeats after warm-up; the spread is the interquartile range (q1-q3). "
             "Engines are timed interleaved (each repeat runs every engine once, in rotating order), so the ratios "
             "come from the same run under the same load.")
    L.append("")
    if mm:
        L += ["## float32 matmul rate (NumPy, pinned threads)", "",
              "| n | median ms | GFLOP/s (median) | GFLOP/s (fastest repeat) |", "|---:|---:|---:|---:|"]
        for n, d in mm["sizes"].items():
            L.append(f"| {n} | {_fmt_ms(d['median_ms'])} | {d['gflops']:.1f} | {d['gflops_best']:.1f} |")
        if "torch" in mm:
            for n, d in mm["torch"]["sizes"].items():
                L.append(f"| {n} (torch.mm) | {_fmt_ms(d['median_ms'])} | {d['gflops']:.1f} | "
                         f"{d['gflops_best']:.1f} |")
        L += ["", f"Peak (MFU denominator): **{mm['peak_gflops']:.1f} GFLOP/s** (NumPy sgemm, n={mm['best_size']}, "
              "fastest repeat). An MFU above 100% means the matmul measure was slowed by load.", ""]
    mc = results.get("matmul_cuda")
    if mc:
        L += [f"CUDA float32 matmul peak (CuPy, MFU denominator of the cuda engines): {mc['peak_gflops']:.0f} GFLOP/s "
              f"(n={mc['best_size']}).", ""]

    L += ["## Training step (forward, backward, AdamW)", "",
          "| config | engine | median ms | IQR ms | min-max ms | tokens/s | GFLOP/s | MFU | step peak mem | "
          "state mem |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cname, c in results["configs"].items():
        for ename, e in c["engines"].items():
            s, mem = e["step"], e.get("memory", {})
            cells = []
            if mem.get("step_peak_bytes") is not None:
                cells.append(_fmt_bytes(mem["step_peak_bytes"]) + (" (tm)" if ename.endswith("-cpu") else ""))
            rss = e.get("rss", {})
            if rss.get("step_peak_bytes") is not None:
                cells.append(_fmt_bytes(rss["step_peak_bytes"]) + " (rss)")
            elif "error" in rss:
                cells.append("rss probe failed")
            peak_txt = " / ".join(cells)
            mfu = f"{s['mfu']:.0%}" if "mfu" in s else ""
            L.append(f"| {cname} | {_short(ename)} | {_fmt_ms(s['median_ms'])} | {s['q1_ms']:.2f}-{s['q3_ms']:.2f} | "
                     f"{s['min_ms']:.2f}-{s['max_ms']:.2f} | {s['tokens_per_s']:.0f} | {s['achieved_gflops']:.1f} | "
                     f"{mfu} | {peak_txt} | {_fmt_bytes(mem.get('state_bytes'))} |")
    L += ["", "Model FLOPs per step = 6·N_mm·B·T + 12·L·B·T²·C with N_mm = 12·L·C² + V·C (matmul weights); "
          "MFU = FLOPs / step time / peak matmul rate. Memory: (tm) = tracemalloc peak of the NumPy allocations of one "
          "step above what existed before it; (rss) = resident-set high-water mark of one step above the resident "
          "set before it, in a fresh process per engine (MALLOC_MMAP_THRESHOLD_=65536); cuda: the frameworks' pools. "
          "State = parameters + gradients + AdamW moments.", ""]

    rat = [(cname, key, r) for cname, c in results["configs"].items() for key, r in c["ratios"].items()]
    if rat:
        L += ["## Ratios (tinygrad_gpt time / torch time, same run; < 1 means tinygrad_gpt is faster)", "",
              "| config | pair | step | step (minima) | " + " | ".join(LAYERS) + " |",
              "|---|---|---:|---:|" + "---:|" * len(LAYERS)]
        for cname, key, r in rat:
            cells = " | ".join(f"{r[k]:.2f}" if k in r else "" for k in LAYERS)
            L.append(f"| {cname} | {_short(key)} | **{r['step']:.2f}** | {r['step_min']:.2f} | {cells} |")
        L += ["", "step: ratio of the medians (the figure the targets use); step (minima): ratio of the fastest "
              "repeats, less sensitive to a busy machine; layers: ratios of medians.", ""]
    if any("layers" in e for c in results["configs"].values() for e in c["engines"].values()):
        L += ["## Forward + backward of each layer alone (median ms)", "",
              "| config | engine | " + " | ".join(LAYERS) + " |", "|---|---|" + "---:|" * len(LAYERS)]
        for cname, c in results["configs"].items():
            for ename, e in c["engines"].items():
                if "layers" in e:
                    cells = " | ".join(_fmt_ms(e["layers"][k]["median_ms"]) if k in e["layers"] else ""
                                       for k in LAYERS)
                    L.append(f"| {cname} | {_short(ename)} | {cells} |")
        L += ["", "embedding = token + position lookup; attention = the whole attention sub-block of layer 0 (qkv, "
              "causal softmax attention, output projection); mlp = fc, ReLU, proj; lm_head+ce = final projection and "
              "mean cross-entropy. Inputs are (B, T, C) activations of the config.", ""]
    samp = results.get("sampling")
    if samp:
        sh = samp["shape"]
        L += [f"## Sampling (batch 1, one-token prompt, {samp['tokens']} new tokens, model "
              f"C={sh['n_embd']} H={sh['n_head']} L={sh['n_layer']} block {sh['block_size']})", "",
              "| engine | tokens/s | seconds |", "|---|---:|---:|"]
        t = samp.get("tinygrad_gpt")
        if t:
            for key, what in (("kv_cache", "KV cache, window shift"), ("no_cache", "full recomputation, window shift"),
                              ("kv_cache_slide", "KV cache, window slide"),
                              ("no_cache_slide", "full recomputation, window slide")):
                L.append(f"| tinygrad, {what} | {t[key]['tokens_per_s']:.1f} | {t[key]['seconds']:.2f} |")
        for name, d in samp.get("torch", {}).items():
            L.append(f"| {name} | {d['tokens_per_s']:.1f} | {d['seconds']:.2f} |")
        if t:
            L += ["", f"KV-cache speedup: **{t['speedup']:.1f}x** with window 'shift' (the oldest quarter dropped when "
                  f"the context is full), {t['speedup_slide']:.1f}x with window 'slide' (the lecture's rule: past "
                  "block_size every token needs the whole window recomputed, so only the first block_size tokens "
                  "gain).", ""]
    rows = targets_check(results)
    if rows:
        L += ["## Targets (issue 5)", "", "| target | measured | goal | met |", "|---|---:|---:|:---:|"]
        for what, got, goal, ok in rows:
            L.append(f"| {what} | {got} | {goal} | {'yes' if ok else '**no**'} |")
        L.append("")
    checks = [(cname, c["initial_loss_max_abs_diff"]) for cname, c in results["configs"].items()
              if c.get("initial_loss_max_abs_diff") is not None and len(c["initial_loss"]) > 1]
    if checks:
        L += ["Same computation check: every engine starts from the same weights and batch; largest difference of "
              "their initial losses: " + ", ".join(f"{c} {d:.1e}" for c, d in checks) + ".", ""]
    if results.get("skipped"):
        L += ["Skipped: " + "; ".join(results["skipped"]), ""]
    return "\n".join(L)


def chart(results, path):
    """PNG: step time per engine per config (one panel per config, IQR as error bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = list(results["configs"].items())
    if not configs:
        return None
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.8), squeeze=False)
    palette = {"tinygrad_gpt": "#d62728", "torch-fused": "#1f77b4", "torch-lecture": "#7f7f7f"}
    for ax, (cname, c) in zip(axes[0], configs):
        names = list(c["engines"])
        med = [c["engines"][n]["step"]["median_ms"] for n in names]
        lo = [m - c["engines"][n]["step"]["q1_ms"] for m, n in zip(med, names)]
        hi = [c["engines"][n]["step"]["q3_ms"] - m for m, n in zip(med, names)]
        colors = [next((v for k, v in palette.items() if n.startswith(k)), "#2ca02c") for n in names]
        hatches = ["//" if n.endswith("cuda") else "" for n in names]
        bars = ax.bar(range(len(names)), med, yerr=[lo, hi], color=colors, capsize=3)
        for b, h in zip(bars, hatches):
            b.set_hatch(h)
        for i, m in enumerate(med):
            ax.text(i, m, _fmt_ms(m), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_short(n).replace("-", "\n", 1) for n in names], fontsize=8)
        ax.set_title(f"{cname}\n{c['shape']}", fontsize=9)
        ax.set_ylabel("ms per training step (median)")
        ax.set_ylim(0, max(m + h for m, h in zip(med, hi)) * 1.15 if med else 1)
    th = results["meta"]["threads"]["threads"]
    fig.suptitle(f"Training step time, {th} threads (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_outputs(results, out_dir, stem="bench"):
    """results -> out_dir/{stem}.json, {stem}.md, {stem}.png. Returns the three paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    md = markdown(results)
    if chart(results, paths["png"]):
        md += f"\n![training step times]({stem}.png)\n"
    with open(paths["md"], "w") as f:
        f.write(md)
    return paths


def add_mfu(results):
    """Fill step.mfu for every engine against the measured matmul peak of its device."""
    peaks = {"cpu": results.get("matmul", {}).get("peak_gflops"),
             "cuda": results.get("matmul_cuda", {}).get("peak_gflops")}
    for c in results["configs"].values():
        for name, e in c["engines"].items():
            peak = peaks.get(name.rsplit("-", 1)[1])
            if peak:
                e["step"]["mfu"] = e["step"]["achieved_gflops"] / peak


# ---- command line (torch-free) -----------------------------------------------------------------------------------


def base_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None,
                   help="benchmark configs (default: all three; with --quick: small nanogpt-cpu)")
    p.add_argument("--threads", type=int, default=2, help="threads for NumPy's BLAS (and torch), pinned equal")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measure (default: per config)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per measure (default: per config)")
    p.add_argument("--quick", action="store_true", help="smoke run: few repeats, small shapes, no RSS probes")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer measures")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampling measure")
    p.add_argument("--memory", choices=("auto", "none", "inprocess", "rss"), default="auto",
                   help="auto: in-process always, RSS probes in fresh processes unless --quick")
    p.add_argument("--sample-config", choices=sorted(CONFIGS), default=None,
                   help="model shape for sampling (default lecture; --quick: small)")
    p.add_argument("--sample-tokens", type=int, default=None, help="tokens to sample (default 500; --quick: 100)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="layer timings loop a fast call until a sample lasts this long (default 5; --quick 1)")
    p.add_argument("--memory-probe", metavar="ENGINE", default=None, help=argparse.SUPPRESS)
    return p


def resolve(args):
    """Defaults that depend on --quick."""
    args.configs = args.configs or (list(QUICK_CONFIGS) if args.quick else list(CONFIGS))
    args.sample_config = args.sample_config or ("small" if args.quick else "lecture")
    args.sample_tokens = args.sample_tokens or (100 if args.quick else 500)
    args.min_sample_s = (args.min_sample_ms if args.min_sample_ms is not None else (1.0 if args.quick else 5.0)) / 1e3
    return args


def schedule(bc, args):
    """(warmup, repeats) for a config under these arguments."""
    base = quick_settings(bc) if args.quick else dict(warmup=bc.warmup, repeats=bc.repeats)
    return (args.warmup if args.warmup is not None else base["warmup"],
            args.repeats if args.repeats is not None else base["repeats"])


def memory_probe_main(engine, bc, threads, make_engine):
    # no tune_host_allocator() here: the probe's MALLOC_MMAP_THRESHOLD_ makes the resident set follow the allocations
    """Body of a fresh `--memory-probe` process: one RSS measure of one engine's step, printed as a JSON line."""
    with pinned_threads(threads):
        e = make_engine(bc)
        out = rss_probe(e.step, warmup=1)
    out["engine"] = engine
    print(json.dumps(out))


def rss_probe_subprocess(cmd, timeout=1800):
    """Run a --memory-probe command in a fresh process with a fixed malloc mmap threshold; its JSON line or an error."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_suite(args, factories, extra_meta=None, sampling_extra=None, rss_cmd=None, matmul_extra=None):
    """The whole benchmark: matmul rate, every config with every engine, RSS probes, sampling. Returns results.

    factories: {name: fn(bc, state_dict) -> engine}; sampling_extra(bc_sample, n) -> {name: rate dict};
    rss_cmd(engine_name, config_name) -> argv of a --memory-probe process (None: no RSS probes);
    matmul_extra() -> dict merged into results["matmul"] (torch's own rate, for information)."""
    results = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": bool(args.quick),
                        "machine": machine_info(), "configs": args.configs, "argv": sys.argv[1:]},
               "configs": {}, "skipped": []}
    results["meta"].update(extra_meta or {})
    # as the trainer does: large freed blocks stay in the heap (no page faults per step); process-wide, so every
    # engine of the run, torch included, gets the same allocator
    results["meta"]["host_allocator_tuned"] = tune_host_allocator()
    results["meta"]["process_settings"] = cpu_setup.configure()
    m = results["meta"]["machine"]
    if m.get("loadavg_at_start") and m["loadavg_at_start"][0] > 0.5 * m.get("usable_cpus", m["cpu_count"] or 1):
        results["meta"]["busy"] = (
            f"the machine was busy at start (load average {m['loadavg_at_start'][0]} on "
            f"{m.get('usable_cpus', m['cpu_count'])} cores): times are noisy. With {args.threads} threads on busy cores, "
            "OpenMP and BLAS threads wait for descheduled siblings at every parallel op, which can slow an engine "
            "10-50x (torch's many small ops most): the ratios are not meaningful then; use a quiet machine "
            "(or --threads 1 for a rough comparison)")
        say("warning: " + results["meta"]["busy"])
    with pinned_threads(args.threads) as th:
        results["meta"]["threads"] = th
        say(f"threads: {args.threads} ({th['method']})")
        sizes = (1024,) if args.quick else (1024, 1536, 2048)
        results["matmul"] = matmul_rate(sizes, warmup=1 if args.quick else 2, repeats=3 if args.quick else 7)
        if matmul_extra:
            results["matmul"].update(matmul_extra(sizes, args.quick))
        say(f"float32 matmul peak: {results['matmul']['peak_gflops']:.1f} GFLOP/s (NumPy)")
        if any(n.endswith("cuda") for n in factories) and cuda_available():
            results["matmul_cuda"] = matmul_rate((4096, 8192), warmup=2, repeats=5, device="cuda")
        for cname in args.configs:
            bc = CONFIGS[cname]
            warmup, repeats = schedule(bc, args)
            say(f"config {cname}: {bc.describe()}  (warm-up {warmup}, repeats {repeats})")
            res = run_config(bc, factories, warmup, repeats, layers=not args.no_layers,
                             min_sample_s=args.min_sample_s, memory=args.memory != "none")
            results["configs"][cname] = res
            results["skipped"] += [f"{cname}/{n}: {why}" for n, why in res["skipped"].items()]
        if rss_cmd and (args.memory == "rss" or (args.memory == "auto" and not args.quick)):
            for cname, res in results["configs"].items():
                for ename in res["engines"]:
                    if ename.endswith("-cpu"):
                        say(f"  RSS probe {cname} {ename} (fresh process)")
                        res["engines"][ename]["rss"] = rss_probe_subprocess(rss_cmd(ename, cname))
        if not args.no_sampling:
            sbc = CONFIGS[args.sample_config]
            say(f"sampling {args.sample_tokens} tokens, shape {args.sample_config} (batch 1)")
            samp = {"shape": dataclasses.asdict(sbc), "tokens": args.sample_tokens, "config": args.sample_config}
            samp["tinygrad_gpt"] = tinygrad_sampling(sbc, args.sample_tokens)
            say(f"  tinygrad cache {samp['tinygrad_gpt']['kv_cache']['tokens_per_s']:.1f} tok/s, no cache "
                f"{samp['tinygrad_gpt']['no_cache']['tokens_per_s']:.1f} tok/s "
                f"(speedup {samp['tinygrad_gpt']['speedup']:.1f}x)")
            if sampling_extra:
                samp["torch"] = sampling_extra(sbc, args.sample_tokens)
            results["sampling"] = samp
    add_mfu(results)
    return results


def tinygrad_factories(devices=("cpu", "cuda")):
    """{engine name: factory} for the tinygrad_gpt engines; cuda only where CuPy and a GPU are present."""
    out = {}
    for dev in devices:
        if dev == "cuda" and not cuda_available():
            say("skip tinygrad_gpt-cuda: no CuPy or no CUDA GPU here")
            continue
        out[f"tinygrad_gpt-{dev}"] = (lambda d: lambda bc, sd: TinygradEngine(bc, device=d))(dev)
    return out


def main(argv=None):
    """`python -m tinygrad_gpt.bench`: tinygrad_gpt alone (cpu, and cuda where available); no torch."""
    p = base_parser("tinygrad_gpt benchmarks without torch (benchmarks/bench.py compares with torch)")
    p.add_argument("--out", default="bench-results", help="output folder for bench.json, bench.md, bench.png")
    p.add_argument("--device", nargs="+", default=["cpu", "cuda"], choices=("cpu", "cuda"))
    args = resolve(p.parse_args(argv))
    if args.memory_probe:
        dev = args.memory_probe.rsplit("-", 1)[1]
        memory_probe_main(args.memory_probe, CONFIGS[args.configs[0]], args.threads,
                          lambda bc: TinygradEngine(bc, device=dev))
        return 0
    factories = tinygrad_factories(args.device)

    def rss_cmd(engine, cname):
        return [sys.executable, "-m", "tinygrad_gpt.bench", "--memory-probe", engine, "--configs", cname,
                "--threads", str(args.threads)]
    results = run_suite(args, factories, rss_cmd=rss_cmd)
    paths = write_outputs(results, args.out)
    say("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
