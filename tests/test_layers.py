"""Every layer of the GPT alone, then the whole GPT, against the torch reference (reference/model.py) and torch.nn:
same weights in both engines, forward outputs and the gradients of (out * dout).sum() for a random dout, for the
input and for every parameter (helpers.compare).

float64: forward relative error <= 1e-10, every gradient <= 1e-9 (issue 3).
float32: the tolerance of model_helpers.f32_tol, 2 * u32 * (reduction + depth) * KAPPA, where `reduction` is the
sum of the reduction lengths met on the layer's forward and backward passes (counted by model_helpers.red_*, an upper
bound for every chain of roundings from an input to an output) and `depth` the number of elementwise steps.

LayerNorm widths. For n_embd = 1 every row is constant (see the constant-row test). For n_embd = 2 the exact input
gradient rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) removes from dxhat its components along 1 and xhat,
which span R^2, so it is O(eps / var) times the size of its terms (condition number var / eps ~ 1e5): in float32
both engines return rounding noise there, in float64 the error is ~1e5 u. That is a property of LayerNorm, not of an
implementation, so the comparison tests draw n_embd >= 3 (float64) or >= 4 (float32: at n_embd = 3 the complement is
one direction, and the gradient is small whenever dxhat nearly lies in span(1, xhat); over 300 draws its float32
error reached 0.44 of the tolerance, against 0.13 at n_embd = 4), and test_layer_norm_width_2 checks width 2 against
its condition number.

Dimension names: B batch, t sequence length, C n_embd, H n_head, hs head size, V vocab, N = B * t rows.
"""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import helpers
from helpers import assert_errors, compare
from model_helpers import (
    TOL64_FWD,
    TOL64_GRAD,
    U32,
    U64,
    f32_tol,
    gpt_depth,
    make_pair,
    named_params,
    record,
    red_attention,
    red_attention_core,
    red_block,
    red_cross_entropy,
    red_gpt,
    red_layer_norm,
    red_linear,
    red_mlp,
    torch_dtype,
)
from strategies import gpt_configs
from tinygrad_gpt import Tensor, kernels
from tinygrad_gpt import fused as F
from tinygrad_gpt.nn import Init, LayerNorm, Linear

DTYPES = [np.float64, np.float32]


@st.composite
def cases(draw, dtype, bias=None, activation=None):
    """(cfg kwargs, B, t, seed): a small GPT config (n_embd % n_head == 0), a batch size and a length t <= T."""
    cfg = draw(gpt_configs(with_options=True).filter(lambda c: c["n_embd"] >= (3 if dtype == np.float64 else 4)))
    if bias is not None:
        cfg["bias"] = bias
    if activation is not None:
        cfg["activation"] = activation
    B = draw(st.integers(1, 3))
    t = draw(st.integers(1, cfg["block_size"]))
    return cfg, B, t, draw(st.integers(0, 2 ** 16))


def check(layer, dtype, errors, reduction, depth, cond=(1.0, 1.0)):
    """Assert the errors of one comparison against the tolerance of `dtype` (times the condition factors `cond` of
    the forward and the gradients, for inputs where the result is much smaller than its terms), and record them."""
    tol_fwd, tol_grad = (TOL64_FWD, TOL64_GRAD) if dtype == np.float64 else (f32_tol(reduction, depth),) * 2
    tol_fwd, tol_grad = tol_fwd * cond[0], tol_grad * cond[1]
    record(layer, dtype, errors, tol_fwd, tol_grad)
    if dtype == np.float64:
        worst = helpers.MAX_ERRORS.setdefault(f"layer {layer}", [0.0, 0.0])
        worst[0] = max(worst[0], errors["forward"])
        worst[1] = max([worst[1]] + [v for k, v in errors.items() if k != "forward"])
    assert_errors(errors, tol_fwd, tol_grad, f"{layer} {np.dtype(dtype).name} (reduction {reduction}, depth {depth})")


