"""The lecture GPT in plain torch: the oracle that tinygrad_gpt is tested against.

It follows ../shared/SPEC.md sections 1-2 line by line and uses the same parameter names and layouts as
tinygrad_gpt, so a state dict moves between the two engines with a plain loop: no renaming, no transposes.

Two choices serve the tests rather than speed:
- attention is written out by hand (no `scaled_dot_product_attention`), so the attention weights exist as a
  tensor that dropout can act on;
- every dropout goes through `Dropout` below, which can take its keep-masks from a function
  (`GPT.set_mask_source`), so both engines can be handed identical masks.

Dimension names: B batch, t sequence length (t <= T = block_size), C n_embd, H n_head, hs = C // H head size,
V vocab_size.
"""
import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("relu", "gelu")


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_embd: int
    n_head: int
    n_layer: int
    dropout: float = 0.0
    bias: bool = True          # False: no bias in any Linear or LayerNorm (qkv never has one)
    activation: str = "relu"   # "relu" or "gelu" (tanh approximation, as GPT-2)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


def as_config(cfg):
    """A reference GPTConfig from a GPTConfig, a dict, or any object with the same fields (e.g. tinygrad_gpt's)."""
    if isinstance(cfg, GPTConfig):
        return cfg
    names = [f.name for f in dataclasses.fields(GPTConfig)]
    if isinstance(cfg, dict):
        return GPTConfig(**{k: cfg[k] for k in names if k in cfg})
    return GPTConfig(**{k: getattr(cfg, k) for k in names if hasattr(cfg, k)})


class Dropout(nn.Module):
    """Inverted dropout whose keep-mask can come from outside.

    `mask_source(shape) -> numpy bool array` (True = keep) is called once per forward, only in training mode
    with p > 0; the output is then `x * mask / (1 - p)`. Without a mask source this is torch's own dropout.
    """

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.mask_source = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if self.mask_source is None:
            return F.dropout(x, self.p, training=True)
        mask = np.asarray(self.mask_source(tuple(x.shape)), dtype=bool)
        if mask.shape != tuple(x.shape):
            raise ValueError(f"mask source returned shape {mask.shape} for a dropout on shape {tuple(x.shape)}")
        mask = torch.from_numpy(mask).to(device=x.device, dtype=x.dtype)
        return x * mask / (1.0 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(C, 3 * C, bias=False)   # rows [0:C] = q, [C:2C] = k, [2C:3C] = v
        self.proj = nn.Linear(C, C, bias=cfg.bias)
        self.attn_drop = Dropout(cfg.dropout)         # dropout site 1: the attention weights
        self.resid_drop = Dropout(cfg.dropout)        # dropout site 2: the attention output, after proj

    def forward(self, x):
        B, t, C = x.shape
        H, hs = self.n_head, C // self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)                      # 3 x (B, t, C)
        # head j is columns j*hs:(j+1)*hs, so splitting C into (H, hs) puts head j at index j
        q = q.view(B, t, H, hs).transpose(1, 2)                    # (B, H, t, hs)
        k = k.view(B, t, H, hs).transpose(1, 2)                    # (B, H, t, hs)
        v = v.view(B, t, H, hs).transpose(1, 2)                    # (B, H, t, hs)
        att = (q @ k.transpose(-2, -1)) * hs ** -0.5               # (B, H, t, t), scaled by the HEAD size
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(diagonal=1)
        att = att.masked_fill(future, float("-inf"))               # position i sees positions <= i only
        att = F.softmax(att, dim=-1)
        att = self.attn_drop(att)
        y = att @ v                                                # (B, H, t, hs)
        y = y.transpose(1, 2).contiguous().view(B, t, C)           # (B, t, C), heads concatenated
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.n_embd
        self.fc = nn.Linear(C, 4 * C, bias=cfg.bias)
        self.proj = nn.Linear(4 * C, C, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)              # dropout site 3: the MLP output
        self.activation = cfg.activation

    def forward(self, x):
        h = self.fc(x)                                                   # (B, t, 4C)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h, approximate="tanh")
        return self.drop(self.proj(h))                                   # (B, t, C)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg, seed=0, dtype=torch.float32):
        super().__init__()
        cfg = as_config(cfg)
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=1e-5, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.bias)
        self._init_weights(seed)
        self.to(dtype)

    @torch.no_grad()
    def _init_weights(self, seed):
        """Linear weights and embeddings ~ N(0, 0.02), biases 0, LayerNorm weight 1 (SPEC section 1)."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02, generator=g)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_mask_source(self, fn):
        """Every dropout site takes its keep-masks from `fn(shape) -> numpy bool array` (None: torch's dropout).

        Calls come in forward order, three per block: attention weights (B, H, t, t), attention output
        (B, t, C), MLP output (B, t, C); only in training mode with dropout > 0.
        """
        for m in self.modules():
            if isinstance(m, Dropout):
                m.mask_source = fn

    def _as_index(self, a):
        a = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
        return a.to(device=self.lm_head.weight.device, dtype=torch.long)

    def forward(self, idx, targets=None):
        """idx, targets: integer arrays (B, t) (NumPy or torch). Returns (logits (B, t, V), mean loss or None)."""
        idx = self._as_index(idx)
        B, t = idx.shape
        if t > self.cfg.block_size:
            raise ValueError(f"sequence length {t} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)                 # (B, t, C)
        for block in self.blocks:
            x = block(x)                                           # (B, t, C)
        logits = self.lm_head(self.ln_f(x))                        # (B, t, V)
        loss = None
        if targets is not None:
            targets = self._as_index(targets)
            loss = F.cross_entropy(logits.view(B * t, -1), targets.view(B * t))
        return logits, loss

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """torch's load_state_dict; NumPy arrays and tinygrad_gpt tensors (a tinygrad_gpt state dict) are accepted as
        values."""
        state_dict = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(v)))
                      for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None):
        """Append max_new_tokens tokens to idx (B, t); greedy at temperature 0. Returns a NumPy array."""
        was_training = self.training
        self.eval()
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        idx = self._as_index(idx)
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :]                                  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)              # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=g).to(idx.device)
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx.cpu().numpy()


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def numpy_state_dict(model, dtype=None):
    """{name: np.ndarray} in the model's dtype (or `dtype`), the layout tinygrad_gpt's load_state_dict takes."""
    sd = {}
    for k, v in model.state_dict().items():
        a = v.detach().cpu().numpy().copy()
        sd[k] = a.astype(dtype) if dtype is not None else a
    return sd


def from_numpy_state_dict(cfg, sd, dtype=torch.float64):
    """A reference GPT of config `cfg` holding the weights of `sd` ({name: np.ndarray}), in `dtype`."""
    model = GPT(cfg, dtype=dtype)
    model.load_state_dict(sd)
    return model


def load_safetensors(path):
    """The state dict in `model.safetensors` as {name: torch.Tensor}, names as saved (no renaming).

    `path` is the file or a checkpoint directory holding it. Use: `model.load_state_dict(load_safetensors(path))`.
    """
    from safetensors.torch import load_file
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    return load_file(path)


def make_adamw(model, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.AdamW as in SPEC section 3. `model` is a module, or parameters / parameter groups."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
