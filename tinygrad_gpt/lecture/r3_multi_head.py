"""Rung 3: several heads in parallel, each smaller (n_embd / n_head), their outputs concatenated: several
independent channels of communication instead of one."""
import tinygrad_gpt as torch
import tinygrad_gpt.nn as nn

from .r2_one_head import Head, LanguageModel

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=4, n_layer=1,
          dropout=0.0)


class MultiHeadAttention(nn.Module):
    """heads side by side; `proj` (from rung 6 on) maps their concatenation back into the residual stream"""

    def __init__(self, hp, num_heads, head_size, proj=False):
        super().__init__()
        self.heads = nn.ModuleList([Head(hp, head_size) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, hp['n_embd']) if proj else None
        self.dropout = nn.Dropout(hp['dropout'])

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)          # (B, T, C)
        if self.proj is not None:
            out = self.dropout(self.proj(out))
        return out


class Model(LanguageModel):

    def __init__(self, hp):
        super().__init__(hp)
        self.sa_heads = MultiHeadAttention(hp, hp['n_head'], hp['n_embd'] // hp['n_head'])   # 4 heads of 8

    def body(self, x):
        return self.sa_heads(x)
