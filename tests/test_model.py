"""Model-level properties of tinygrad_gpt's GPT: dropout (identity cases, injected masks against the reference,
statistics of its own masks, seeding), causality, parameter counts and names, generation (greedy against the
reference, the key/value cache against full recomputation).

Dimension names: B batch, t sequence length, T block_size, C n_embd, H n_head, V vocab.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference
from helpers import assert_errors, compare
from model_helpers import (
    TOL64_FWD,
    TOL64_GRAD,
    RecordingMasks,
    ReplayMasks,
    f32_tol,
    gpt_depth,
    make_pair,
    named_params,
    randomize_params,
    red_gpt,
)
from strategies import gpt_configs
from tinygrad_gpt import GPT, AdamW, GPTConfig, Tensor, no_grad
from tinygrad_gpt import fused as F
from tinygrad_gpt.model import count_parameters, parameter_shapes
from tinygrad_gpt.nn import Dropout, ShapeOnly

SMALL = dict(vocab_size=65, block_size=32, n_embd=64, n_head=4, n_layer=4)      # lecture, first model
LARGE = dict(vocab_size=65, block_size=256, n_embd=384, n_head=6, n_layer=6)    # lecture, final model
MEDIUM = dict(vocab_size=11, block_size=16, n_embd=32, n_head=4, n_layer=2)     # big enough for statistics


def configs(min_embd=3, **fixed):
    """Small GPT configs (strategies.gpt_configs) with n_embd >= min_embd (see test_layers on LayerNorm widths)."""
    return gpt_configs(with_options=True).filter(lambda c: c["n_embd"] >= min_embd).map(lambda c: {**c, **fixed})


def hoeffding_eps(n, alpha=1e-9):
    """Hoeffding: for K ~ Binomial(n, q), P(|K/n - q| >= eps) <= 2 exp(-2 n eps^2) = alpha at this eps. Distribution
    free (no normal approximation); with alpha = 1e-9 a correct implementation fails with probability <= 1e-9 per
    check (and the seeds are fixed, so a run is reproducible anyway)."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def never_called(shape):
    raise AssertionError(f"the mask source was asked for a mask of shape {shape}")


# ---- dropout ------------------------------------------------------------------------------------------------------

@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple), seed=st.integers(0, 2 ** 16))
def test_dropout_p0_is_identity(shape, seed):
    """p = 0: the functional node with an all-keep mask returns x and passes dout through exactly; the Dropout
    module in training mode returns x itself and never draws a mask."""
    x = np.random.default_rng(seed).standard_normal(shape)
    xt = Tensor(x, requires_grad=True)
    y = F.dropout(xt, np.ones(shape, bool), 0.0)
    np.testing.assert_array_equal(y.numpy(), x)
    dout = np.random.default_rng(seed + 1).standard_normal(shape)
    (y * Tensor(dout)).sum().backward()
    np.testing.assert_array_equal(xt.grad, dout)
    drop = Dropout(0.0)
    drop.source = never_called
    assert drop.train()(xt) is xt


@given(cfg=configs(dropout=0.0), seed=st.integers(0, 2 ** 16))
def test_gpt_with_dropout_0_in_training_mode_is_eval_mode(cfg, seed):
    ours = randomize_params(GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64), seed)
    ours.set_mask_source(never_called)
    idx = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, cfg["block_size"]))
    train = ours.train()(idx)[0].numpy()
    np.testing.assert_array_equal(train, ours.eval()(idx)[0].numpy())


