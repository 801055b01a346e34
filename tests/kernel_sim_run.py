"""Worker of tests/test_kernels_sim.py: runs every custom kernel's launcher under numba's CUDA simulator (or on a
real GPU) on small inputs and saves inputs and outputs to an .npz file (the test compares them with the NumPy twins
and torch).

    NUMBA_ENABLE_CUDASIM=1 python tests/kernel_sim_run.py OUT.npz        (the variable must be set before numba loads)
    python tests/kernel_sim_run.py --cuda OUT.npz                         (the same cases on the GPU, CuPy arrays)
    python tests/kernel_sim_run.py --ptx OUT.json                         (compile every kernel to PTX, no GPU needed)

In the simulator each CUDA thread is a Python thread and `syncthreads` a barrier between them (tests/sim_support.py
makes that fast and its shared arrays thread-safe). Launch shapes are given explicitly
and small (TX = 4 or 8 threads along a row, 2 rows per block, 1 or 2 blocks), so that rows longer than a block, grids
that stride over rows and blocks with rows past the end are all exercised.

Key names in the .npz: "<case>/<array>".
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# (name, kind, params); shapes are odd on purpose
LAYER_NORM = [  # (N rows, C), launch config
    ("ln_rows_longer_than_block", (3, 37), dict(tx=8, ty=2, grid=1)),
    ("ln_lead_dims_no_bias", (2, 3, 5), dict(tx=4, ty=2, grid=2)),
    ("ln_width_1", (4, 1), dict(tx=4, ty=1, grid=2)),
    ("ln_default_shape", (2, 64), None),
]
ATTENTION = [  # (B, H, t, Tk, hs), dropout p, launch config
    ("attn_square", (1, 2, 5, 5, 3), 0.0, dict(tx=4, ty=2)),
    ("attn_cache_offset", (2, 1, 3, 7, 4), 0.0, dict(tx=4, ty=2, grid=1)),
    ("attn_one_query", (1, 2, 1, 9, 2), 0.0, dict(tx=4, ty=2)),
    ("attn_rows_longer_than_block_dropout", (1, 1, 6, 37, 3), 0.25, dict(tx=8, ty=2, grid=2)),
    ("attn_dropout_square", (2, 2, 4, 4, 5), 0.5, dict(tx=4, ty=2)),
]
CROSS_ENTROPY = [  # (N, V), launch config (forward), launch config (backward)
    ("ce_rows_longer_than_block", (5, 65), dict(tx=8, ty=2, grid=2), dict(threads=16, grid=3)),
    ("ce_odd", (3, 7), dict(tx=4, ty=2, grid=1), dict(threads=8, grid=1)),
    ("ce_vocab_1", (4, 1), dict(tx=4, ty=2), None),
]
# On a GPU also the shapes of the lecture config (B 64, T 256, C 384, H 6, V 65), with the default launch shapes
GPU_ONLY = {
    "layer_norm": [("ln_lecture", (64 * 256, 384), None)],
    "attention": [("attn_lecture", (4, 6, 256, 256, 64), 0.0, None),
                  ("attn_lecture_dropout", (2, 6, 256, 256, 64), 0.2, None)],
    "cross_entropy": [("ce_lecture", (64 * 256, 65), None, None)],
}


def run_kernels(path, device):
    """device "sim": NumPy arrays in the simulator; "cuda": the same inputs as CuPy arrays on the GPU (inputs are
    drawn on the host either way, so both runs see the same numbers)."""
    if device == "sim":
        import sim_support
        sim_support.patch()      # simulator: faster barriers, thread-safe shared arrays
        dev, host = (lambda a: a), (lambda a: np.asarray(a))
    else:
        import cupy

        def dev(a):
            return None if a is None else cupy.asarray(a)

        def host(a):
            return a.get() if hasattr(a, "get") else np.asarray(a)
    from tinygrad_gpt.kernels.cuda import _common, adamw, attention, cross_entropy, dropout_mask, layernorm
    assert _common.SIM == (device == "sim"), "NUMBA_ENABLE_CUDASIM=1 must be set (only) for the simulator run"
    out, meta = {}, {}
    rng = np.random.default_rng(1234)
    extra = GPU_ONLY if device == "cuda" else {kind: [] for kind in GPU_ONLY}

    def put(case, **arrays):
        for k, v in arrays.items():
            out[f"{case}/{k}"] = host(v)

    for dtype in (np.float32, np.float64):
        dn = np.dtype(dtype).name
        for name, shape, config in LAYER_NORM + extra["layer_norm"]:
            case = f"{name}-{dn}"
            c = shape[-1]
            x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
            w = rng.standard_normal(c).astype(dtype)
            b = None if "no_bias" in name else rng.standard_normal(c).astype(dtype)
            g = rng.standard_normal(shape).astype(dtype)
            y, cache = layernorm.layer_norm_forward(dev(x), dev(w), dev(b), 1e-5, config=config)
            dx, dw, db = layernorm.layer_norm_backward(dev(g), cache, config=config)
            put(case, x=x, w=w, g=g, y=y, mean=cache[1], rstd=cache[2], dx=dx, dw=dw, db=db,
                **({} if b is None else {"b": b}))
            # reductions: over the row (C) for y, mean, rstd and dx; over the rows (N) for dw and db
            meta[case] = {"kind": "layer_norm", "bias": b is not None, "reduction": c, "reduction_params": x.size // c}

        for name, (bsz, h, t, tk, hs), p, config in ATTENTION + extra["attention"]:
            case = f"{name}-{dn}"
            q = rng.standard_normal((bsz, h, t, hs)).astype(dtype)
            k = rng.standard_normal((bsz, h, tk, hs)).astype(dtype)
            v = rng.standard_normal((bsz, h, tk, hs)).astype(dtype)
            dy = rng.standard_normal((bsz, h, t, hs)).astype(dtype)
            keep = rng.random((bsz, h, t, tk)) >= p if p else None
            y, cache = attention.attention_forward(dev(q), dev(k), dev(v), dev(keep), p, config=config)
            prob = cache[3].copy()
            dq, dk, dv = attention.attention_backward(dev(dy), cache, config=config)
            # dS alone, to check its masked entries: dA = dY V^T, then the softmax backward kernel
            dp = dev(np.ascontiguousarray(dy @ v.swapaxes(-1, -2)))
            ds = attention.causal_softmax_backward(dp, prob, t, float(hs) ** -0.5, cache[5], config=config)
            put(case, q=q, k=k, v=v, dy=dy, y=y, prob=prob, dq=dq, dk=dk, dv=dv, ds=ds,
                **({} if keep is None else {"keep": keep}))
            # the longest chain of reductions: dA = dY V^T (hs), sum_j dP P (Tk), dQ = dS K (Tk)
            meta[case] = {"kind": "attention", "p": p, "reduction": 2 * tk + hs}

        for name, (n, vocab), config, bconfig in CROSS_ENTROPY + extra["cross_entropy"]:
            case = f"{name}-{dn}"
            z = (rng.standard_normal((n, vocab)) * 3).astype(dtype)
            y = rng.integers(0, vocab, n).astype(np.int32)          # int32 targets: the launcher widens them
            g = np.asarray(0.75, dtype=dtype)                       # upstream gradient of the mean loss
            loss, cache = cross_entropy.cross_entropy_forward(dev(z), dev(y), config=config)
            dz = cross_entropy.cross_entropy_backward(dev(g), cache, config=bconfig)
            put(case, z=z, y=y, g=g, loss=loss, prob=cache[0], dz=dz)
            # reductions: over the row (V) for prob and dz, plus the mean over the rows (N) for the loss
            meta[case] = {"kind": "cross_entropy", "reduction": vocab, "reduction_loss": vocab + n}

    # AdamW: two float32 steps on 1001 values with a grid that strides (3 blocks of 32 threads), weight decay on/off
    for wd in (0.1, 0.0):
        case = f"adamw_wd{wd}"
        p0 = rng.standard_normal(1001).astype(np.float32)
        grads = [rng.standard_normal(1001).astype(np.float32) for _ in range(2)]
        p, m, v = dev(p0.copy()), dev(np.zeros_like(p0)), dev(np.zeros_like(p0))
        lr, b1, b2, eps = 3e-3, 0.9, 0.95, 1e-8
        for t, g in enumerate(grads, start=1):
            adamw.adamw_update(p, dev(g), m, v, lr, b1, b2, eps, wd, 1 - b1 ** t, (1 - b2 ** t) ** 0.5,
                               config=dict(threads=32, grid=3))
        put(case, p0=p0, g1=grads[0], g2=grads[1], p=p, m=m, v=v)
        meta[case] = {"kind": "adamw", "lr": lr, "betas": [b1, b2], "eps": eps, "weight_decay": wd}

    # dropout: odd sizes, a grid that strides
    case = "dropout"
    x = rng.standard_normal((7, 13)).astype(np.float32)
    keep = rng.random((7, 13)) >= 0.3
    y = dropout_mask.dropout_apply(dev(x), dev(keep), 0.3, config=dict(threads=16, grid=2))
    put(case, x=x, keep=keep, y=y)
    meta[case] = {"kind": "dropout", "p": 0.3}

    out["__meta__"] = np.asarray(json.dumps(meta))
    np.savez(path, **out)


def run_ptx(path):
    """Compile each kernel for float32 and float64 to PTX (compute capability 8.0), without a GPU; record how many
    PTX lines compute in float64 (a float32 kernel must have none)."""
    import re
    import types

    import numba.cuda.dispatcher as dispatcher
    from numba import cuda
    # numba-cuda compiles device functions for "the current device"; without a GPU, name one (compute capability 8.0)
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
    from tinygrad_gpt import kernels
    for name in kernels.modules("cuda"):                    # importing the table's CUDA modules registers their kernels
        kernels._module("cuda", name)
    result = {}
    for kern in kernels._module("cuda", "_common").REGISTRY:
        for dtype in ("float32", "float64"):
            ptx, _ = cuda.compile_ptx(kern.python_function(dtype), kern.signature_for(dtype), cc=(8, 0))
            result[f"{kern.name}-{dtype}"] = {
                "f64_lines": sum(1 for line in ptx.splitlines() if re.search(r"\.f64\b", line)),
                "entry": ".entry" in ptx}
    with open(path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if sys.argv[1] == "--ptx":
        run_ptx(sys.argv[2])
    elif sys.argv[1] == "--cuda":
        run_kernels(sys.argv[2], "cuda")
    else:
        run_kernels(sys.argv[1], "sim")
