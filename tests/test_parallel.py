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


def test_threaded_attention_is_bitwise_the_serial_one(monkeypatch):
    """Blocks write disjoint outputs, so threads change nothing: the same bits as a plain loop over the blocks."""
    monkeypatch.setattr(F, "_BLOCK_SCORES", 1)
    monkeypatch.setattr(F, "_QUERY_BLOCK", 16)
    monkeypatch.setattr(F, "_PARALLEL_SCORES", 0)
    rng = np.random.default_rng(1)
    B, t, C, H = 5, 40, 24, 3
    qkv = rng.standard_normal((B, t, 3 * C)).astype(np.float32)
    g = rng.standard_normal((B, t, C)).astype(np.float32)
    keep = rng.random((B, H, t, t)) >= 0.3

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
