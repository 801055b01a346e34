"""The two torch models tinygrad_gpt is timed against, both the GPT of SPEC section 1 (dropout 0 in the benchmarks).

LectureGPT: the model as the lecture writes it (karpathy/ng-video-lecture `gpt.py`), from benchmarks/lecture_gpt.py
    (the file lecture_bench.py runs under both engines): one `Head` module per head with its own key/query/value
    Linear, a `tril` buffer, masked_fill and softmax, heads concatenated in `MultiHeadAttention`, a `FeedForward`
    Sequential; attention scaled by the head size (`k.shape[-1]**-0.5`, as in the lecture's final gpt.py).
FusedGPT:   the same model written for speed in plain torch: one qkv Linear per block and
    `F.scaled_dot_product_attention(is_causal=True)`; its parameter names are SPEC section 2's.

Both load a tinygrad_gpt state dict (`load_spec_state_dict`), so every engine of a benchmark starts from the same
weights and computes the same loss. `layer_modules()` names the pieces that the per-layer benchmark times.

Dimension names: B batch, T time (<= block_size), C n_embd, H n_head, hs = C // H, V vocab_size.
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks import lecture_gpt


def _init_weights(module):
    """The lecture's init: Linear and Embedding weights ~ N(0, 0.02), biases 0 (LayerNorm keeps 1 and 0)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def _as_tensor(a):
    return torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a


# ---- the lecture's model -----------------------------------------------------------------------------------------

class LectureGPT(lecture_gpt.GPTLanguageModel):
    """The lecture's GPTLanguageModel (benchmarks/lecture_gpt.py, the lecture_bench's model file), its sizes from a
    BenchConfig-like `cfg`."""

    def __init__(self, cfg):
        super().__init__(lecture_gpt.Hyperparameters(vocab_size=cfg.vocab_size, block_size=cfg.block_size,
                                                     n_embd=cfg.n_embd, n_head=cfg.n_head, n_layer=cfg.n_layer,
                                                     dropout=cfg.dropout))
        self.cfg = cfg

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        """The lecture's sampling (full recomputation on the last block_size tokens for every new token), no graph."""
        return super().generate(idx, max_new_tokens)

    def layer_modules(self):
        blk = self.blocks[0]
        return {"tok_emb": self.token_embedding_table, "pos_emb": self.position_embedding_table,
                "layernorm": blk.ln1, "attention": blk.sa, "mlp": blk.ffwd, "lm_head": self.lm_head}

    @torch.no_grad()
    def load_spec_state_dict(self, sd):
        """Weights from a SPEC-named state dict (tinygrad_gpt's): W_qkv rows [0:C] are the queries, [C:2C] the keys,
        [2C:3C] the values, and head j owns rows j*hs:(j+1)*hs of each third."""
        sd = {k: _as_tensor(v) for k, v in sd.items()}
        C, H = self.cfg.n_embd, self.cfg.n_head
        hs = C // H
        out = {"token_embedding_table.weight": sd["tok_emb.weight"],
               "position_embedding_table.weight": sd["pos_emb.weight"],
               "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"],
               "lm_head.weight": sd["lm_head.weight"], "lm_head.bias": sd["lm_head.bias"]}
        for i, blk in enumerate(self.blocks):
            s, d = f"blocks.{i}.", f"blocks.{i}."
            w = sd[s + "attn.qkv.weight"]                           # (3C, C)
            for j in range(H):
                for part, off in (("query", 0), ("key", C), ("value", 2 * C)):
                    out[f"{d}sa.heads.{j}.{part}.weight"] = w[off + j * hs: off + (j + 1) * hs]
                out[f"{d}sa.heads.{j}.tril"] = blk.sa.heads[j].tril
            for a, b in (("ln1", "ln1"), ("ln2", "ln2"), ("sa.proj", "attn.proj"), ("ffwd.net.0", "mlp.fc"),
                         ("ffwd.net.2", "mlp.proj")):
                out[f"{d}{a}.weight"], out[f"{d}{a}.bias"] = sd[f"{s}{b}.weight"], sd[f"{s}{b}.bias"]
        self.load_state_dict(out, strict=True)
        return self


# ---- the fused model ---------------------------------------------------------------------------------------------

class FusedAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.p = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(C, dim=2)                       # 3 x (B, T, C)
        q = q.view(B, T, H, C // H).transpose(1, 2)                 # (B, H, T, hs)
        k = k.view(B, T, H, C // H).transpose(1, 2)                 # (B, H, T, hs)
        v = v.view(B, T, H, C // H).transpose(1, 2)                 # (B, H, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)            # (B, T, C)
        return self.resid_drop(self.proj(y))


class FusedMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)
        self.gelu = cfg.activation == "gelu"

    def forward(self, x):
        h = self.fc(x)                                              # (B, T, 4C)
        h = F.gelu(h, approximate="tanh") if self.gelu else F.relu(h)
        return self.drop(self.proj(h))                              # (B, T, C)


class FusedBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = FusedAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = FusedMLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class FusedGPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([FusedBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.bias)
        self.apply(_init_weights)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device))   # (B, T, C)
        for blk in self.blocks:
            x = blk(x)                                              # (B, T, C)
        logits = self.lm_head(self.ln_f(x))                         # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss

    def layer_modules(self):
        blk = self.blocks[0]
        return {"tok_emb": self.tok_emb, "pos_emb": self.pos_emb, "layernorm": blk.ln1, "attention": blk.attn,
                "mlp": blk.mlp, "lm_head": self.lm_head}

    @torch.no_grad()
    def load_spec_state_dict(self, sd):
        """The names are SPEC section 2's: a plain load."""
        self.load_state_dict({k: _as_tensor(v) for k, v in sd.items()}, strict=True)
        return self


MODELS = {"fused": FusedGPT, "lecture": LectureGPT}
