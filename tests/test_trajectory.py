"""End-to-end: from identical weights, 50 AdamW training steps on real tiny-Shakespeare batches in both engines
(tinygrad_gpt and the torch reference), dropout 0. Every step's loss and the final weights must agree; any
mismatch fails the test with the step and the numbers (no printing and returning 0, as llm.c's CPU test does).

float64: 1e-8 relative (issue 3). The measured disagreement is ~1e-15 (loss) and ~1e-12 (weights): each step adds
O(u) differences, and 50 steps of Adam on a smooth loss grow them only mildly.

float32: the engines round differently (OpenBLAS vs MKL summation orders, fused vs separate kernels), and Adam turns
rounding-level differences in near-zero gradient entries into O(lr) parameter differences (its update
lr * m / (sqrt(v) + eps) does not shrink with the gradient). So a float32 trajectory has an inherent spread that
no a-priori rounding bound describes well. We measure that spread with the reference itself: e = the deviation of
torch's float32 run from torch's float64 run (same weights, same batches), per step for the loss (running maximum)
and over all parameter tensors for the weights. If our float32 arithmetic is at most twice as inexact as torch's,
|ours32 - truth| <= 2 e and, by the triangle inequality, |ours32 - torch32| <= 3 e. To that we add one float32
rounding floor (8 u |loss| for the loss, 8 u relative for the weights) for steps where torch happens to be exact.
Measured (3 seeds): |ours32 - torch32| / e <= 1.0 for the weights, and the losses within the floor.
"""
import numpy as np
import pytest
import torch

import reference
from helpers import rel_err
from model_helpers import U32, shakespeare
from tinygrad_gpt import GPT, AdamW, GPTConfig

B, T, STEPS, LR = 4, 16, 50, 1e-3
TOL64 = 1e-8


@pytest.fixture(scope="module")
def corpus():
    data, vocab = shakespeare()
    return data[: int(0.9 * len(data))], vocab                  # the training split (first 90%)


def batches(train, seed):
    """STEPS batches (x, y) of B windows of T + 1 characters at uniformly random starts; y is x shifted by one."""
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        ix = rng.integers(0, len(train) - T - 1, B)
        yield np.stack([train[i:i + T] for i in ix]), np.stack([train[i + 1:i + T + 1] for i in ix])


def decay_groups(named, weight_decay):
    """Weight decay on tensors with ndim >= 2 only (SPEC 3's example grouping)."""
    named = list(named)
    return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]


def train_ours(cfg, sd, train, dtype, seed, groups=False, max_grad_norm=None):
    model = GPT(cfg, dtype=dtype)
    model.load_state_dict(sd)
    params = decay_groups(model.named_parameters(), 0.1) if groups else model.parameters()
    opt = AdamW(params, lr=LR, max_grad_norm=max_grad_norm)
    losses = []
    for x, y in batches(train, seed):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), {k: np.asarray(p.data, dtype=np.float64) for k, p in model.named_parameters()}


def train_ref(cfg, sd, train, dtype, seed, groups=False, max_grad_norm=None):
    model = reference.from_numpy_state_dict(reference.as_config(cfg), sd, dtype=dtype)
    params = decay_groups(model.named_parameters(), 0.1) if groups else model
    opt = reference.make_adamw(params, lr=LR)
    losses = []
    for x, y in batches(train, seed):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        losses.append(loss.item())
    return np.array(losses), {k: v.numpy().astype(np.float64) for k, v in model.state_dict().items()}


def weight_errors(a, b):
    assert sorted(a) == sorted(b)
    return {k: rel_err(a[k], b[k]) for k in b}


def assert_losses(ours, ref, tol, what):
    err = np.abs(ours - ref) / np.abs(ref)
    bad = np.flatnonzero(err > tol)
    assert bad.size == 0, (f"{what}: the loss differs from torch at step(s) {(bad + 1).tolist()}; first: step "
                           f"{bad[0] + 1}: ours {ours[bad[0]]!r}, torch {ref[bad[0]]!r}, rel err {err[bad[0]]:.3g} "
                           f"> {np.broadcast_to(tol, err.shape)[bad[0]]:.3g}")


def assert_trained(losses, what):
    assert losses[-5:].mean() < losses[:5].mean() - 0.5, \
        f"{what}: the loss did not go down: {losses[:5]} -> {losses[-5:]}"


@pytest.mark.parametrize("options", [{}, {"bias": False, "activation": "gelu", "groups": True, "max_grad_norm": 0.5}],
                         ids=["lecture", "no-bias-gelu-groups-clip"])
def test_trajectory_float64(corpus, options):
    train, vocab = corpus
    options = dict(options)
    opt_kw = {k: options.pop(k) for k in ("groups", "max_grad_norm") if k in options}
    cfg = GPTConfig(vocab_size=vocab, block_size=T, n_embd=32, n_head=4, n_layer=2, dropout=0.0, **options)
    sd = GPT(cfg, seed=1).state_dict()                          # the N(0, 0.02) init, as float32 values
    ours, ours_w = train_ours(cfg, sd, train, np.float64, seed=2, **opt_kw)
    ref, ref_w = train_ref(cfg, sd, train, torch.float64, seed=2, **opt_kw)
    assert_losses(ours, ref, TOL64, "float64 trajectory")
    errs = weight_errors(ours_w, ref_w)
    worst = max(errs, key=errs.get)
    assert errs[worst] <= TOL64, f"float64 trajectory: final {worst} differs from torch by {errs[worst]:.3g}"
    assert_trained(ref, "float64 trajectory")


def test_trajectory_float32(corpus):
    train, vocab = corpus
    cfg = GPTConfig(vocab_size=vocab, block_size=T, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
    sd = GPT(cfg, seed=1).state_dict()
    ours, ours_w = train_ours(cfg, sd, train, np.float32, seed=2)
    ref, ref_w = train_ref(cfg, sd, train, torch.float32, seed=2)
    truth, truth_w = train_ref(cfg, sd, train, torch.float64, seed=2)

    spread = np.maximum.accumulate(np.abs(ref - truth) / np.abs(truth))       # torch's own float32 deviation
    assert_losses(ours, ref, 3 * spread + 8 * U32, "float32 trajectory")
    w_spread = max(weight_errors(ref_w, truth_w).values())
    errs = weight_errors(ours_w, ref_w)
    worst = max(errs, key=errs.get)
    tol = 3 * w_spread + 8 * U32
    assert errs[worst] <= tol, (f"float32 trajectory: final {worst} differs from torch by {errs[worst]:.3g} > "
                                f"{tol:.3g} (torch float32 vs float64: {w_spread:.3g})")
    assert_trained(ours, "float32 trajectory")
