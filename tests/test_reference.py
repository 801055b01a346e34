"""The torch reference itself: SPEC sections 1-3 (names, shapes, counts, causality, dropout masks, loading).

The reference is the oracle for tinygrad_gpt, so it is checked here against the SPEC directly: parameter names
and shapes against the table of section 2, and its forward pass against `spec_forward`, a NumPy float64
transcription of section 1 that loops over heads one at a time (as the lecture does), so the head layout
(columns j*hs:(j+1)*hs), the qkv split and the dropout placement are checked by an independent implementation.
"""
import numpy as np
import pytest
import torch

from model_helpers import RecordingMasks
from reference import (
    GPT,
    Dropout,
    GPTConfig,
    count_parameters,
    from_numpy_state_dict,
    load_safetensors,
    make_adamw,
    numpy_state_dict,
)

SMALL = dict(vocab_size=65, block_size=32, n_embd=64, n_head=4, n_layer=4)
LARGE = dict(vocab_size=65, block_size=256, n_embd=384, n_head=6, n_layer=6)
TINY = dict(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=2)


def spec_shapes(cfg):
    """SPEC section 2, written out from the table."""
    V, T, C = cfg.vocab_size, cfg.block_size, cfg.n_embd
    b = cfg.bias
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (T, C)}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes[p + "ln1.weight"] = (C,)
        if b:
            shapes[p + "ln1.bias"] = (C,)
        shapes[p + "attn.qkv.weight"] = (3 * C, C)
        shapes[p + "attn.proj.weight"] = (C, C)
        if b:
            shapes[p + "attn.proj.bias"] = (C,)
        shapes[p + "ln2.weight"] = (C,)
        if b:
            shapes[p + "ln2.bias"] = (C,)
        shapes[p + "mlp.fc.weight"] = (4 * C, C)
        if b:
            shapes[p + "mlp.fc.bias"] = (4 * C,)
        shapes[p + "mlp.proj.weight"] = (C, 4 * C)
        if b:
            shapes[p + "mlp.proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    if b:
        shapes["ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    if b:
        shapes["lm_head.bias"] = (V,)
    return shapes


def spec_forward(cfg, sd, idx, targets=None, masks=None, p=0.0):
    """SPEC section 1 in NumPy float64, one head at a time. `masks`: an iterator of keep-masks in call order."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    C, H = cfg.n_embd, cfg.n_head
    hs = C // H
    B, t = idx.shape

    def lin(x, name):
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + 1e-5) * sd[name + ".weight"]
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    def drop(x):
        return x if masks is None else x * next(masks) / (1 - p)

    def act(x):
        if cfg.activation == "relu":
            return np.maximum(x, 0)
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    x = sd["tok_emb.weight"][idx] + sd["pos_emb.weight"][:t]
    causal = np.tril(np.ones((t, t), dtype=bool))
    for i in range(cfg.n_layer):
        pre = f"blocks.{i}."
        h = ln(x, pre + "ln1")
        qkv = h @ sd[pre + "attn.qkv.weight"].T
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        att_mask = None if masks is None else next(masks)            # (B, H, t, t), drawn before the heads
        ys = []
        for j in range(H):
            cols = slice(j * hs, (j + 1) * hs)
            s = q[..., cols] @ k[..., cols].transpose(0, 2, 1) * hs ** -0.5
            s = np.where(causal, s, -np.inf)
            a = np.exp(s - s.max(-1, keepdims=True))
            a = a / a.sum(-1, keepdims=True)
            if att_mask is not None:
                a = a * att_mask[:, j] / (1 - p)
            ys.append(a @ v[..., cols])
        x = x + drop(lin(np.concatenate(ys, axis=-1), pre + "attn.proj"))
        x = x + drop(lin(act(lin(ln(x, pre + "ln2"), pre + "mlp.fc")), pre + "mlp.proj"))
    logits = lin(ln(x, "ln_f"), "lm_head")
    loss = None
    if targets is not None:
        z = logits.reshape(B * t, -1)
        m = z.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[:, 0]
        loss = np.mean(lse - z[np.arange(B * t), targets.reshape(-1)])
    return logits, loss


def rand_idx(cfg, B, t, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, size=(B, t))


# ---- names, shapes, counts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, expected", [(SMALL, 209_729), (LARGE, 10_788_929)])
def test_parameter_counts(dims, expected):
    cfg = GPTConfig(**dims)
    model = GPT(cfg)
    assert count_parameters(model) == expected
    assert sum(int(np.prod(s)) for s in spec_shapes(cfg).values()) == expected


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_names_and_shapes(bias):
    cfg = GPTConfig(**SMALL, bias=bias)
    sd = GPT(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == spec_shapes(cfg)
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_init_follows_spec_and_seed():
    cfg = GPTConfig(**SMALL)
    sd = numpy_state_dict(GPT(cfg, seed=0))
    for k, v in sd.items():
        if k.endswith(".bias"):
            assert not v.any(), k
        elif ".ln" in k or k.startswith("ln_f"):
            assert (v == 1).all(), k
        else:
            assert abs(v.std() - 0.02) < 0.002 and abs(v.mean()) < 0.002, k
    same, other = numpy_state_dict(GPT(cfg, seed=0)), numpy_state_dict(GPT(cfg, seed=1))
    assert all(np.array_equal(sd[k], same[k]) for k in sd)
    assert not np.array_equal(sd["lm_head.weight"], other["lm_head.weight"])


def test_config_validation():
    with pytest.raises(ValueError):
        GPTConfig(**{**SMALL, "n_head": 5})
    with pytest.raises(ValueError):
        GPTConfig(**SMALL, activation="tanh")


# ---- forward: the SPEC transcription, causality -----------------------------------------------------------------

@pytest.mark.parametrize("activation, bias", [("relu", True), ("gelu", True), ("relu", False)])
def test_forward_matches_spec_transcription(activation, bias):
    cfg = GPTConfig(**TINY, activation=activation, bias=bias)
    sd = numpy_state_dict(GPT(cfg, seed=3), dtype=np.float64)
    sd = {k: v + np.random.default_rng(7).normal(0, 0.1, v.shape) for k, v in sd.items()}  # non-trivial LN/bias
    model = from_numpy_state_dict(cfg, sd, dtype=torch.float64).eval()
    idx, tgt = rand_idx(cfg, 3, 8, seed=1), rand_idx(cfg, 3, 8, seed=2)
    logits, loss = model(idx, tgt)
    ref_logits, ref_loss = spec_forward(cfg, sd, idx, tgt)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-12, atol=1e-12)
    assert abs(loss.item() - ref_loss) < 1e-12
    assert model(torch.from_numpy(idx))[1] is None  # torch input accepted, no targets -> no loss


def test_causal_future_tokens_do_not_change_past_logits():
    cfg = GPTConfig(**TINY)
    model = GPT(cfg, seed=0, dtype=torch.float64).eval()
    idx = rand_idx(cfg, 2, cfg.block_size, seed=0)
    full = model(idx)[0].detach().numpy()
    for s in range(cfg.block_size):
        changed = idx.copy()
        changed[:, s + 1:] = (changed[:, s + 1:] + 1) % cfg.vocab_size
        out = model(changed)[0].detach().numpy()
        np.testing.assert_array_equal(out[:, :s + 1], full[:, :s + 1])
        prefix = model(idx[:, :s + 1])[0].detach().numpy()
        np.testing.assert_allclose(prefix, full[:, :s + 1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        model(rand_idx(cfg, 1, cfg.block_size + 1))


# ---- dropout and mask sources ---------------------------------------------------------------------------------

def test_dropout_module_math():
    p = 0.3
    drop = Dropout(p)
    x = torch.randn(4, 5, dtype=torch.float64)
    mask = np.random.default_rng(0).random((4, 5)) >= p
    drop.mask_source = lambda shape: mask
    np.testing.assert_array_equal(drop(x).numpy(), x.numpy() * mask / (1 - p))
    drop.mask_source = lambda shape: mask[:, :4]
    with pytest.raises(ValueError):
        drop(x)
    drop.eval()
    assert drop(x) is x


def test_mask_source_call_order_shapes_and_values():
    p = 0.25
    cfg = GPTConfig(**TINY, dropout=p)
    B, t = 2, 6
    sd = numpy_state_dict(GPT(cfg, seed=0), dtype=np.float64)
    model = from_numpy_state_dict(cfg, sd, dtype=torch.float64).train()
    src = RecordingMasks(p)
    model.set_mask_source(src)
    idx, tgt = rand_idx(cfg, B, t), rand_idx(cfg, B, t, seed=1)
    logits, loss = model(idx, tgt)
    H, C = cfg.n_head, cfg.n_embd
    assert [m.shape for m in src.masks] == [(B, H, t, t), (B, t, C), (B, t, C)] * cfg.n_layer
    ref_logits, ref_loss = spec_forward(cfg, sd, idx, tgt, masks=iter(src.masks), p=p)
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-12, atol=1e-12)
    assert abs(loss.item() - ref_loss) < 1e-12
    eval_logits = model.eval()(idx)[0].detach().numpy()
    assert not np.allclose(eval_logits, ref_logits)


def test_eval_mode_and_p0_are_identity():
    cfg_p = GPTConfig(**TINY, dropout=0.5)
    cfg_0 = GPTConfig(**TINY, dropout=0.0)
    sd = numpy_state_dict(GPT(cfg_p, seed=0))
    with_p, without = from_numpy_state_dict(cfg_p, sd), from_numpy_state_dict(cfg_0, sd)
    calls = []
    for m in (with_p, without):
        m.set_mask_source(lambda shape: calls.append(shape) or np.ones(shape, bool))
    idx = rand_idx(cfg_p, 2, 8)
    expected = without.eval()(idx)[0]
    assert torch.equal(with_p.eval()(idx)[0], expected)      # eval: dropout off everywhere
    assert torch.equal(without.train()(idx)[0], expected)    # p = 0 in training: identity too
    assert calls == []                                        # the mask source was never asked
    with_p.train().set_mask_source(None)                      # torch's own dropout: random, but finite
    assert torch.isfinite(with_p(idx)[0]).all()


# ---- moving weights, optimizer ----------------------------------------------------------------------------------

def test_numpy_state_dict_round_trip_and_strict_loading():
    cfg = GPTConfig(**TINY)
    src = GPT(cfg, seed=5)
    sd32 = numpy_state_dict(src)
    assert all(v.dtype == np.float32 for v in sd32.values())
    idx = rand_idx(cfg, 2, 8)
    for dtype in (torch.float32, torch.float64):
        dst = from_numpy_state_dict(cfg, sd32, dtype=dtype)
        assert dst.lm_head.weight.dtype == dtype
        np.testing.assert_allclose(dst(idx)[0].detach().numpy(), src(idx)[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    model = GPT(cfg)
    with pytest.raises(RuntimeError, match="Missing"):
        model.load_state_dict({k: v for k, v in sd32.items() if k != "ln_f.bias"})
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.load_state_dict({**sd32, "extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict({**sd32, "lm_head.weight": sd32["lm_head.weight"].T.copy()})


def test_load_safetensors(tmp_path):
    from safetensors.numpy import save_file
    cfg = GPTConfig(**TINY)
    src = GPT(cfg, seed=2)
    save_file(numpy_state_dict(src), str(tmp_path / "model.safetensors"))
    for path in (tmp_path / "model.safetensors", tmp_path):
        dst = GPT(cfg, seed=9)
        dst.load_state_dict(load_safetensors(str(path)))
        idx = rand_idx(cfg, 2, 8)
        assert torch.equal(dst(idx)[0], src(idx)[0])


def test_make_adamw_follows_spec_formula():
    cfg = GPTConfig(**TINY)
    model = GPT(cfg, dtype=torch.float64)
    lr, wd, (b1, b2), eps = 1e-2, 0.1, (0.8, 0.95), 1e-6
    opt = make_adamw(model, lr=lr, weight_decay=wd, betas=(b1, b2), eps=eps)
    w = model.lm_head.weight
    p = w.detach().numpy().copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    rng = np.random.default_rng(0)
    for step in range(1, 4):
        g = rng.normal(size=p.shape)
        opt.zero_grad()
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
        w.grad = torch.from_numpy(g.copy())
        opt.step()
        p -= lr * wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1 ** step)) / (np.sqrt(v / (1 - b2 ** step)) + eps)
        np.testing.assert_allclose(w.detach().numpy(), p, rtol=1e-12, atol=1e-14)
    defaults = make_adamw(model).defaults
    assert (defaults["lr"], defaults["betas"], defaults["eps"], defaults["weight_decay"]) == (1e-3, (0.9, 0.999),
                                                                                            1e-8, 0.01)
