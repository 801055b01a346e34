"""No silent float64: a float32 model keeps every node's output and every gradient a backward closure returns in
float32, in training mode with dropout, through the whole step and through generation."""
import numpy as np
import pytest

from tinygrad_gpt import GPT, AdamW, GPTConfig
from tinygrad_gpt.tensor import Tensor, no_grad


@pytest.fixture
def dtype_log(monkeypatch):
    seen = []
    make = Tensor._make.__func__

    def recording_make(cls, data, parents, backward, op):
        seen.append((op, "forward", data.dtype))
        if backward is not None:
            def checked(g, _bw=backward, _op=op):
                grads = _bw(g)
                seen.extend((_op, "backward", getattr(x, "dtype", None)) for x in grads if x is not None)
                return grads
            backward = checked
        return make(cls, data, parents, backward, op)

    monkeypatch.setattr(Tensor, "_make", classmethod(recording_make))
    return seen


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_training_step_stays_float32(dtype_log, activation):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=4, n_layer=2, dropout=0.25, activation=activation)
    model = GPT(cfg, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3, max_grad_norm=1.0)
    x = np.random.default_rng(0).integers(0, 11, (3, 8))
    logits, loss = model(x, x)
    loss.backward()
    opt.step()
    assert logits.dtype == np.float32 and loss.dtype == np.float32
    wrong = sorted({(op, phase, str(dt)) for op, phase, dt in dtype_log if dt != np.float32})
    assert not wrong, f"non-float32 arrays in a float32 step: {wrong}"
    assert len(dtype_log) > 20
    for name, p in model.named_parameters():
        assert p.dtype == np.float32, name


def test_generation_stays_float32():
    cfg = GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=4, n_layer=2)
    model = GPT(cfg, seed=0)
    cache = model.new_cache(1)
    with no_grad():
        logits, _ = model(np.zeros((1, 3), np.int64), cache=cache)
    assert logits.dtype == np.float32
    assert all(a.dtype == np.float32 for layer in cache for a in (layer.k, layer.v))
