"""The BLAS floor: the linear layers' matmuls of one training step, alone, in NumPy's BLAS and in torch's.

    python benchmarks/matmul_shapes.py                     # lecture config, 2 threads
    python benchmarks/matmul_shapes.py --config nanogpt-cpu --rounds 20
    python benchmarks/matmul_shapes.py --config mid --blas openblas mkl --steps 5    # the kernels' BLAS choices

Every linear layer of a step makes three products with N = B*T rows: y = x W^T (forward), dx = g W and dW = g^T x
(backward). Their sum per step is the floor under any engine built on that BLAS, paid before its first elementwise
operation: it says how much of a gap to torch is the BLAS itself. Each library runs in its own process (the
tinygrad_gpt engine's for NumPy, torch-fused's for torch), the two alternating as the benchmark's engines do
(benchmarks/runner.py); `python benchmarks/bench.py` reports the same floor beside the step times.

--blas CHOICE ...: the products as tinygrad_gpt's CPU kernels run them instead (kernels/cpu/linear.py: the rows
split over numba's threads, one single-threaded BLAS call each, outputs allocated once), one process per BLAS choice
(TINYGRAD_GPT_BLAS=CHOICE: openblas, NumPy's; mkl, the mkl package's), a fresh process per round, the choices
alternating; with --steps N each process also times N training steps of the plain API (GPT, AdamW,
zero_grad/backward/step, after 2 untimed ones). The load of everything else on the machine (CPUs busy, from
/proc/stat, sampled while no process of this benchmark runs) is printed with the numbers.
"""
import os
import sys
import time

import numpy as np

if __name__ == "__main__":                    # run as a script from a checkout: make benchmarks importable
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

from benchmarks import protocol, runner  # noqa: E402 (after the sys.path insert above)

_ARRAYS = {}                                  # (config, library) -> the operands, made once per process


def layer_shapes(bc):
    """[(name, out, in, per_step)]: each linear layer's weight shape and how many of it a step runs."""
    c, v = bc.n_embd, bc.vocab_size
    return [("qkv", 3 * c, c, bc.n_layer), ("attn proj", c, c, bc.n_layer), ("mlp fc", 4 * c, c, bc.n_layer),
            ("mlp proj", c, 4 * c, bc.n_layer), ("lm_head", v, c, 1)]


def _operands(bc):
    """Per linear layer: (label, count, flops, x (N, in), w (out, in), g (N, out)), float32, from seed 0."""
    rng = np.random.default_rng(0)
    n = bc.batch_size * bc.block_size
    for name, o, i, count in layer_shapes(bc):
        x = rng.standard_normal((n, i), dtype=np.float32)
        w = rng.standard_normal((o, i), dtype=np.float32)
        g = rng.standard_normal((n, o), dtype=np.float32)
        yield f"{name} ({o}x{i})", count, 2.0 * n * o * i, x, w, g


def _products(bc, lib):
    """[(layer, product, count, flops, fn)] for the library ("numpy" or "torch"), in the engines' layouts."""
    key = (bc.name, lib)
    if key not in _ARRAYS:
        out = []
        for label, count, flops, x, w, g in _operands(bc):
            if lib == "torch":
                import torch
                x, w, g = (torch.from_numpy(a) for a in (x, w, g))
            out += [(label, "y = x W^T", count, flops, lambda x=x, w=w: x @ w.T),
                    (label, "dx = g W", count, flops, lambda g=g, w=w: g @ w),
                    (label, "dW = g^T x", count, flops, lambda g=g, x=x: g.T @ x)]
        _ARRAYS[key] = out
    return _ARRAYS[key]


def _sample(fn, min_s):
    """Seconds per call of fn: repeated until a sample lasts min_s (count calibrated on one call,
    protocol.calls_per_sample)."""
    inner = protocol.calls_per_sample(fn, min_s)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def time_products(bc, lib, n, min_s=0.005):
    """n samples of each linear-layer product of a step; the caller (an engine process) takes turns with others."""
    return {"products": [{"layer": label, "product": op, "count": count, "flops": flops,
                          "samples": [_sample(fn, min_s) for _ in range(n)]}
                         for label, op, count, flops, fn in _products(bc, lib)]}


def square_rate(lib, sizes, n):
    """float32 square matmul rate C = A @ B (2 n^3 FLOPs) per size: the median and the fastest sample. The best
    fastest-sample rate is the MFU denominator: a peak is what the machine can do, load only slows a sample.
    lib: "numpy", "torch" (CPU) or "cupy" (synchronised after each product)."""
    rng = np.random.default_rng(0)
    out = {}
    for size in sizes:
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        if lib == "torch":
            import torch
            a, b = torch.from_numpy(a), torch.from_numpy(b)
        sync = None
        if lib == "cupy":
            import cupy
            a, b = cupy.asarray(a), cupy.asarray(b)
            sync = cupy.cuda.Device().synchronize

        def product(a=a, b=b, sync=sync):
            a @ b
            if sync:
                sync()
        product()
        times = [_sample(product, 0.0) for _ in range(n)]
        flops = 2.0 * size ** 3
        out[str(size)] = {"median_ms": float(np.median(times) * 1e3), "gflops": flops / float(np.median(times)) / 1e9,
                          "gflops_best": flops / min(times) / 1e9}
    best = max(out, key=lambda k: out[k]["gflops_best"])
    return {"library": lib, "sizes": out, "peak_gflops": out[best]["gflops_best"], "best_size": int(best)}


