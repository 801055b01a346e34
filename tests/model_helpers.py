"""Shared pieces of the model-level tests (test_layers, test_optim, test_trajectory, test_exchange).

- `make_pair` builds a tinygrad_gpt GPT and the torch reference GPT (reference/model.py) holding the SAME weights,
  bit for bit, in float64 or float32.
- The comparison itself is helpers.compare (the one helper, STYLE item 7), with `named_params` of each engine.
- The float32 tolerance model (`f32_tol`) is derived in its docstring.

Error measure (helpers.rel_err): max|ours - torch| / max|torch| over an array (normwise).
"""
import atexit
import os

import numpy as np
import torch

import reference
from tinygrad_gpt import GPT, GPTConfig

U64 = float(np.finfo(np.float64).eps) / 2     # unit roundoff of float64, 1.1e-16
U32 = float(np.finfo(np.float32).eps) / 2     # unit roundoff of float32, 6.0e-8

# issue 3: float64 tolerances (both engines do the same O(10) roundings per output element on O(1) data, so the
# expected disagreement is ~1e-14; any wrong formula is off by O(1))
TOL64_FWD = 1e-10
TOL64_GRAD = 1e-9

# (layer, "float64"/"float32") -> [largest forward error, largest gradient error, largest error / tolerance]
LAYER_ERRORS = {}


def record(layer, dtype, errors, tol_fwd, tol_grad):
    worst = LAYER_ERRORS.setdefault((layer, np.dtype(dtype).name), [0.0, 0.0, 0.0])
    grads = [v for k, v in errors.items() if k != "forward"]
    worst[0] = max(worst[0], errors["forward"])
    worst[1] = max([worst[1]] + grads)
    worst[2] = max([worst[2], errors["forward"] / tol_fwd] + [g / tol_grad for g in grads])


def _print_layer_errors():
    print("\nlargest errors per layer (PRINT_LAYER_ERRORS=1): layer, dtype, forward, gradient, error/tolerance")
    for (layer, dtype), (f, g, r) in sorted(LAYER_ERRORS.items()):
        print(f"  {layer:<24} {dtype:<8} {f:9.2e} {g:9.2e} {r:9.2e}")


if os.environ.get("PRINT_LAYER_ERRORS"):
    atexit.register(_print_layer_errors)


KAPPA = 8


def f32_tol(reduction, depth=1):
    """Tolerance for rel_err(ours_float32, torch_float32) of one layer.

    Derivation. A float32 result computed by either engine differs from the exact result of the same float32
    inputs by the rounding errors of its steps (Higham, "Accuracy and Stability of Numerical Algorithms", 3.1):
      - a reduction of length n (dot product, matmul, row sum) is within gamma_n * sum|terms|,
        gamma_n = n u / (1 - n u) ~= n u, u = 2**-24 ~= 6e-8;
      - an elementwise step (exp, sqrt, division, an activation) adds a relative u.
    The two engines order their sums differently (NumPy/OpenBLAS vs torch/MKL), so the worst case is the SUM of
    their bounds: a factor 2. Along a chain of steps from an input to an output the relative errors add: `reduction`
    is the sum of all reduction lengths met on the layer's forward and backward passes (an upper bound for any one
    chain; counted by the red_* functions below) and `depth` the number of elementwise steps, each one rounding.

    The measure is normwise, max|err| / max|out|, while the bound is relative to sum|terms|. For the O(1) random
    data used here that ratio, max(|A| |B|) / max|A B|, grows like sqrt(n): measured over 200 random matmul shapes
    it has median 1.6 / 2.4 and maximum 5.2 / 6.7 for n = 16 / 64 (every reduction in these tests has n <= 72).
    We allow KAPPA = 8 for it. So

        tol = 2 * u32 * (reduction + depth) * KAPPA.

    This is a worst-case (linear in n) bound; typical rounding errors grow like sqrt(n) u, so the measured errors
    sit well below it (1/17 of it at most, measured), while a wrong formula is off by O(1), 100 to 1e5
    times the bound at the sizes tested.
    """
    return 2 * U32 * (reduction + depth) * KAPPA


# Reduction lengths per layer for f32_tol: the sum of the reduction lengths on the forward and backward passes.
# Dimension names: B batch, t sequence length, C n_embd, H n_head, hs head size, V vocab, N = B * t rows.
def red_linear(n_in, n_out, N):
    return n_in + n_out + N                    # y: n_in;  dx: n_out;  dW, db: N rows


def red_layer_norm(C, N):
    return 4 * C + N                           # mean, var: C each;  dx: two row means, C each;  dw, db: N rows


def red_attention_core(t, hs):
    return 2 * hs + 5 * t                      # S = q k^T: hs; softmax sum, A V: t;  dA: hs; sum(dP P), dQ, dK, dV: t


