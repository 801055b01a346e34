"""Hypothesis strategies shared by the test files: shapes, broadcastable shapes, bounded float arrays, index arrays,
axes (valid ones, and loose ones for the edge-case tests), and small valid GPT configurations; for the torch-shaped
front end also dims, view/expand targets, Python data for torch.tensor, indices and setitem cases as lecture code
writes them, and valid inputs of reductions, cross_entropy and scaled_dot_product_attention.

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


# ---- the torch-shaped front end (tests/test_torch_surface.py) ------------------------------------------------------

def dims(ndim):
    """One int dim of a tensor of `ndim` axes, negative ones included; a 0-d tensor takes 0 and -1, as in torch."""
    n = max(ndim, 1)
    return st.integers(-n, n - 1)


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@st.composite
def new_shapes(draw, shape):
    """A shape of the same size as `shape` (a view/reshape target): its prime factors regrouped, size-1 axes
    inserted, maybe one size written as -1."""
    factors = draw(st.permutations([f for d in shape for f in _prime_factors(d)]))
    target = []
    for f in factors:
        if target and draw(st.booleans()):
            target[-1] *= f
        else:
            target.append(f)
    for _ in range(draw(st.integers(0, 2))):
        target.insert(draw(st.integers(0, len(target))), 1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return tuple(target)


@st.composite
def expand_sizes(draw, shape, max_new=2):
    """Sizes for t.expand(*sizes): new leading axes of any size, each size-1 axis kept or grown, every axis
    sometimes written as -1 (keep)."""
    lead = [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, max_new)))]
    tail = []
    for n in shape:
        grown = draw(st.integers(1, 3)) if n == 1 else n
        tail.append(-1 if draw(st.booleans()) else grown)
    return tuple(lead + tail)


PYTHON_SCALARS = {
    "int": st.integers(-9, 9),
    "float": st.floats(-4, 4, allow_nan=False, width=64),
    "bool": st.booleans(),
}


@st.composite
def python_data(draw):
    """What a user hands torch.tensor: a Python scalar, or nested lists of one shape (empty ones included) holding
    ints, floats, bools or a mix of them."""
    kinds = draw(st.lists(st.sampled_from(sorted(PYTHON_SCALARS)), min_size=1, max_size=3, unique=True))
    element = st.one_of(*(PYTHON_SCALARS[k] for k in kinds))
    shape = draw(shapes(min_side=0, max_dims=3))
    values = [draw(element) for _ in range(math.prod(shape))]
    if not shape:
        return values[0]

    def nest(flat, dims_):
        if len(dims_) == 1:
            return list(flat)
        step = math.prod(dims_[1:])
        return [nest(flat[i * step:(i + 1) * step], dims_[1:]) for i in range(dims_[0])]
    return nest(values, shape)


@st.composite
def torch_indices(draw, shape, unique=False):
    """An index into a tensor of `shape` as lecture code writes it: per axis an int (maybe negative), a slice (positive
    step), or at most one advanced index in all (an int array, a list, or a bool mask as NumPy arrays: the test
    turns them into each engine's tensors); None anywhere, an Ellipsis last. Ints and arrays are never mixed (NumPy and
    torch order the axes differently there). `unique`: an int array has no repeats (setitem with repeated indices
    is undefined in torch)."""
    parts, advanced = [], draw(st.booleans())
    used_advanced = False
    for n in shape[:draw(st.integers(0, len(shape)))]:
        kinds = ["slice", "full"] + (["array", "list", "mask"] if advanced and not used_advanced else [])
        if not advanced:
            kinds.append("int")
        kind = draw(st.sampled_from(kinds))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.one_of(st.none(), st.integers(-n - 1, n + 1))
            parts.append(slice(draw(bound), draw(bound), draw(st.one_of(st.none(), st.integers(1, 3)))))
        elif kind == "full":
            parts.append(slice(None))
        elif kind == "mask":
            used_advanced = True
            parts.append(np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool))
        else:
            used_advanced = True
            values = st.lists(st.integers(-n, n - 1), min_size=1, max_size=4,
                              unique_by=(lambda i, n=n: i % n) if unique else None)
            idx = draw(values)
            parts.append(np.array(idx, dtype=np.int64) if kind == "array" else idx)
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if draw(st.booleans()):
        parts.append(Ellipsis)  # (after the parts, so they keep their axes)
    return tuple(parts)


@st.composite
def reduction_args(draw, min_side=1, distinct=False):
    """(x, dim, keepdim): float64 x of a drawn shape (0-d and size-1 axes included), dim None, an int or a tuple
    (negative ones included)."""
    shape = draw(shapes(min_side=min_side))
    x = draw(distinct_floats(shape) if distinct else floats(shape))
    return x, draw(axes(len(shape))), draw(st.booleans())


@st.composite
def setitem_cases(draw, dtype=np.float64):
    """(x, index, value): an index (no repeated positions) and a value that broadcasts to the indexed part: a
    Python number, or an array of that part's shape with leading axes dropped and some axes 1."""
    x = draw(floats(shapes(min_dims=1))).astype(dtype)
    index = draw(torch_indices(x.shape, unique=True))
    part = np.empty(x.shape)[index].shape
    if draw(st.booleans()):
        return x, index, draw(st.sampled_from([2, -1.5, 0.25]))
    vshape = tuple(1 if draw(st.booleans()) else n for n in part[draw(st.integers(0, len(part))):])
    return x, index, draw(floats(vshape))


@st.composite
def cross_entropy_cases(draw):
    """Logits (N, C), (N, C, d1) or (C,); targets class indices of (N,), (N, d1) or () (some set to ignore_index),
    or class probabilities of the logits' shape; maybe per-class weights; a reduction; a label smoothing."""
    C = draw(st.integers(2, 4))
    layout = draw(st.sampled_from(["NC", "NCd", "C"]))
    N, d1 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = {"NC": (N, C), "NCd": (N, C, d1), "C": (C,)}[layout]
    logits = draw(floats(shape))
    probabilities = draw(st.integers(0, 3)) == 0
    ignore = draw(st.sampled_from([None, -1, 0]))
    if probabilities:
        raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.05, 1.0)))
        axis = 0 if layout == "C" else 1
        target, ignore = raw / raw.sum(axis=axis, keepdims=True), None
    else:
        tshape = {"NC": (N,), "NCd": (N, d1), "C": ()}[layout]
        target = np.asarray(draw(hnp.arrays(np.int64, tshape, elements=st.integers(0, C - 1))))
        if ignore is not None:
            hide = draw(hnp.arrays(np.bool_, tshape))
            target = np.where(hide, ignore, target)
    weight = draw(st.one_of(st.none(), hnp.arrays(np.float64, C, elements=st.floats(0.25, 2.0))))
    kw = {"reduction": draw(st.sampled_from(["mean", "sum", "none"])),
          "label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 0.3]))}
    if ignore is not None:
        kw["ignore_index"] = ignore
    return logits, target, weight, kw


@st.composite
def attention_inputs(draw, causal_square=False):
    """q (*lead, L, E), k (*lead, S, E), v (*lead, S, Ev) with lead () , (B,) or (B, H) — 2-D, 3-D and 4-D; Ev == E
    where L == S (the fused path's Ev != E bug has its own test)."""
    lead = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    L = draw(st.integers(1, 4))
    S = L if causal_square else draw(st.integers(1, 4))
    E = draw(st.integers(1, 3))
    Ev = E if L == S else draw(st.integers(1, 3))
    return draw(floats(lead + (L, E))), draw(floats(lead + (S, E))), draw(floats(lead + (S, Ev)))
