"""Causal self-attention on the CPU: one parallel kernel for the forward and one for the backward, each over the
(batch row, head) pairs on numba's threads; the products are single-threaded calls of the BLAS (kernels/cpu/blas.py)
and the softmax and its backward run in between on the block just computed, while it is in the cache.
NumPy twins: fused.attention_forward / attention_backward (docs/derivations.md#attention-core). The cache is this
module's own (the blocks of P kept for the backward); a backward takes the cache of the forward of the same kind.

Each head's queries are processed in blocks (planned by `blocks()`, the same for every head):
- A block of queries i0:i1 computes only the keys it can see (0 : Tk - t + i1), which skips much of the masked half.
- Scores are laid out transposed, S^T = K Q^T (keys down, queries across), with (Q / sqrt(hs))^T written out
  contiguous: OpenBLAS's small-matrix kernels (products with M*N*K <= tuning.SMALL_GEMM, unpacked) run K @ Q^T
  about twice as fast with a contiguous Q^T as with a transposed view, and the query block shrinks (to
  tuning.QUERY_BLOCK_MIN) so that the block seeing every key stays under that size.
- The block of the last queries (which sees every key) comes first: the backward writes dK and dV there and adds
  the other blocks' parts.
Every (batch row, head) pair writes only its own outputs, so the thread count changes no bits.
Without a BLAS that numba can call (`blas.find()` None) the launchers run the twins instead (as the linear layers'
and the @'s launchers fall back to NumPy's matmul): the twin's forward, and its backward on the twin's cache.
Dimension names: B batch, H heads, t queries (the last t of Tk positions), Tk keys, hs head size, n queries of a
block, kn keys it sees.
"""
import numba
import numpy as np
from numba import prange

from ... import fused
from . import blas, tuning
from ._jit import kernel
from ._math import exp