def _kernel_products(bc):
    """[(layer, product, count, flops, fn)]: the linear layers' products as the CPU kernels run them, on the BLAS
    that kernels/cpu/blas.py chose (its thread count set to 1 by the caller), outputs preallocated."""
    from tinygrad_gpt.kernels.cpu import blas, linear
    lib = blas.find()
    fn, pieces = lib.gemm_for(np.float32), linear._pieces()
    fwd, gemm, none = linear.linear_fwd.run, linear.gemm_rows.run, linear.NO_ACTIVATION
    out = []
    for label, count, flops, x, w, g in _operands(bc):
        y, dx, dw = np.empty_like(g), np.empty_like(x), np.empty_like(w)
        macs = x.shape[0] * w.shape[0] * w.shape[1]
        out += [(label, "y = x W^T", count, flops,
                 lambda x=x, w=w, y=y, m=macs: fwd(m, fn, lib.ilp64, x, w, y, None, none, None, None, pieces)),
                (label, "dx = g W", count, flops,
                 lambda g=g, w=w, dx=dx, m=macs: gemm(m, fn, lib.ilp64, g, blas.NO_TRANS, w, blas.NO_TRANS, dx,
                                                      pieces)),
                (label, "dW = g^T x", count, flops,
                 lambda g=g, x=x, dw=dw, m=macs: gemm(m, fn, lib.ilp64, g, blas.TRANS, x, blas.NO_TRANS, dw,
                                                      pieces))]
    return out


def _step_times(bc, n):
    """Seconds of each of n training steps of the plain API, after 2 untimed ones (compile or cache load)."""
    from tinygrad_gpt import GPT, AdamW, GPTConfig
    model = GPT(GPTConfig(**bc.gpt_config()))
    opt = AdamW(model.parameters(), lr=1e-3)
    x, y = protocol.make_batch(bc, protocol.TIMING_SEED)
    times = []
    for i in range(2 + n):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def blas_worker(bc, samples, steps, min_s=0.005):
    """One process of --blas: which BLAS the kernels use, a sample per product (after a warm call), step times."""
    from tinygrad_gpt.kernels.cpu import blas
    lib = blas.find()
    if lib is None:
        return {"blas": None}
    products = []
    with lib.single_threaded():
        for label, op, count, flops, fn in _kernel_products(bc):
            fn()
            products.append({"layer": label, "product": op, "count": count, "flops": flops,
                             "samples": [_sample(fn, min_s) for _ in range(samples)]})
    return {"blas": lib.name, "ilp64": lib.ilp64, "version": lib.version, "products": products,
            "steps": _step_times(bc, steps) if steps else []}


def _wait_quiet(max_s):
    """CPUs kept busy by other processes (0.5 s windows), sampled until below protocol.BUSY_CPUS or for max_s
    seconds; the last sample (None without /proc/stat)."""
    t0 = time.monotonic()
    while True:
        got = protocol.cpu_busy(0.5)
        if got is None or got <= protocol.BUSY_CPUS or time.monotonic() - t0 >= max_s:
            return got


