"""The GPT training step in JAX: the model as a function of a dict of SPEC-named arrays, the loss's gradient by
jax.value_and_grad, and AdamW written out (SPEC section 3, torch's semantics), the whole step under one jax.jit.
The parameters and moments are donated to the step (their buffers are reused in place, as a JAX training loop
does). No optax: the update is five lines.

Dimension names: B batch, T time, C n_embd, H n_head, hs = C // H, V vocab.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

LR, BETA1, BETA2, EPS, WEIGHT_DECAY = 1e-3, 0.9, 0.999, 1e-8, 0.01


def layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)          # biased variance
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


def gpt_loss(p, idx, targets, n_layer, n_head):
    """Mean cross-entropy of the GPT of SPEC section 1 (dropout 0) with parameters p."""
    B, T = idx.shape
    C = p["tok_emb.weight"].shape[1]
    H, hs = n_head, C // n_head
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    x = p["tok_emb.weight"][idx] + p["pos_emb.weight"][:T]                  # (B, T, C)
    for i in range(n_layer):
        b = f"blocks.{i}."
        h = layer_norm(x, p[b + "ln1.weight"], p[b + "ln1.bias"])
        qkv = h @ p[b + "attn.qkv.weight"].T                               # (B, T, 3C)
        q, k, v = (a.reshape(B, T, H, hs).transpose(0, 2, 1, 3) for a in jnp.split(qkv, 3, axis=-1))  # (B, H, T, hs)
        att = (q @ k.transpose(0, 1, 3, 2)) * hs ** -0.5                   # (B, H, T, T)
        att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)               # (B, T, C)
        x = x + y @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"]
        h = layer_norm(x, p[b + "ln2.weight"], p[b + "ln2.bias"])
        h = jax.nn.relu(h @ p[b + "mlp.fc.weight"].T + p[b + "mlp.fc.bias"])  # (B, T, 4C)
        x = x + h @ p[b + "mlp.proj.weight"].T + p[b + "mlp.proj.bias"]
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"])
    logits = x @ p["lm_head.weight"].T + p["lm_head.bias"]                 # (B, T, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


def adamw(p, g, m, v, t):
    """One AdamW update of one array, step t (from 1): decay, moments, bias-corrected step."""
    p = p - LR * WEIGHT_DECAY * p
    m = BETA1 * m + (1 - BETA1) * g
    v = BETA2 * v + (1 - BETA2) * g * g
    p = p - LR * (m / (1 - BETA1 ** t)) / (jnp.sqrt(v / (1 - BETA2 ** t)) + EPS)
    return p, m, v


@functools.partial(jax.jit, static_argnames=("n_layer", "n_head"), donate_argnums=(0, 1, 2))
def train_step(params, m, v, t, idx, targets, n_layer, n_head):
    loss, grads = jax.value_and_grad(gpt_loss)(params, idx, targets, n_layer, n_head)
    t = t + 1
    new = {k: adamw(params[k], grads[k], m[k], v[k], t) for k in params}
    return ({k: u[0] for k, u in new.items()}, {k: u[1] for k, u in new.items()},
            {k: u[2] for k, u in new.items()}, t, loss)


class JaxGPT:
    tracemalloc = False

    def __init__(self, bc, state_dict, device="cpu"):
        self.name, self.bc = "jax", bc
        self.params = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in state_dict.items()}
        self.m = {k: jnp.zeros_like(a) for k, a in self.params.items()}
        self.v = {k: jnp.zeros_like(a) for k, a in self.params.items()}
        self.t = jnp.zeros((), dtype=jnp.float32)

    def versions(self):
        import jaxlib
        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend()}

    def load_batch(self, x, y):
        self.x, self.y = jnp.asarray(x, dtype=jnp.int32), jnp.asarray(y, dtype=jnp.int32)   # (B, T)

    def step(self):
        self.params, self.m, self.v, self.t, loss = train_step(self.params, self.m, self.v, self.t, self.x, self.y,
                                                               n_layer=self.bc.n_layer, n_head=self.bc.n_head)
        return loss

    def sync(self):
        jax.block_until_ready((self.params, self.m, self.v))

    def loss_float(self, loss):
        return float(np.asarray(loss))