def ce_condition(logits, targets, dtype):
    """Condition factors (forward, gradient), >= 1, of mean softmax cross-entropy at these logits.

    Gradient: its entries are (softmax - onehot) / N; softmax values are <= 1 with relative errors of a few u, so the
    entries' errors are ~u / N whatever their size, and relative to the largest entry they grow by
    1 / max|softmax - onehot| (large when every row is confidently right: p_y = 1 - tiny).
    Forward: a row's term logsumexp - z_y is computed from the max-shifted logits, numbers of size 1 + |z_y - max z|,
    so its error is ~u (1 + |z_y - max z|); relative to the mean loss that grows by mean(1 + |z_y - max z|) / loss.
    Capped at 1 / u (a loss or gradient of exactly 0, e.g. V = 1, is then compared at that cap)."""
    u = U64 if dtype == np.float64 else U32
    z = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])              # (N, V)
    y, rows = np.asarray(targets).reshape(-1), np.arange(z.shape[0])
    shifted = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    loss = np.mean(lse - shifted[rows, y])
    g = np.exp(shifted - lse[:, None])
    g[rows, y] -= 1.0
    fwd = np.mean(1 + np.abs(shifted[rows, y])) / loss if loss > 0 else np.inf
    grad = 1 / np.abs(g).max() if np.abs(g).max() > 0 else np.inf
    return min(max(1.0, fwd), 1 / u), min(max(1.0, grad), 1 / u)


def x_input(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---- the layers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_embedding_fused_token_plus_position(dtype, data):
    """F.embedding(idx, tok, pos) = tok[idx] + pos[:t]; dTok sums repeated tokens, dPos sums over the batch and is 0
    at positions >= t."""
    cfg, B, t, seed = data.draw(cases(dtype))
    ours, ref = make_pair(cfg, dtype, seed)
    idx = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (B, t))   # V <= 12: repeated tokens
    params = ["tok_emb.weight", "pos_emb.weight"]
    errors = compare(lambda i: F.embedding(i, ours.tok_emb.weight, ours.pos_emb.weight),
                     lambda i: ref.tok_emb(i) + ref.pos_emb(torch.arange(i.shape[1])),
                     [idx], {k: named_params(ours)[k] for k in params}, {k: named_params(ref)[k] for k in params},
                     seed=seed)
    check("embedding", dtype, errors, B * t + B, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@given(n_in=st.integers(1, 24), n_out=st.integers(1, 24), bias=st.booleans(),
       lead=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), seed=st.integers(0, 2 ** 16))