@given(cfg=configs(), seed=st.integers(0, 2 ** 16), p=st.floats(0.05, 0.9))
def test_eval_mode_is_identity(cfg, seed, p):
    """dropout > 0 in eval mode: no mask drawn, logits equal (bit for bit) those of the same weights with p = 0."""
    with_p = randomize_params(GPT(GPTConfig(**{**cfg, "dropout": p}), seed=seed, dtype=np.float64), seed)
    without = GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64)
    without.load_state_dict({k: v.data for k, v in with_p.named_parameters()})
    with_p.set_mask_source(never_called)
    idx = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, cfg["block_size"]))
    np.testing.assert_array_equal(with_p.eval()(idx)[0].numpy(), without.eval()(idx)[0].numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(cfg=configs(min_embd=4), seed=st.integers(0, 2 ** 16), p=st.floats(0.05, 0.8), B=st.integers(1, 3))
def test_same_masks_give_same_results_in_both_engines(dtype, cfg, seed, p, B):
    """Training mode with dropout p > 0, every mask recorded from our model and replayed into the reference in the
    same order (attention weights (B, H, t, t), attention output (B, t, C), MLP output (B, t, C), per block): logits,
    loss and every parameter gradient agree. The loss is differentiated (cross-entropy included)."""
    cfg = {**cfg, "dropout": p}
    ours, ref = make_pair(cfg, dtype, seed)
    ours.train(), ref.train()
    rec = RecordingMasks(p, seed)
    ours.set_mask_source(rec)
    rng = np.random.default_rng(seed)
    t = cfg["block_size"]
    idx, tgt = rng.integers(0, cfg["vocab_size"], (2, B, t))

    replays = []

    def reference_with_our_masks(i, y):  # compare runs ours first: `rec` holds its masks by now
        replays.append(ReplayMasks(rec.masks))
        ref.set_mask_source(replays[0])
        return ref(i, y)

    errors = compare(lambda i, y: ours(i, y), reference_with_our_masks, [idx, tgt], named_params(ours),
                     named_params(ref), seed=seed)                           # logits and loss, and their gradients
    H, C = cfg["n_head"], cfg["n_embd"]
    assert [m.shape for m in rec.masks] == [(B, H, t, t), (B, t, C), (B, t, C)] * cfg["n_layer"]
    assert replays[0].i == len(rec.masks), "the reference asked for fewer masks than ours drew"
    if dtype == np.float64:
        assert_errors(errors, TOL64_FWD, TOL64_GRAD, "GPT with injected dropout masks")
    else:
        # test_layers' whole-GPT tolerance; each dropout site adds one rounding (depth)
        tol = f32_tol(red_gpt(cfg, B, t), gpt_depth(cfg) + 3 * cfg["n_layer"])
        assert_errors(errors, tol, tol, "float32 GPT with injected dropout masks")


def test_one_training_step_with_dropout_and_clipping_equals_torch_float64():
    """One whole training step in float64, forward, backward, gradient clipping and AdamW's step, from the same O(1)
    weights with the same dropout masks (ours recorded, replayed into the reference): the loss, the clipped
    gradients and every parameter after the step agree with torch's.

    Tolerances. Loss and gradients: TOL64_FWD, TOL64_GRAD (model_helpers). Parameters, per element:
    model_helpers.adamw_first_step_bound (the first step maps g to lr g / (|g| + eps), whose slope is up to 1 / eps,
    plus 16 u lr + 8 u |p| of the two engines' roundings), asserted with a factor 2. Normwise (~1e-10 relative):
    that bound is ~1e-15 of |p| except where |g| comes near eps. Given three premises, asserted of this fixed sample
    (measured in brackets): the gradients differ by at most 1e-15 (4.5e-17: a few u, |g| <= 1 after clipping to norm
    1), every nonzero |g| is at least 1e-8 (3.1e-8), and every tensor's max|p| is at least 0.3 (0.32, O(1) weights),
    the sensitivity term lr eps |dg| / (|g| + eps)^2 is at most 1e-3 * 1e-8 * 1e-15 / (2e-8)^2 = 2.5e-11, i.e.
    8.3e-11 of max|p|; with the roundings (~1e-15) each tensor agrees within 1e-10 relative (measured: 2e-15)."""
    import torch

    from helpers import rel_err
    from model_helpers import U64, adamw_first_step_bound

    cfg = dict(vocab_size=65, block_size=16, n_embd=32, n_head=4, n_layer=2, dropout=0.1)
    lr, wd, clip = 1e-3, 0.01, 1.0
    ours, ref = make_pair(cfg, np.float64, seed=3)
    ours.train(), ref.train()
    before = {k: np.array(p.data) for k, p in ours.named_parameters()}
    rec = RecordingMasks(cfg["dropout"], seed=5)
    ours.set_mask_source(rec)
    x, y = np.random.default_rng(7).integers(0, cfg["vocab_size"], (2, 4, cfg["block_size"]))

    opt = AdamW(ours.parameters(), lr=lr, weight_decay=wd, max_grad_norm=clip)
    _, loss = ours(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()

    ref.set_mask_source(ReplayMasks(rec.masks))                    # the masks our forward drew, in its order
    topt = reference.make_adamw(ref, lr=lr, weight_decay=wd)
    _, tloss = ref(torch.from_numpy(x), torch.from_numpy(y))
    topt.zero_grad()
    tloss.backward()
    tnorm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
    topt.step()

    assert tnorm.item() > clip                                     # the clipping did scale the gradients
    assert abs(opt.last_grad_norm - tnorm.item()) <= TOL64_GRAD * tnorm.item()
    assert abs(loss.item() - tloss.item()) <= TOL64_FWD * abs(tloss.item())
    theirs = dict(ref.named_parameters())
    assert sorted(theirs) == sorted(before)
    for name, p in ours.named_parameters():
        q = theirs[name]
        g, tg, tp = p.grad.numpy(), q.grad.numpy(), q.detach().numpy()
        assert rel_err(g, tg) <= TOL64_GRAD, name                  # the clipped gradients the updates consumed
        assert not np.array_equal(tp, before[name]), name           # the step moved it
        bound = adamw_first_step_bound(tp, g, tg, lr, U64)
        worst = np.max(np.abs(p.data - tp) / (2 * bound))
        assert worst <= 1, f"{name}: differs from torch by {worst:.3g} x the first-step bound after the step"
        # the normwise premises, then the normwise bound
        assert np.abs(g - tg).max() <= 1e-15 and np.abs(tg[tg != 0]).min() >= 1e-8 and np.abs(tp).max() >= 0.3, name
        assert rel_err(p.data, tp) <= 1e-10, name


def test_float32_training_with_dropout_stays_float32():
    """A bool keep-mask times a Python float is a float64 array: it must not leak into float32 activations."""
    ours = GPT(GPTConfig(**MEDIUM, dropout=0.2), seed=0).train()
    idx = np.zeros((2, 8), dtype=np.int64)
    logits, loss = ours(idx, idx)
    assert (logits.dtype, loss.dtype) == (np.float32, np.float32)
    blk = ours.blocks[0]
    x = Tensor(np.ones((2, 8, MEDIUM["n_embd"]), np.float32))
    assert blk.attn(x).dtype == np.float32


@given(p=st.floats(0.05, 0.9), seed=st.integers(0, 2 ** 16))
def test_model_masks_keep_fraction_and_inverted_scaling(p, seed):
    """The model's own masks (its seeded generator), recorded over one training forward pass: the kept fraction is
    1 - p within the Hoeffding bound; every dropout output is x * keep / (1 - p), so E[out] = x."""
    ours = GPT(GPTConfig(**MEDIUM, dropout=p), seed=seed).train()
    default = ours.dropouts()[0].source
    masks = []
    ours.set_mask_source(lambda shape: masks.append(np.asarray(default(shape))) or masks[-1])
    idx = np.random.default_rng(seed).integers(0, MEDIUM["vocab_size"], (8, MEDIUM["block_size"]))
    ours(idx)
    assert len(masks) == 3 * MEDIUM["n_layer"] and all(m.dtype == bool for m in masks)
    n = sum(m.size for m in masks)
    kept = sum(int(m.sum()) for m in masks) / n
    assert abs(kept - (1 - p)) <= hoeffding_eps(n), f"kept fraction {kept:.4f} for p = {p:.3f} over {n} draws"

    # the module itself on a large input of ones: outputs are 0 or 1/(1-p) (rounded to float32: relative error
    # <= u32 < 1e-7); their mean is kept/(1-p), so the same Hoeffding bound divided by (1 - p), plus that rounding,
    # holds for |mean - 1|
    drop = ours.blocks[0].mlp.drop
    x = np.ones(200_000, np.float32)
    y = drop(Tensor(x)).numpy()
    scale = np.float32(1 / (1 - p))
    assert set(np.unique(y)) <= {np.float32(0), scale} and abs(float(y[y > 0][0]) - 1 / (1 - p)) <= 1e-7 / (1 - p)
    assert abs(y.mean(dtype=np.float64) - 1) <= (hoeffding_eps(x.size) + 1e-7) / (1 - p)


def test_dropout_module_applies_the_mask_it_draws():
    drop = Dropout(0.3).train()
    keep = np.random.default_rng(0).random((4, 6)) >= 0.3
    drop.source = lambda shape: keep
    x = np.random.default_rng(1).standard_normal((4, 6))
    xt = Tensor(x, requires_grad=True)
    y = drop(xt)
    np.testing.assert_allclose(y.numpy(), np.where(keep, x / 0.7, 0.0), rtol=4e-16, atol=0)
    y.sum().backward()
    np.testing.assert_allclose(xt.grad, np.where(keep, 1 / 0.7, 0.0), rtol=4e-16, atol=0)


def test_dropout_rng_reproducible_from_seed():
    """Two models built with the same seed draw the same masks (so equal training-mode logits), a second forward
    draws new ones, and another seed draws different ones."""
    idx = np.random.default_rng(0).integers(0, MEDIUM["vocab_size"], (2, MEDIUM["block_size"]))
    cfg = GPTConfig(**MEDIUM, dropout=0.3)
    a, b, c = (GPT(cfg, seed=s).train() for s in (7, 7, 8))
    a1, b1 = a(idx)[0].numpy(), b(idx)[0].numpy()
    np.testing.assert_array_equal(a1, b1)
    a2, b2 = a(idx)[0].numpy(), b(idx)[0].numpy()
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    c.load_state_dict(a.state_dict())
    assert not np.array_equal(c(idx)[0].numpy(), a(idx)[0].numpy())
    np.testing.assert_array_equal(c.eval()(idx)[0].numpy(), a.eval()(idx)[0].numpy())


# ---- causality ----------------------------------------------------------------------------------------------------

@given(cfg=configs(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_future_tokens_change_no_past_logit(cfg, seed, data):
    """Changing every token after position s changes no logit at positions <= s (float64; the same shapes go
    through the same code, and masked keys get weight exactly 0, so the rows agree to rounding at most), while the
    logits after s do change (the test has teeth)."""
    model = randomize_params(GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64), seed)
    T, V = cfg["block_size"], cfg["vocab_size"]
    s = data.draw(st.integers(0, T - 1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (2, T))
    changed = idx.copy()
    changed[:, s + 1:] = (idx[:, s + 1:] + rng.integers(1, V, (2, T - s - 1))) % V      # every later token differs
    full, other = model(idx)[0].numpy(), model(changed)[0].numpy()
    np.testing.assert_allclose(other[:, :s + 1], full[:, :s + 1], rtol=0, atol=1e-13 * np.abs(full).max())
    if s + 1 < T:
        assert not np.allclose(other[:, s + 1:], full[:, s + 1:])


@given(cfg=configs(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_prefix_logits_are_the_first_rows(cfg, seed, data):
    """logits(idx[:, :s]) = logits(idx)[:, :s] for every prefix length s (float64, to rounding: the shapes differ,
    so BLAS may sum in another order; 1e-13 relative is 1000 u)."""
    model = randomize_params(GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64), seed)
    idx = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, cfg["block_size"]))
    full = model(idx)[0].numpy()
    s = data.draw(st.integers(1, cfg["block_size"]))
    np.testing.assert_allclose(model(idx[:, :s])[0].numpy(), full[:, :s], rtol=0, atol=1e-13 * np.abs(full).max())


# ---- parameter counts and names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, expected", [(SMALL, 209_729), (LARGE, 10_788_929)])
def test_parameter_counts(dims, expected):
    cfg = GPTConfig(**dims)
    assert GPT(cfg).num_parameters() == expected
    assert count_parameters(cfg) == expected


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [SMALL, MEDIUM])
def test_state_dict_names_and_shapes_equal_the_reference(dims, bias):
    ours = GPT(GPTConfig(**dims, bias=bias), dtype=np.float64)
    ref = reference.GPT(reference.GPTConfig(**dims, bias=bias))
    sd = ours.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert all(isinstance(v, Tensor) and v.dtype == np.float64 for v in sd.values())   # SPEC 8: torch's, model's dtype
    assert count_parameters(ours.config) == sum(v.numel() for v in sd.values())
    shapes = parameter_shapes(ours.config)
    assert list(shapes) == list(sd) and all(shapes[k] == v.shape for k, v in sd.items())   # names, order, shapes


def test_a_shape_only_model_allocates_and_draws_nothing():
    """The layout of the lecture's 10.8M-parameter model without its 43 MB of float32 or 10.8M normal draws: every
    placeholder is a read-only broadcast of one zero, and the initialising generator is never asked for a value."""
    class NoDraws(ShapeOnly):
        rng = property(lambda self: pytest.fail("a shape-only model drew from a generator"),
                       lambda self, value: None)
    model = GPT(GPTConfig(**LARGE), init=NoDraws())
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == 10_788_929
    assert all(p.data.strides == (0,) * p.ndim and not p.data.flags.writeable for p in params)
    assert sum(p.data.base.nbytes if p.data.base is not None else p.data.nbytes for p in params) <= 4 * len(params)


# ---- generation ---------------------------------------------------------------------------------------------------

@given(cfg=configs(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_forward_with_the_cache_in_chunks_equals_the_whole_forward(cfg, seed, data):
    """The blocks with a key/value cache: feeding a sequence in chunks of any sizes gives the logits of one forward
    pass over all of it (float64; the products are split differently, so BLAS may sum in another order: 1e-13
    relative is ~500 u), and the cache then holds every position."""
    model = randomize_params(GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64), seed)
    T = cfg["block_size"]
    idx = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, T))
    full = model(idx)[0].numpy()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, T - 1), max_size=4)))) if T > 1 else []
    cache = model.new_cache(2)
    with no_grad():
        parts = [model(idx[:, a:b], cache=cache)[0].numpy() for a, b in zip([0] + cuts, cuts + [T], strict=True)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=0, atol=1e-13 * np.abs(full).max())
    assert all(layer.pos == T for layer in cache)


