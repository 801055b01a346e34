"""Rung 4: a feed-forward layer after the attention: the tokens talked (attention), now each thinks on its own
about what it gathered (a linear layer and a ReLU, per position)."""
import tinygrad_gpt.nn as nn

from .r2_one_head import LanguageModel
from .r3_multi_head import MultiHeadAttention

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=4, n_layer=1,
          dropout=0.0)


class FeedFoward(nn.Module):
    """per-position computation; `expand` 4 and a projection back (rung 6 on), dropout (rung 8)"""

    def __init__(self, hp, expand=1, proj=False):
        super().__init__()
        n_embd = hp['n_embd']
        layers = [nn.Linear(n_embd, expand * n_embd), nn.ReLU()]
        if proj:
            layers += [nn.Linear(expand * n_embd, n_embd), nn.Dropout(hp['dropout'])]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Model(LanguageModel):

    def __init__(self, hp):
        super().__init__(hp)
        self.sa_heads = MultiHeadAttention(hp, hp['n_head'], hp['n_embd'] // hp['n_head'])
        self.ffwd = FeedFoward(hp)

    def body(self, x):
        x = self.sa_heads(x)                                          # (B, T, C) communicate
        return self.ffwd(x)                                           # (B, T, C) compute