def _busy_seconds():
    """CPU seconds spent busy (not idle, not waiting on I/O) by the whole machine since boot, from /proc/stat; None
    where it is missing."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")        # user..steal, less idle and iowait


def _run_measuring_others(cmd, env):
    """subprocess.run(cmd) -> (the completed process, CPUs kept busy by other processes while it ran: the machine's
    busy CPU time less the child's, over the wall time; None without /proc/stat)."""
    import resource
    import subprocess
    b0, c0, t0 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    b1, c1, t1 = _busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    if b0 is None or b1 is None:
        return proc, None
    child = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return proc, max(0.0, (b1 - b0 - child) / (t1 - t0))


def compare_blas(bc, choices, threads, rounds, steps, samples=3, quiet_wait=0.0):
    """--blas: each choice in its own fresh process per round, the choices alternating (round r starts at choice
    r mod len); before each, the other processes' load sampled (and waited out for up to quiet_wait seconds).
    -> {choice: {floor, step_ms (per process), busy (other processes' CPUs while each ran), blas, version}}, the
    load samples taken between processes."""
    import json
    env = dict(os.environ, **protocol.thread_env(threads), **protocol.ALLOCATORS["tuned"])
    runs, busy = {c: [] for c in choices}, []
    for r in range(rounds):
        for c in choices[r % len(choices):] + choices[:r % len(choices)]:
            got = _wait_quiet(quiet_wait)
            if got is not None:
                busy.append(got)
            cmd = [sys.executable, os.path.abspath(__file__), "--config", bc.name, "--worker", c,
                   "--steps", str(steps), "--samples", str(samples)]
            proc, during = _run_measuring_others(cmd, dict(env, TINYGRAD_GPT_BLAS=c))
            if proc.returncode != 0:
                raise SystemExit(f"{c}: the worker failed\n{proc.stdout}{proc.stderr}")
            runs[c].append(dict(json.loads(proc.stdout.strip().splitlines()[-1]), busy=during))
    out = {}
    for c, every in runs.items():
        quiet = [run for run in every if run["busy"] is None or run["busy"] <= protocol.BUSY_CPUS]
        rs = quiet or every                        # the quiet processes' numbers, where there are any
        products = [dict(p, samples=[s for run in rs for s in run["products"][k]["samples"]])
                    for k, p in enumerate(rs[0]["products"])]
        out[c] = {"blas": rs[0]["blas"], "version": rs[0]["version"],
                  "floor": protocol.blas_floor({"products": products}),
                  "step_ms": [float(np.median(run["steps"])) * 1e3 for run in every if run["steps"]],
                  "busy": [run["busy"] for run in every], "quiet": len(quiet),
                  "quiet_step_ms": [float(np.median(run["steps"])) * 1e3 for run in rs if run["steps"]]}
    return out, busy


def _print_floors(res, names):
    print("\n| layer | product | " + " | ".join(f"{n} ms | GFLOP/s" for n in names) + " |")
    print("|---|---|" + "---:|---:|" * len(names))
    for i, row in enumerate(res[names[0]]["floor"]["rows"]):
        cells = " | ".join(f"{res[n]['floor']['rows'][i]['median_ms']:.3f} | {res[n]['floor']['rows'][i]['gflops']:.0f}"
                           for n in names)
        print(f"| {row['layer']} | {row['product']} | {cells} |")
    print("\nper step (every linear layer, forward and backward): " +
          ", ".join(f"{n} {res[n]['floor']['per_step_ms']:.1f} ms" for n in names))


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="lecture", choices=sorted(protocol.CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="alternations of the processes")
    ap.add_argument("--blas", nargs="+", metavar="CHOICE", choices=("openblas", "mkl"),
                    help="time the CPU kernels' products on these BLAS choices (TINYGRAD_GPT_BLAS) instead")
    ap.add_argument("--steps", type=int, default=0, help="with --blas: also time this many training steps")
    ap.add_argument("--samples", type=int, default=3, help="with --blas: samples per product per process")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                    help="with --blas: before each process, wait up to this long for the other processes' load to "
                    "fall below protocol.BUSY_CPUS")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bc = protocol.CONFIGS[args.config]
    if args.worker:
        import json
        print(json.dumps(blas_worker(bc, args.samples, args.steps)))
        return 0
    if args.blas:
        return _main_blas(bc, args)
    res = runner.blas_floor_only(bc, ("tinygrad_gpt", "torch-fused"), args.threads, args.rounds)
    print(f"config {bc.name}: {bc.describe()}, N = {bc.tokens} rows, {args.threads} threads, "
          f"median of {args.rounds} rounds, each library in its own process")
    libs = list(res)
    for name in libs:
        print(f"  {name}: {res[name]['versions']}")
    _print_floors(res, libs)
    return 0


def _main_blas(bc, args):
    choices = list(dict.fromkeys(args.blas))
    load0 = os.getloadavg()
    res, busy = compare_blas(bc, choices, args.threads, args.rounds, args.steps, args.samples, args.quiet_wait)
    load1 = os.getloadavg()
    print(f"config {bc.name}: {bc.describe()}, N = {bc.tokens} rows, {args.threads} threads (NUMBA_NUM_THREADS, "
          f"OMP_NUM_THREADS), {args.rounds} rounds of a fresh process per BLAS, alternating; the CPU kernels' products")
    for c in choices:
        print(f"  {c}: {res[c]['blas']}: {res[c]['version']}")
        if res[c]["blas"] != c:
            print(f"  WARNING: TINYGRAD_GPT_BLAS={c} ran on {res[c]['blas']}")
    print(f"\nquiet processes (other processes kept at most {protocol.BUSY_CPUS} CPUs busy while they ran; the "
          "medians below are theirs, or every process's where none was quiet): " +
          ", ".join(f"{c} {res[c]['quiet']} of {args.rounds}" for c in choices))
    _print_floors(res, choices)
    if args.steps:
        print(f"\ntraining step, plain API, ms (median of each process's {args.steps} steps; then the median of the "
              "processes):")
        for c in choices:
            ms = res[c]["step_ms"]
            each = ", ".join(f"{t:.2f}" + ("" if b is None else f" [{b:.2f}]")
                             for t, b in zip(ms, res[c]["busy"], strict=True))
            print(f"  {c}: {float(np.median(res[c]['quiet_step_ms'])):.2f}  (every process [CPUs other processes kept "
                  f"busy meanwhile]: {each})")
    if busy:
        print(f"\nload: other processes kept {np.mean(busy):.2f} CPUs busy on average (max {max(busy):.2f}) over "
              f"{len(busy)} windows between runs; load average {load0[0]:.2f} before, {load1[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
