"""The lecture's ladder: its model built one rung at a time, each a small module in the lecture's style on the
torch-shaped front end (`import tinygrad_gpt as torch`), importing the rungs before it, so reading r1 to r8 in order
is reading the lecture. (examples/lecture/ in the repository is this directory.)

    r1_bigram        a (vocab, vocab) table of next-character scores
    r2_one_head      token and position embeddings, one causal self-attention head
    r3_multi_head    four smaller heads side by side
    r4_feed_forward  a per-position feed-forward layer after the attention
    r5_blocks        attention + feed-forward as a block, three blocks stacked
    r6_residual      residual connections, projections, a 4x wider feed-forward
    r7_layernorm     LayerNorm before each sublayer and at the end
    r8_scaled_up     bigger, with dropout and the lecture's initialisation

`tinygrad-gpt ladder` trains them all on one corpus (tinygrad_gpt/ladder.py). Here: the list, each rung's
hyperparameters, and the figures the lecture records for some of them.
"""
import dataclasses
import importlib

import numpy as np

from .. import rng


@dataclasses.dataclass(frozen=True)
class Rung:
    name: str
    module: str
    title: str
    theirs: str = ""            # what the lecture records for this rung, with its conditions (not ours)
    theirs_val: float = None


RUNGS = [
    Rung("bigram", "r1_bigram", "bigram table", "val 2.49 after 3,000 steps (the lecture)", 2.49),
    Rung("one-head", "r2_one_head", "one self-attention head"),
    Rung("multi-head", "r3_multi_head", "4 heads"),
    Rung("feed-forward", "r4_feed_forward", "heads + feed-forward"),
    Rung("blocks", "r5_blocks", "3 blocks, no residuals"),
    Rung("residual", "r6_residual", "residual connections + projections"),
    Rung("layernorm", "r7_layernorm", "pre-LayerNorm"),
    Rung("scaled-up", "r8_scaled_up", "scaled up, dropout",
         "val 1.48 with B=64 T=256 C=384 H=6 L=6 on a GPU (the lecture)", 1.48),
]
BY_NAME = {r.name: r for r in RUNGS}


def module(name):
    """The rung's module (KeyError for an unknown name)."""
    return importlib.import_module(f"{__name__}.{BY_NAME[name].module}")


def hyperparameters(name, vocab_size, **overrides):
    """The rung's hyperparameters (its module's HP) with the corpus's vocabulary size and any overrides."""
    return dict(module(name).HP, vocab_size=int(vocab_size), **overrides)


def build(name, hp):
    """A fresh model of rung `name` with hyperparameters `hp` (its weights drawn from the default generator)."""
    return module(name).Model(hp)


def parameter_shapes(name, hp):
    """({state-dict name: shape}, {parameter name: shape}) of the rung's model (the state dict holds its buffers too),
    built with the default generator's state put back after (a checkpoint's check must not move a user's random
    stream)."""
    with rng.preserved():
        model = build(name, hp)
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {k: tuple(p.shape) for k, p in model.named_parameters()})


def count_parameters(model):
    return int(sum(np.prod(p.shape) for p in model.parameters()))
