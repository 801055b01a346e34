"""Rung 5: communication and computation as a block, blocks stacked. Without the tricks of the next rungs the deeper
network is harder to optimise: this rung shows it."""
import tinygrad_gpt.nn as nn

from .r2_one_head import LanguageModel
from .r3_multi_head import MultiHeadAttention
from .r4_feed_forward import FeedFoward

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=4, n_layer=3,
          dropout=0.0)


class Block(nn.Module):
    """attention then feed-forward; `residual` (rung 6) adds each to its input, `layernorm` (rung 7) normalises
    each sublayer's input first"""

    def __init__(self, hp, residual=False, layernorm=False):
        super().__init__()
        head_size = hp['n_embd'] // hp['n_head']
        self.sa = MultiHeadAttention(hp, hp['n_head'], head_size, proj=residual)
        self.ffwd = FeedFoward(hp, expand=4 if residual else 1, proj=residual)
        self.residual = residual
        self.ln1 = nn.LayerNorm(hp['n_embd']) if layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(hp['n_embd']) if layernorm else nn.Identity()

    def forward(self, x):
        if self.residual:
            x = x + self.sa(self.ln1(x))
            x = x + self.ffwd(self.ln2(x))
        else:
            x = self.ffwd(self.sa(x))
        return x


class Model(LanguageModel):

    def __init__(self, hp, **block_options):
        super().__init__(hp)
        self.blocks = nn.Sequential(*[Block(hp, **block_options) for _ in range(hp['n_layer'])])

    def body(self, x):
        return self.blocks(x)
