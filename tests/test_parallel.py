"""parallel.parallel_map: every item once, failures raised, the BLAS thread count left as it was; and the layers that
use it give the same bits threaded as in one thread."""
import threading

import numpy as np
import pytest

from tinygrad_gpt import functional as F, parallel
from tinygrad_gpt.tensor import Tensor


def test_every_item_runs_once_and_outputs_match_a_loop():
    x = np.random.default_rng(0).standard_normal((37, 1000)).astype(np.float32)
    out = np.empty_like(x)
    seen = []

    def work(i):
        seen.append((i, threading.current_thread().name))
        np.exp(x[i], out=out[i])
    parallel.parallel_map(work, range(len(x)))
    assert sorted(i for i, _ in seen) == list(range(len(x)))
    assert np.array_equal(out, np.exp(x))
    if parallel.num_threads() > 1:                                   # the work really went to the pool's threads
        assert {name for _, name in seen} <= {f"tinygrad_gpt_{i}" for i in range(parallel.num_threads())}


def test_a_failure_is_raised_and_the_blas_thread_count_is_restored():
    before = parallel.num_threads()

    def work(i):
        if i == 3:
            raise ValueError("item 3 failed")
    with pytest.raises(ValueError, match="item 3 failed"):
        parallel.parallel_map(work, range(8))
    assert parallel.num_threads() == before
    parallel.parallel_map(lambda i: None, [])                        # no items: nothing to do


def _attention_case(seed, B, t, C, H, p):
    """qkv (B, t, 3C), an upstream gradient (B, t, C) and a dropout keep-mask (B, H, t, t), float32."""
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, t, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, t, C)).astype(np.float32)
    return qkv, g, rng.random((B, H, t, t)) >= p


def test_threaded_attention_is_bitwise_the_serial_one(monkeypatch):
    """Blocks write disjoint outputs, so threads change nothing: the same bits as a plain loop over the blocks."""
    monkeypatch.setattr(F, "_BLOCK_SCORES", 1)
    monkeypatch.setattr(F, "_QUERY_BLOCK", 16)
    monkeypatch.setattr(F, "_PARALLEL_SCORES", 0)
    H = 3
    qkv, g, keep = _attention_case(1, 5, 40, 24, H, 0.3)

    def run():
        x = Tensor(qkv.copy(), requires_grad=True)
        y = F.self_attention(x, H, keep, 0.3)
        y.backward(g)
        return y.numpy(), x.grad
    threaded = run()
    monkeypatch.setattr(parallel, "num_threads", lambda: 1)
    serial = run()
    for a, b in zip(threaded, serial):
        assert np.array_equal(a, b)


def _gpt_step(dtype, seed=0):
    """Loss and every gradient of one training step of a small GPT with dropout (float `dtype`)."""
    from tinygrad_gpt.model import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=17, block_size=24, n_embd=32, n_head=4, n_layer=2, dropout=0.2)
    model = GPT(cfg, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 17, (6, 24)), rng.integers(0, 17, (6, 24))
    _, loss = model(Tensor(x), Tensor(y))
    loss.backward()
    return [loss.numpy()] + [p.grad for p in model.parameters()]


def _force_blocks(monkeypatch):
    """Every blocked layer in many small blocks, spread over the threads, whatever the size."""
    for name, value in (("_BLOCK_SCORES", 1), ("_QUERY_BLOCK", 8), ("_PARALLEL_SCORES", 0), ("_BLOCK_ELEMS", 64),
                        ("_PARALLEL_ELEMS", 0)):
        monkeypatch.setattr(F, name, value)


def test_blocked_threaded_model_step_matches_the_one_block_step(monkeypatch):
    """A whole GPT step (LayerNorm, fused linear+ReLU, attention, dropout) in small blocks on threads gives the
    one-block result: float64, up to summation order (LayerNorm's dw adds per-block partial sums)."""
    whole = _gpt_step(np.float64)
    _force_blocks(monkeypatch)
    blocked = _gpt_step(np.float64)
    for a, b in zip(whole, blocked):
        scale = max(1.0, float(np.abs(a).max()))
        assert np.abs(a - b).max() <= 1e-13 * scale


def test_threads_change_no_bits_of_a_model_step(monkeypatch):
    """The same blocks on threads or in a plain loop: the same bits (float32, the training dtype)."""
    _force_blocks(monkeypatch)
    threaded = _gpt_step(np.float32)
    monkeypatch.setattr(parallel, "num_threads", lambda: 1)
    serial = _gpt_step(np.float32)
    for a, b in zip(threaded, serial):
        assert np.array_equal(a, b)


def test_blocked_threaded_adamw_changes_no_bits(monkeypatch):
    """AdamW's CPU update in small blocks on threads: elementwise, so exactly the one-block result."""
    from tinygrad_gpt import optim

    def run():
        rng = np.random.default_rng(3)
        params = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in ((50, 7), (13,))]
        opt = optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in params:
                p.grad = rng.standard_normal(p.shape).astype(np.float32)
            opt.step()
        return [p.data.copy() for p in params]
    whole = run()
    monkeypatch.setattr(optim, "_BLOCK", 16)
    monkeypatch.setattr(optim, "_PARALLEL", 0)
    blocked = run()
    for a, b in zip(whole, blocked):
        assert np.array_equal(a, b)


def test_stored_and_recomputed_probabilities_give_the_same_bits(monkeypatch):
    """The attention backward either keeps each block's P from the forward or recomputes it from q, k and each
    query's max and sum; the recomputation repeats the forward's operations, so the gradients are bitwise equal."""
    monkeypatch.setattr(F, "_QUERY_BLOCK", 8)
    H = 2
    qkv, g, keep = _attention_case(4, 3, 20, 16, H, 0.25)

    def grads(store):
        monkeypatch.setattr(F, "_KEEP_PROBS", store)
        out = []
        for mask in (None, keep):
            x = Tensor(qkv.copy(), requires_grad=True)
            F.self_attention(x, H, mask, 0.25).backward(g)
            out.append(x.grad)
        return out
    for a, b in zip(grads(True), grads(False)):
        assert np.array_equal(a, b)