def test_the_cache_is_for_generation_only():
    model = GPT(GPTConfig(**MEDIUM, dropout=0.1), seed=0)
    idx = np.zeros((1, 4), np.int64)
    with pytest.raises(RuntimeError, match="under no_grad"):
        model.eval()(idx, cache=model.new_cache(1))
    with no_grad(), pytest.raises(RuntimeError, match="eval mode"):
        model.train()(idx, cache=model.new_cache(1))
    model.eval()
    cache = model.new_cache(1)
    with no_grad():
        model(np.zeros((1, MEDIUM["block_size"] - 1), np.int64), cache=cache)
        with pytest.raises(ValueError, match="sequence length 2 after 15 cached positions exceeds block_size 16"):
            model(np.zeros((1, 2), np.int64), cache=cache)
        with pytest.raises(ValueError, match="a cache of 1 layers for a model of 2 blocks"):
            model(idx, cache=cache[:1])

def gen_pair(cfg, seed):
    """float64 engines (ties between logits are then not a rounding question) with O(1) random weights, so the
    next-token distributions are far from uniform."""
    return make_pair(cfg, np.float64, seed)


@given(cfg=configs(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_greedy_generation_equals_the_reference(cfg, seed, data):
    """temperature 0 within the context window (every context the model reads has <= T tokens, so both engines
    read the same tokens): the same continuation as the reference's greedy generate."""
    ours, ref = gen_pair(cfg, seed)
    T = cfg["block_size"]
    t0 = data.draw(st.integers(1, T))
    prompt = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, t0))
    n = T - t0 + 1
    out = ours.generate(prompt, n, temperature=0)
    assert out.shape == (2, t0 + n) and out.dtype.kind == "i"
    np.testing.assert_array_equal(out, ref.generate(prompt, n, temperature=0))
    np.testing.assert_array_equal(ours.generate(prompt, n, temperature=0, use_cache=False), out)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_past_block_size_equals_the_reference(use_cache):
    """The default window rule ("slide") is the lecture's: the context is always the last block_size tokens."""
    cfg = dict(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=2)
    ours, ref = gen_pair(cfg, 0)
    prompt = np.random.default_rng(0).integers(0, 11, (3, 4))
    np.testing.assert_array_equal(ours.generate(prompt, 30, temperature=0, use_cache=use_cache),
                                  ref.generate(prompt, 30, temperature=0))


