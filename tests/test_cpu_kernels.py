"""The numba CPU kernels (tinygrad_gpt/kernels/cpu/) against their NumPy twins (fused.py, optim.py), over shapes
drawn by hypothesis: odd sizes, one row, widths that are not a multiple of the vector width, float32 and float64.

Tolerances. A kernel and its twin compute the same formulas, but a kernel sums rows in another order (vectorised,
reassociated) and computes exp and tanh with its own float32 functions (kernels/cpu/_math.py: within 6 units of
roundoff u, below). Normwise (max|a - b| / max|b|) the two agree within TOL(n) = 8 (n + 8) u (helpers.tol, whose
docstring derives it; u = 6.0e-8 in float32, 1.1e-16 in float64), n the longest chain of reductions behind the
output (C for LayerNorm's rows, N rows for column sums, V for the softmax, 2 Tk + hs for attention). What involves
no reduction is checked exactly (bias, ReLU, residual, dropout, the embedding gather, AdamW: the kernel repeats the
twin's float operations one by one).

Each test also shows that the kernel ran (kernel_spy.spy counts the calls of every compiled kernel, by name and
variant: serial or parallel) and that the twin's side ran no kernel: a launcher that fell back to NumPy, or kernels
switched off, would otherwise compare the twin with itself and pass. The size thresholds that pick a kernel's
variant and route (tuning.PARALLEL_WORK, tuning.PARALLEL_MACS, matmul.SMALL, a BLAS or none) are each crossed by the
`test_*_branches` tests, which assert the variant that ran.
"""
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import prange

from helpers import close, query_blocks, tol
from helpers import unit_roundoff as u
from kernel_spy import spy
from tinygrad_gpt import GPT, GPTConfig, Tensor, kernels
from tinygrad_gpt import fused as F
from tinygrad_gpt.kernels.cpu import blas, tuning
from tinygrad_gpt.optim import AdamW, adamw_update, grad_norm

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float32, np.float64]
needs_blas = pytest.mark.skipif(not blas.available(), reason="no BLAS numba can call: the products' kernels are not "
                                "used (the route without one is tested with blas.find patched)")


def variant(work):
    """The version of an elementwise kernel (CpuKernel.run) a launch of `work` elements runs."""
    return "parallel" if work >= tuning.PARALLEL_WORK else "serial"


rows = st.integers(1, 70)                      # 1 row, odd counts, more than one piece of 64 rows
widths = st.sampled_from([1, 3, 7, 16, 17, 33, 65])
seeds = st.integers(0, 2 ** 16)


# ---- exp and tanh ------------------------------------------------------------------------------------------------

def test_float32_exp_and_tanh_are_within_a_few_units():
    """exp: the reduced argument r = x - k ln 2 carries <= 0.35 u of relative error, the degree-7 Horner sum ~1.6 u,
    the final product 1 u, the truncation < 0.02 u: within 4 u of e^x; asserted at 6 u. tanh = 1 - 2 / (e^(2a) + 1):
    its absolute error is at most ~6 u (the quotient's relative error times 2 / (e^(2a) + 1) <= 1, plus the
    subtraction); asserted at 8 u."""
    from numba import njit

    from tinygrad_gpt.kernels.cpu._math import exp, tanh

    @njit(error_model="numpy", fastmath={"reassoc", "contract"})
    def both(x, e, t):
        for i in range(x.shape[0]):
            e[i] = exp(x[i])
            t[i] = tanh(x[i] / np.float32(10))

    x = np.linspace(-90, 90, 400_001, dtype=np.float32)
    e, t = np.empty_like(x), np.empty_like(x)
    both(x, e, t)
    ref = np.exp(x.astype(np.float64))
    normal = (ref > np.finfo(np.float32).tiny) & (ref < np.finfo(np.float32).max)
    assert np.max(np.abs(e[normal] - ref[normal]) / ref[normal]) <= 6 * u(np.float32)
    sub = ref <= np.finfo(np.float32).tiny          # subnormal results: within the last one's rounding (2^-149)
    assert np.max(np.abs(e[sub] - ref[sub])) <= 2.0 ** -149 and np.all(np.isinf(e[ref > 3.5e38]))
    assert np.max(np.abs(t - np.tanh(x.astype(np.float64) / 10))) <= 8 * u(np.float32)
    edge = np.array([-np.inf, np.nan, 0.0, -0.0], np.float32)
    both(edge, ee := np.empty_like(edge), te := np.empty_like(edge))
    assert ee[0] == 0 and np.isnan(ee[1]) and ee[2] == 1 and np.isnan(te[1]) and te[2] == 0


# ---- each kernel against its twin ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(n=rows, c=widths, bias=st.booleans(), seed=seeds)
def test_layer_norm(dtype, n, c, bias, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3 + 1).astype(dtype)
    w, g = rng.standard_normal(c).astype(dtype), rng.standard_normal((n, c)).astype(dtype)
    b = rng.standard_normal(c).astype(dtype) if bias else None
    with spy() as calls:
        y, cache = F.layer_norm_forward(x, w, b)
        grads = F.layer_norm_backward(g, cache)
    with spy() as twin_calls:
        y0, cache0 = F.layer_norm_forward.reference(x, w, b)
        grads0 = F.layer_norm_backward.reference(g, cache0)
    assert not twin_calls and calls.ran("layer_norm_fwd", variant(x.size)) == calls.ran("layer_norm_bwd") == 1
    for name, a, a0 in (("y", y, y0), ("mean", cache[1], cache0[1]), ("rstd", cache[2], cache0[2])):
        close(a, a0, tol(dtype, c), name)
    close(grads[1], grads0[1], tol(dtype, n + c), "dw")
    close(grads[2], grads0[2], tol(dtype, n), "db")
    if c > 1:
        close(grads[0], grads0[0], tol(dtype, c), "dx")
    else:   # every row constant: xhat = 0 exactly, so dw = 0 and dx = rstd (dxhat - mean(dxhat)) = 0 in exact
        # arithmetic; the twin gets exactly 0, the kernel at most the rounding of dxhat = g w (a fused
        # multiply-subtract keeps it): |dx| <= u |g w| rstd
        assert np.all(grads[1] == 0) and np.all(grads0[0] == 0)
        assert np.all(np.abs(grads[0]) <= u(dtype) * np.abs(g * w) * cache[2])


@needs_blas
@pytest.mark.parametrize("dtype", DTYPES)
@given(n=rows, i=widths, d=widths, bias=st.booleans(), activation=st.sampled_from([None, "relu", "gelu"]),
       residual=st.booleans(), seed=seeds)
