"""The char-level GPT of "Let's build GPT" (SPEC sections 1-2), and its generation with a key/value cache.

Dimension names: B batch, t sequence length (<= T = block_size), C = n_embd, H = n_head, hs = C // H, V vocab.
"""
import dataclasses

import numpy as np

from . import functional as F
from .backend import device_of, get_device, to_host
from .nn import Dropout, Embedding, LayerNorm, Linear, Module
from .tensor import Tensor, no_grad


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.0
    bias: bool = True
    activation: str = "relu"

    def validate(self):
        """Raise ValueError with one line naming the first impossible setting."""
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        return self


class CausalSelfAttention(Module):
    def __init__(self, cfg, rng, dtype, device):
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.qkv = Linear(c, 3 * c, bias=False, rng=rng, dtype=dtype, device=device)  # W_qkv (3C, C)
        self.proj = Linear(c, c, bias=cfg.bias, rng=rng, dtype=dtype, device=device)
        self.attn_drop = Dropout(cfg.dropout)
        self.resid_drop = Dropout(cfg.dropout)

    def __call__(self, x, residual=None):                          # x (B, t, C)
        """The attention sublayer; with `residual`, returns residual + its output (in the output projection's pass
        when there is no residual dropout)."""
        qkv = self.qkv(x)                                          # (B, t, 3C)
        keep = None
        if self.attn_drop.active():
            b, t, _ = x.shape
            keep = self.attn_drop.mask((b, self.n_head, t, t), x.xp)   # (B, H, t, t)
        y = F.self_attention(qkv, self.n_head, keep, self.attn_drop.p)  # (B, t, C)
        if residual is not None and not self.resid_drop.active():
            return F.linear(y, self.proj.weight, self.proj.bias, residual=residual)
        out = self.resid_drop(self.proj(y))
        return out if residual is None else residual + out


class MLP(Module):
    def __init__(self, cfg, rng, dtype, device):
        c = cfg.n_embd
        self.fc = Linear(c, 4 * c, bias=cfg.bias, rng=rng, dtype=dtype, device=device)
        self.proj = Linear(4 * c, c, bias=cfg.bias, rng=rng, dtype=dtype, device=device)
        self.activation = cfg.activation
        self.drop = Dropout(cfg.dropout)

    def __call__(self, x, residual=None):                          # x (B, t, C)
        """The MLP sublayer; with `residual`, returns residual + its output (as CausalSelfAttention does)."""
        weights = (self.fc.weight, self.fc.bias, self.proj.weight, self.proj.bias)
        if residual is not None and not self.drop.active():
            # one node: residual + act(x W1^T + b1) W2^T + b2
            return F.mlp(x, *weights, residual=residual, activation=self.activation)
        out = self.drop(F.mlp(x, *weights, activation=self.activation))   # (B, t, C)
        return out if residual is None else residual + out


class Block(Module):
    def __init__(self, cfg, rng, dtype, device):
        self.ln1 = LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype, device=device)
        self.attn = CausalSelfAttention(cfg, rng, dtype, device)
        self.ln2 = LayerNorm(cfg.n_embd, bias=cfg.bias, dtype=dtype, device=device)
        self.mlp = MLP(cfg, rng, dtype, device)

    def __call__(self, x):
        x = self.attn(self.ln1(x), residual=x)                     # x + attn(ln1(x))
        return self.mlp(self.ln2(x), residual=x)                   # x + mlp(ln2(x))


