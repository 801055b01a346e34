"""The numba CPU kernels (tinygrad_gpt/kernels/cpu/) against their NumPy twins (fused.py, optim.py), over shapes
drawn by hypothesis: odd sizes, one row, widths that are not a multiple of the vector width, float32 and float64.

Tolerances. A kernel and its twin compute the same formulas, but a kernel sums rows in another order (vectorised,
reassociated) and computes exp and tanh with its own float32 functions (kernels/cpu/_math.py: within 6 units of
roundoff u, below). Normwise (max|a - b| / max|b|) the two agree within TOL(n) = 8 (n + 8) u (helpers.tol, whose
docstring derives it; u = 6.0e-8 in float32, 1.1e-16 in float64), n the longest chain of reductions behind the
output (C for LayerNorm's rows, N rows for column sums, V for the softmax, 2 Tk + hs for attention). What involves
no reduction is checked exactly (bias, ReLU, residual, dropout, the embedding gather, AdamW: the kernel repeats the
twin's float operations one by one).
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import close, query_blocks, tol, unit_roundoff as u
from tinygrad_gpt import GPT, GPTConfig, Tensor, fused as F, kernels
from tinygrad_gpt.optim import AdamW, adamw_update, grad_norm

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.float32, np.float64]


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
    y, cache = F.layer_norm_forward(x, w, b)
    y0, cache0 = F.layer_norm_forward.reference(x, w, b)
    grads, grads0 = F.layer_norm_backward(g, cache), F.layer_norm_backward.reference(g, cache0)
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
    y, saved = F.linear_forward(x, w, b, activation, r)
    y0, saved0 = F.linear_forward.reference(x, w, b, activation, r)
    # gelu goes through the kernels' tanh: a few u of |u| more per element
    close(y, y0, tol(dtype, i) + (16 * u(dtype) if activation == "gelu" else 0), "y")
    if activation == "gelu":
        close(saved, saved0, tol(dtype, i), "pre-activation")
    grads = F.linear_backward(g.copy(), x, w, bias, saved, activation)
    grads0 = F.linear_backward.reference(g.copy(), x, w, bias, saved0, activation)
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
    for pos0 in (0, 3):
        np.testing.assert_array_equal(F.embed_forward(idx, tok, pos, pos0),
                                      F.embed_forward.reference(idx, tok, pos, pos0))
    g = rng.standard_normal((b, t, c)).astype(dtype)
    for ours, twin, n in zip(F.embed_backward(idx, g, v, t + 3), F.embed_backward.reference(idx, g, v, t + 3),
                             (b * t, b)):
        close(ours, twin, tol(dtype, n), "embedding backward")
    with pytest.raises(IndexError):
        F.embed_forward(idx + v, tok, pos)       # an id past the table: an error, never a read out of bounds


@pytest.mark.parametrize("dtype", DTYPES)
@given(n=rows, v=st.sampled_from([1, 2, 5, 65, 100]), seed=seeds)
def test_cross_entropy(dtype, n, v, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, v)) * 3).astype(dtype)
    y = rng.integers(0, v, n)
    loss, cache = F.cross_entropy_forward(z, y)
    loss0, cache0 = F.cross_entropy_forward.reference(z, y)
    close(np.asarray(loss), np.asarray(loss0, dtype=dtype), tol(dtype, v + n), "loss")
    close(cache[0], cache0[0], tol(dtype, v), "softmax")
    g = dtype(0.75)
    close(F.cross_entropy_backward(g, cache), F.cross_entropy_backward.reference(g, cache0), tol(dtype, v), "dz")
    with pytest.raises(IndexError):
        F.cross_entropy_forward(z, y + v)


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 17)]), p=st.floats(0.0, 0.9), seed=seeds)
def test_dropout(dtype, shape, p, seed):
    rng = np.random.default_rng(seed)
    x, keep = rng.standard_normal(shape).astype(dtype), rng.random(shape) >= p
    np.testing.assert_array_equal(F.dropout_apply(x, keep, p), F.dropout_apply.reference(x, keep, p))


@given(shape=st.sampled_from([(1,), (7,), (3, 5), (2, 3, 17), (64, 300)]), p=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
       seed=st.integers(0, 2 ** 64 - 1))
def test_dropout_keep_mask_repeats_the_twin_bit_for_bit(shape, p, seed):
    """The counter-based masks: the kernel computes the same hash of (seed, index) as its NumPy twin."""
    got = F.dropout_keep_mask(np.empty(shape, bool), seed, p)
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
    with mock.patch.object(matmul, "SMALL", 0):
        got = batched_matmul(a, b)
    want = a @ b
    assert got.shape == want.shape and got.dtype == want.dtype
    close(got, want, tol(dtype, k), "a @ b")


def test_batched_matmul_is_the_kernel_and_empty_sizes_work():
    from tinygrad_gpt.kernels import launcher
    from tinygrad_gpt.tensor import batched_matmul
    assert launcher("batched_matmul", "cpu") is not None             # the kernel runs, not the NumPy twin
    for sa, sb in (((2, 0, 3), (2, 3, 4)), ((2, 3, 0), (2, 0, 4)), ((0, 3, 2), (0, 2, 5))):
        a, b = np.ones(sa, np.float32), np.ones(sb, np.float32)
        np.testing.assert_array_equal(batched_matmul(a, b), a @ b)


@pytest.mark.parametrize("dtype", DTYPES)
@given(t=st.integers(1, 20), hs=st.sampled_from([1, 4, 7]), scale=st.sampled_from([None, 0.125, 1.7]), seed=seeds)
def test_attention_with_a_given_scale(dtype, t, hs, scale, seed):
    """The scale a learner's own attention uses (C**-0.5, 1/sqrt(hs) by division): kernel and twin agree, and the
    default is hs**-0.5."""
    q, k, v, dy, _ = _attention_inputs(dtype, 2, 2, t, t, hs, 0.0, seed)
    y, cache = F.attention_forward(q, k, v, scale=scale)
    y0, cache0 = F.attention_forward.reference(q, k, v, scale=scale)
    bound = tol(dtype, 2 * t + hs)
    close(y, y0, bound, "y")
    terms = hs * np.abs(dy).max() * np.abs(v).max() * max(np.abs(q).max(), np.abs(k).max()) * (scale or 1)
    for name, a, a0 in zip(("dq", "dk", "dv"), F.attention_backward(dy, cache), F.attention_backward.reference(dy, cache0)):
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
        adamw_update(state[0], g1, state[1], state[2], *args)
        adamw_update.reference(twin[0], g2, twin[1], twin[2], *args)
        np.testing.assert_array_equal(g1, g2)
        for a, b in zip(state, twin):
            np.testing.assert_array_equal(a, b)


@given(sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=4), seed=seeds)
def test_grad_norm(sizes, seed):
    """float64 sums of squares in pieces against NumPy's pairwise float64 sum: both within n u of the true sum."""
    rng = np.random.default_rng(seed)
    grads = [rng.standard_normal(s).astype(np.float32) for s in sizes]
    exact = grad_norm.reference(grads)
    assert abs(grad_norm(grads) - exact) <= 4 * sum(sizes) * u(np.float64) * exact


