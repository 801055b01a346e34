"""The BLAS floor: the linear layers' matmuls of one training step, alone, in NumPy's BLAS and in torch's.

    python benchmarks/matmul_shapes.py                     # lecture config, 2 threads
    python benchmarks/matmul_shapes.py --config nanogpt-cpu --rounds 20

Every linear layer of a step makes three products with N = B*T rows: y = x W^T (forward), dx = g W and dW = g^T x
(backward). Their sum per step is the floor under any engine built on that BLAS, paid before its first elementwise
operation: it says how much of a gap to torch is the BLAS itself. Each library runs in its own process (the
tinygrad_gpt engine's for NumPy, torch-fused's for torch), the two alternating as the benchmark's engines do
(benchmarks/runner.py); `python benchmarks/bench.py` reports the same floor beside the step times.
"""
import os
import sys
import time

if __name__ == "__main__":                    # run as a script from a checkout: make benchmarks importable
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

import numpy as np                            # noqa: E402

from benchmarks import protocol               # noqa: E402

_ARRAYS = {}                                  # (config, library) -> the operands, made once per process


def layer_shapes(bc):
    """[(name, out, in, per_step)]: each linear layer's weight shape and how many of it a step runs."""
    c, v = bc.n_embd, bc.vocab_size
    return [("qkv", 3 * c, c, bc.n_layer), ("attn proj", c, c, bc.n_layer), ("mlp fc", 4 * c, c, bc.n_layer),
            ("mlp proj", c, 4 * c, bc.n_layer), ("lm_head", v, c, 1)]


def _products(bc, lib):
    """[(layer, product, count, flops, fn)] for the library ("numpy" or "torch"), in the engines' layouts."""
    key = (bc.name, lib)
    if key not in _ARRAYS:
        rng = np.random.default_rng(0)
        n = bc.batch_size * bc.block_size
        out = []
        for name, o, i, count in layer_shapes(bc):
            x = rng.standard_normal((n, i), dtype=np.float32)                      # (N, in)
            w = rng.standard_normal((o, i), dtype=np.float32)                      # (out, in)
            g = rng.standard_normal((n, o), dtype=np.float32)                      # (N, out)
            if lib == "torch":
                import torch
                x, w, g = (torch.from_numpy(a) for a in (x, w, g))
            label = f"{name} ({o}x{i})"
            flops = 2.0 * n * o * i
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

        def product():
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


def floor(results):
    """{"products": [...]} with samples from several rounds -> per-product medians and the per-step sum (ms)."""
    rows, total = [], 0.0
    for p in results["products"]:
        med = float(np.median(p["samples"])) * 1e3
        total += p["count"] * med
        rows.append({"layer": p["layer"], "product": p["product"], "count": p["count"], "median_ms": med,
                     "gflops": p["flops"] / med / 1e6})
    return {"rows": rows, "per_step_ms": total}


def main(argv=None):
    import argparse

    from benchmarks import runner
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="lecture", choices=sorted(protocol.CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="alternations of the two processes")
    args = ap.parse_args(argv)
    bc = protocol.CONFIGS[args.config]
    res = runner.blas_floor_only(bc, ("tinygrad_gpt", "torch-fused"), args.threads, args.rounds)
    print(f"config {bc.name}: {bc.describe()}, N = {bc.tokens} rows, {args.threads} threads, "
          f"median of {args.rounds} rounds, each library in its own process")
    libs = list(res)
    for name in libs:
        print(f"  {name}: {res[name]['versions']}")
    print("\n| layer | product | " + " | ".join(f"{n} ms | GFLOP/s" for n in libs) + " |")
    print("|---|---|" + "---:|---:|" * len(libs))
    for i, row in enumerate(res[libs[0]]["floor"]["rows"]):
        cells = " | ".join(f"{res[n]['floor']['rows'][i]['median_ms']:.3f} | {res[n]['floor']['rows'][i]['gflops']:.0f}"
                           for n in libs)
        print(f"| {row['layer']} | {row['product']} | {cells} |")
    print("\nper step (every linear layer, forward and backward): " +
          ", ".join(f"{n} {res[n]['floor']['per_step_ms']:.1f} ms" for n in libs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