def test_linear(dtype, n, i, d, bias, activation, residual, seed):
    """y = act(x W^T + b) + residual and its backward: the products split over threads (BLAS calls on row pieces),
    the epilogue and act'(.) fused. The products sum over `i` (forward) and over N rows or D outputs (backward)."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, i)).astype(dtype), rng.standard_normal((d, i)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype) if bias else None
    r = rng.standard_normal((n, d)).astype(dtype) if residual and activation is None else None
    g = rng.standard_normal((n, d)).astype(dtype)
    with spy() as calls:
        y, saved = F.linear_forward(x, w, b, activation, r)
        grads = F.linear_backward(g.copy(), x, w, bias, saved, activation)
    with spy() as twin_calls:
        y0, saved0 = F.linear_forward.reference(x, w, b, activation, r)
        grads0 = F.linear_backward.reference(g.copy(), x, w, bias, saved0, activation)
    assert not twin_calls
    # the BLAS route: one fused forward, the two products of the backward, and act'(.) fused with db's column sums
    assert calls.ran("linear_fwd") == 1 and calls.ran("gemm_rows") == 2 and calls.ran("epilogue_fwd") == 0
    assert calls.ran("epilogue_bwd") == (1 if bias or activation else 0)
    # gelu goes through the kernels' tanh: a few u of |u| more per element
    close(y, y0, tol(dtype, i) + (16 * u(dtype) if activation == "gelu" else 0), "y")
    if activation == "gelu":
        close(saved, saved0, tol(dtype, i), "pre-activation")
    slope = 32 * u(dtype) if activation == "gelu" else 0
    close(grads[0], grads0[0], tol(dtype, d) + slope, "dx", floor=1e-3)
    close(grads[1], grads0[1], tol(dtype, n) + slope, "dW", floor=1e-3)
    if bias:
        close(grads[2], grads0[2], tol(dtype, n) + slope, "db", floor=1e-3)
    else:
        assert grads[2] is None and grads0[2] is None


@pytest.mark.parametrize("dtype", DTYPES)
@given(b=st.integers(1, 4), t=st.integers(1, 9), c=widths, v=st.integers(1, 40), seed=seeds)
def test_embedding(dtype, b, t, c, v, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v, (b, t))
    tok, pos = rng.standard_normal((v, c)).astype(dtype), rng.standard_normal((t + 3, c)).astype(dtype)
    g = rng.standard_normal((b, t, c)).astype(dtype)
    with spy() as calls:
        got = [F.embed_forward(idx, tok, pos, pos0) for pos0 in (0, 3)] + [F.embed_backward(idx, g, v, t + 3)]
    with spy() as twin_calls:
        want = [F.embed_forward.reference(idx, tok, pos, pos0) for pos0 in (0, 3)]
        want.append(F.embed_backward.reference(idx, g, v, t + 3))
    assert not twin_calls and calls.ran("embed_fwd", variant(g.size)) == 2 and calls.ran("embed_bwd") == 1
    for ours, twin in zip(got[:2], want[:2], strict=True):
        np.testing.assert_array_equal(ours, twin)
    for ours, twin, n in zip(got[2], want[2], (b * t, b), strict=True):
        close(ours, twin, tol(dtype, n), "embedding backward")
    with pytest.raises(IndexError):
        F.embed_forward(idx + v, tok, pos)       # an id past the table: an error, never a read out of bounds


@pytest.mark.parametrize("dtype", DTYPES)
@given(n=rows, v=st.sampled_from([1, 2, 5, 65, 100]), seed=seeds)
def test_cross_entropy(dtype, n, v, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, v)) * 3).astype(dtype)
    y = rng.integers(0, v, n)
    g = dtype(0.75)
    with spy() as calls:
        loss, cache = F.cross_entropy_forward(z, y)
        dz = F.cross_entropy_backward(g, cache)
    with spy() as twin_calls:
        loss0, cache0 = F.cross_entropy_forward.reference(z, y)
        dz0 = F.cross_entropy_backward.reference(g, cache0)
    assert not twin_calls and calls.ran("cross_entropy_fwd") == calls.ran("cross_entropy_bwd") == 1
    close(np.asarray(loss), np.asarray(loss0, dtype=dtype), tol(dtype, v + n), "loss")
    close(cache[0], cache0[0], tol(dtype, v), "softmax")
    close(dz, dz0, tol(dtype, v), "dz")
    with pytest.raises(IndexError):
        F.cross_entropy_forward(z, y + v)


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 17)]), p=st.floats(0.0, 0.9), seed=seeds)
def test_dropout(dtype, shape, p, seed):
    rng = np.random.default_rng(seed)
    x, keep = rng.standard_normal(shape).astype(dtype), rng.random(shape) >= p
    with spy() as calls:
        got = F.dropout_apply(x, keep, p)
    assert calls.ran("dropout_fwd") == 1
    np.testing.assert_array_equal(got, F.dropout_apply.reference(x, keep, p))


@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 17), (64, 300)]), p=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
       seed=st.integers(0, 2 ** 64 - 1))
def test_dropout_keep_mask_repeats_the_twin_bit_for_bit(shape, p, seed):
    """The counter-based masks: the kernel computes the same hash of (seed, index) as its NumPy twin."""
    with spy() as calls:
        got = F.dropout_keep_mask(np.empty(shape, bool), seed, p)
    assert calls.ran("keep_mask_fill", variant(int(np.prod(shape)))) == 1
    want = F.dropout_keep_mask.reference(np.empty(shape, bool), seed, p)
    np.testing.assert_array_equal(got, want)
    assert got.all() if p == 0.0 else (not got.any() if p == 1.0 else True)


def test_dropout_keep_masks_keep_one_minus_p_and_differ_by_seed():
    """Over n = 2**22 elements the kept fraction is 1 - p within 5 standard errors (sqrt(p (1 - p) / n) = 2e-4 at
    p = 0.2); neighbouring elements are uncorrelated (the same bound on P(both kept) - (1 - p)^2); two seeds give
    different masks."""
    n, p = 1 << 22, 0.2
    keep = F.dropout_keep_mask(np.empty(n, bool), 1234, p)
    assert abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    both = (keep[:-1] & keep[1:]).mean()
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)
    assert (keep != F.dropout_keep_mask(np.empty(n, bool), 1235, p)).mean() > 0.3


def _operand(rng, shape, dtype, layout):
    """An array of `shape` stored as `layout` says: C order, a transposed view (the last two axes swapped over a C
    array), or a strided view (every other row of a larger array)."""
    if layout == "transposed":
        return np.ascontiguousarray(rng.standard_normal(shape[:-2] + shape[-2:][::-1]).astype(dtype)).swapaxes(-1, -2)
    if layout == "strided":
        return rng.standard_normal(shape[:-2] + (2 * shape[-2], shape[-1])).astype(dtype)[..., ::2, :]
    return rng.standard_normal(shape).astype(dtype)


layouts = st.sampled_from(["c", "transposed", "strided"])


@needs_blas
@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.sampled_from([(), (1,), (3,), (2, 3)]), b_batch=st.sampled_from(["same", "none", "ones"]),
       m=st.sampled_from([1, 5, 64, 67]), k=st.sampled_from([1, 3, 32]), n=st.sampled_from([1, 7, 64]),
       la=layouts, lb=layouts, seed=seeds)
def test_batched_matmul(dtype, batch, b_batch, m, k, n, la, lb, seed):
    """The Tensor's @ kernel against NumPy's matmul: batches (and a right operand without one, or with ones,
    broadcast), C-ordered, transposed and strided operands, one row, one column, K = 1; every size through the
    kernel (its small-size hand-off to NumPy turned off). Each output is one dot product of length K: TOL(K)."""
    from unittest import mock

    from tinygrad_gpt.kernels.cpu import matmul
    from tinygrad_gpt.tensor import batched_matmul
    rng = np.random.default_rng(seed)
    a = _operand(rng, batch + (m, k), dtype, la)
    bshape = {"same": batch, "none": (), "ones": (1,) * len(batch)}[b_batch] + (k, n)
    b = _operand(rng, bshape, dtype, lb)
    with mock.patch.object(matmul, "SMALL", 0), spy() as calls:
        got = batched_matmul(a, b)
    assert calls.ran("bmm") == 1
    want = a @ b
    assert got.shape == want.shape and got.dtype == want.dtype
    close(got, want, tol(dtype, k), "a @ b")


@needs_blas
def test_batched_matmul_is_the_kernel_and_empty_sizes_work():
    from unittest import mock

    from tinygrad_gpt.kernels import launcher
    from tinygrad_gpt.kernels.cpu import matmul
    from tinygrad_gpt.tensor import batched_matmul
    assert launcher("batched_matmul", "cpu") is not None             # the kernel runs, not the NumPy twin
    for sa, sb in (((2, 0, 3), (2, 3, 4)), ((2, 3, 0), (2, 0, 4)), ((0, 3, 2), (0, 2, 5))):
        a, b = np.ones(sa, np.float32), np.ones(sb, np.float32)
        with mock.patch.object(matmul, "SMALL", 0), spy() as calls:
            got = batched_matmul(a, b)
        np.testing.assert_array_equal(got, a @ b)
        assert not calls                                             # nothing to compute: no kernel launched


@needs_blas
@pytest.mark.parametrize("dtype", DTYPES)
@given(t=st.integers(1, 20), hs=st.sampled_from([1, 4, 7]), scale=st.sampled_from([None, 0.125, 1.7]), seed=seeds)
def test_attention_with_a_given_scale(dtype, t, hs, scale, seed):
    """The scale a learner's own attention uses (C**-0.5, 1/sqrt(hs) by division): kernel and twin agree, and the
    default is hs**-0.5."""
    q, k, v, dy, _ = _attention_inputs(dtype, 2, 2, t, t, hs, 0.0, seed)
    with spy() as calls:
        y, cache = F.attention_forward(q, k, v, scale=scale)
        grads = F.attention_backward(dy, cache)
    with spy() as twin_calls:
        y0, cache0 = F.attention_forward.reference(q, k, v, scale=scale)
        grads0 = F.attention_backward.reference(dy, cache0)
    assert not twin_calls and calls.ran("attention_fwd") == calls.ran("attention_bwd") == 1
    bound = tol(dtype, 2 * t + hs)
    close(y, y0, bound, "y")
    terms = hs * np.abs(dy).max() * np.abs(v).max() * max(np.abs(q).max(), np.abs(k).max()) * (scale or 1)
    for name, a, a0 in zip(("dq", "dk", "dv"), grads, grads0, strict=True):
        close(a, a0, bound, name, floor=terms)
    if scale is None:
        np.testing.assert_array_equal(y, F.attention_forward(q, k, v, scale=hs ** -0.5)[0])


@given(n=st.integers(1, 40_000), wd=st.sampled_from([0.0, 0.1]), coef=st.sampled_from([1.0, 0.37]), seed=seeds)
def test_adamw_update_repeats_the_twin_exactly(n, wd, coef, seed):
    """Three float32 steps: the kernel repeats the twin's operations one by one (no fused multiply-add), so the
    parameters, moments and clipped gradients are the same bits."""
    rng = np.random.default_rng(seed)
    state = [rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    twin = [a.copy() for a in state]
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32)
        args = (3e-3, 0.9, 0.95, 1e-8, wd, 1 - 0.9 ** t, (1 - 0.95 ** t) ** 0.5, coef)
        g1, g2 = g.copy(), g.copy()
        with spy() as calls:
            adamw_update(state[0], g1, state[1], state[2], *args)
        with spy() as twin_calls:
            adamw_update.reference(twin[0], g2, twin[1], twin[2], *args)
        assert calls.ran("adamw_upd", variant(n)) == 1 and not twin_calls     # both variants: n from 1 to 40,000
        np.testing.assert_array_equal(g1, g2)
        for a, b in zip(state, twin, strict=True):
            np.testing.assert_array_equal(a, b)


@given(sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=4), seed=seeds)
def test_grad_norm(sizes, seed):
    """float64 sums of squares in pieces against NumPy's pairwise float64 sum: both within n u of the true sum."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    exact = grad_norm.reference(grads)
    with spy() as calls:
        got = grad_norm(grads)
    assert calls.ran("sq_norm_parts") == len(sizes)
    assert abs(got - exact) <= 4 * sum(sizes) * u(np.float64) * exact