def _attention_inputs(dtype, b, h, t, tk, hs, p, seed):
    rng = np.random.default_rng(seed)
    q, k, v, dy = (rng.standard_normal(s).astype(dtype) for s in ((b, h, t, hs), (b, h, tk, hs), (b, h, tk, hs),
                                                                   (b, h, t, hs)))
    keep = rng.random((b, h, t, tk)) >= p if p else None
    return q, k, v, dy, keep


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
    with query_blocks(8 if small_blocks else None):
        y, cache = F.attention_forward(q, k, v, keep, p)
        grads = F.attention_backward(dy, cache)
    y0, cache0 = F.attention_forward.reference(q, k, v, keep, p)
    grads0 = F.attention_backward.reference(dy, cache0)
    bound = tol(dtype, 2 * (t + extra) + hs)
    close(y, y0, bound, "y")
    terms = hs * np.abs(dy).max() * np.abs(v).max() * max(np.abs(q).max(), np.abs(k).max())
    for name, a, a0 in zip(("dq", "dk", "dv"), grads, grads0):
        close(a, a0, bound, name, floor=terms)


def test_attention_masked_entries_are_exactly_zero():
    q, k, v, dy, _ = _attention_inputs(np.float32, 2, 2, 20, 20, 4, 0.0, 1)
    with query_blocks(8):
        _, cache = F.attention_forward(q, k, v)
    blk, pbuf = cache[7], cache[8]
    assert len(blk) == 3                                            # queries 12:20, 4:12, 0:4
    for i0, i1, kn, off in blk:
        pt = pbuf[..., off:off + kn * (i1 - i0)].reshape(2, 2, kn, i1 - i0)   # P^T of the block
        j, i = np.arange(kn)[:, None], np.arange(i1 - i0)[None, :] + i0
        assert np.all(pt[..., j > i] == 0) and np.all(pt[..., j <= i] > 0)