def test_linear(dtype, n_in, n_out, bias, lead, seed):
    """Linear on inputs of any rank (1-D included), weight layout (out, in)."""
    rng = np.random.default_rng(seed)
    ours = Linear(n_in, n_out, bias=bias, init=Init(rng, dtype))
    ref = torch.nn.Linear(n_in, n_out, bias=bias, dtype=torch_dtype(dtype))
    with torch.no_grad():
        if bias:
            ours.bias.data[...] = rng.standard_normal(n_out).astype(dtype)
            ref.bias.copy_(torch.from_numpy(ours.bias.data))
        ref.weight.copy_(torch.from_numpy(ours.weight.data))
    x = x_input(rng, lead + (n_in,), dtype)
    errors = compare(ours, ref, [x], named_params(ours), named_params(ref), seed=seed)
    check("Linear", dtype, errors, red_linear(n_in, n_out, max(1, x.size // n_in)), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@given(C=st.integers(3, 24), bias=st.booleans(), lead=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
       seed=st.integers(0, 2 ** 16))
def test_layer_norm(dtype, C, bias, lead, seed):
    """LayerNorm (biased variance, eps 1e-5) with a random affine map, on inputs of any rank."""
    if dtype == np.float32:
        C = max(C, 4)                                               # see the module docstring
    rng = np.random.default_rng(seed)
    ours, ref = ln_pair(C, dtype, rng, bias=bias)
    x = x_input(rng, lead + (C,), dtype) * 3 + 1                     # non-zero mean, non-unit variance
    errors = compare(ours, ref, [x], named_params(ours), named_params(ref), seed=seed)
    check("LayerNorm", dtype, errors, red_layer_norm(C, max(1, x.size // C)), 8)


@contextlib.contextmanager
def score_blocks(n):
    """Run the CPU attention kernel in query blocks of n queries (None: the default, one block for these small
    shapes), or (n = "twin") the NumPy twin with the kernels off, so the one-block kernel, the many-block one and the
    twin all meet the oracle. Asserts afterwards that the kernel ran (forward and backward), or, for the twin,
    that no kernel did."""
    from kernel_spy import spy
    from tinygrad_gpt.kernels.cpu import blas
    if n != "twin":
        with helpers.query_blocks(n), spy() as calls:
            yield
        assert (calls.ran("attention_fwd") and calls.ran("attention_bwd")) or not blas.available(), dict(calls)
        return
    kernels.set_enabled(False, "cpu")
    try:
        with spy() as calls:
            yield
    finally:
        kernels.set_enabled(None, "cpu")
    assert not calls, dict(calls)


@pytest.mark.parametrize("blocks", [None, 3, "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_attention_core_against_torch_sdpa(dtype, blocks, data):
    """F.self_attention(qkv, H) against torch's own scaled_dot_product_attention(is_causal=True): an oracle
    independent of the reference's hand-written attention (scale 1/sqrt(hs), head j = columns j*hs:(j+1)*hs)."""
    cfg, B, t, seed = data.draw(cases(dtype))
    C, H = cfg["n_embd"], cfg["n_head"]
    hs = C // H

    def torch_core(qkv):
        q, k, v = (a.reshape(B, t, H, hs).transpose(1, 2) for a in qkv.split(C, dim=2))   # (B, H, t, hs)
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)                      # (B, H, t, hs)
        return y.transpose(1, 2).reshape(B, t, C)

    qkv = x_input(np.random.default_rng(seed), (B, t, 3 * C), dtype) * 2
    with score_blocks(blocks):
        errors = compare(lambda a: F.self_attention(a, H), torch_core, [qkv], seed=seed)
    check("attention core", dtype, errors, red_attention_core(t, hs), 10)


@pytest.mark.parametrize("blocks", [None, 3, "twin"])
@given(data=st.data(), p=st.floats(0.05, 0.9))
def test_attention_core_with_keep_mask(blocks, data, p):
    """The attention core with a dropout keep-mask on the attention weights: A = softmax(S) * M / (1 - p)."""
    cfg, B, t, seed = data.draw(cases(np.float64))
    C, H = cfg["n_embd"], cfg["n_head"]
    hs = C // H
    keep = np.random.default_rng(seed + 1).random((B, H, t, t)) >= p

    def torch_core(qkv):
        q, k, v = (a.reshape(B, t, H, hs).transpose(1, 2) for a in qkv.split(C, dim=2))
        s = (q @ k.transpose(-2, -1)) * hs ** -0.5
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.softmax(s, dim=-1) * torch.from_numpy(keep) / (1 - p)
        return (a @ v).transpose(1, 2).reshape(B, t, C)

    qkv = x_input(np.random.default_rng(seed), (B, t, 3 * C), np.float64) * 2
    with score_blocks(blocks):
        errors = compare(lambda a: F.self_attention(a, H, keep, p), torch_core, [qkv], seed=seed)
    check("attention core + mask", np.float64, errors, red_attention_core(t, hs), 12)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_causal_self_attention_module(dtype, data):
    cfg, B, t, seed = data.draw(cases(dtype))
    ours, ref = make_pair(cfg, dtype, seed)
    o, r = ours.blocks[0].attn, ref.blocks[0].attn
    x = x_input(np.random.default_rng(seed), (B, t, cfg["n_embd"]), dtype)
    errors = compare(o, r, [x], named_params(o), named_params(r), seed=seed)
    check("CausalSelfAttention", dtype, errors, red_attention(cfg["n_embd"], cfg["n_head"], t, B * t), 14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@given(data=st.data())
def test_mlp(dtype, activation, data):
    cfg, B, t, seed = data.draw(cases(dtype, activation=activation))
    ours, ref = make_pair(cfg, dtype, seed)
    o, r = ours.blocks[0].mlp, ref.blocks[0].mlp
    x = x_input(np.random.default_rng(seed), (B, t, cfg["n_embd"]), dtype)
    errors = compare(o, r, [x], named_params(o), named_params(r), seed=seed)
    check(f"MLP {activation}", dtype, errors, red_mlp(cfg["n_embd"], B * t), 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@given(data=st.data())
def test_block(dtype, bias, data):
    cfg, B, t, seed = data.draw(cases(dtype, bias=bias))
    ours, ref = make_pair(cfg, dtype, seed)
    o, r = ours.blocks[-1], ref.blocks[-1]
    x = x_input(np.random.default_rng(seed), (B, t, cfg["n_embd"]), dtype)
    errors = compare(o, r, [x], named_params(o), named_params(r), seed=seed)
    check("Block", dtype, errors, red_block(cfg["n_embd"], cfg["n_head"], t, B * t), 30)


@pytest.mark.parametrize("dtype", DTYPES)
@given(V=st.integers(1, 70), lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5), scale=st.sampled_from([1, 10]),
       seed=st.integers(0, 2 ** 16))
def test_cross_entropy(dtype, V, lead, scale, seed):
    """Mean softmax cross-entropy of logits (..., V) against integer targets (...)."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(lead + (V,)) * scale).astype(dtype)
    targets = rng.integers(0, V, lead)
    errors = compare(lambda z, y: F.cross_entropy(z, y),
                     lambda z, y: TF.cross_entropy(z.reshape(-1, V), y.reshape(-1)),
                     [logits, targets], seed=seed)
    check("cross-entropy", dtype, errors, red_cross_entropy(V, targets.size), 6, ce_condition(logits, targets, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@given(data=st.data())
def test_whole_gpt(dtype, bias, data):
    """The whole GPT: logits with a random upstream gradient, then the mean loss with loss.backward(); every
    parameter's gradient, matched by name."""
    cfg, B, t, seed = data.draw(cases(dtype, bias=bias))
    rng = np.random.default_rng(seed)
    idx, tgt = rng.integers(0, cfg["vocab_size"], (2, B, t))
    ours, ref = make_pair(cfg, dtype, seed)
    errors = compare(lambda i: ours(i)[0], lambda i: ref(i)[0], [idx], named_params(ours), named_params(ref),
                     seed=seed)
    check("GPT logits", dtype, errors, red_gpt(cfg, B, t), gpt_depth(cfg))

    ours.zero_grad()
    ref.zero_grad(set_to_none=True)
    errors = compare(lambda i, y: ours(i, y)[1], lambda i, y: ref(i, y)[1], [idx, tgt], named_params(ours),
                     named_params(ref), seed=seed)
    check("GPT loss", dtype, errors, red_gpt(cfg, B, t), gpt_depth(cfg))


# ---- numerically hard inputs --------------------------------------------------------------------------------------

def ln_pair(C, dtype, rng, bias=True):
    """A tinygrad_gpt LayerNorm and a torch one with the same random affine weights."""
    ours = LayerNorm(C, bias=bias, dtype=dtype)
    ref = torch.nn.LayerNorm(C, eps=1e-5, bias=bias, dtype=torch_dtype(dtype))
    with torch.no_grad():
        for name, p in named_params(ours).items():
            p.data[...] = (rng.standard_normal(C) + (name == "weight")).astype(dtype)
            named_params(ref)[name].copy_(torch.from_numpy(p.data))
    return ours, ref


def ln_grads(module, x, dout, engine):
    """(y, dx, dw, db) of a LayerNorm module of either engine, for the upstream gradient dout."""
    if engine == "ours":
        xt = Tensor(x.copy(), requires_grad=True)
        y = module(xt)
        (y * Tensor(dout)).sum().backward()
        return y.numpy(), xt.grad, module.weight.grad, module.bias.grad
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    (y * torch.from_numpy(dout)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), module.weight.grad.numpy(), module.bias.grad.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@given(C=st.integers(1, 16), rows=st.integers(1, 6),
       value=st.sampled_from([0.0, 1.0, -3.5, 0.1, 1 / 3, 1e4, 12345.678]),
       seed=st.integers(0, 2 ** 16))
def test_layer_norm_constant_rows(dtype, C, rows, value, seed):
    """Constant rows (variance 0, so rstd = 1/sqrt(eps) = 316): finite, and equal to torch within bounds derived
    from the rounding of the row mean.

    Exactly, xhat = 0, y = b, dw = 0, dx = rstd * (dxhat - mean(dxhat)). Computed, x - mean(x) is not exactly 0: the
    mean of C copies of v is within (C + 1) u |v| of v, so either engine's xhat is within
    delta = (C + 1) u |v| rstd of 0 (capped at sqrt(C), since sum xhat^2 <= C). Then, per element, for both engines:
      |y - b| <= |w| delta + u |b|            |dw| <= delta sum_rows |dy| (1 + N u)
      |dx - rstd (dxhat - mean dxhat)| <= rstd max|dxhat| (delta^2 + (C + 2) u)     (xhat * mean(dxhat xhat), rstd's
                                                                                      own relative change delta^2 / 2)
    and ours minus torch is within twice each bound. db = sum_rows dy is well conditioned: the usual tolerance.
    For 1e4 in float32 delta is O(1) (one ulp of 1e4 is 1e-3, times 316): the input carries no information at that
    scale, and only finiteness and the capped bounds are meaningful there; torch's own float32 dw is O(0.1) then.
    """
    rng = np.random.default_rng(seed)
    ours, ref = ln_pair(C, dtype, rng)
    x = np.full((rows, C), value, dtype=dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    y, dx, dw, db = ln_grads(ours, x, dout, "ours")
    ry, rdx, rdw, rdb = ln_grads(ref, x, dout, "torch")
    for a in (y, dx, dw, db):
        assert np.all(np.isfinite(a))

    u = U64 if dtype == np.float64 else U32
    rstd = 1e-5 ** -0.5
    delta = min((C + 1) * u * abs(value) * rstd, np.sqrt(C))
    w, b = ours.weight.data.astype(np.float64), ours.bias.data.astype(np.float64)
    dxhat = np.abs(dout * w).max()
    bounds = {"y": 2 * (np.abs(w) * delta + u * np.abs(b)),
              "dw": 2 * delta * np.abs(dout).sum(axis=0) * (1 + rows * u),
              "dx": 2 * rstd * dxhat * (delta ** 2 + (C + 2) * u) + np.zeros(C)}
    for name, a, r in [("y", y, ry), ("dw", dw, rdw), ("dx", dx, rdx)]:
        diff = np.abs(a.astype(np.float64) - r)
        assert np.all(diff <= bounds[name]), \
            f"{name} on constant rows of {value}: |ours - torch| {diff.max():.3g} > bound {bounds[name].max():.3g}"
    tol = TOL64_GRAD if dtype == np.float64 else f32_tol(rows, 1)
    assert helpers.rel_err(db, rdb) <= tol


@given(rows=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_layer_norm_width_2(rows, seed):
    """Width 2, float64. With x = (m + d, m - d): xhat = +-s, s = d / sqrt(d^2 + eps), and the exact input gradient
    is dx_1 = -dx_2 = rstd (dxhat_1 - dxhat_2) / 2 * (1 - s^2), where 1 - s^2 = eps / (d^2 + eps) comes out of a
    cancellation of O(1) terms. Each engine's computed value therefore carries an ABSOLUTE error of a few roundings of
    those terms, c u rstd max|dxhat| per row, whatever the size of the result; and xhat itself is off by the rounding
    of x - mean(x), u max|x| absolute, times rstd (large when the two values are close). So per row
        |dx_ours - dx_torch| <= 2 * 8 u rstd max|dxhat| (1 + max|x| rstd)
    (over 5000 draws the difference reached 3.1 of the 16 allowed). The relative error is meaningless here: the
    result can be 1e-6 of its terms."""
    rng = np.random.default_rng(seed)
    ours, ref = ln_pair(2, np.float64, rng)
    x = rng.standard_normal((rows, 2)) * 2
    dout = rng.standard_normal(x.shape)
    _, dx, dw, db = ln_grads(ours, x, dout, "ours")
    _, rdx, rdw, rdb = ln_grads(ref, x, dout, "torch")
    rstd = 1 / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)                             # (rows, 1)
    bound = (2 * 8 * U64 * rstd * np.abs(dout * ours.weight.data).max(axis=-1, keepdims=True)
             * (1 + np.abs(x).max(axis=-1, keepdims=True) * rstd))
    assert np.all(np.abs(dx - rdx) <= bound), f"width-2 input gradient: {np.abs(dx - rdx).max():.3g} > bound"
    assert helpers.rel_err(dw, rdw) <= TOL64_GRAD and helpers.rel_err(db, rdb) <= TOL64_GRAD


@pytest.mark.parametrize("dtype", DTYPES)
@given(C=st.integers(3, 16), lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), seed=st.integers(0, 2 ** 16))
def test_layer_norm_inputs_scaled_by_1e4(dtype, C, lead, seed):
    """x ~ 1e4 N(0, 1): LayerNorm is scale invariant, so output and gradients (dx scales as 1e-4) stay finite and
    equal to torch within the usual tolerance. C >= 3 (see the module docstring)."""
    if dtype == np.float32:
        C = max(C, 4)
    rng = np.random.default_rng(seed)
    ours = LayerNorm(C, dtype=dtype)
    ref = torch.nn.LayerNorm(C, eps=1e-5, dtype=torch_dtype(dtype))
    x = (rng.standard_normal(lead + (C,)) * 1e4).astype(dtype)
    errors = compare(ours, ref, [x], named_params(ours), named_params(ref), seed=seed)
    assert all(np.isfinite(v) for v in errors.values())
    tol_f, tol_g = (TOL64_FWD, TOL64_GRAD) if dtype == np.float64 else (f32_tol(red_layer_norm(C, x.size // C), 8),) * 2
    assert_errors(errors, tol_f, tol_g, "LayerNorm on inputs scaled by 1e4")


@pytest.mark.parametrize("dtype", DTYPES)
@given(V=st.integers(2, 20), N=st.integers(1, 8), seed=st.integers(0, 2 ** 16))
def test_cross_entropy_on_huge_logits(dtype, V, N, seed):
    """Logits of +-1e4 (exp overflows without the max shift): the loss (about 2e4 where the target holds -1e4 and
    another class +1e4) and its gradient are finite and equal to torch."""
    rng = np.random.default_rng(seed)
    logits = (rng.choice([-1e4, 1e4], size=(N, V)) + rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, N)
    loss = F.cross_entropy(Tensor(logits, requires_grad=True), targets)
    assert np.isfinite(loss.item())
    errors = compare(F.cross_entropy, lambda z, y: TF.cross_entropy(z, y), [logits, targets], seed=seed)
    assert all(np.isfinite(v) for v in errors.values())
    # max-shifted logits are exact differences (Sterbenz) of 1e4-sized numbers: the usual bound, times the condition
    # factors of ce_condition (a row whose target holds the only +1e4 has a loss ~e^-2e4 = 0 and a gradient ~0)
    fwd, grad = ce_condition(logits, targets, dtype)
    tol = TOL64_FWD if dtype == np.float64 else f32_tol(red_cross_entropy(V, N), 6)
    assert_errors(errors, tol * fwd, tol * grad, "cross-entropy on logits of +-1e4")


@pytest.mark.parametrize("impl", ["kernel", "twin"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_matches_add_at(impl, dtype):
    """The embedding's dW (the CPU kernel's scatter-add by column pieces, and the twin's np.add.at) equals np.add.at
    (repeated rows, unused rows exactly 0) up to summation order; dPos sums the batch, zero past t."""
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 30, (6, 50))
    idx[idx == 3] = 4                                                # row 3 unused: its gradient must be exactly 0
    g = rng.standard_normal((6, 50, 40)).astype(dtype)               # C = 40: one full piece of 32 channels + 8
    want = np.zeros((40, 40), dtype)
    np.add.at(want, idx.reshape(-1), g.reshape(-1, 40))
    fn = F.embed_backward if impl == "kernel" else F.embed_backward.reference
    got, d_pos = fn(idx, g, 40, 64)
    assert got.dtype == dtype and got.shape == (40, 40) and d_pos.shape == (64, 40)
    assert np.all(got[3] == 0) and np.all(got[30:] == 0) and np.all(d_pos[50:] == 0)
    # each row sums at most 300 terms of |g| <= ~5: float rounding bound 300 u * sum|g|, here taken per element
    bound = 300 * np.finfo(dtype).eps * np.abs(g).sum()
    assert np.abs(got - want).max() <= bound
    assert np.abs(d_pos[:50] - g.sum(axis=0)).max() <= 6 * np.finfo(dtype).eps * np.abs(g).sum(axis=0).max()


@pytest.mark.parametrize("sublayer", ["linear", "mlp"])
@pytest.mark.parametrize("bias", [True, False])
def test_residual_in_the_epilogue_equals_a_separate_add_bit_for_bit(sublayer, bias):
    """linear(..., residual=r) and mlp(..., residual=r) add r in the bias pass: the output and every gradient must be
    exactly those of r + sublayer(x) built from two nodes (float addition is commutative, and the order is the same)."""
    rng = np.random.default_rng(7)
    C = 8
    arrays = {"x": rng.standard_normal((2, 5, C)), "r": rng.standard_normal((2, 5, C)),
              "g": rng.standard_normal((2, 5, C)),
              "w1": rng.standard_normal((4 * C, C)), "b1": rng.standard_normal(4 * C),
              "w2": rng.standard_normal((C, 4 * C) if sublayer == "mlp" else (C, C)), "b2": rng.standard_normal(C)}

    def run(fused):
        t = {k: Tensor(v.astype(np.float32), requires_grad=True) for k, v in arrays.items() if k != "g"}
        b1, b2 = (t["b1"], t["b2"]) if bias else (None, None)
        if sublayer == "mlp":
            args = (t["x"], t["w1"], b1, t["w2"], b2)
            y = F.mlp(*args, residual=t["r"]) if fused else t["r"] + F.mlp(*args)
        else:
            y = F.linear(t["x"], t["w2"], b2, residual=t["r"]) if fused else t["r"] + F.linear(t["x"], t["w2"], b2)
        y.backward(arrays["g"].astype(np.float32))
        return y.data, {k: v.grad for k, v in t.items() if v.grad is not None}

    (y_f, g_f), (y_s, g_s) = run(True), run(False)
    np.testing.assert_array_equal(y_f, y_s)
    assert g_f.keys() == g_s.keys() and "r" in g_f
    for k in g_f:
        np.testing.assert_array_equal(g_f[k], g_s[k], err_msg=k)
    with pytest.raises(ValueError, match="residual of shape"):
        F.linear(Tensor(arrays["x"]), Tensor(np.ones((3, C))), residual=Tensor(arrays["r"]))   # (2, 5, 3) vs r
