"""Random state for the torch-shaped front end: one process-wide default generator (torch's), seeded by
`manual_seed`, and `Generator` objects a caller can pass as `generator=` instead (the makemore notebooks'
`torch.Generator().manual_seed(2147483647)`).

Everything random that a user's own code asks for draws from here: `randn`, `rand`, `randint`, `randperm`,
`multinomial`, `nn.init.*_`, `Tensor.normal_/uniform_`, the default initialisation of `nn.Linear` and `nn.Embedding`,
and the masks of `nn.Dropout` / `F.dropout` / `scaled_dot_product_attention`. The bits are NumPy's (PCG64), not
torch's (mt19937 with its own transforms): the same seed gives a reproducible run here, not torch's numbers. The
fused `GPT` keeps its own seeded generators (SPEC section 4) and never touches this one.
"""
import contextlib

import numpy as np

DEFAULT_SEED = 67280421310721          # what a process starts from before any manual_seed (torch's default seed)


class Generator:
    """A source of random numbers: torch.Generator's surface (manual_seed, seed, initial_seed, get_state,
    set_state) over a NumPy PCG64 generator (`.np`)."""

    def __init__(self, device="cpu"):
        self.device = device
        self.manual_seed(DEFAULT_SEED)

    def manual_seed(self, seed):
        seed = int(seed)
        if seed < 0:                                   # torch takes negative seeds modulo 2**64
            seed += 1 << 64
        self._seed = seed
        self.np = np.random.default_rng(seed)
        return self

    def seed(self):
        """Reseed from the operating system's entropy; returns the new seed."""
        return self.manual_seed(int(np.random.SeedSequence().entropy) % (1 << 63))._seed

    def initial_seed(self):
        return self._seed

    def get_state(self):
        """The generator's state as a plain dict (NumPy's bit-generator state), for set_state."""
        return self.np.bit_generator.state

    def set_state(self, state):
        self.np.bit_generator.state = state
        return self


default_generator = Generator()


def manual_seed(seed):
    """Seed the default generator (torch.manual_seed); returns it."""
    return default_generator.manual_seed(seed)


def seed():
    return default_generator.seed()


def initial_seed():
    return default_generator.initial_seed()


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state):
    default_generator.set_state(state)


@contextlib.contextmanager
def preserved():
    """The default generator's state put back after the block (building a model to read its layout must not move
    a user's random stream)."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def numpy_generator(generator=None):
    """The NumPy generator behind `generator` (a Generator, or None for the default one)."""
    if generator is None:
        return default_generator.np
    if not isinstance(generator, Generator):
        raise TypeError(f"generator must be a tinygrad_gpt Generator, got {type(generator).__name__}")
    return generator.np
