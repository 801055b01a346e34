"""Hypothesis strategies shared by the test files: shapes, broadcastable shapes, bounded float arrays, index arrays,
axes (valid ones, and loose ones for the edge-case tests), and small valid GPT configurations.

Sizes are kept small on purpose: every op test also runs `gradcheck`, which evaluates the op twice per input element.
"""
import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_DIMS = 4
MAX_SIDE = 3


def shapes(min_dims=0, max_dims=MAX_DIMS, min_side=1, max_side=MAX_SIDE):
    """Array shapes, 0-d included by default, with size-1 axes among the sides."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=MAX_DIMS, max_side=MAX_SIDE):
    """A tuple of `num_shapes` shapes that broadcast together: different ranks, size-1 axes and 0-d included."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=1, max_side=max_side).map(lambda b: b.input_shapes)


# Value domains, bounded away from each op's problem points (where the function or its derivative is singular or
# not differentiable, so finite differences and the two engines may legitimately disagree).
_DOMAINS = {
    "any": (-3.0, 3.0),       # exp, tanh, gelu, +, -, *, matmul, ...
    "positive": (0.1, 4.0),   # log, sqrt, fractional and negative powers
    "nonzero": (0.1, 4.0),    # magnitude range, random sign: denominators, relu (kink at 0)
}


def floats(shape, domain="any"):
    """float64 arrays of `shape` (a shape or a shape strategy) with values in `domain` (see _DOMAINS)."""
    if isinstance(shape, st.SearchStrategy):
        return shape.flatmap(lambda s: floats(s, domain))
    lo, hi = _DOMAINS[domain]
    elements = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    arr = hnp.arrays(np.float64, shape, elements=elements)
    if domain == "nonzero":
        signs = hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0]))
        arr = st.tuples(arr, signs).map(lambda p: p[0] * p[1])
    return arr


@st.composite
def distinct_floats(draw, shape, gap=0.2):
    """float64 arrays whose values are pairwise at least `gap` apart (for max: no ties, and a finite-difference step
    never changes which element is the maximum). Values lie in [-n*0.3/2, n*0.3/2]."""
    if not isinstance(shape, tuple):
        shape = draw(shape)
    n = math.prod(shape)
    order = np.array(draw(st.permutations(range(n))), dtype=np.float64)
    jitter = draw(hnp.arrays(np.float64, n, elements=st.floats(0.0, 0.3 - gap)))
    return ((order - n / 2) * 0.3 + jitter).reshape(shape)


def index_arrays(size, shape=None, max_len=5):
    """int64 index arrays into an axis of length `size`, negative indices and repeats included (they must add up
    in the gradient)."""
    if shape is None:
        shape = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=max_len)
    return hnp.arrays(np.int64, shape, elements=st.integers(-size, size - 1))


@st.composite
def axes(draw, ndim, allow_none=True, allow_tuple=True):
    """An axis argument for a reduction over `ndim` dims: None, an int (maybe negative), or a tuple of distinct axes."""
    choices = ["none"] if allow_none or ndim == 0 else []
    if ndim:
        choices.append("int")
        if allow_tuple:
            choices.append("tuple")
    kind = draw(st.sampled_from(choices))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in picked)  # some written as negative axes


@st.composite
def loose_axes(draw, ndim):
    """An axis argument as a user may write it, valid or not: None, an int (maybe out of range), or a tuple or list
    of ints (maybe empty, repeated or out of range)."""
    n = max(ndim, 1)
    axis = st.integers(-n - 1, n)
    kind = draw(st.sampled_from(["none", "int", "tuple", "list"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(axis)
    picked = draw(st.lists(axis, max_size=ndim + 1))
    return tuple(picked) if kind == "tuple" else picked


@st.composite
def gpt_configs(draw, with_options=False):
    """Keyword arguments for a small valid GPTConfig: n_embd divisible by n_head, everything tiny so a forward and
    backward pass takes milliseconds. `dropout` is 0.0 (deterministic). With `with_options=True` the `bias` and
    `activation` fields of SPEC section 1 are drawn too."""
    n_head = draw(st.integers(1, 3))
    head_size = draw(st.integers(1, 4))
    cfg = dict(
        vocab_size=draw(st.integers(2, 12)),
        block_size=draw(st.integers(1, 8)),
        n_embd=n_head * head_size,
        n_head=n_head,
        n_layer=draw(st.integers(1, 2)),
        dropout=0.0,
    )
    if with_options:
        cfg["bias"] = draw(st.booleans())
        cfg["activation"] = draw(st.sampled_from(["relu", "gelu"]))
    return cfg