class GPT(Module):
    def __init__(self, cfg, seed=0, device="cpu", dtype=np.float32):
        cfg.validate()
        self.config = cfg
        device = get_device(device)
        init = np.random.default_rng(seed)                         # weights are drawn on the host, then moved
        c = cfg.n_embd
        self.tok_emb = Embedding(cfg.vocab_size, c, rng=init, dtype=dtype, device=device)
        self.pos_emb = Embedding(cfg.block_size, c, rng=init, dtype=dtype, device=device)
        self.blocks = [Block(cfg, init, dtype, device) for _ in range(cfg.n_layer)]
        self.ln_f = LayerNorm(c, bias=cfg.bias, dtype=dtype, device=device)
        self.lm_head = Linear(c, cfg.vocab_size, bias=cfg.bias, rng=init, dtype=dtype, device=device)
        # dropout masks come from this generator, seeded from the model seed (its state goes into checkpoints)
        self.rng = np.random.default_rng([seed, 1])
        self._device_rng = None                                    # on cuda: a CuPy generator, seeded from self.rng
        self.set_mask_source(None)

    @property
    def device(self):
        return self.tok_emb.weight.device

    def dropouts(self):
        """Every Dropout, in the order a forward pass calls them (attention weights, attention output, MLP)."""
        out = []
        for blk in self.blocks:
            out += [blk.attn.attn_drop, blk.attn.resid_drop, blk.mlp.drop]
        return out

    def set_mask_source(self, fn):
        """fn(shape) -> bool keep-mask, called once per dropout site in forward order; None: this model's rng."""
        if fn is None:
            def fn(shape):
                xp = self.device.xp
                if xp is np:
                    return self.rng.random(shape, dtype=np.float32) >= self.config.dropout
                # on the GPU the mask is drawn there (no host-to-device copy per step), by a generator seeded once
                # from this model's rng (so from its seed, or from a checkpoint's rng state on resume)
                if self._device_rng is None:
                    self._device_rng = xp.random.default_rng(int(self.rng.integers(2 ** 63)))
                return self._device_rng.random(shape, dtype=np.float32) >= np.float32(self.config.dropout)
        for d in self.dropouts():
            d.source = fn

    def _check_idx(self, idx):
        data = idx.data if isinstance(idx, Tensor) else idx
        if self.device.xp is not np and device_of(data) == self.device:
            # already on the GPU (batches built there): shape and dtype are checked, the id range is not, as that
            # would read the batch back to the host (a synchronisation in every training step)
            if data.ndim != 2 or data.dtype.kind not in "iu" or data.shape[1] > self.config.block_size:
                self._check_idx(np.zeros(data.shape, data.dtype))  # raises the error the host check gives
            return data
        idx = np.asarray(to_host(data))
        if idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ValueError(f"idx must be an integer array of shape (B, t), got {idx.dtype} {idx.shape}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {self.config.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got [{idx.min()}, {idx.max()}]")
        return self.device.xp.asarray(idx)

    def __call__(self, idx, targets=None):
        idx = self._check_idx(idx)                                 # (B, t)
        x = F.embedding(idx, self.tok_emb.weight, self.pos_emb.weight)   # (B, t, C)
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))                        # (B, t, V)
        if targets is None:
            return logits, None
        targets = self._check_idx(targets)
        return logits, F.cross_entropy(logits, targets)

    # ---- generation ----------------------------------------------------------------------------------------------
    def _decode(self, idx, cache, pos0):
        """Graph-free forward of new tokens idx (B, n) at absolute positions pos0.. given the cached keys and values
        of positions < pos0 (cache: per block [k, v] arrays (B, H, T, hs), filled up to pos0). Returns the logits of
        the last position (B, V) and fills the cache up to pos0 + n."""
        xp, n = self.device.xp, idx.shape[1]
        x = F.embed_forward(idx, self.tok_emb.weight.data, self.pos_emb.weight.data, pos0)   # (B, n, C)
        for blk, (kc, vc) in zip(self.blocks, cache):
            a = blk.attn
            h, _ = F.layer_norm_forward(x, blk.ln1.weight.data, _data(blk.ln1.bias), blk.ln1.eps)
            q, k, v = F.split_heads(h @ a.qkv.weight.data.T, a.n_head)     # (B, H, n, hs) each
            kc[:, :, pos0:pos0 + n] = k
            vc[:, :, pos0:pos0 + n] = v
            y, _ = F.attention_forward(xp.ascontiguousarray(q), kc[:, :, :pos0 + n], vc[:, :, :pos0 + n])
            y = F.merge_heads(y) @ a.proj.weight.data.T                   # (B, n, C)
            if a.proj.bias is not None:
                y += a.proj.bias.data
            x = x + y
            h, _ = F.layer_norm_forward(x, blk.ln2.weight.data, _data(blk.ln2.bias), blk.ln2.eps)
            h = h @ blk.mlp.fc.weight.data.T + _zero_if_none(blk.mlp.fc.bias)  # (B, n, 4C)
            h = xp.maximum(h, 0) if blk.mlp.activation == "relu" else Tensor(h).gelu().data
            x = x + h @ blk.mlp.proj.weight.data.T + _zero_if_none(blk.mlp.proj.bias)
        x, _ = F.layer_norm_forward(x[:, -1], self.ln_f.weight.data, _data(self.ln_f.bias), self.ln_f.eps)
        return x @ self.lm_head.weight.data.T + _zero_if_none(self.lm_head.bias)   # (B, V)

    def generate_iter(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True,
                      window="slide"):
        """Yield each new token (B,) of autoregressive sampling. Runs in eval mode under no_grad.

        The model sees at most block_size tokens. window="slide" (the lecture's rule): the context is always the
        last block_size tokens. Once the context is full every position shifts at each new token, so the cache
        must be rebuilt from the whole window for every token: the key/value cache speeds up only the tokens
        before that. window="shift": when the context is full the oldest quarter is dropped and the rest re-read
        once (positions restart at 0), so the cache keeps paying off on long generations, at the price of a
        context that varies between 3/4 and all of block_size.
        With use_cache=True each new token costs one position's forward pass (while the window allows); with
        use_cache=False the whole context is recomputed for every token. Both follow the same window rule and
        the same random draws, so they produce the same tokens.
        """
        if window not in ("slide", "shift"):
            raise ValueError(f"window must be 'slide' or 'shift', got {window!r}")
        cfg = self.config
        was_training = self.training
        self.eval()
        rng = np.random.default_rng(seed)
        xp = self.device.xp
        tokens = np.asarray(to_host(idx), dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"generate needs a (B, t) context with t >= 1, got shape {tokens.shape}")
        self._check_idx(tokens[:, -cfg.block_size:])
        keep = cfg.block_size if window == "slide" else max(1, cfg.block_size - max(1, cfg.block_size // 4))
        ctx = tokens[:, -cfg.block_size:]                          # (B, n): what the model attends to now
        cache, filled = None, 0
        try:
            with no_grad():
                for _ in range(max_new_tokens):
                    if ctx.shape[1] > cfg.block_size:              # window full: keep the most recent tokens
                        ctx = ctx[:, -keep:]
                        cache, filled = None, 0
                    if use_cache:
                        if cache is None:
                            cache = self._new_cache(ctx.shape[0])
                        logits = self._decode(xp.asarray(ctx[:, filled:]), cache, filled)   # (B, V)
                        filled = ctx.shape[1]
                    else:
                        logits, _ = self(ctx)
                        logits = logits.data[:, -1]                # (B, V)
                    nxt = sample_next(to_host(logits), temperature, top_k, rng)   # (B,)
                    ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
                    yield nxt
        finally:
            self.train(was_training)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True,
                 window="slide"):
        """(B, t) integer context -> (B, t + max_new_tokens) with the sampled continuation appended."""
        idx = np.asarray(to_host(idx.data if isinstance(idx, Tensor) else idx), dtype=np.int64)
        new = list(self.generate_iter(idx, max_new_tokens, temperature, top_k, seed, use_cache, window))
        if not new:
            return idx
        return np.concatenate([idx, np.stack(new, axis=1)], axis=1)

    def _new_cache(self, batch):
        cfg, xp = self.config, self.device.xp
        hs = cfg.n_embd // cfg.n_head
        shape = (batch, cfg.n_head, cfg.block_size, hs)            # (B, H, T, hs)
        dtype = self.tok_emb.weight.dtype
        return [(xp.zeros(shape, dtype), xp.zeros(shape, dtype)) for _ in self.blocks]


def sample_next(logits, temperature, top_k, rng):
    """One token per row from logits (B, V): greedy at temperature 0, else softmax(logits / T) restricted to the
    top_k largest, sampled by inverse CDF with one uniform draw per row (so equal logits give equal tokens)."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]   # k-th largest per row
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = rng.random(len(z))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), z.shape[-1] - 1).astype(np.int64)


def _data(t):
    return None if t is None else t.data


def _zero_if_none(t):
    return 0.0 if t is None else t.data


def count_parameters(cfg):
    """The parameter count of a GPT with this config, without building it."""
    c, v, t, l = cfg.n_embd, cfg.vocab_size, cfg.block_size, cfg.n_layer
    b = 1 if cfg.bias else 0
    per_block = 2 * (c + b * c) + 3 * c * c + c * c + b * c + 4 * c * c + b * 4 * c + 4 * c * c + b * c
    return v * c + t * c + l * per_block + (c + b * c) + v * c + b * v