def _attention_inputs(dtype, b, h, t, tk, hs, p, seed):
    rng = np.random.default_rng(seed)
    q, k, v, dy = (rng.standard_normal(s).astype(dtype) for s in ((b, h, t, hs), (b, h, tk, hs), (b, h, tk, hs),
                                                                   (b, h, t, hs)))
    keep = rng.random((b, h, t, tk)) >= p if p else None
    return q, k, v, dy, keep


@needs_blas
@pytest.mark.parametrize("dtype", DTYPES)
@given(b=st.integers(1, 3), h=st.integers(1, 3), t=st.integers(1, 20), extra=st.sampled_from([0, 0, 3]),
       hs=st.sampled_from([1, 4, 7]), p=st.sampled_from([0.0, 0.3]), small_blocks=st.booleans(), seed=seeds)
def test_attention(dtype, b, h, t, extra, hs, p, small_blocks, seed):
    """Queries the last t of Tk = t + extra positions (a key/value cache offset when extra > 0), with and without a
    dropout keep-mask, in one query block or many small ones (8 queries each).
    Gradients that are 0 in exact arithmetic (dq and dk when each query sees one key: dS = P (dP - D) with P = 1 and
    D = dP) come out as rounding residues from either code (D is dY . Y in the kernel, sum dP P in the twin), of
    size u times the terms dS K is summed from: so the relative measure divides by at least the size of those terms,
    hs max|dY| max|V| max(|Q|, |K|)."""
    q, k, v, dy, keep = _attention_inputs(dtype, b, h, t, t + extra, hs, p, seed)
    with query_blocks(8 if small_blocks else None), spy() as calls:
        y, cache = F.attention_forward(q, k, v, keep, p)
        grads = F.attention_backward(dy, cache)
    with spy() as twin_calls:
        y0, cache0 = F.attention_forward.reference(q, k, v, keep, p)
        grads0 = F.attention_backward.reference(dy, cache0)
    assert not twin_calls and calls.ran("attention_fwd") == calls.ran("attention_bwd") == 1
    bound = tol(dtype, 2 * (t + extra) + hs)
    close(y, y0, bound, "y")
    terms = hs * np.abs(dy).max() * np.abs(v).max() * max(np.abs(q).max(), np.abs(k).max())
    for name, a, a0 in zip(("dq", "dk", "dv"), grads, grads0, strict=True):
        close(a, a0, bound, name, floor=terms)


