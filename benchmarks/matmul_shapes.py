"""The linear layers' matmuls of one training step, alone: NumPy's BLAS against torch's, same shapes, same threads.

    python benchmarks/matmul_shapes.py                     # lecture config, 2 threads
    python benchmarks/matmul_shapes.py --config nanogpt-cpu --threads 2 --repeats 20

Every linear layer of a step makes three products with N = B*T rows: y = x W^T (forward), dx = g W and dW = g^T x
(backward). This script times each of them alone in NumPy (its OpenBLAS) and in torch (MKL in the CPU wheels), the
same layouts the engines use, interleaved by the suite's timer (tinygrad_gpt.bench.time_interleaved), and adds them
up per step. The sum is the floor under a step that any engine built on
that BLAS pays before its first elementwise operation: it says how much of the gap to torch is the BLAS itself.
"""
import os
import sys


if __name__ == "__main__":                    # run as a script from a checkout: make tinygrad_gpt importable
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

import argparse                               # noqa: E402
import re                                     # noqa: E402

import numpy as np                            # noqa: E402
import torch                                  # noqa: E402

from tinygrad_gpt import bench as tb          # noqa: E402
from tinygrad_gpt.kernels.cpu import setup as cpu_setup   # noqa: E402


def torch_blas():
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "its BLAS"


def layer_shapes(bc):
    """[(name, out, in, per_step)]: each linear layer's weight shape and how many of it a step runs."""
    c, v = bc.n_embd, bc.vocab_size
    return [("qkv", 3 * c, c, bc.n_layer), ("attn proj", c, c, bc.n_layer), ("mlp fc", 4 * c, c, bc.n_layer),
            ("mlp proj", c, 4 * c, bc.n_layer), ("lm_head", v, c, 1)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="lecture", choices=sorted(tb.CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    bc = tb.CONFIGS[args.config]
    n = bc.batch_size * bc.block_size
    cpu_setup.configure()                     # as the engine runs: no page faults on fresh outputs
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows, totals = [], {"numpy": 0.0, "torch": 0.0}
    with tb.pinned_threads(args.threads) as pinned:              # threadpoolctl when installed (the bench extra)
        for name, out, inp, count in layer_shapes(bc):
            x = rng.standard_normal((n, inp), dtype=np.float32)
            w = rng.standard_normal((out, inp), dtype=np.float32)
            g = rng.standard_normal((n, out), dtype=np.float32)
            tx, tw, tg = (torch.from_numpy(a) for a in (x, w, g))
            flops = 2.0 * n * out * inp
            for op, f_np, f_t in (("y = x W^T", lambda: x @ w.T, lambda: tx @ tw.T),
                                  ("dx = g W", lambda: g @ w, lambda: tg @ tw),
                                  ("dW = g^T x", lambda: g.T @ x, lambda: tg.T @ tx)):
                # short products: several calls per sample, as bench.py's layer timings (run_config) do
                t = tb.time_interleaved({"numpy": f_np, "torch": f_t}, warmup=2, repeats=args.repeats,
                                        min_sample_s=0.005)
                a, b = t["numpy"].median * 1e3, t["torch"].median * 1e3
                totals["numpy"] += count * a
                totals["torch"] += count * b
                rows.append((f"{name} ({out}x{inp})", op, a, flops / a / 1e6, b, flops / b / 1e6))
    print(f"config {bc.name}: {bc.describe()}, N = {n} rows, {args.threads} threads, median of {args.repeats}")
    blas = next((f"{i['internal_api']} {i['version']} {i.get('architecture') or ''}" for i in pinned["pools"]
                 if i.get("user_api") == "blas"), "BLAS unknown: " + pinned["method"])
    print(f"numpy {np.__version__} ({blas}), torch {torch.__version__} ({torch_blas()})\n")
    print("| layer | product | NumPy ms | GFLOP/s | torch ms | GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|")
    for layer, op, a, ga, b, gb in rows:
        print(f"| {layer} | {op} | {a:.2f} | {ga:.0f} | {b:.2f} | {gb:.0f} |")
    print(f"\nper step (every linear layer, forward and backward): NumPy {totals['numpy']:.1f} ms, "
          f"torch {totals['torch']:.1f} ms, ratio {totals['numpy'] / totals['torch']:.2f}")


if __name__ == "__main__":
    main()