def blocks(t, tk, hs):
    """int64 (blocks, 4): rows (i0, i1, kn, offset): queries i0:i1 see keys 0:kn, and their P^T block (kn x n) starts
    `offset` elements into a head's storage; the last queries first. Also the storage per head (elements)."""
    qb = min(t, tuning.QUERY_BLOCK, max(tuning.QUERY_BLOCK_MIN, tuning.SMALL_GEMM // max(1, tk * hs)))
    rows, offset = [], 0
    for i1 in range(t, 0, -qb):
        i0 = max(0, i1 - qb)
        kn = tk - t + i1
        rows.append((i0, i1, kn, offset))
        offset += kn * (i1 - i0)
    return np.array(rows, dtype=np.int64).reshape(-1, 4), offset


@numba.njit(inline="always")
def _addr(a, b, h, i):
    """The address of a[b, h, i, 0] (a 4-D array of any strides)."""
    return a.ctypes.data + b * a.strides[0] + h * a.strides[1] + i * a.strides[2]


@numba.njit(inline="always")
def _rows(a):
    """The row stride of a 4-D array's last two axes, in elements (the BLAS's leading dimension)."""
    return a.strides[2] // a.itemsize


@numba.njit(inline="always")
def _softmax_block(s, off):
    """In place on s (kn, n), S^T / sqrt(hs) of one block: P^T, the softmax over the keys query i sees
    (j <= off + i), exactly 0 at the others. Key j is seen by queries lo(j) = clip(j - off, 0, n) onwards; the loops
    run on slices from lo(j), so that each is a plain loop from 0 (numba's loops with a computed start did not
    vectorise)."""
    kn, n = s.shape
    ft = s.dtype.type
    m = np.full(n, -np.inf, s.dtype)                               # per query: max over the keys it sees
    den = np.zeros(n, s.dtype)                                     # per query: sum of exp(s - m)
    for j in range(kn):
        lo = min(n, max(0, j - off))
        row, mr = s[j, lo:], m[lo:]
        for i in range(row.shape[0]):
            mr[i] = max(mr[i], row[i])
    for j in range(kn):
        lo = min(n, max(0, j - off))
        s[j, :lo] = ft(0)                                          # masked: queries before lo do not see key j
        row, mr, dr = s[j, lo:], m[lo:], den[lo:]
        for i in range(row.shape[0]):
            e = exp(row[i] - mr[i])
            row[i] = e
            dr[i] += e
    for i in range(n):
        den[i] = ft(1) / den[i]
    for j in range(kn):
        row = s[j]
        for i in range(n):
            row[i] *= den[i]                                       # P^T = exp(S - m)^T / sum


@kernel(work="macs")
def attention_fwd(fn, ilp64, q, k, v, y, blk, pbuf, abuf, keep, scale, ks):
    """y (B, H, t, hs) = A V, A = softmax(causal(Q K^T / sqrt(hs))) (* keep * ks under dropout); q, k, v, y any
    strides with unit last stride. pbuf (B, H, total) receives each block's P^T; abuf its A^T under dropout (keep
    (B, H, t, Tk) as bytes; else abuf and keep are None)."""
    bsz, nh, t, hs = q.shape
    tk = k.shape[2]
    ft = q.dtype.type
    qb = 0
    for r in range(blk.shape[0]):
        qb = max(qb, blk[r, 1] - blk[r, 0])
    for u in prange(bsz * nh):
        b, h = u // nh, u % nh
        qt_buf = np.empty(hs * qb, q.dtype)
        for r in range(blk.shape[0]):
            i0, i1, kn, off = blk[r, 0], blk[r, 1], blk[r, 2], blk[r, 3]
            n = i1 - i0
            qt = qt_buf[:hs * n].reshape(hs, n)                    # (Q / sqrt(hs))^T of the block, contiguous
            for i in range(n):
                qrow = q[b, h, i0 + i]
                for e in range(hs):
                    qt[e, i] = qrow[e] * scale
            st = pbuf[b, h, off:off + kn * n].reshape(kn, n)
            blas.gemm(fn, ilp64, blas.NO_TRANS, blas.NO_TRANS, kn, n, hs, ft(1), _addr(k, b, h, 0), _rows(k),
                      qt.ctypes.data, n, ft(0), st.ctypes.data, n)          # S^T = K Q^T / sqrt(hs)   (kn, n)
            _softmax_block(st, tk - t + i0)                        # P^T
            a = st
            if keep is not None and abuf is not None:
                a = abuf[b, h, off:off + kn * n].reshape(kn, n)
                for j in range(kn):
                    for i in range(n):
                        a[j, i] = st[j, i] * ft(keep[b, h, i0 + i, j]) * ks     # A^T = (P * keep / (1 - p))^T
            blas.gemm(fn, ilp64, blas.TRANS, blas.NO_TRANS, n, hs, kn, ft(1), a.ctypes.data, n, _addr(v, b, h, 0),
                      _rows(v), ft(0), _addr(y, b, h, i0), _rows(y))        # Y = A V   (n, hs)


@kernel(work="macs")
def attention_bwd(fn, ilp64, q, k, v, y, dy, dq, dk, dv, blk, pbuf, abuf, keep, scale, ks):
    """dq, dk, dv (any strides, unit last stride) from dy and the forward's blocks of P^T (and A^T)."""
    bsz, nh, t, hs = q.shape
    ft = q.dtype.type
    qb, kmax = 0, 0
    for r in range(blk.shape[0]):
        qb = max(qb, blk[r, 1] - blk[r, 0])
        kmax = max(kmax, blk[r, 2])
    for u in prange(bsz * nh):
        b, h = u // nh, u % nh
        d = np.empty(t, q.dtype)                                   # D_i = sum_j dP_ij P_ij = sum_d dY_id Y_id
        dyt = np.empty((hs, t), q.dtype)                           # dY^T contiguous: V dY^T as a plain (NN) product
        for i in range(t):
            dyr, yr = dy[b, h, i], y[b, h, i]
            acc = ft(0)
            for e in range(hs):
                acc += dyr[e] * yr[e]
                dyt[e, i] = dyr[e]
            d[i] = acc
        dp_buf = np.empty(kmax * qb, q.dtype)
        for r in range(blk.shape[0]):
            i0, i1, kn, off = blk[r, 0], blk[r, 1], blk[r, 2], blk[r, 3]
            n = i1 - i0
            pt = pbuf[b, h, off:off + kn * n].reshape(kn, n)
            if abuf is None:
                at = pt
            else:
                at = abuf[b, h, off:off + kn * n].reshape(kn, n)
            dp = dp_buf[:kn * n].reshape(kn, n)
            blas.gemm(fn, ilp64, blas.NO_TRANS, blas.NO_TRANS, kn, n, hs, ft(1), _addr(v, b, h, 0), _rows(v),
                      dyt.ctypes.data + i0 * dyt.itemsize, t, ft(0), dp.ctypes.data, n)   # dA^T = V dY^T (kn, n)
            dg = d[i0:i1]
            for j in range(kn):
                row, prow = dp[j], pt[j]
                if keep is not None:
                    for i in range(n):
                        row[i] *= ft(keep[b, h, i0 + i, j]) * ks  # dP = dA * keep / (1 - p)
                for i in range(n):
                    row[i] = prow[i] * (row[i] - dg[i]) * scale    # dS^T / sqrt(hs); 0 where P = 0 (masked)
            blas.gemm(fn, ilp64, blas.TRANS, blas.NO_TRANS, n, hs, kn, ft(1), dp.ctypes.data, n, _addr(k, b, h, 0),
                      _rows(k), ft(0), _addr(dq, b, h, i0), _rows(dq))      # dQ = dS K / sqrt(hs)   (n, hs)
            beta = ft(0) if r == 0 else ft(1)                      # the first block sees every key: it writes
            blas.gemm(fn, ilp64, blas.NO_TRANS, blas.NO_TRANS, kn, hs, n, ft(1), at.ctypes.data, n,
                      _addr(dy, b, h, i0), _rows(dy), beta, _addr(dv, b, h, 0), _rows(dv))   # dV (+)= A^T dY
            blas.gemm(fn, ilp64, blas.NO_TRANS, blas.NO_TRANS, kn, hs, n, ft(1), dp.ctypes.data, n,
                      _addr(q, b, h, i0), _rows(q), beta, _addr(dk, b, h, 0), _rows(dk))     # dK (+)= dS^T Q


def _unit_last_stride(a):
    return a if a.strides[-1] == a.itemsize else np.ascontiguousarray(a)


def attention_forward(q, k, v, keep=None, p=0.0, out=None, scale=None):
    """Twin of fused.attention_forward: q (B, H, t, hs); k, v (B, H, Tk, hs), Tk >= t, any strides with unit
    last stride (views into a (B, t, 3C) qkv array: no copies); keep: optional boolean keep-mask (B, H, t, Tk);
    out: optional (B, H, t, hs) array or view for y; scale: of the scores (hs**-0.5 by default). -> y, cache."""
    lib = blas.find()
    if lib is None:                                                # no BLAS to call from numba: the twin
        return fused.attention_forward.reference(q, k, v, keep, p, out, scale)
    q, k, v = (_unit_last_stride(a) for a in (q, k, v))
    b, h, t, hs = q.shape
    tk = k.shape[-2]
    ft = q.dtype.type
    scale, ks = ft(hs ** -0.5 if scale is None else scale), ft(1.0 / (1.0 - p)) if keep is not None else ft(1)
    y = np.empty(q.shape, q.dtype) if out is None or out.strides[-1] != out.itemsize else out   # (B, H, t, hs)
    blk, total = blocks(t, tk, hs)
    pbuf = np.empty((b, h, total), q.dtype)                        # every block's P^T, kept for the backward
    abuf = None if keep is None else np.empty_like(pbuf)           # and A^T under dropout
    kb = None if keep is None else np.ascontiguousarray(keep).view(np.uint8)
    with lib.single_threaded():
        attention_fwd.run(b * h * t * tk * hs, lib.gemm_for(q.dtype), lib.ilp64, q, k, v, y, blk, pbuf, abuf, kb,
                          scale, ks)
    if out is not None and y is not out:
        out[...] = y
        y = out
    return y, (q, k, v, y, kb, ks, blk, pbuf, abuf, scale)


def attention_backward(dy, cache, out=None):
    """Twin of fused.attention_backward: -> dq, dk, dv (written into `out` = (dq, dk, dv) when given)."""
    lib = blas.find()
    if lib is None:                                                # the forward ran the twin: its cache
        return fused.attention_backward.reference(dy, cache, out)
    q, k, v, y, kb, ks, blk, pbuf, abuf, scale = cache
    dy = _unit_last_stride(dy)
    given = out if out is not None else (None, None, None)
    grads = [o if o is not None and o.strides[-1] == o.itemsize else np.empty(a.shape, a.dtype)
             for o, a in zip(given, (q, k, v), strict=True)]
    b, h, t, hs = q.shape
    with lib.single_threaded():
        attention_bwd.run(b * h * t * k.shape[-2] * hs, lib.gemm_for(q.dtype), lib.ilp64, q, k, v, y, dy, *grads, blk,
                          pbuf, abuf, kb, scale, ks)
    return fused.grads_into(out, grads)