@needs_blas
def test_attention_masked_entries_are_exactly_zero():
    q, k, v, dy, _ = _attention_inputs(np.float32, 2, 2, 20, 20, 4, 0.0, 1)
    with query_blocks(8):
        _, cache = F.attention_forward(q, k, v)
    blk, pbuf = cache[6], cache[7]
    assert len(blk) == 3                                            # queries 12:20, 4:12, 0:4
    for i0, i1, kn, off in blk:
        pt = pbuf[..., off:off + kn * (i1 - i0)].reshape(2, 2, kn, i1 - i0)   # P^T of the block
        j, i = np.arange(kn)[:, None], np.arange(i1 - i0)[None, :] + i0
        assert np.all(pt[..., j > i] == 0) and np.all(pt[..., j <= i] > 0)


# ---- every branch of the launchers: which route and which compiled version ran ----------------------------------
# Each case is on a known side of a threshold (asserted, so that a changed threshold fails here instead of quietly
# testing something else), and the test asserts the version that ran and compares the result with the twin.

def _linear_cases(pieces):
    """case -> ((N, I, D), the products' version, the elementwise epilogues' version). The forward splits its rows
    over `pieces` (numba's thread count) when N >= 4 pieces, else its columns; products of PARALLEL_MACS
    multiply-adds or more run parallel; the epilogues (N D elements) from PARALLEL_WORK."""
    return {"small-rows": ((4 * pieces + 3, 16, 8), "serial", "serial"),
            "small-columns": ((1, 16, 8), "serial", "serial"),
            "large-rows": ((max(4 * pieces + 3, 259), 64, 96), "parallel", "parallel"),
            "large-columns": ((2, 768, 768), "parallel", "serial")}


