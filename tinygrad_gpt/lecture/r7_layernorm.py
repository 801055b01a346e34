"""Rung 7: LayerNorm before each sublayer (the "pre-norm" of later transformers) and once more before the final
linear layer: every position's features normalised to zero mean and unit variance, then scaled and shifted."""
import tinygrad_gpt.nn as nn

from .r5_blocks import Model as Blocks

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=4, n_layer=3,
          dropout=0.0)


class Model(Blocks):

    def __init__(self, hp):
        super().__init__(hp, residual=True, layernorm=True)
        self.ln_f = nn.LayerNorm(hp['n_embd'])

    def body(self, x):
        return self.ln_f(self.blocks(x))