@pytest.mark.parametrize("window", ["slide", "shift"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_with_block_size_1_equals_the_reference(use_cache, window):
    """block_size 1: each step reads the last token only (both window rules keep at least one token)."""
    cfg = dict(vocab_size=7, block_size=1, n_embd=4, n_head=2, n_layer=1)
    ours, ref = gen_pair(cfg, 0)
    prompt = np.array([[3], [5]])
    np.testing.assert_array_equal(ours.generate(prompt, 6, temperature=0, use_cache=use_cache, window=window),
                                  ref.generate(prompt, 6, temperature=0))


def test_shift_window_keeps_three_quarters():
    """window="shift": when the context overflows, the model re-reads the last T - T//4 tokens from position 0.
    Checked against the reference run on exactly those contexts."""
    cfg = dict(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=2)
    ours, ref = gen_pair(cfg, 1)
    prompt = np.random.default_rng(1).integers(0, 11, (2, 5))
    out = ours.generate(prompt, 20, temperature=0, window="shift")
    ctx = prompt
    for i in range(20):
        if ctx.shape[1] > 8:
            ctx = ctx[:, -6:]
        nxt = ref.generate(ctx, 1, temperature=0)[:, -1:]
        np.testing.assert_array_equal(nxt[:, 0], out[:, 5 + i], err_msg=f"token {i}")
        ctx = np.concatenate([ctx, nxt], axis=1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(cfg=configs(), window=st.sampled_from(["slide", "shift"]),
       seed=st.integers(0, 2 ** 16), temperature=st.sampled_from([0, 0.7, 1.0, 2.0]),
       top_k=st.sampled_from([None, 1, 3]), data=st.data())
def test_kv_cache_generation_equals_recomputation(dtype, cfg, window, seed, temperature, top_k, data):
    """use_cache=True and use_cache=False give the same tokens for the same seed, also well past block_size (the
    window is refilled several times). Sampling draws one uniform per row, so equal logits give equal tokens; the
    cached and full forward passes differ by rounding only, which flips a draw with probability ~1e-7 (float32)."""
    model = randomize_params(GPT(GPTConfig(**cfg), seed=seed, dtype=dtype), seed)
    T = cfg["block_size"]
    t0 = data.draw(st.integers(1, T))
    prompt = np.random.default_rng(seed).integers(0, cfg["vocab_size"], (2, t0))
    n = 3 * T + 2
    cached = model.generate(prompt, n, temperature=temperature, top_k=top_k, seed=seed, window=window)
    assert cached.shape == (2, t0 + n)
    np.testing.assert_array_equal(cached[:, :t0], prompt)
    full = model.generate(prompt, n, temperature=temperature, top_k=top_k, seed=seed, use_cache=False, window=window)
    np.testing.assert_array_equal(cached, full)
    assert model.training, "generate must restore training mode"