@pytest.mark.parametrize("route", ["blas", "no-blas"])
@pytest.mark.parametrize("case", ["small-rows", "small-columns", "large-rows", "large-columns"])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_linear_branches(route, case, activation):
    """A linear layer's forward and backward on each route (the BLAS called from the kernels on numba's threads,
    or, without a BLAS numba can call, NumPy's matmul and the elementwise kernels), each size class and each
    epilogue. float32 for the row splits, float64 for the column splits (sgemm and dgemm). Tolerances: test_linear's."""
    from unittest import mock

    from tinygrad_gpt.kernels.cpu import linear
    if route == "blas" and not blas.available():
        pytest.skip("no BLAS numba can call")
    (n, i, d), products, epilogues = _linear_cases(linear._pieces())[case]
    assert (n * i * d >= tuning.PARALLEL_MACS) == (products == "parallel")
    assert (n * d >= tuning.PARALLEL_WORK) == (epilogues == "parallel")
    assert (n >= 4 * linear._pieces()) == case.endswith("rows")            # linear_fwd's split: rows or columns
    dtype = np.float32 if case.endswith("rows") else np.float64
    rng = np.random.default_rng(n + i + d)
    x, w = rng.standard_normal((n, i)).astype(dtype), (rng.standard_normal((d, i)) / np.sqrt(i)).astype(dtype)
    b, g = rng.standard_normal(d).astype(dtype), rng.standard_normal((n, d)).astype(dtype)
    r = rng.standard_normal((n, d)).astype(dtype) if activation is None else None
    no_blas = mock.patch.object(blas, "find", lambda: None) if route == "no-blas" else contextlib.nullcontext()
    with no_blas, spy() as calls:
        y, saved = F.linear_forward(x, w, b, activation, r)
        grads = F.linear_backward(g.copy(), x, w, True, saved, activation)
    y0, saved0 = F.linear_forward.reference(x, w, b, activation, r)
    grads0 = F.linear_backward.reference(g.copy(), x, w, True, saved0, activation)
    if route == "blas":
        assert calls.ran("linear_fwd", products) == 1 and calls.ran("gemm_rows", products) == 2
        assert calls.ran("epilogue_fwd") == 0
    else:
        assert calls.ran("linear_fwd") == calls.ran("gemm_rows") == 0
        assert calls.ran("epilogue_fwd", epilogues) == 1
    assert calls.ran("epilogue_bwd", epilogues) == 1
    gelu = 16 * u(dtype) if activation == "gelu" else 0
    close(y, y0, tol(dtype, i) + gelu, "y")
    slope = 32 * u(dtype) if activation == "gelu" else 0
    for name, a, a0, length in zip(("dx", "dW", "db"), grads, grads0, (d, n, n), strict=True):
        close(a, a0, tol(dtype, length) + slope, name, floor=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, a_shape, b_shape, expected", [
    ("small: NumPy's matmul", (4, 4), (4, 4), None),
    ("one right matrix, folded", (2, 40, 32), (32, 40), "serial"),
    ("one right matrix, folded, large", (4, 128, 64), (64, 64), "parallel"),
    ("one row: one piece", (1, 2048), (2048, 1024), "serial"),
    ("batch", (2, 3, 20, 16), (2, 3, 16, 24), "serial"),
    ("batch, large", (4, 2, 64, 64), (4, 2, 64, 64), "parallel"),
    ("no BLAS", (4, 2, 64, 64), (4, 2, 64, 64), None),
])
def test_batched_matmul_branches(dtype, case, a_shape, b_shape, expected):
    """The @ kernel's routes: NumPy's matmul below matmul.SMALL multiply-adds or without a BLAS; one right-hand
    matrix folded into rows, or a batch; serial below PARALLEL_MACS or with a single piece (one row, one matrix),
    parallel above. Each output is a dot product of length K: TOL(K)."""
    from unittest import mock

    from tinygrad_gpt.kernels.cpu import matmul
    from tinygrad_gpt.tensor import batched_matmul
    if case != "no BLAS" and not blas.available():
        pytest.skip("no BLAS numba can call")
    rng = np.random.default_rng(len(case))
    a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)
    macs = int(np.prod(np.broadcast_shapes(a_shape[:-2], b_shape[:-2]))) * a_shape[-2] * a_shape[-1] * b_shape[-1]
    assert (a.size * b.shape[-1] < matmul.SMALL) == case.startswith("small")
    assert (macs >= tuning.PARALLEL_MACS) == (expected == "parallel" or case.startswith(("one row", "no BLAS")))
    no_blas = mock.patch.object(blas, "find", lambda: None) if case == "no BLAS" else contextlib.nullcontext()
    with no_blas, spy() as calls:
        got = batched_matmul(a, b)
    assert dict(calls) == ({} if expected is None else {("bmm", expected): 1})
    close(got, a @ b, tol(dtype, a_shape[-1]), case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case, shape, expected", [
    ("small", (1, 2, 16, 8), "serial"),
    ("just below PARALLEL_MACS", (2, 2, 32, 31), "serial"),
    ("at PARALLEL_MACS", (2, 2, 32, 32), "parallel"),
    ("no BLAS: the twin", (2, 2, 32, 32), None),
])
def test_attention_branches(dtype, case, shape, expected):
    """The attention's kernels, serial below PARALLEL_MACS (B H t Tk hs) multiply-adds and parallel from it; without
    a BLAS numba can call the launcher runs the twin. Tolerances: test_attention's."""
    from unittest import mock
    if expected is not None and not blas.available():
        pytest.skip("no BLAS numba can call")
    b, h, t, hs = shape
    assert (b * h * t * t * hs >= tuning.PARALLEL_MACS) == (expected == "parallel" or expected is None)
    q, k, v, dy, _ = _attention_inputs(dtype, b, h, t, t, hs, 0.0, 0)
    no_blas = mock.patch.object(blas, "find", lambda: None) if expected is None else contextlib.nullcontext()
    with no_blas, spy() as calls:
        y, cache = F.attention_forward(q, k, v)
        grads = F.attention_backward(dy, cache)
    want = {} if expected is None else {("attention_fwd", expected): 1, ("attention_bwd", expected): 1}
    assert dict(calls) == want
    y0, cache0 = F.attention_forward.reference(q, k, v)
    bound = tol(dtype, 2 * t + hs)
    close(y, y0, bound, "y")
    terms = hs * np.abs(dy).max() * np.abs(v).max() * max(np.abs(q).max(), np.abs(k).max())
    for name, a, a0 in zip(("dq", "dk", "dv"), grads, F.attention_backward.reference(dy, cache0), strict=True):
        close(a, a0, bound, name, floor=terms)