def red_attention(C, H, t, N):
    return red_linear(C, 3 * C, N) + red_attention_core(t, C // H) + red_linear(C, C, N)


def red_mlp(C, N):
    return red_linear(C, 4 * C, N) + red_linear(4 * C, C, N)


def red_block(C, H, t, N):
    return 2 * red_layer_norm(C, N) + red_attention(C, H, t, N) + red_mlp(C, N)


def red_cross_entropy(V, N):
    return 2 * V + N                           # max and sum over V, mean over N (the backward is elementwise)


def red_gpt(cfg, B, t):
    C, H, V, N = cfg["n_embd"], cfg["n_head"], cfg["vocab_size"], B * t
    return (N + B + cfg["n_layer"] * red_block(C, H, t, N) + red_layer_norm(C, N) + red_linear(C, V, N)
            + red_cross_entropy(V, N))


def gpt_depth(cfg):
    return 30 * cfg["n_layer"] + 20


def adamw_first_step_bound(p, g_a, g_b, lr, u=U64, eps=1e-8):
    """Per element, how far two engines' parameters may differ after AdamW's first step (t = 1) from the same
    weights p, when the (clipped) gradients the two updates consumed are g_a and g_b.

    Derivation. At t = 1 the bias-corrected moments are m_hat = g and v_hat = g^2, so in exact arithmetic
    p1 = p (1 - lr wd) - lr f(g) with f(g) = g / (|g| + eps), whose slope eps / (|g| + eps)^2 is at most 1 / eps
    (at g = 0). By the mean value theorem the gradients' difference moves the update by at most
    lr L |g_a - g_b|, L = eps / (min(|g_a|, |g_b|) + eps)^2 when g_a and g_b have the same sign, else 1 / eps (the
    segment between them crosses 0). Each engine also rounds: the moments, sqrt, the bias corrections, + eps, the
    quotient and the product with lr / bc1 (about 8 roundings of the update, |lr f| < lr), the decay p (1 - lr wd)
    and the final subtraction (about 4 roundings of |p|): 16 u lr + 8 u |p| for the two engines together. This is
    what makes Adam's first step sensitive: an entry with |g| near eps turns a rounding-level gradient difference
    into lr |g_a - g_b| / eps."""
    g_a, g_b, p = (np.asarray(a, dtype=np.float64) for a in (g_a, g_b, p))
    same_side = np.sign(g_a) * np.sign(g_b) > 0
    low = np.minimum(np.abs(g_a), np.abs(g_b))
    slope = np.where(same_side, eps / (low + eps) ** 2, 1 / eps)
    return lr * slope * np.abs(g_a - g_b) + 16 * u * lr + 8 * u * np.abs(p)


def torch_dtype(dtype):
    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dtype)]


def randomize_params(model, seed=0):
    """Non-trivial O(1) weights for comparison tests (the N(0, 0.02) init makes attention uniform and LayerNorm the
    identity affine map): matrices N(0, 1/in_features), LayerNorm weights 1 + N(0, 0.25), other vectors N(0, 0.25)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if p.ndim == 2:
            a = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        elif "ln" in name.split(".")[-2] and name.endswith("weight"):
            a = 1.0 + 0.5 * rng.standard_normal(p.shape)
        else:
            a = 0.5 * rng.standard_normal(p.shape)
        p.data[...] = a.astype(p.dtype)
    return model


def make_pair(cfg_kwargs, dtype=np.float64, seed=0, randomize=True):
    """(ours, ref): tinygrad_gpt GPT and reference GPT with identical weights in `dtype`."""
    cfg = GPTConfig(**cfg_kwargs)
    ours = GPT(cfg, seed=seed, dtype=dtype)
    if randomize:
        randomize_params(ours, seed + 1)
    sd = {k: np.array(p.data) for k, p in ours.named_parameters()}          # in `dtype`, not the float32 state_dict
    ref = reference.from_numpy_state_dict(reference.as_config(cfg), sd, dtype=torch_dtype(dtype))
    for k, v in ref.state_dict().items():
        assert np.array_equal(v.numpy(), sd[k]), f"weights differ after loading {k} into the reference"
    return ours, ref


def named_params(module):
    """{name: tensor} of a tinygrad_gpt module or a torch module."""
    return dict(module.named_parameters())


class RecordingMasks:
    """A dropout mask source (shape -> bool keep-mask) drawing from a seeded generator and remembering the masks."""

    def __init__(self, p, seed=0):
        self.p, self.rng, self.masks = p, np.random.default_rng(seed), []

    def __call__(self, shape):
        m = self.rng.random(shape) >= self.p
        self.masks.append(m)
        return m


class ReplayMasks:
    """A mask source handing out given masks in order (and checking the shapes asked for)."""

    def __init__(self, masks):
        self.masks, self.i = list(masks), 0

    def __call__(self, shape):
        m = self.masks[self.i]
        assert m.shape == tuple(shape), f"dropout call {self.i}: asked for shape {tuple(shape)}, recorded {m.shape}"
        self.i += 1
        return m


def shakespeare():
    """(token ids int64, vocab size) of data/tinyshakespeare.txt with the sorted-set character vocabulary."""
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text)), len(chars)
