"""Rung 6: residual connections. Each block adds its result to a stream that runs straight from the input to the
output, so gradients reach the first layers unimpeded; attention and feed-forward get a projection back into that
stream, and the feed-forward layer is four times wider inside."""
from .r5_blocks import Model as Blocks

HP = dict(batch_size=32, block_size=8, max_iters=5000, learning_rate=1e-3, n_embd=32, n_head=4, n_layer=3,
          dropout=0.0)


class Model(Blocks):

    def __init__(self, hp):
        super().__init__(hp, residual=True)
