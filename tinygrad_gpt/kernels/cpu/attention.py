"""Causal self-attention on the CPU: NumPy's BLAS for the products, numba for the softmax and its backward.
NumPy twins: functional.attention_forward / attention_backward (docs/derivations.md#attention-core). The cache is this
module's own (blocks of P kept for the backward); a backward takes the cache of the forward of the same kind.

The work runs in blocks of (batch rows, query rows), planned by `blocks()`:
- A block holds about BLOCK_SCORES scores (1 MiB of float32), so its softmax runs in the L2 cache.
- A block of queries i0:i1 computes only the keys it can see (0 : Tk - t + i1), which skips much of the masked half.
- Scores are laid out transposed, S^T = K Q^T (keys down, queries across), with (Q / sqrt(hs))^T written out
  contiguous: OpenBLAS's small-matrix kernels (products with M*N*K <= SMALL_GEMM, unpacked) run K @ Q^T about twice
  as fast with a contiguous Q^T as with a transposed view, and the query block shrinks (to QUERY_BLOCK_MIN at least)
  so that the block seeing every key stays under that size.
- Large attention (PARALLEL_SCORES scores in all) spreads the groups of batch rows over a thread pool (`_run`): a
  block's products are under OpenBLAS's threading threshold, so each runs on the thread that calls it, and the numba
  kernels (always their serial versions: a block fits one core's cache) release the GIL. Every block writes its own
  outputs, and the blocks' arithmetic does not depend on how batch rows are grouped, so threads change no bits.
Dimension names: B batch, H heads, t queries (the last t of Tk positions), Tk keys, hs head size, G batch rows of a
group, n queries of a block, kn keys it sees.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import prange

from ._jit import kernel
from ._math import exp

BLOCK_SCORES = 1 << 18
QUERY_BLOCK = 64
QUERY_BLOCK_MIN = 32
SMALL_GEMM = 1_000_000
PARALLEL_SCORES = 1 << 20


# ---- kernels (one block: G batch rows, H heads, n queries at absolute positions off .. off + n - 1, kn keys) -------

@kernel
def softmax_fwd(st, off, keep, ks, at):
    """In place on st (G, H, kn, n), S^T / sqrt(hs): P^T, the softmax over the keys query i sees (j <= off + i),
    exactly 0 at the others. With a dropout keep-mask (G, H, n, kn), also at = A^T = (P * keep * ks)^T.
    Key j is seen by queries lo(j) = clip(j - off, 0, n) onwards; the loops over them run on slices from lo(j), so
    that each is a plain loop from 0 (numba's loops with a computed start did not vectorise)."""
    g_, h_, kn, n = st.shape
    ft = st.dtype.type
    for gh in prange(g_ * h_):
        g, h = gh // h_, gh % h_
        s = st[g, h]                                               # (kn, n)
        m = np.full(n, -np.inf, st.dtype)                          # per query: max over the keys it sees
        l = np.zeros(n, st.dtype)                                  # per query: sum of exp(s - m)
        for j in range(kn):
            lo = min(n, max(0, j - off))
            row, mr = s[j, lo:], m[lo:]
            for i in range(row.shape[0]):
                mr[i] = max(mr[i], row[i])
        for j in range(kn):
            lo = min(n, max(0, j - off))
            s[j, :lo] = ft(0)                                      # masked: queries before lo do not see key j
            row, mr, lr = s[j, lo:], m[lo:], l[lo:]
            for i in range(row.shape[0]):
                e = exp(row[i] - mr[i])
                row[i] = e
                lr[i] += e
        for i in range(n):
            l[i] = ft(1) / l[i]
        for j in range(kn):
            row = s[j]
            for i in range(n):
                row[i] *= l[i]                                     # P^T = exp(S - m)^T / l
        if keep is not None:
            for j in range(kn):
                for i in range(n):
                    at[g, h, j, i] = s[j, i] * ft(keep[g, h, i, j]) * ks


@kernel
def softmax_bwd(dp, pt, d, scale, keep, ks):
    """In place on dp (G, H, kn, n) = dA^T: dS^T / sqrt(hs) = P^T * (dP^T - D) * scale, with dP = dA * keep * ks under
    dropout (keep (G, H, n, kn)) and D (G, H, n) = sum_j dP_ij P_ij = sum_d dY_id Y_id. Masked entries have P = 0,
    so their gradient is exactly 0."""
    g_, h_, kn, n = dp.shape
    ft = dp.dtype.type
    for gh in prange(g_ * h_):
        g, h = gh // h_, gh % h_
        dg = d[g, h]
        for j in range(kn):
            row, prow = dp[g, h, j], pt[g, h, j]
            if keep is not None:
                for i in range(n):
                    row[i] *= ft(keep[g, h, i, j]) * ks
            for i in range(n):
                row[i] = prow[i] * (row[i] - dg[i]) * scale


@kernel
def row_dots(a, b, out):
    """out[g, h, i] = sum_d a[g, h, i, d] * b[g, h, i, d] (a, b any strides): D of the softmax backward."""
    g_, h_, n, hs = a.shape
    ft = a.dtype.type
    for gh in prange(g_ * h_):
        g, h = gh // h_, gh % h_
        for i in range(n):
            acc = ft(0)
            for e in range(hs):
                acc += a[g, h, i, e] * b[g, h, i, e]
            out[g, h, i] = acc


@kernel
def scaled_transpose(x, scale, out):
    """out (G, H, hs, n) = (x * scale)^T for x (G, H, n, hs) of any strides."""
    g_, h_, n, hs = x.shape
    for gh in prange(g_ * h_):
        g, h = gh // h_, gh % h_
        for i in range(n):
            for e in range(hs):
                out[g, h, e, i] = x[g, h, i, e] * scale


# ---- planning and threads ----------------------------------------------------------------------------------------

def blocks(b, h, t, tk, hs, threads):
    """[(b0, b1, [(i0, i1, kn), ...])]: groups of batch rows b0:b1 (units of the thread pool), each with its query
    blocks, queries i0:i1 seeing keys 0:kn. The block of the last queries (which sees every key) comes first: the
    backward writes dk, dv there and adds the other blocks' parts."""
    qb = min(t, QUERY_BLOCK, max(QUERY_BLOCK_MIN, SMALL_GEMM // max(1, tk * hs)))
    queries = [(max(0, i1 - qb), i1, tk - t + i1) for i1 in range(t, 0, -qb)]
    step = max(1, BLOCK_SCORES // (h * qb * tk))
    if threads > 1 and b * h * t * tk >= PARALLEL_SCORES:
        step = min(step, -(-b // threads))
    return [(b0, min(b0 + step, b), queries) for b0 in range(0, b, step)]


_pool = None                      # (pid, threads, ThreadPoolExecutor)
_pool_lock = threading.Lock()


def num_threads():
    """Threads for the attention's groups: numba's thread count (NUMBA_NUM_THREADS; the cores by default)."""
    return max(1, numba.config.NUMBA_NUM_THREADS)


def _run(fn, items):
    """fn(item) for every item, item i on thread i mod n of the pool (the caller's thread is one of them)."""
    n = min(num_threads(), len(items))
    if n <= 1:
        for item in items:
            fn(item)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != n - 1:   # first use, new count, forked child
            _pool = (os.getpid(), n - 1, ThreadPoolExecutor(n - 1, thread_name_prefix="tinygrad_gpt"))
        pool = _pool[2]

    def share(k):
        for item in items[k::n]:
            fn(item)
    futures = [pool.submit(share, k) for k in range(1, n)]
    try:
        share(0)
    finally:
        for f in futures:
            f.exception()                                          # wait for all, even when one failed
    for f in futures:
        f.result()


def _matmul_into(a, b, out):
    np.matmul(a, b, out=out)


# ---- launchers ---------------------------------------------------------------------------------------------------

def attention_forward(q, k, v, keep=None, p=0.0, out=None):
    """Twin of functional.attention_forward: q (B, H, t, hs); k, v (B, H, Tk, hs), Tk >= t, any strides with unit
    last stride (views into a (B, t, 3C) qkv array: no copies); keep: optional boolean keep-mask (B, H, t, Tk);
    out: optional (B, H, t, hs) array or view for y. -> y, cache."""
    b, h, t, hs = q.shape
    tk = k.shape[-2]
    ft = q.dtype.type
    scale, ks = ft(hs ** -0.5), ft(1.0 / (1.0 - p)) if keep is not None else ft(1)
    y = np.empty(q.shape, q.dtype) if out is None else out         # (B, H, t, hs)
    plan = blocks(b, h, t, tk, hs, num_threads())                  # the backward reuses the forward's plan
    probs = {}                                                     # (b0, i0) -> (P^T, A^T) of that block

    def group(grp):
        b0, b1, queries = grp
        for i0, i1, kn in queries:
            rows, keys = (slice(b0, b1), slice(None), slice(i0, i1)), (slice(b0, b1), slice(None), slice(0, kn))
            qr = q[rows]
            qt = np.empty(qr.shape[:-2] + (hs, i1 - i0), q.dtype)   # (G, H, hs, n) (Q / sqrt(hs))^T
            scaled_transpose(qr, scale, qt)
            st = k[keys] @ qt                                      # (G, H, kn, n) S^T / sqrt(hs)
            at = None
            kb = None
            if keep is not None:
                kb = np.ascontiguousarray(keep[rows + (slice(0, kn),)]).view(np.uint8)   # (G, H, n, kn)
                at = np.empty_like(st)
            softmax_fwd(st, tk - t + i0, kb, ks, at)
            probs[b0, i0] = (st, st if at is None else at)
            _matmul_into((st if at is None else at).swapaxes(-1, -2), v[keys], y[rows])   # Y = A V
    _run(group, plan)
    return y, ("cpu-blocked", q, k, v, y, keep, ks, probs, plan)


def attention_backward(dy, cache, out=None):
    """Twin of functional.attention_backward: -> dq, dk, dv (written into `out` = (dq, dk, dv) when given)."""
    _, q, k, v, y, keep, ks, probs, plan = cache
    b, h, t, hs = q.shape
    tk = k.shape[-2]
    scale = q.dtype.type(hs ** -0.5)
    dq, dk, dv = out if out is not None else (np.empty(a.shape, a.dtype) for a in (q, k, v))

    def group(grp):
        b0, b1, queries = grp
        d = np.empty((b1 - b0, h, t), dy.dtype)                    # D_i = sum_d dY_id Y_id
        row_dots(dy[b0:b1], y[b0:b1], d)
        dyt = np.empty((b1 - b0, h, hs, t), dy.dtype)              # dY^T contiguous: V dY^T as a plain (NN) product
        np.copyto(dyt, dy[b0:b1].swapaxes(-1, -2))
        for i0, i1, kn in queries:
            rows, keys = (slice(b0, b1), slice(None), slice(i0, i1)), (slice(b0, b1), slice(None), slice(0, kn))
            pt, at = probs.pop((b0, i0))                           # P^T and A^T as the forward left them
            dp = v[keys] @ dyt[..., i0:i1]                         # dA^T = V dY^T        (G, H, kn, n)
            kb = None if keep is None else np.ascontiguousarray(keep[rows + (slice(0, kn),)]).view(np.uint8)
            softmax_bwd(dp, pt, d[..., i0:i1], scale, kb, ks)           # dS^T / sqrt(hs)
            _matmul_into(dp.swapaxes(-1, -2), k[keys], dq[rows])   # dQ = dS K / sqrt(hs)   (G, H, n, hs)
            if i1 == t:                                            # the first block: it sees every key
                _matmul_into(at, dy[rows], dv[keys])               # dV = A^T dY            (G, H, kn, hs)
                _matmul_into(dp, q[rows], dk[keys])                # dK = dS^T Q / sqrt(hs)
            else:                                                  # earlier queries add to the keys they see
                dv[keys] += at @ dy[rows]
                dk[keys] += dp @ q[rows]
    _run(group, plan)
    return dq, dk, dv

