"""Rung 8: the same model scaled up, with dropout against overfitting, and the lecture's initialisation (weights
N(0, 0.02), biases 0). The lecture trains 64 x 256 tokens per step, n_embd 384, 6 heads, 6 layers (10.8M
parameters) on a GPU to 1.48; a CPU-sized version follows (the `ladder` command can take the lecture's with a larger
budget)."""
import tinygrad_gpt as torch
import tinygrad_gpt.nn as nn

from .r7_layernorm import Model as LayerNormModel

HP = dict(batch_size=32, block_size=64, max_iters=5000, learning_rate=1e-3, n_embd=128, n_head=4, n_layer=4,
          dropout=0.1)
LECTURE_HP = dict(batch_size=64, block_size=256, max_iters=5000, learning_rate=3e-4, n_embd=384, n_head=6,
                  n_layer=6, dropout=0.2)


class Model(LayerNormModel):

    def __init__(self, hp):
        super().__init__(hp)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