# ---- threads, determinism, the whole model -----------------------------------------------------------------------

def _gpt_step(dtype, steps=1, seed=0):
    """The loss, every gradient (of the last step) and every parameter after `steps` AdamW steps (clipped) of a small
    GPT with dropout."""
    cfg = GPTConfig(vocab_size=17, block_size=24, n_embd=32, n_head=4, n_layer=2, dropout=0.2)
    model = GPT(cfg, seed=seed, dtype=dtype)
    opt = AdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0)
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 17, (6, 24)), rng.integers(0, 17, (6, 24))
    for _ in range(steps):
        _, loss = model(Tensor(x), Tensor(y))
        opt.zero_grad()
        loss.backward()
        if steps > 1 or dtype == np.float32:
            opt.step()
    return [loss.numpy()] + [p.grad.numpy().copy() for p in model.parameters()] + [p.data.copy() for p in model.parameters()]


THREADS_RUN = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import test_cpu_kernels as T
from tinygrad_gpt.kernels.cpu import tuning
tuning.PARALLEL_WORK = 0                                   # every kernel launch in its parallel version
tuning.QUERY_BLOCK, tuning.QUERY_BLOCK_MIN = 8, 1   # many query blocks
np.savez({out!r}, *T._gpt_step(np.float32, steps=2))
"""


@pytest.mark.slow                # subprocesses
@pytest.mark.parametrize("parallel", [True, False])
def test_the_thread_count_changes_no_bits(tmp_path, parallel):
    """Two AdamW steps (dropout, clipping) with 1 and with 2 threads (numba's and the BLAS's, and the attention's
    pool): the same bits, since each kernel splits its work into pieces that do not depend on the thread count and
    adds partial results in a fixed order, and the attention's blocks do not depend on how they are grouped."""
    results = []
    for n in ("1", "2"):
        out = tmp_path / f"step{n}.npz"
        code = THREADS_RUN.format(tests=str(ROOT / "tests"), out=str(out))
        if not parallel:
            code = code.replace("tuning.PARALLEL_WORK = 0", "tuning.PARALLEL_WORK = 1 << 62")
        _python(code, NUMBA_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n)
        data = np.load(out)
        results.append([data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_bits():
    for a, b in zip(_gpt_step(np.float32, steps=3), _gpt_step(np.float32, steps=3)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("small_blocks", [False, True])
def test_model_step_with_kernels_matches_the_twins(small_blocks):
    """The loss and every gradient of a float64 step with dropout: kernels on (one attention block, or many small
    ones) and off (the NumPy twins) agree to float64 rounding: the reductions' orders differ (~1e-15 relative);
    1e-12 leaves room for the model's depth, while a wrong formula is off by O(1)."""
    with query_blocks(8 if small_blocks else None):
        ours = _gpt_step(np.float64)
    kernels.set_enabled(False, "cpu")
    try:
        twins = _gpt_step(np.float64)
    finally:
        kernels.set_enabled(None, "cpu")
    for a, b in zip(ours, twins):
        close(a, b, 1e-12, "model step")


# ---- the table, first use, the disk cache -------------------------------------------------------------------------

def test_every_table_entry_has_launchers_with_the_twins_signature():
    import inspect
    import importlib
    from tinygrad_gpt import optim
    tensor = importlib.import_module("tinygrad_gpt.tensor")   # (the package's `tensor` is the factory function)
    for name, modules in kernels.TABLE.items():
        twin = next(getattr(m, name) for m in (F, optim, tensor) if name in vars(m))
        want = list(inspect.signature(twin.reference).parameters)
        for device, module in zip(kernels.DEVICES, modules):
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
            "assert kernels.launcher('attention_forward', 'cpu') is None\n"
            "assert kernels.launcher('linear_forward', 'cpu') is not None\n"
            "ours = T._gpt_step(np.float64)\nkernels.set_enabled(False, 'cpu')\ntwins = T._gpt_step(np.float64)\n"
            "for a, b in zip(ours, twins):\n    T.close(a, b, 1e-12, 'fallback step')\nprint('ok')\n"
            ).format(tests=str(ROOT / "tests"))
    assert _python(code).strip() == "ok"
