"""The char-level GPT of "Let's build GPT" (SPEC sections 1-2), and its generation with a key/value cache.

The modules below are the one description of the model: training runs them, generation runs the same blocks with a
key/value cache argument, and the parameter layout (names, shapes, counts; what a checkpoint is checked against) is
read from a GPT built with shape-only placeholders (parameter_shapes, count_parameters), never restated.

Dimension names: B batch, t sequence length (<= T = block_size), C = n_embd, H = n_head, hs = C // H, V vocab.
"""
import dataclasses

import numpy as np

from . import fused as F
from .backend import device_of, get_device, to_host
from .nn import Dropout, Embedding, Init, LayerNorm, Linear, Module, ModuleList, ShapeOnly
from .tensor import Tensor


def setting(default, help, **argparse):
    """A config field with its command-line help (and argparse's choices or metavar): cli.py makes a flag of it."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse})


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int = setting(65, "characters in the vocabulary (training: from the corpus)")
    block_size: int = setting(32, "context length T")
    n_embd: int = setting(64, "embedding width C")
    n_head: int = setting(4, "attention heads per block (n_embd must divide by it)")
    n_layer: int = setting(4, "transformer blocks")
    dropout: float = setting(0.0, "dropout probability after attention, projections and the MLP")
    bias: bool = setting(True, "biases in Linear and LayerNorm layers")
    activation: str = setting("relu", "MLP activation", choices=("relu", "gelu"))

    def validate(self):
        """Raise ValueError with one line naming the first impossible setting."""
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not isinstance(self.dropout, (int, float, np.floating)) or isinstance(self.dropout, bool):
            raise ValueError(f"dropout must be a number, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ValueError(f"bias must be True or False, got {self.bias!r}")
        if self.activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {self.activation!r}")
        return self


class KVCache:
    """The keys and values one attention layer has computed, for later queries to attend to: k, v (B, H, T, hs),
    positions 0:pos filled. GPT.new_cache makes one per block."""

    def __init__(self, k, v):
        self.k, self.v, self.pos = k, v, 0

    def extend(self, k, v):
        """Store the keys and values (B, H, n, hs) of the next n positions; returns those of every position so far,
        (B, H, pos + n, hs) views of the cache."""
        p, n = self.pos, k.shape[2]
        self.k[:, :, p:p + n] = k
        self.v[:, :, p:p + n] = v
        self.pos = p + n
        return self.k[:, :, :p + n], self.v[:, :, :p + n]


class CausalSelfAttention(Module):
    def __init__(self, cfg, init):
        super().__init__()
        c = cfg.n_embd
        self.n_head = cfg.n_head
        self.qkv = Linear(c, 3 * c, bias=False, init=init)        # W_qkv (3C, C)
        self.proj = Linear(c, c, bias=cfg.bias, init=init)
        self.attn_drop = Dropout(cfg.dropout)
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x, residual=None, cache=None):               # x (B, t, C)
        """The attention sublayer; with `residual`, returns residual + its output (in the output projection's pass
        when there is no residual dropout). With `cache` (a KVCache; generation, under no_grad) the t positions of x
        come after the cache's: they attend to its keys and values as well, and add theirs to it."""
        qkv = self.qkv(x)                                          # (B, t, 3C)
        if cache is not None:
            y = self._attend_cached(qkv, cache)                    # (B, t, C)
        else:
            keep = None
            if self.attn_drop.active():
                b, t, _ = x.shape
                keep = self.attn_drop.mask((b, self.n_head, t, t), x.xp)   # (B, H, t, t)
            y = F.self_attention(qkv, self.n_head, keep, self.attn_drop.p)  # (B, t, C)
        if residual is not None and not self.resid_drop.active():
            return F.linear(y, self.proj.weight, self.proj.bias, residual=residual)
        out = self.resid_drop(self.proj(y))
        return out if residual is None else residual + out

    def _attend_cached(self, qkv, cache):
        """The attention core for new positions against the cached ones and themselves, graph-free: the new queries
        (the last t positions) over every key so far, which is the causal mask attention_forward applies."""
        if qkv.requires_grad:
            raise RuntimeError("the key/value cache is for generation: run the model under no_grad()")
        if self.attn_drop.active():
            raise RuntimeError("the key/value cache is for generation: put the model in eval mode (model.eval())")
        q, k, v = F.split_heads(qkv.data, self.n_head)             # (B, H, t, hs) views
        k, v = cache.extend(k, v)                                  # (B, H, pos + t, hs)
        y, _ = F.attention_forward(qkv.xp.ascontiguousarray(q), k, v)   # (B, H, t, hs)
        return Tensor._make(F.merge_heads(y), (qkv,), None, "cached_attention")   # (B, t, C), no graph

    def new_cache(self, batch, length):
        """An empty KVCache for `batch` sequences of up to `length` positions, in this layer's dtype and device."""
        w = self.qkv.weight                                        # (3C, C)
        shape = (batch, self.n_head, length, w.shape[1] // self.n_head)   # (B, H, T, hs)
        return KVCache(w.xp.zeros(shape, w.dtype), w.xp.zeros(shape, w.dtype))


class MLP(Module):
    def __init__(self, cfg, init):
        super().__init__()
        c = cfg.n_embd
        self.fc = Linear(c, 4 * c, bias=cfg.bias, init=init)
        self.proj = Linear(4 * c, c, bias=cfg.bias, init=init)
        self.activation = cfg.activation
        self.drop = Dropout(cfg.dropout)

    def forward(self, x, residual=None):                           # x (B, t, C)
        """The MLP sublayer; with `residual`, returns residual + its output (as CausalSelfAttention does)."""
        weights = (self.fc.weight, self.fc.bias, self.proj.weight, self.proj.bias)
        if residual is not None and not self.drop.active():
            # one node: residual + act(x W1^T + b1) W2^T + b2
            return F.mlp(x, *weights, residual=residual, activation=self.activation)
        out = self.drop(F.mlp(x, *weights, activation=self.activation))   # (B, t, C)
        return out if residual is None else residual + out


class Block(Module):
    def __init__(self, cfg, init):
        super().__init__()
        self.ln1 = LayerNorm(cfg.n_embd, bias=cfg.bias, init=init)
        self.attn = CausalSelfAttention(cfg, init)
        self.ln2 = LayerNorm(cfg.n_embd, bias=cfg.bias, init=init)
        self.mlp = MLP(cfg, init)

    def forward(self, x, cache=None):
        x = self.attn(self.ln1(x), residual=x, cache=cache)        # x + attn(ln1(x))
        return self.mlp(self.ln2(x), residual=x)                   # x + mlp(ln2(x))


class GPT(Module):
    def __init__(self, cfg, seed=0, device="cpu", dtype=np.float32, init=None):
        """init: where the parameters come from (nn.Init); None: drawn from default_rng(seed) on the host in
        `dtype`, then moved to `device`. nn.ShapeOnly() builds the layout alone (see parameter_shapes)."""
        super().__init__()
        cfg.validate()
        self.config = cfg
        init = init or Init(np.random.default_rng(seed), dtype, get_device(device))
        c = cfg.n_embd
        self.tok_emb = Embedding(cfg.vocab_size, c, init=init)
        self.pos_emb = Embedding(cfg.block_size, c, init=init)
        self.blocks = ModuleList([Block(cfg, init) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(c, bias=cfg.bias, init=init)
        self.lm_head = Linear(c, cfg.vocab_size, bias=cfg.bias, init=init)
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

    def _check_idx(self, idx, pos0=0):
        """idx (B, t) as an integer array on the model's device, for positions pos0 .. pos0 + t - 1."""
        data = idx.data if isinstance(idx, Tensor) else idx
        if self.device.xp is not np and device_of(data) == self.device:
            # already on the GPU (batches built there): shape and dtype are checked, the id range is not, as that
            # would read the batch back to the host (a synchronisation in every training step)
            if data.ndim != 2 or data.dtype.kind not in "iu" or pos0 + data.shape[1] > self.config.block_size:
                self._check_idx(np.zeros(data.shape, data.dtype), pos0)   # raises the error the host check gives
            return data
        idx = np.asarray(to_host(data))
        if idx.ndim != 2 or idx.dtype.kind not in "iu":
            raise ValueError(f"idx must be an integer array of shape (B, t), got {idx.dtype} {idx.shape}")
        if pos0 + idx.shape[1] > self.config.block_size:
            after = f" after {pos0} cached positions" if pos0 else ""
            raise ValueError(f"sequence length {idx.shape[1]}{after} exceeds block_size {self.config.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got [{idx.min()}, {idx.max()}]")
        return self.device.xp.asarray(idx)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, t, V) of tokens idx (B, t), and the mean cross-entropy against targets (B, t) if given.
        cache: from new_cache (generation, under no_grad): idx are the positions after those already in the cache,
        which every block attends to as well and extends with the new keys and values."""
        if cache is None:
            idx = self._check_idx(idx)                             # (B, t)
            x = F.embedding(idx, self.tok_emb.weight, self.pos_emb.weight)   # (B, t, C)
            caches = [None] * len(self.blocks)
        else:
            if len(cache) != len(self.blocks):
                raise ValueError(f"a cache of {len(cache)} layers for a model of {len(self.blocks)} blocks")
            pos0 = cache[0].pos
            idx = self._check_idx(idx, pos0)                       # (B, t) at positions pos0 .. pos0 + t - 1
            x = self.tok_emb(idx) + self.pos_emb.weight[pos0:pos0 + idx.shape[1]]   # (B, t, C)
            caches = cache
        for blk, layer_cache in zip(self.blocks, caches, strict=True):
            x = blk(x, cache=layer_cache)
        logits = self.lm_head(self.ln_f(x))                        # (B, t, V)
        if targets is None:
            return logits, None
        targets = self._check_idx(targets)
        return logits, F.cross_entropy(logits, targets)

    # ---- generation ----------------------------------------------------------------------------------------------
    def new_cache(self, batch):
        """An empty key/value cache for `batch` sequences: one KVCache of block_size positions per block."""
        return [blk.attn.new_cache(batch, self.config.block_size) for blk in self.blocks]

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
        rng = np.random.default_rng(seed)
        tokens = np.asarray(to_host(idx), dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise ValueError(f"generate needs a (B, t) context with t >= 1, got shape {tokens.shape}")
        self._check_idx(tokens[:, -cfg.block_size:])
        keep = cfg.block_size if window == "slide" else max(1, cfg.block_size - max(1, cfg.block_size // 4))
        ctx = tokens[:, -cfg.block_size:]                          # (B, n): what the model attends to now
        cache = None
        with self.evaluating():
            for _ in range(max_new_tokens):
                if ctx.shape[1] > cfg.block_size:                  # window full: keep the most recent tokens
                    ctx = ctx[:, -keep:]
                    cache = None                                   # positions changed: the cache starts over
                if use_cache:
                    if cache is None:
                        cache = self.new_cache(ctx.shape[0])
                    logits, _ = self(ctx[:, cache[0].pos:], cache=cache)   # the tokens not yet cached
                else:
                    logits, _ = self(ctx)                          # (B, n, V)
                nxt = sample_next(to_host(logits.data[:, -1]), temperature, top_k, rng)   # (B,)
                ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
                yield nxt

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None, use_cache=True,
                 window="slide"):
        """(B, t) integer context -> (B, t + max_new_tokens) with the sampled continuation appended."""
        idx = np.asarray(to_host(idx.data if isinstance(idx, Tensor) else idx), dtype=np.int64)
        new = list(self.generate_iter(idx, max_new_tokens, temperature, top_k, seed, use_cache, window))
        if not new:
            return idx
        return np.concatenate([idx, np.stack(new, axis=1)], axis=1)


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


def parameter_shapes(cfg):
    """{name: shape} of every parameter of a GPT with this config, in the model's order, read from a GPT built with
    shape-only placeholders (nn.ShapeOnly: no weights allocated, none drawn)."""
    return {name: tuple(p.shape) for name, p in GPT(cfg, init=ShapeOnly()).named_parameters()}


def count_parameters(cfg):
    """The parameter count of a GPT with this config, without allocating one (see parameter_shapes)."""
    return GPT(cfg, init=ShapeOnly()).num_parameters()