@pytest.mark.parametrize("rows, expected", [(10, "serial"), (300, "parallel")])
def test_elementwise_kernels_serial_and_parallel(rows, expected):
    """The other kernels (CpuKernel.run) switch to their parallel version at PARALLEL_WORK elements: rows x 64 (or 65)
    float32 elements, 640 or 19,200. Tolerances: the hypothesis tests' above."""
    dtype = np.float32
    assert (rows * 64 >= tuning.PARALLEL_WORK) == (expected == "parallel")
    rng = np.random.default_rng(rows)
    x, g = rng.standard_normal((rows, 64)).astype(dtype), rng.standard_normal((rows, 64)).astype(dtype)
    w, b = rng.standard_normal(64).astype(dtype), rng.standard_normal(64).astype(dtype)
    z, y = (rng.standard_normal((rows, 65)) * 3).astype(dtype), rng.integers(0, 65, rows)
    idx, pos = rng.integers(0, 65, (4, rows // 4)), x[:rows // 4]                # (4, rows / 4) positions
    tok = rng.standard_normal((65, 64)).astype(dtype)
    keep = rng.random((rows, 64)) >= 0.3
    with spy() as calls:
        ln, ln_cache = F.layer_norm_forward(x, w, b)
        ln_grads = F.layer_norm_backward(g, ln_cache)
        ce, ce_cache = F.cross_entropy_forward(z, y)
        dz = F.cross_entropy_backward(dtype(1), ce_cache)
        dropped = F.dropout_apply(x, keep, 0.3)
        mask = F.dropout_keep_mask(np.empty((rows, 64), bool), 7, 0.3)
        emb = F.embed_forward(idx, tok, pos)
        emb_grads = F.embed_backward(idx, g[:4 * (rows // 4)].reshape(4, rows // 4, 64), 65, rows // 4)
        norm = grad_norm([x])
    for name in ("layer_norm_fwd", "layer_norm_bwd", "cross_entropy_fwd", "cross_entropy_bwd", "dropout_fwd",
                 "keep_mask_fill", "embed_fwd", "embed_bwd", "sq_norm_parts"):
        assert calls.ran(name, expected) == 1, (name, dict(calls))
    ln0, ln_cache0 = F.layer_norm_forward.reference(x, w, b)
    close(ln, ln0, tol(dtype, 64), "layer norm")
    for a, a0, n in zip(ln_grads, F.layer_norm_backward.reference(g, ln_cache0), (64, rows + 64, rows), strict=True):
        close(a, a0, tol(dtype, n), "layer norm backward")
    ce0, ce_cache0 = F.cross_entropy_forward.reference(z, y)
    close(np.asarray(ce), np.asarray(ce0, dtype=dtype), tol(dtype, 65 + rows), "cross-entropy")
    close(dz, F.cross_entropy_backward.reference(dtype(1), ce_cache0), tol(dtype, 65), "dz")
    np.testing.assert_array_equal(dropped, F.dropout_apply.reference(x, keep, 0.3))
    np.testing.assert_array_equal(mask, F.dropout_keep_mask.reference(np.empty((rows, 64), bool), 7, 0.3))
    np.testing.assert_array_equal(emb, F.embed_forward.reference(idx, tok, pos))
    g3 = g[:4 * (rows // 4)].reshape(4, rows // 4, 64)
    for a, a0, n in zip(emb_grads, F.embed_backward.reference(idx, g3, 65, rows // 4), (rows, 4), strict=True):
        close(a, a0, tol(dtype, n), "embedding backward")
    assert abs(norm - grad_norm.reference([x])) <= 4 * x.size * u(np.float64) * norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [7, tuning.PARALLEL_WORK + 3])
def test_gradient_sum_and_store_are_the_twins_bits(dtype, n):
    """Tensor._accumulate's sum of two gradients (new array, or into the first) and its store into a flat buffer: one
    IEEE operation per element, so the kernels give the twins' bits exactly, serial and parallel."""
    from tinygrad_gpt.tensor import grad_store, grad_sum
    rng = np.random.default_rng(n)
    a, b = (rng.standard_normal((n, 3)).astype(dtype) for _ in range(2))
    with spy() as calls:
        s = grad_sum(a, b)
        inplace = a.copy()
        grad_sum(inplace, b, out=inplace)
        buf = np.zeros_like(a)
        grad_store(buf, b)
    assert calls.ran("add_flat", variant(a.size)) == 2 and calls.ran("copy_flat", variant(a.size)) == 1
    for got in (s, inplace):
        assert np.array_equal(got, grad_sum.reference(a, b))
    assert np.array_equal(buf, b)
    odd = np.asfortranarray(a)                                      # not C-contiguous: NumPy's own add
    with spy() as calls:
        assert np.array_equal(grad_sum(odd, b), a + b)
    assert not calls.names()


# ---- threads, determinism, the whole model -----------------------------------------------------------------------

LR = 1e-2
STEP_KERNELS = {"embed_fwd", "embed_bwd", "layer_norm_fwd", "layer_norm_bwd", "linear_fwd", "gemm_rows",
                "epilogue_bwd", "sum_rows", "attention_fwd", "attention_bwd", "dropout_fwd", "cross_entropy_fwd",
                "cross_entropy_bwd", "sq_norm_parts", "adamw_upd", "add_flat", "copy_flat"}   # what _gpt_step launches


def _gpt_step(dtype, steps=1, seed=0):
    """The loss, every gradient (of the last step, as clipped by the step) and every parameter after `steps` AdamW
    steps (clipped) of a small GPT with dropout."""
    cfg = GPTConfig(vocab_size=17, block_size=24, n_embd=32, n_head=4, n_layer=2, dropout=0.2)
    model = GPT(cfg, seed=seed, dtype=dtype)
    opt = AdamW(model.parameters(), lr=LR, max_grad_norm=1.0)
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 17, (6, 24)), rng.integers(0, 17, (6, 24))
    for _ in range(steps):
        _, loss = model(Tensor(x), Tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = list(model.parameters())
    return [loss.numpy()] + [p.grad.numpy().copy() for p in params] + [p.data.copy() for p in params]


def compare_steps(ours, twins, what="model step"):
    """One float64 _gpt_step with kernels and with the twins. The loss and the (clipped) gradients agree to float64
    rounding: the reductions' orders differ (~1e-15 relative); 1e-12 leaves room for the model's depth, while a
    wrong formula is off by O(1). The parameters after the step: per element within twice
    model_helpers.adamw_first_step_bound, AdamW's first step's sensitivity to those gradient differences (up to
    lr / eps times them, for a gradient near 0) plus the two codes' roundings."""
    from model_helpers import adamw_first_step_bound
    n = (len(ours) - 1) // 2
    for a, b in zip(ours[:n + 1], twins[:n + 1], strict=True):
        close(a, b, 1e-12, what)
    for g, g0, p, p0 in zip(ours[1:n + 1], twins[1:n + 1], ours[n + 1:], twins[n + 1:], strict=True):
        worst = np.max(np.abs(p - p0) / (2 * adamw_first_step_bound(p0, g, g0, LR, u(np.float64))))
        assert worst <= 1, f"{what}: a parameter after the step is off by {worst:.3g} x the first-step bound"


THREADS_RUN = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import test_cpu_kernels as T
from tinygrad_gpt.kernels.cpu import tuning
tuning.PARALLEL_WORK = tuning.PARALLEL_MACS = {threshold}   # 0: every launch in its parallel version; 2^62: serial
tuning.QUERY_BLOCK, tuning.QUERY_BLOCK_MIN = 8, 1   # many query blocks
with T.spy() as calls:
    result = T._gpt_step(np.float32, steps=2)
np.savez({out!r}, *result)
print(repr({{v: sorted(k for k, w in calls if w == v) for v in ("serial", "parallel")}}))
"""


@pytest.mark.slow                # subprocesses
@pytest.mark.parametrize("parallel", [True, False])
def test_the_thread_count_changes_no_bits(tmp_path, parallel):
    """Two AdamW steps (dropout, clipping) with 1 and with 2 threads (numba's and the BLAS's, and the attention's
    pool): the same bits, since each kernel splits its work into pieces that do not depend on the thread count and
    adds partial results in a fixed order, and the attention's blocks do not depend on how they are grouped.
    Every kernel runs its parallel version (thresholds 0; sum_rows, the pieces' final sum, is serial by design), or
    every one its serial version: which ran is asserted."""
    results = []
    for n in ("1", "2"):
        out = tmp_path / f"step{n}.npz"
        code = THREADS_RUN.format(tests=str(ROOT / "tests"), out=str(out), threshold=0 if parallel else 1 << 62)
        ran = eval(_python(code, NUMBA_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n).splitlines()[-1])
        if parallel:
            assert ran["serial"] == ["sum_rows"] and set(ran["parallel"]) == STEP_KERNELS - {"sum_rows"}, ran
        else:
            assert set(ran["serial"]) == STEP_KERNELS and not ran["parallel"], ran
        data = np.load(out)
        results.append([data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def _train_cpu_preset(tmp_path, name, corpus, **env):
    """`tinygrad-gpt train` with the cpu preset's model and optimiser (B=32, T=64, C=128, H=4, L=4, its dropout,
    clipping and schedule) for 3 steps in a fresh process; -> (model bytes, optimiser bytes, meta.json without the
    run's directory and times, the log's losses)."""
    import json
    out = tmp_path / name
    code = ("import sys\nfrom tinygrad_gpt.cli import main\n"
            f"sys.exit(main(['train', '--preset', 'cpu', '--data', {str(corpus)!r}, '--out', {str(out)!r}, "
            "'--max-iters', '3', '--eval-interval', '3', '--eval-iters', '1', '--sample-chars', '0', "
            "'--no-progress']))\n")
    _python(code, **env)
    last = out / "last"
    meta = json.loads((last / "meta.json").read_text())
    for key in ("elapsed_s", "saved_at", "meta_sha256"):                 # when, and a hash covering those
        meta.pop(key)
    meta["train"].pop("out")
    losses = [(r["step"], r["train_loss"], r["val_loss"]) for r in map(json.loads, (out / "log.jsonl").open())]
    return (last / "model.safetensors").read_bytes(), (last / "optim.safetensors").read_bytes(), meta, losses


@pytest.mark.slow                # four training processes at the cpu preset's size: ~12 s
def test_the_cpu_preset_gives_the_same_bits_for_a_thread_count_and_across_them(tmp_path):
    """README: "Same seed, same thread count: the same bits"; docs/cpu-performance.md: 1 and 2 threads give the same
    bits too. Three steps of the default (cpu) preset's model, whose products and attention are large enough to run
    the kernels' parallel versions, with 1 thread and twice with 2 (numba's, the BLAS's, OpenMP's): the checkpoints
    (weights, AdamW's moments, the rng states, the losses) are the same bytes. A control shows the comparison sees
    the last bits: the NumPy twins (the same formulas summed in another order) give other bytes."""
    from cli_support import write_corpus
    from tinygrad_gpt.config import PRESETS
    cpu = PRESETS["cpu"]
    B, T, C, H = cpu["batch_size"], cpu["block_size"], cpu["n_embd"], cpu["n_head"]
    assert min(B * T * C * C, B * H * T * T * (C // H)) >= tuning.PARALLEL_MACS    # every product runs parallel
    corpus = write_corpus(tmp_path)
    runs = {f"threads{n}-{i}": _train_cpu_preset(tmp_path, f"threads{n}-{i}", corpus, NUMBA_NUM_THREADS=n,
                                                 OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n)
            for n, i in (("1", 0), ("2", 0), ("2", 1))}
    first = runs["threads1-0"]
    assert all(first[2]["train"][k] == cpu[k] for k in cpu if k not in ("max_iters", "eval_interval"))
    assert first[2]["step"] == 3
    assert len(first[3]) == 2                                           # evaluated at steps 0 and 3
    for name, result in runs.items():
        for what, a, b in zip(("weights", "optimizer state", "meta.json", "losses"), result, first, strict=True):
            assert a == b, f"{name}: the {what} differ from the 1-thread run's"
    twins = _train_cpu_preset(tmp_path, "twins", corpus, TINYGRAD_GPT_KERNELS="0")
    assert twins[0] != first[0] and twins[1] != first[1]


@needs_blas
def test_same_seed_same_bits():
    with spy() as calls:
        first = _gpt_step(np.float32, steps=3)
    assert calls.names() == STEP_KERNELS                             # the kernels' bits, not the twins'
    for a, b in zip(first, _gpt_step(np.float32, steps=3), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_blas
@pytest.mark.parametrize("small_blocks", [False, True])
def test_model_step_with_kernels_matches_the_twins(small_blocks):
    """A whole float64 training step with dropout and clipping, AdamW's step included: kernels on (one attention
    block, or many small ones) and off (the NumPy twins, no kernel launched) agree (compare_steps says how far)."""
    with query_blocks(8 if small_blocks else None), spy() as calls:
        ours = _gpt_step(np.float64)
    kernels.set_enabled(False, "cpu")
    try:
        with spy() as twin_calls:
            twins = _gpt_step(np.float64)
    finally:
        kernels.set_enabled(None, "cpu")
    assert calls.names() == STEP_KERNELS and not twin_calls, (sorted(calls.names()), dict(twin_calls))
    compare_steps(ours, twins)


# ---- the table, first use, the disk cache -------------------------------------------------------------------------

def test_every_table_entry_has_launchers_with_the_twins_signature():
    import importlib
    import inspect

    from tinygrad_gpt import optim
    tensor = importlib.import_module("tinygrad_gpt.tensor")   # (the package's `tensor` is the factory function)
    for name, modules in kernels.TABLE.items():
        twin = next(getattr(m, name) for m in (F, optim, tensor) if name in vars(m))
        want = list(inspect.signature(twin.reference).parameters)
        for device, module in zip(kernels.DEVICES, modules, strict=True):
            if module is None:
                continue
            if device == "cuda":
                pytest.importorskip("numba.cuda")
            fn = getattr(kernels._module(device, module), name)
            got = [p for p in inspect.signature(fn).parameters if p != "config"]
            assert got == want, f"{device} {module}.{name}{got} vs twin {want}"


def _python(code, **env):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "TINYGRAD_GPT_TUNE", "TINYGRAD_GPT_KERNELS"):
        e.pop(k, None)
    e.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


STEP = ("import numpy as np, os\nfrom tinygrad_gpt import GPT, GPTConfig\n"
        "m = GPT(GPTConfig(vocab_size=5, block_size=4, n_embd=8, n_head=2, n_layer=1))\n"
        "before = dict(os.environ)\nm(np.zeros((1, 4), int), np.zeros((1, 4), int))[1].backward()\n")


@pytest.mark.slow                # subprocesses
def test_first_use_tunes_the_allocator_once_and_the_environment_turns_it_off():
    """Importing changes nothing; the first kernel call tunes glibc's allocator (kernels/cpu/setup.py) and leaves
    os.environ alone; TINYGRAD_GPT_TUNE=0 keeps the process as it was."""
    code = STEP + ("from tinygrad_gpt.kernels.cpu import setup\n"
                   "print(setup.configure(), dict(os.environ) == before)")
    assert _python(code).strip() == "{'host_allocator': True} True"
    assert _python(code, TINYGRAD_GPT_TUNE="0").strip() == "{} True"


@pytest.mark.slow                # subprocesses
def test_kernels_fall_back_to_the_user_cache_when_the_package_is_not_writable(tmp_path):
    """numba caches next to the source when it can, else under the user's cache directory (NUMBA_CACHE_DIR when set).
    Root can write anywhere, so an unwritable package directory is simulated by making numba's in-tree locator
    refuse; the kernels then cache under NUMBA_CACHE_DIR, and a second process loads them from there."""
    code = ("from numba.core import caching\n"
            "def refuse(self): raise OSError('read-only')\n"
            "caching.InTreeCacheLocator.ensure_cache_path = refuse\n" + STEP +
            "import glob; print(len(glob.glob(os.path.join(os.environ['NUMBA_CACHE_DIR'], '**', '*.nbi'), "
            "recursive=True)))")
    first = int(_python(code, NUMBA_CACHE_DIR=str(tmp_path)).strip())
    assert first >= 5                     # embedding, LayerNorm, epilogues, attention, cross-entropy, AdamW index files
    assert int(_python(code, NUMBA_CACHE_DIR=str(tmp_path)).strip()) == first   # reused, nothing new written


@pytest.mark.slow                # subprocesses
def test_without_a_callable_blas_the_kernels_fall_back(tmp_path):
    """Where no cblas_?gemm is found among the loaded libraries (another BLAS, another OS), the linear layers use
    NumPy's matmul with the elementwise kernels and the attention runs its twin: the same step as the twins'."""
    code = ("import sys, numpy as np\nsys.path.insert(0, {tests!r})\n"
            "from tinygrad_gpt.kernels.cpu import blas\nblas._found = False\n"
            "from tinygrad_gpt import kernels\nimport test_cpu_kernels as T\n"
            "assert kernels.launcher('linear_forward', 'cpu') is not None\n"
            "with T.spy() as calls:\n    ours = T._gpt_step(np.float64)\n"
            "assert not {{'linear_fwd', 'gemm_rows', 'attention_fwd', 'attention_bwd'}} & calls.names()\n"
            "assert {{'epilogue_fwd', 'epilogue_bwd', 'layer_norm_fwd'}} <= calls.names(), calls\n"
            "kernels.set_enabled(False, 'cpu')\ntwins = T._gpt_step(np.float64)\n"
            "T.compare_steps(ours, twins, 'fallback step')\nprint('ok')\n"
            ).format(tests=str(ROOT / "tests"))
    assert _python(code).strip() == "ok"


def _double(x, out):
    for i in prange(x.shape[0]):
        out[i] = 2 * x[i]


def _square(x, out):
    for i in prange(x.shape[0]):
        out[i] = x[i] * x[i]


def test_without_a_writable_cache_directory_kernels_compile_uncached_with_one_warning(monkeypatch):
    """numba finds no cache locator (no writable directory: its locator list emptied here) and refuses cache=True;
    _jit.cached then compiles without the disk cache, warning once per process however many kernels follow."""
    import warnings

    from numba.core import caching

    from tinygrad_gpt.kernels.cpu import _jit
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    monkeypatch.setattr(_jit, "_disk_cache", True)                  # as in a fresh process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = [_jit.kernel(_double), _jit.kernel(_square)]
    assert [str(w.message).count("without the disk cache") for w in caught] == [1]
    x = np.arange(5.0)
    for k, want in zip(made, (2 * x, x * x), strict=True):
        assert all(type(d._cache).__name__ == "NullCache" for d in (k.serial, k.parallel))
        for version in (k.serial, k.parallel):
            out = np.empty_like(x)
            version(x, out)
            np.testing.assert_array_equal(out, want)


READ_ONLY_RUN = """
import sys
sys.path.insert(0, {tests!r})                        # kernel_spy (it imports the package: the read-only copy)
import numpy as np
import tinygrad_gpt
from tinygrad_gpt import AdamW, GPT, GPTConfig
from kernel_spy import kernel_objects, spy
assert tinygrad_gpt.__file__.startswith({pkg!r}), tinygrad_gpt.__file__
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1, dropout=0.1), seed=0)
opt = AdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0)
rng = np.random.default_rng(0)
losses = []
with spy() as calls:
    for _ in range(3):
        x, y = rng.integers(0, 11, (2, 2, 8))
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tinygrad_gpt.Tensor(np.linspace(-2, 2, 5)).gelu(approximate="none")      # erf: tensor.py's numba ufunc
ran = sorted(calls.names())
uncached = all(type(k.serial._cache).__name__ == "NullCache" for k in kernel_objects().values())
print(repr((losses, ran, uncached)))
"""


@pytest.mark.slow                # a subprocess compiling every kernel a step uses (nothing cached: ~10 s)
def test_a_read_only_install_trains_without_the_disk_cache(tmp_path):
    """A read-only install (site-packages and numba's cache directories unwritable): numba refuses `cache=True`
    ("cannot cache function ...: no locator available"); the kernels compile without the disk cache, one warning
    says so, and three training steps run on the kernels (not the twins).
    The package is copied and `chmod -R a-w`; but root writes anyway (these tests may run as root, e.g. in a
    container), so unwritability is also made in a way root cannot override: each directory's `__pycache__` (numba's
    in-tree cache, and Python's .pyc) is a regular file, NUMBA_CACHE_DIR lies under a regular file, and so does the
    user cache directory (HOME/.cache is a file; XDG_CACHE_HOME unset): os.makedirs fails for every locator."""
    import shutil
    import stat
    pkg = tmp_path / "site"
    shutil.copytree(ROOT / "tinygrad_gpt", pkg / "tinygrad_gpt", ignore=shutil.ignore_patterns("__pycache__"))
    for d in [pkg / "tinygrad_gpt", *(p for p in (pkg / "tinygrad_gpt").rglob("*") if p.is_dir())]:
        (d / "__pycache__").write_text("not a directory")
    (tmp_path / "blocker").write_text("a file, so no directory can be made under it")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("a file")
    for p in [pkg, *pkg.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        code = READ_ONLY_RUN.format(tests=str(ROOT / "tests"), pkg=str(pkg))
        env = dict(os.environ, PYTHONPATH=str(pkg), NUMBA_CACHE_DIR=str(tmp_path / "blocker" / "numba"),
                   HOME=str(home))
        for k in ("XDG_CACHE_HOME", "TINYGRAD_GPT_KERNELS", "PYTHONWARNINGS"):
            env.pop(k, None)
        proc = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    finally:
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)            # so tmp_path can be removed
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses, ran, uncached = eval(proc.stdout.strip().splitlines()[-1])
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert proc.stderr.count("RuntimeWarning") == 1 and proc.stderr.count("without the disk cache") == 1, proc.stderr
    assert uncached                                               # every kernel compiled without the disk cache
    assert {"embed_fwd", "embed_bwd", "linear_fwd", "gemm_rows", "layer_norm_fwd", "layer_norm_bwd",
            "attention_fwd", "attention_bwd", "cross_entropy_fwd", "cross_entropy_bwd", "adamw_upd",
            "sq_norm_parts"} <= set(ran), ran                      # the kernels ran, not the NumPy twins
    assert not list(tmp_path.rglob("*.nbi"))                      # and nothing was cached anywhere
