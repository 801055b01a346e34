"""The GPT training step in HIPS autograd: the model as NumPy code (autograd.numpy) on a dict of SPEC-named arrays,
differentiated by autograd.value_and_grad, and AdamW in plain NumPy (SPEC section 3, torch's semantics). autograd
traces every call anew (no compilation), so its step is NumPy's operations plus autograd's bookkeeping.

Dimension names: B batch, T time, C n_embd, H n_head, hs = C // H, V vocab.
"""
import importlib.metadata

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad

LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-3, 0.9, 0.999, 1e-8, 0.01


def layer_norm(x, w, b, eps=1e-5):
    mean = anp.mean(x, axis=-1, keepdims=True)
    var = anp.mean((x - mean) ** 2, axis=-1, keepdims=True)        # biased variance
    return (x - mean) / anp.sqrt(var + eps) * w + b


def softmax(a, axis):
    e = anp.exp(a - anp.max(a, axis=axis, keepdims=True))
    return e / anp.sum(e, axis=axis, keepdims=True)


def gpt_loss(p, idx, targets, n_layer, n_head, causal=True):
    """Mean cross-entropy of the GPT of SPEC section 1 (dropout 0) with parameters p. causal=False (no mask) exists
    for benchmarks/check_power.py, which shows that the same-math check catches it."""
    B, T = idx.shape
    C = p["tok_emb.weight"].shape[1]
    H, hs = n_head, C // n_head
    future = np.triu(np.ones((T, T), dtype=bool), k=1) & causal            # (T, T) keys after the query
    x = p["tok_emb.weight"][idx] + p["pos_emb.weight"][:T]                 # (B, T, C)
    for i in range(n_layer):
        b = f"blocks.{i}."
        h = layer_norm(x, p[b + "ln1.weight"], p[b + "ln1.bias"])
        qkv = anp.dot(h, p[b + "attn.qkv.weight"].T)                      # (B, T, 3C)
        q, k, v = (anp.transpose(anp.reshape(qkv[:, :, j * C:(j + 1) * C], (B, T, H, hs)), (0, 2, 1, 3))
                   for j in range(3))                                      # (B, H, T, hs) each
        att = anp.matmul(q, anp.transpose(k, (0, 1, 3, 2))) * hs ** -0.5   # (B, H, T, T)
        att = softmax(anp.where(future, -np.inf, att), axis=-1)
        y = anp.reshape(anp.transpose(anp.matmul(att, v), (0, 2, 1, 3)), (B, T, C))   # (B, T, C)
        x = x + anp.dot(y, p[b + "attn.proj.weight"].T) + p[b + "attn.proj.bias"]
        h = layer_norm(x, p[b + "ln2.weight"], p[b + "ln2.bias"])
        h = anp.maximum(anp.dot(h, p[b + "mlp.fc.weight"].T) + p[b + "mlp.fc.bias"], 0.0)   # (B, T, 4C)
        x = x + anp.dot(h, p[b + "mlp.proj.weight"].T) + p[b + "mlp.proj.bias"]
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    logits = anp.reshape(anp.dot(x, p["lm_head.weight"].T) + p["lm_head.bias"], (B * T, -1))   # (B*T, V)
    shifted = logits - anp.max(logits, axis=1, keepdims=True)
    logp = shifted - anp.log(anp.sum(anp.exp(shifted), axis=1, keepdims=True))
    return -anp.mean(logp[np.arange(B * T), targets.reshape(-1)])


class AutogradGPT:
    tracemalloc = True

    def __init__(self, bc, state_dict, device="cpu"):
        self.name, self.bc = "autograd", bc
        self.params = {k: np.array(v, dtype=np.float32) for k, v in state_dict.items()}
        self.m = {k: np.zeros_like(a) for k, a in self.params.items()}
        self.v = {k: np.zeros_like(a) for k, a in self.params.items()}
        self.t = 0
        self.loss_and_grad = value_and_grad(gpt_loss)

    def versions(self):
        return {"autograd": importlib.metadata.version("autograd"), "numpy": np.__version__}

    def load_batch(self, x, y):
        self.x, self.y = x, y

    def step(self):
        loss, grads = self.loss_and_grad(self.params, self.x, self.y, self.bc.n_layer, self.bc.n_head)
        self.t += 1
        bc1, bc2 = 1 - BETA1 ** self.t, 1 - BETA2 ** self.t
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            p -= np.float32(LR * WEIGHT_DECAY) * p
            m *= np.float32(BETA1)
            m += np.float32(1 - BETA1) * g
            v *= np.float32(BETA2)
            v += np.float32(1 - BETA2) * g * g
            p -= np.float32(LR / bc1) * m / (np.sqrt(v / np.float32(bc2)) + np.float32(EPS))
        return loss

    def sync(self):
        pass

    def loss_float(self, loss):
        return float(loss)
