"""The torch-shaped front end (SPEC section 8) against torch itself: every supported op, reduction, factory, module
and optimizer runs the SAME source in both engines (`fn(lib, ...)` with lib = tinygrad_gpt or torch, the way a
lecture script runs after `import tinygrad_gpt as torch`), over hypothesis-drawn shapes, dims (negative ones, 0-d and
size-1 axes, empty axes where torch allows them), keepdim flags and dtypes.

Oracles and tolerances (helpers.py derives them):
  * float values and gradients: `check` in float64, relative error <= TOL = 1e-10 against torch, forward and the
    gradients of a random-weighted sum of the outputs, plus float64 central differences (`gradcheck`) wherever the
    op is differentiable at the drawn point (distinct values for max/sort/topk/std, no ties with clamp's bounds);
  * integer and bool results (indices, dtypes, masks, shapes, names, orders): exactly equal (`exact`);
  * float32 factories: equal to torch's up to the rounding of torch's own float32 arithmetic (stated per test);
  * random draws: the bits are NumPy's (documented, rng.py), so only shapes, dtypes, ranges, reproducibility and
    statistics are compared, each statistic with a bound stated in sigmas of its sampling distribution.

Known engine choices that differ from torch on purpose are noted where a test meets them (docs/torch-front-end.md
lists them).
"""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpt as tg
from helpers import TOL, assert_errors, check, check_or_raise, compare, rel_err, tol
from strategies import (
    attention_inputs,
    axes,
    broadcastable_shapes,
    cross_entropy_cases,
    dims,
    distinct_floats,
    expand_sizes,
    floats,
    new_shapes,
    python_data,
    reduction_args,
    setitem_cases,
    shapes,
    torch_indices,
)

U32 = np.finfo(np.float32).eps / 2        # float32 unit roundoff, 2**-24


# ---- the one-source helpers ------------------------------------------------------------------------------------------

def same(op, inputs, fn, **kw):
    """helpers.check with one source for both engines: fn(lib, *tensors), lib is tinygrad_gpt or torch."""
    return check(op, inputs, lambda *a: fn(tg, *a), lambda *a: fn(torch, *a), **kw)


def same_or_raise(op, inputs, fn, **kw):
    """helpers.check_or_raise with one source: torch's result, or torch's kind of exception."""
    return check_or_raise(op, inputs, lambda *a: fn(tg, *a), lambda *a: fn(torch, *a), **kw)


def run_both(fn, *args):
    """fn(lib, *args) for lib = tinygrad_gpt, then torch."""
    return fn(tg, *args), fn(torch, *args)


def np_dtype(dtype):
    """A dtype of either engine as a NumPy dtype (tinygrad_gpt's dtypes are NumPy's)."""
    return torch.empty((), dtype=dtype).numpy().dtype if isinstance(dtype, torch.dtype) else np.dtype(dtype)


def exact(ours, theirs, what=""):
    """Ours equals torch's exactly: tensors by dtype, shape and values (nan where torch has nan), sequences entry by
    entry, anything else by type and value."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, tg.Tensor), f"{what}: ours is a {type(ours).__name__}, torch gives a tensor"
        want, got = theirs.detach().numpy(), ours.numpy()
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, torch {want.dtype}"
        assert got.shape == want.shape, f"{what}: shape {got.shape}, torch {want.shape}"
        assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), f"{what}: {got} != torch's {want}"
    elif isinstance(theirs, (list, tuple)):
        assert isinstance(ours, (list, tuple)) and len(ours) == len(theirs), f"{what}: {ours!r} vs torch's {theirs!r}"
        for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
            exact(o, t, f"{what}[{i}]")
    else:
        assert type(ours) is type(theirs), f"{what}: {type(ours).__name__}, torch {type(theirs).__name__}"
        both_nan = isinstance(ours, float) and math.isnan(ours) and math.isnan(theirs)
        assert ours == theirs or both_nan, f"{what}: {ours!r} != torch's {theirs!r}"


def same_exact(fn, *args, what=""):
    """fn(lib, *args) in both engines, compared exactly."""
    ours, theirs = run_both(fn, *args)
    exact(ours, theirs, what)
    return ours, theirs


def raises_like_torch(fn, *args):
    """fn(lib, *args) raises in torch; ours raises the same kind (helpers.EXCEPTIONS), with a message."""
    from helpers import EXCEPTIONS
    with pytest.raises(Exception) as theirs:
        fn(torch, *args)
    kind = next(k for k in EXCEPTIONS if isinstance(theirs.value, k))
    with pytest.raises(kind) as ours:
        fn(tg, *args)
    assert str(ours.value)
    return ours.value


def _count(shape, dim):
    """How many elements one reduction over `dim` (None, an int or a tuple) of a tensor of `shape` takes."""
    if dim is None or dim == ():
        return math.prod(shape)
    dims_ = dim if isinstance(dim, tuple) else (dim,)
    return math.prod(shape[d] for d in dims_) if shape else 1


# ---- reductions with torch's signature -------------------------------------------------------------------------------

@given(reduction_args(min_side=0), st.sampled_from([None, "float64"]))
def test_sum_and_mean_with_dim_keepdim_and_dtype(xdk, dtype):
    """Empty axes included: sums of nothing are 0, means nan (as torch)."""
    x, dim, keep = xdk
    kw = {} if dtype is None else {"dtype": dtype}
    same("sum", [x], lambda lib, t: t.sum(dim=dim, keepdim=keep, **{k: getattr(lib, v) for k, v in kw.items()}))
    same("mean", [x], lambda lib, t: lib.mean(t, dim=dim, keepdim=keep))
    if dim is not None:
        same("sum", [x], lambda lib, t: lib.sum(t, dim, keep))                           # positional
    # dtype= casts first: a float32 tensor summed in float64 (finite differences do not survive the float32 step)
    same("sum", [x], lambda lib, t: t.float().sum(dim=dim, keepdim=keep, dtype=lib.float64), fd=False)
    same("mean", [x], lambda lib, t: t.float().mean(dim=dim, keepdim=keep, dtype=lib.float64), fd=False)


@given(reduction_args(distinct=True), st.sampled_from(["default", "unbiased=False", "correction", "positional",
                                                        "flag only"]), st.sampled_from([0, 1, 2]))
def test_var_and_std(xdk, form, correction):
    """Unbiased by default; unbiased=False / correction= divide by n - correction; var(dim, unbiased, keepdim) is the
    older positional form, var(False) the flag alone. Where n <= correction torch gives inf/nan: forward only."""
    x, dim, keep = xdk
    calls = {
        "default": lambda t, op: getattr(t, op)(dim=dim, keepdim=keep),
        "unbiased=False": lambda t, op: getattr(t, op)(dim=dim, unbiased=False, keepdim=keep),
        "correction": lambda t, op: getattr(t, op)(dim=dim, correction=correction, keepdim=keep),
        "positional": lambda t, op: getattr(t, op)(dim, correction != 0, keep),
        "flag only": lambda t, op: getattr(t, op)(correction != 0),
    }
    c = {"default": 1, "unbiased=False": 0, "correction": correction}.get(form, int(correction != 0))
    n_form, n = _count(x.shape, None if form == "flag only" else dim), _count(x.shape, dim)
    # n <= c: inf/nan, forward only; std of one element: 0, whose gradient is torch's convention (test below)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "degrees of freedom is <= 0"
        same("var", [x], lambda lib, t: calls[form](t, "var"), grad=n_form > c)
        same("std", [x], lambda lib, t: calls[form](t, "std"), grad=n_form > c and n_form >= 2)
        same("var", [x], lambda lib, t: lib.var(t, dim, keepdim=keep, correction=c), grad=n > c)
        same("std", [x], lambda lib, t: lib.std(t, dim, keepdim=keep, correction=c), grad=n > c and n >= 2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # (0 / 0 in the failing gradient)
def test_std_gradient_of_a_constant_row_is_zero():
    same("std", [np.array([[1.5, 1.5, 1.5], [0.5, -1.0, 2.0]])], lambda lib, t: t.std(1), fd=False)


def _values_indices(op, x, fn):
    """fn(lib, t) -> (values, indices) in both engines: the values against torch (gradients, finite differences),
    the indices exactly; the result reads as torch's namedtuple (.values, .indices, [0], unpacking)."""
    same(op, [x], lambda lib, t: fn(lib, t)[0])
    out, theirs = fn(tg, tg.tensor(x)), fn(torch, torch.tensor(x))
    values, indices = out
    assert out.values is values and out[1] is indices and out.indices is indices
    exact(indices, theirs.indices, f"{op} indices")


@given(reduction_args(distinct=True))
def test_max_and_min_without_dim_with_dim_and_with_a_tensor(xdk):
    """max() is the value; max(dim) the (values, indices) namedtuple (distinct values: no ties, so the indices are
    torch's); max(other) the elementwise maximum."""
    x, dim, keep = xdk
    for op in ("max", "min"):
        same(op, [x], lambda lib, t, op=op: getattr(t, op)())
        same(op, [x], lambda lib, t, op=op: getattr(lib, op)(t))
        if isinstance(dim, int):
            _values_indices(op, x, lambda lib, t, op=op: getattr(t, op)(dim, keepdim=keep))
            _values_indices(op, x, lambda lib, t, op=op: getattr(lib, op)(t, dim=dim, keepdim=keep))
            _values_indices(op, x, lambda lib, t, op=op: getattr(t, op)(dim))
    y = np.flip(x).copy() + 0.05      # distinct from x's values too (the distinct gap is 0.2)
    same("max", [x, y], lambda lib, a, b: a.max(b))
    same("min", [x, y], lambda lib, a, b: lib.min(a, b))


@given(reduction_args(distinct=True))
def test_amax_amin(xdk):
    x, dim, keep = xdk
    d = () if dim is None else dim
    same("amax", [x], lambda lib, t: t.amax(d, keepdim=keep))
    same("amin", [x], lambda lib, t: lib.amin(t, dim=d, keepdim=keep))


def test_amax_ties_share_the_gradient_and_max_dim_picks_one():
    """amax spreads the gradient evenly over tied maxima; max(dim) sends it to the index it returns."""
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    same("amax", [x], lambda lib, t: t.amax(1), fd=False)
    same("max", [x], lambda lib, t: t.max(), fd=False)
    same("max", [x[0]], lambda lib, t: t.max(0).values, fd=False)


@given(st.data())
def test_argmax_argmin(data):
    shape = data.draw(shapes())
    x = data.draw(distinct_floats(shape))
    dim = data.draw(st.one_of(st.none(), dims(len(shape))))
    keep = data.draw(st.booleans())
    for op in ("argmax", "argmin"):
        same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(dim=dim, keepdim=keep), x, what=op)
        same_exact(lambda lib, a, op=op: getattr(lib, op)(lib.tensor(a), dim), x, what=op)
        same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(), x, what=op)


@given(st.data())
def test_topk_and_sort(data):
    shape = data.draw(shapes())
    x = data.draw(distinct_floats(shape))
    dim = data.draw(dims(len(shape)))
    n = shape[dim] if shape else 1
    k = data.draw(st.integers(0 if shape else 1, n))   # (k=0 of a 0-d tensor: test_topk_0_of_a_0d_tensor)
    largest, descending = data.draw(st.booleans()), data.draw(st.booleans())
    _values_indices("topk", x, lambda lib, t: t.topk(k, dim=dim, largest=largest))
    _values_indices("topk", x, lambda lib, t: lib.topk(t, k, dim))
    _values_indices("sort", x, lambda lib, t: t.sort(dim=dim, descending=descending))
    _values_indices("sort", x, lambda lib, t: lib.sort(t, dim, descending))
    if shape:
        _values_indices("sort", x, lambda lib, t: t.sort())


def test_topk_0_of_a_0d_tensor():
    _values_indices("topk", np.array(1.5), lambda lib, t: t.topk(0))


@given(st.data())
def test_all_and_any(data):
    shape = data.draw(shapes(min_side=0))
    dtype = data.draw(st.sampled_from([np.bool_, np.int64, np.float32]))
    x = data.draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0, 1, 2]).map(dtype)))
    dim = data.draw(axes(len(shape), allow_tuple=True))
    keep = data.draw(st.booleans())
    for op in ("all", "any"):
        same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(), x, what=op)
        if dim is not None:
            same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(dim=dim, keepdim=keep), x, what=op)
            same_exact(lambda lib, a, op=op: getattr(lib, op)(lib.tensor(a), dim, keep), x, what=op)


def test_all_and_any_of_uint8_keep_uint8():
    x = np.array([[1, 0], [2, 3]], dtype=np.uint8)
    for op in ("all", "any"):
        same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(), x, what=op)
        same_exact(lambda lib, a, op=op: getattr(lib.tensor(a), op)(1), x, what=op)


# ---- shape ops -------------------------------------------------------------------------------------------------------

@given(st.data())
def test_view_and_reshape_with_minus_one_and_size(data):
    x = data.draw(floats(shapes()))
    target = data.draw(new_shapes(x.shape))
    if target:                                                                     # (torch's view() needs a size)
        same("view", [x], lambda lib, t: t.view(*target))
    same("view", [x], lambda lib, t: t.view(target))
    same("reshape", [x], lambda lib, t: lib.reshape(t, target))
    same("view", [x], lambda lib, t: t.reshape(-1).view(t.shape))                 # a Size as the target
    same("view", [x], lambda lib, t: t.view(t.size()).view_as(t))
    ours, theirs = tg.tensor(x).view(target).shape, torch.tensor(x).view(target).shape
    assert ours == tuple(theirs) and isinstance(ours, tg.Size) and ours.numel() == theirs.numel()


@given(st.data())
def test_unsqueeze_and_squeeze(data):
    """squeeze(dim) leaves an axis whose length is not 1 alone (torch); a tuple of dims too."""
    x = data.draw(floats(shapes(max_side=2)))
    n = x.ndim
    u = data.draw(st.integers(-n - 1, n))
    same("unsqueeze", [x], lambda lib, t: t.unsqueeze(u))
    same("unsqueeze", [x], lambda lib, t: lib.unsqueeze(t, dim=u))
    same("squeeze", [x], lambda lib, t: t.squeeze())
    d = data.draw(dims(n))
    same("squeeze", [x], lambda lib, t: t.squeeze(d))
    same("squeeze", [x], lambda lib, t: lib.squeeze(t, d))
    if n:
        ds = tuple(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True)))
        same("squeeze", [x], lambda lib, t: t.squeeze(ds))


@given(st.data())
def test_flatten(data):
    x = data.draw(floats(shapes()))
    n = max(x.ndim, 1)
    s, e = sorted((data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))))
    s, e = (s - n if data.draw(st.booleans()) else s), (e - n if data.draw(st.booleans()) else e)
    same("flatten", [x], lambda lib, t: t.flatten())
    same("flatten", [x], lambda lib, t: t.flatten(s, e))
    same("flatten", [x], lambda lib, t: lib.flatten(t, start_dim=s, end_dim=e))


@given(st.data())
def test_expand_and_expand_as_sum_the_gradient_back(data):
    x = data.draw(floats(shapes(max_dims=3)))
    sizes = data.draw(expand_sizes(x.shape))
    assume(sizes)                                            # (torch's expand() needs a size)
    same("expand", [x], lambda lib, t: t.expand(*sizes))
    same("expand", [x], lambda lib, t: t.expand(sizes))
    target = tuple(torch.empty(x.shape).expand(*sizes).shape)
    other = np.zeros(target)
    same("expand_as", [x], lambda lib, t: t.expand_as(lib.tensor(other)))


@given(st.data())
def test_repeat(data):
    x = data.draw(floats(shapes(max_dims=3, max_side=2)))
    reps = data.draw(st.lists(st.integers(1, 3), min_size=x.ndim, max_size=x.ndim + 2))
    if reps:
        same("repeat", [x], lambda lib, t: t.repeat(*reps))
    same("repeat", [x], lambda lib, t: t.repeat(tuple(reps)))


@given(st.data())
def test_transpose_permute_t_contiguous(data):
    x = data.draw(floats(shapes()))
    n = x.ndim
    a, b = data.draw(dims(n)), data.draw(dims(n))
    order = data.draw(st.permutations(range(n)))
    same("transpose", [x], lambda lib, t: t.transpose(a, b).contiguous())
    same("transpose", [x], lambda lib, t: lib.transpose(t, a, b))
    if order:
        same("permute", [x], lambda lib, t: t.permute(*order))
    same("permute", [x], lambda lib, t: lib.permute(t, tuple(order)))
    same_or_raise("t", [x], lambda lib, t: t.t())                                   # >2-D: torch raises


@given(st.data())
def test_chunk_and_split_with_dim(data):
    x = data.draw(floats(shapes(min_dims=1)))
    d = data.draw(dims(x.ndim))
    n = x.shape[d]
    chunks = data.draw(st.integers(1, 4))
    same("chunk", [x], lambda lib, t: list(t.chunk(chunks, dim=d)))
    same("chunk", [x], lambda lib, t: list(lib.chunk(t, chunks, d)))
    size = data.draw(st.integers(1, n + 1))
    same("split", [x], lambda lib, t: list(t.split(size, dim=d)))
    sections = data.draw(st.lists(st.integers(0, n), min_size=1, max_size=3).filter(lambda s: sum(s) <= n))
    sections = sections + [n - sum(sections)]
    same("split", [x], lambda lib, t: list(lib.split(t, sections, dim=d)))


@given(st.data())
def test_cat_stack_vstack_hstack(data):
    base = data.draw(shapes(min_dims=1, max_dims=3))
    d = data.draw(dims(len(base)))
    pieces = []
    for _ in range(data.draw(st.integers(1, 3))):
        shape = list(base)
        shape[d] = data.draw(st.integers(1, 2))
        pieces.append(data.draw(floats(tuple(shape))))
    same("cat", pieces, lambda lib, *ts: lib.cat(ts, dim=d))
    same("cat", pieces, lambda lib, *ts: lib.cat(list(ts), d))
    same_pieces = [data.draw(floats(base)) for _ in range(len(pieces))]
    sd = data.draw(st.integers(-len(base) - 1, len(base)))
    same("stack", same_pieces, lambda lib, *ts: lib.stack(ts, dim=sd))
    same("stack", same_pieces, lambda lib, *ts: lib.stack(list(ts)))
    same("vstack", same_pieces, lambda lib, *ts: lib.vstack(ts))
    same("hstack", same_pieces, lambda lib, *ts: lib.hstack(ts))
    for shape in ((base[-1],), ()):                                                # 1-D rows, 0-d numbers
        rows = [data.draw(floats(shape)) for _ in range(2)]
        same("vstack", rows, lambda lib, *ts: lib.vstack(list(ts)))
        same("hstack", rows, lambda lib, *ts: lib.hstack(list(ts)))


@given(broadcastable_shapes(3), st.data())
def test_where_broadcasts_and_sends_gradients_to_both_branches(three, data):
    sc, sa, sb = three
    cond = data.draw(hnp.arrays(np.bool_, sc))
    a, b = data.draw(floats(sa)), data.draw(floats(sb))
    same("where", [a, b], lambda lib, x, y: lib.where(lib.tensor(cond), x, y))
    ties = bool(np.any(np.abs(np.broadcast_to(a, np.broadcast_shapes(sa, sb)) - b) < 1e-4))
    same("where", [a, b], lambda lib, x, y: lib.where(x > y, x, y), fd=not ties)   # (a tie: not differentiable)
    same("where", [a], lambda lib, x: lib.where(lib.tensor(cond), x, 0.0))


EINSUMS = ["bth,bsh->bts", "bts,bsh->bth", "ij,jk->ik", "bij->bji", "ij,jk", "ij,jk->i", "bij,bjk->bik", "i,i->",
           "ij->", "ij,j->i", "bhtd,bhsd->bhts", "ij,ij->ij", "ba,cb"]


@given(st.sampled_from(EINSUMS), st.data())
def test_einsum(equation, data):
    """The attention shapes, a matmul, a transpose, implicit outputs (letters once in all operands, sorted), a letter
    in one operand only (summed away: its gradient broadcasts along it)."""
    sizes = {c: data.draw(st.integers(1, 3)) for c in sorted(set(equation) - set(",->"))}
    subscripts = equation.split("->")[0].split(",")
    xs = [data.draw(floats(tuple(sizes[c] for c in s))) for s in subscripts]
    same("einsum", xs, lambda lib, *ts: lib.einsum(equation, *ts))
    same("einsum", xs, lambda lib, *ts: lib.einsum(equation, list(ts)))


@given(st.data())
def test_cumsum(data):
    x = data.draw(floats(shapes()))
    d = data.draw(dims(x.ndim))
    same("cumsum", [x], lambda lib, t: lib.cumsum(t, d))
    same("cumsum", [x], lambda lib, t: lib.cumsum(t, dim=d))
    ints = np.arange(x.size).reshape(x.shape) % 3 - 1
    same_exact(lambda lib, a: lib.cumsum(lib.tensor(a), d), ints, what="cumsum of int64")
    same_exact(lambda lib, a: lib.cumsum(lib.tensor(a) > 0, dim=d), ints, what="cumsum of bool")


def test_cumsum_method():
    same("cumsum", [np.arange(6.0).reshape(2, 3)], lambda lib, t: t.cumsum(1))


@given(floats(shapes()), st.sampled_from([None, -1.05, 0.35]), st.sampled_from([None, -0.45, 1.15]))
def test_clamp(x, lo, hi):
    """min or max may be None; the gradient flows where the value is inside (finite differences away from the
    bounds: the drawn values stay off them unless hypothesis lands exactly on one)."""
    assume(lo is not None or hi is not None)                 # (neither: test_clamp_without_bounds_raises)
    away = all(b is None or np.all(np.abs(x - b) > 1e-4) for b in (lo, hi))
    same("clamp", [x], lambda lib, t: t.clamp(lo, hi), fd=away)
    same("clamp", [x], lambda lib, t: lib.clamp(t, min=lo, max=hi), fd=away)
    same("clamp", [x], lambda lib, t: t.clip(min=lo, max=hi), fd=away)


def test_clamp_with_tensor_bounds():
    same("clamp", [np.array([[0.5, -2.0, 3.0], [1.0, 0.25, -0.75]]), np.array([0.0, -1.0, 2.0])],
         lambda lib, t, lo: t.clamp(min=lo, max=lo + 1.5))


def test_clamp_without_bounds_raises():
    raises_like_torch(lambda lib, a: lib.tensor(a).clamp(), np.ones(2))


@given(floats(shapes(), "nonzero"), floats(shapes()))
def test_abs_sigmoid_pow(nz, x):
    nz = np.asarray(nz)
    same("abs", [nz], lambda lib, t: t.abs())
    same("abs", [nz], lambda lib, t: lib.abs(t))
    same("sigmoid", [x], lambda lib, t: t.sigmoid())
    same("sigmoid", [x], lambda lib, t: lib.sigmoid(t))
    same("pow", [x], lambda lib, t: lib.pow(t, 2))
    same("pow", [nz], lambda lib, t: t.abs().pow(0.5))
    same("pow", [nz], lambda lib, t: t.pow(-1))


@given(st.data())
def test_floor_division_and_remainder(data):
    """// and % take the divisor's sign (Python's and torch's), on floats and ints; % is differentiable in its
    dividend (gradient 1)."""
    a, b = data.draw(broadcastable_shapes(min_dims=1))      # (0-d floats: test_floor_division_of_0d_float64)
    x, y = data.draw(floats(a)), data.draw(floats(b, "nonzero"))
    ix = np.round(x * 3).astype(np.int64)
    iy = np.where(np.round(y * 2) == 0, 1, np.round(y * 2)).astype(np.int64)
    for fn in (lambda p, q: p // q, lambda p, q: p % q):
        same_exact(lambda lib, p, q, fn=fn: fn(lib.tensor(p), lib.tensor(q)), x, y, what="float // %")
        same_exact(lambda lib, p, q, fn=fn: fn(lib.tensor(p), lib.tensor(q)), ix, iy, what="int // %")
        same_exact(lambda lib, p, fn=fn: fn(lib.tensor(p), 3), ix, what="int // % 3")
        same_exact(lambda lib, p, fn=fn: fn(lib.tensor(p), 0.75), x, what="float // % 0.75")
    # away from the jumps of x mod y (|x / y| not within 1e-3 of an integer) for the finite differences
    q = x / y
    smooth = bool(np.all(np.abs(q - np.round(q)) > 1e-3))
    same("remainder", [x], lambda lib, t: t % lib.tensor(y), fd=smooth)


def test_floor_division_of_0d_float64_stays_float64():
    same_exact(lambda lib, p, q: lib.tensor(p) // lib.tensor(q), np.array(7.5), np.array(2.0))


def test_tensor_of_a_numpy_float64_scalar_keeps_float64():
    same_exact(lambda lib, v: lib.tensor(v), np.float64(1.5))


def test_remainder_gradient_reaches_the_divisor():
    same("remainder", [np.array([3.5, -2.25, 7.0]), np.array([2.0, 1.5, -3.0])], lambda lib, a, b: a % b)


@given(broadcastable_shapes(), st.data())
def test_maximum_and_minimum_with_ties(ab, data):
    """Values from {-1, 0, 1}: many ties, where torch sends half the gradient to each operand (no finite
    differences: not differentiable there)."""
    small = st.sampled_from([-1.0, 0.0, 1.0])
    x, y = (data.draw(hnp.arrays(np.float64, s, elements=small)) for s in ab)
    same("maximum", [x, y], lambda lib, a, b: lib.maximum(a, b), fd=False)
    same("minimum", [x, y], lambda lib, a, b: lib.minimum(a, b), fd=False)
    same("maximum", [x, y], lambda lib, a, b: a.max(b), fd=False)


# ---- dtypes and promotion --------------------------------------------------------------------------------------------

@given(python_data())
def test_tensor_of_python_data(data):
    """Ints give int64, floats float32, bools bool, a mix the widest kind, an empty list float32; nested lists keep
    their shape."""
    same_exact(lambda lib, d: lib.tensor(d), data, what=f"tensor({data!r})")


@given(st.sampled_from(["float32", "float64", "int64", "int32", "int16", "uint8", "bool"]), shapes(min_side=0))
def test_tensor_of_a_numpy_array_keeps_its_dtype(name, shape):
    x = np.asarray((np.arange(math.prod(shape)).reshape(shape) % 3).astype(name))
    same_exact(lambda lib, a: lib.tensor(a), x)
    same_exact(lambda lib, a: lib.as_tensor(a), x)
    same_exact(lambda lib, a: lib.from_numpy(a), x)


@given(python_data(), st.sampled_from(["float32", "float64", "float", "double", "int64", "long", "int32", "int",
                                       "bool"]))
def test_tensor_with_a_dtype_argument(data, name):
    assume(name not in ("int64", "long", "int32", "int", "bool") or not _has_fraction(data))  # (float -> int: C casts)
    assume(name not in ("float64", "double") or not _has_fraction(data))   # (test_tensor_of_floats_as_float64...)
    same_exact(lambda lib, d: lib.tensor(d, dtype=getattr(lib, name)), data)


def test_tensor_of_floats_as_float64_keeps_every_digit():
    same_exact(lambda lib: lib.tensor([0.1, 1 / 3], dtype=lib.float64))


def _has_fraction(data):
    return any(isinstance(v, float) and v != int(v) for v in np.ravel(np.asarray(data, dtype=object)))


def test_dtype_names_are_torchs():
    for name in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool", "float",
                 "double", "half", "long", "int", "short"):
        assert np_dtype(getattr(tg, name)) == np_dtype(getattr(torch, name)), name


def test_every_dtype_is_a_torch_dtype():
    for name in ("float32", "float64", "int64", "bool", "long"):
        assert isinstance(getattr(tg, name), tg.dtype), name


@given(shapes(min_side=0, max_dims=3), st.sampled_from([None, "float64", "int64", "bool"]))
def test_zeros_ones_empty_full_and_their_likes(shape, name):
    def kw(lib):
        return {} if name is None else {"dtype": getattr(lib, name)}
    for factory in ("zeros", "ones"):
        if shape:                                                            # (torch's zeros() needs a size)
            same_exact(lambda lib, factory=factory: getattr(lib, factory)(*shape, **kw(lib)), what=factory)
        same_exact(lambda lib, factory=factory: getattr(lib, factory)(shape, **kw(lib)), what=factory)
        same_exact(lambda lib, factory=factory: getattr(lib, factory)(lib.Size(shape)), what=factory)
    same_exact(lambda lib: lib.empty(shape, **kw(lib)).shape, what="empty")
    same_exact(lambda lib: lib.empty(shape, **kw(lib)).dtype == getattr(lib, name or "float32"), what="empty dtype")
    for value in (3, -1.5, True, 0.0):
        same_exact(lambda lib, value=value: lib.full(shape, value), what=f"full({value!r})")
        same_exact(lambda lib, value=value: lib.full(shape, value, **kw(lib)), what=f"full({value!r})")
    x = np.ones(shape, dtype=np.float64)
    for factory in ("zeros_like", "ones_like", "empty_like"):
        same_exact(lambda lib, a, factory=factory: getattr(lib, factory)(lib.tensor(a), **kw(lib)).shape, x,
                   what=factory)
        same_exact(lambda lib, a, factory=factory: getattr(lib, factory)(lib.tensor(a), **kw(lib)).dtype == getattr(
            lib, name or "float64"), x, what=factory)
    same_exact(lambda lib, a: lib.zeros_like(lib.tensor(a), **kw(lib)), x)
    same_exact(lambda lib, a: lib.ones_like(lib.tensor(a)), x)
    same_exact(lambda lib, a: lib.full_like(lib.tensor(a), 7), x)
    same_exact(lambda lib, a: lib.full_like(lib.tensor(a).long(), 7), x)


@given(st.one_of(
    st.tuples(st.integers(-6, 6)),
    st.tuples(st.integers(-6, 6), st.integers(-6, 6)),
    st.tuples(st.integers(-6, 6), st.integers(-6, 6), st.integers(-3, 3).filter(bool)),
    st.tuples(st.integers(-6, 6), st.floats(-6, 6).map(lambda v: round(v, 1)),
              st.sampled_from([0.1, 0.25, -0.3, 0.7, -1.5, 2.0])),
    st.tuples(st.sampled_from([0.5, -2.25, 1.0]), st.integers(-6, 6))))
def test_arange(args):
    """All-int bounds give int64, any float float32 (torch's rule). Lengths are exactly torch's
    (ceil((end - start) / step)); float values within two float32 roundings of the largest bound: this engine
    rounds start + i * step (computed in float64) once, torch's kernel is not always correctly rounded (1.5 + 5 *
    -0.3 gives 5.6e-17 there, 0 here)."""
    n_end = args[0] if len(args) == 1 else args[1]
    n_start = 0 if len(args) == 1 else args[0]
    step = args[2] if len(args) == 3 else 1
    try:
        theirs = torch.arange(*args)
    except RuntimeError:          # the step's sign disagrees with the bounds: test_arange_with_a_step_of_the_wrong...
        return
    ours = tg.arange(*args)
    assert ours.dtype == theirs.numpy().dtype and ours.shape == tuple(theirs.shape)
    if ours.dtype == np.int64:
        exact(ours, theirs)
    else:
        bound = 2 * U32 * max(abs(n_start), abs(n_end), abs(step))
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=bound)
    exact(tg.arange(*args, dtype=tg.float64).shape, torch.arange(*args, dtype=torch.float64).shape)


@pytest.mark.parametrize("args", [(-1,), (0, 5, -1), (3, 1), (2.5, 0.5, 0.25), (-1, -3, 1)])
def test_arange_with_a_step_of_the_wrong_sign_raises(args):
    raises_like_torch(lambda lib: lib.arange(*args))


@given(st.floats(-5, 5).map(lambda v: round(v, 2)), st.floats(-5, 5).map(lambda v: round(v, 2)), st.integers(0, 12))
def test_linspace(start, end, steps):
    """float32 of torch's length; values within 4 float32 roundings of max(|start|, |end|): torch computes
    start + i * step (and end - (steps - 1 - i) * step past the middle) in float32 arithmetic, NumPy in float64
    rounded once (ours is the closer one; near zero torch's can be many ulps of the value itself off)."""
    ours, theirs = tg.linspace(start, end, steps), torch.linspace(start, end, steps)
    assert ours.dtype == np.float32 and ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=4 * U32 * max(abs(start), abs(end)))
    if steps:
        assert ours[0].item() == theirs[0].item() and ours[-1].item() == theirs[-1].item()   # the ends exactly


@given(st.integers(0, 4), st.one_of(st.none(), st.integers(0, 4)), st.integers(-3, 3), st.data())
def test_eye_tril_triu(n, m, diagonal, data):
    same_exact(lambda lib: lib.eye(n) if m is None else lib.eye(n, m))
    same_exact(lambda lib: lib.eye(n, dtype=lib.int64))
    x = data.draw(floats(shapes(min_dims=2, max_dims=3)))
    same("tril", [x], lambda lib, t: lib.tril(t, diagonal))
    same("triu", [x], lambda lib, t: lib.triu(t, diagonal=diagonal))
    same("tril", [x], lambda lib, t: lib.tril(t))
    same_exact(lambda lib: lib.tril(lib.ones(n, n)))                 # the lecture's causal mask
    same_exact(lambda lib: lib.tril(lib.ones(n, n, dtype=lib.int64)) == 0)


def test_tril_and_triu_methods():
    same("tril", [np.ones((3, 3))], lambda lib, t: t.tril(-1))
    same("triu", [np.ones((3, 3))], lambda lib, t: t.triu(1))


CASTS = ["float", "double", "long", "int", "bool"]


@given(st.sampled_from(["float32", "float64", "int64", "int32", "bool"]), shapes(), st.sampled_from(CASTS))
def test_dtype_conversions(src, shape, cast):
    """.float() .double() .long() .int() .bool(), .to(dtype), .type(dtype) and .type() (the type name); float ->
    int truncates toward zero, as C casts (both engines)."""
    x = np.asarray((np.arange(math.prod(shape)).reshape(shape) * 0.75 - 1.2).astype(src))
    same_exact(lambda lib, a: getattr(lib.tensor(a), cast)(), x, what=f"{src}.{cast}()")
    same_exact(lambda lib, a: lib.tensor(a).to(getattr(lib, cast)), x)
    same_exact(lambda lib, a: lib.tensor(a).to(dtype=getattr(lib, cast)), x)
    same_exact(lambda lib, a: lib.tensor(a).type(getattr(lib, cast)), x)
    same_exact(lambda lib, a: getattr(lib.tensor(a), cast)().type(), x)
    same_exact(lambda lib, a: lib.tensor(a).to(lib.tensor(np.zeros(1, x.dtype)).dtype), x)


def test_float_cast_carries_the_gradient():
    same("cast", [np.array([0.5, -1.25, 3.0])], lambda lib, t: (t.float() * 2).double() ** 2, fd=False)
    same("cast", [np.array([0.5, -1.25, 3.0])], lambda lib, t: t.to(lib.float32).sum().to(lib.float64), fd=False)


@given(st.sampled_from(["int64", "int32", "uint8", "bool", "float32", "float64"]),
       st.sampled_from([2, -3, 2.5, 0.5, True]), st.sampled_from(["+", "-", "*", "/", "<", ">=", "==", "!="]))
def test_scalar_promotion_and_comparisons(name, scalar, op):
    """An integer tensor with a float scalar is float32; a float tensor keeps its dtype; comparisons give bool."""
    assume(not (op == "-" and (name == "bool" or scalar is True)))     # torch: bool subtraction refused
    assume(not (name == "uint8" and not isinstance(scalar, float) and scalar < 0))  # torch wraps -3 to 253 (README)
    x = (np.arange(6).reshape(2, 3) % 3).astype(name)
    fn = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
          "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}[op]
    ours, theirs = fn(tg.tensor(x), scalar), fn(torch.tensor(x), scalar)
    assert ours.dtype == theirs.numpy().dtype, f"{name} {op} {scalar!r}: {ours.dtype}, torch {theirs.dtype}"
    np.testing.assert_allclose(ours.numpy().astype(np.float64), theirs.numpy().astype(np.float64),
                               rtol=2 * U32, atol=0)   # float32 results: one rounding each (torch may divide by 1/b)


# ---- indexing --------------------------------------------------------------------------------------------------------

def _index_for(lib, index):
    """A torch_indices index with its NumPy arrays as the engine's tensors (lists stay lists)."""
    return tuple(lib.tensor(i) if isinstance(i, np.ndarray) else i for i in index)


@given(st.data())
def test_getitem(data):
    """ints (negative too), slices, None, Ellipsis, lists, int tensors and bool masks; gradients scatter back (repeated
    indices add up)."""
    x = data.draw(floats(shapes(min_dims=1)))
    index = data.draw(torch_indices(x.shape))
    same("getitem", [x], lambda lib, t: t[_index_for(lib, index)])
    if len(index) == 1:
        same("getitem", [x], lambda lib, t: t[_index_for(lib, index)[0]])


@given(st.data())
def test_slice_bounds_from_a_tensor_of_offsets(data):
    """The lecture's get_batch: `ix = torch.randint(len(data) - block_size, (B,))`, then `data[i:i+block_size]` for i
    in ix (0-d int64 tensors as slice bounds, `i + 1` one too), stacked."""
    n, block = data.draw(st.integers(9, 20)), data.draw(st.integers(1, 8))
    offsets = data.draw(hnp.arrays(np.int64, st.integers(1, 4), elements=st.integers(0, n - block - 1)))
    text = (np.arange(n) * 5) % 7

    def batch(lib, offs):
        d, ix = lib.tensor(text), lib.tensor(offs)
        x = lib.stack([d[i:i + block] for i in ix])
        y = lib.stack([d[i + 1:i + block + 1] for i in ix])
        return x, y, d[ix[0]], d[-ix[0] - 1]
    same_exact(batch, offsets)
    values = np.arange(float(n)) / 3
    same("getitem", [values], lambda lib, t: lib.stack([t[i:i + block] for i in lib.tensor(offsets)]))


@given(setitem_cases())
def test_setitem_values(case):
    """`x[b, t] = tensor`, `losses[k] = float`, slices, broadcast values, bool masks: torch's values."""
    x, index, value = case

    def write(lib, a):
        t = lib.tensor(a)
        t[_index_for(lib, index)] = lib.tensor(value) if isinstance(value, np.ndarray) else value
        return t
    same_exact(write, x)


@given(setitem_cases(dtype=np.int64))
def test_setitem_into_an_integer_tensor(case):
    """Float values written into int64 truncate toward zero, as torch's copy does."""
    x, index, value = case
    if isinstance(value, np.ndarray):
        value = np.round(value * 3)

    def write(lib, a):
        t = lib.tensor(a)
        t[_index_for(lib, index)] = lib.tensor(value).long() if isinstance(value, np.ndarray) else value
        return t
    same_exact(write, x)


def test_setitem_losses_loop_and_bool_mask():
    """estimate_loss's `losses = torch.zeros(k); losses[k] = loss.item()`, then a masked write."""
    def run(lib):
        losses = lib.zeros(5)
        for k in range(5):
            losses[k] = (lib.tensor([1.5, 2.0]) * k).sum().item()
        losses[losses > 4] = -1.0
        losses[lib.tensor([0, 2])] = lib.tensor([9.0, 8.0])
        return losses, losses.mean()
    same_exact(run)


@given(st.data())
def test_setitem_of_values_that_require_grad_into_fresh_zeros(data):
    """The notebook's bag of words: `xbow = torch.zeros((B, T, C)); xbow[b, t] = torch.mean(x[b, :t+1], 0)` in a loop
    — values and gradients as torch's."""
    x = data.draw(floats((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)))))

    def xbow(lib, t):
        B, T, C = t.shape
        out = lib.zeros((B, T, C), dtype=t.dtype)
        for b in range(B):
            for i in range(T):
                out[b, i] = lib.mean(t[b, :i + 1], 0)
        return out
    same("setitem", [x], xbow)
    same("setitem", [x], lambda lib, t: _masked_write(lib, t), fd=bool(np.all(np.abs(x) > 1e-4)))  # (mask: t > 0)


def _masked_write(lib, t):
    out = t * 2                    # a non-leaf that requires grad: written in place, then used
    out[out > 0] = 0.5
    out[..., :1] = t[..., :1] ** 2
    return out * t


INPLACE = {
    "add_": lambda lib, t, o: t.add_(o), "add_alpha": lambda lib, t, o: t.add_(o, alpha=-0.5),
    "sub_": lambda lib, t, o: t.sub_(o), "mul_": lambda lib, t, o: t.mul_(o), "div_": lambda lib, t, o: t.div_(o),
    "fill_": lambda lib, t, o: t.fill_(1.25), "zero_": lambda lib, t, o: t.zero_(),
    "copy_": lambda lib, t, o: t.copy_(o), "clamp_": lambda lib, t, o: t.clamp_(-0.5, 0.75),
    "clamp_min": lambda lib, t, o: t.clamp_(min=0.1),
    "masked_fill_": lambda lib, t, o: t.masked_fill_(o > 0, -2.0),
    "+=": lambda lib, t, o: _iadd(t, o), "*=": lambda lib, t, o: _imul(t, o),
    "setitem": lambda lib, t, o: _setitem(t, o),
}


def _setitem(t, o):
    t[...] = o
    return t


def _iadd(t, o):
    t += o
    return t


def _imul(t, o):
    t *= o
    return t


@given(st.sampled_from(sorted(INPLACE)), st.data())
def test_inplace_ops_without_grad(name, data):
    """On tensors that need no gradient: the values change in place (the same object), as in torch."""
    x, o = (np.asarray(data.draw(floats(s, "nonzero"))) for s in data.draw(broadcastable_shapes(max_dims=3)))
    x = np.broadcast_to(x, np.broadcast_shapes(x.shape, o.shape)).copy()

    def run(lib, a, b):
        t = lib.tensor(a)
        out = INPLACE[name](lib, t, lib.tensor(b))
        assert out is t
        return t
    same_exact(run, x, o)


OVERWRITES = ("fill_", "zero_", "copy_")   # no gradient to the old value: test_overwrites_on_a_tensor_in_the_graph


@pytest.mark.parametrize("name", sorted(set(INPLACE) - set(OVERWRITES)))
@given(data=st.data())
def test_inplace_ops_on_a_tensor_in_the_graph(name, data):
    """On a non-leaf that requires grad (y = x * 1.5), and with an operand that requires grad: torch's values and
    gradients (no finite differences where the op has a kink or a constant)."""
    # (0-d setitem: its own test below)
    pair = data.draw(broadcastable_shapes(max_dims=3, min_dims=1 if name == "setitem" else 0))
    x, o = (np.asarray(data.draw(floats(s, "nonzero"))) for s in pair)
    x = np.broadcast_to(x, np.broadcast_shapes(x.shape, o.shape)).copy()

    def run(lib, a, b):
        y = a * 1.5
        return INPLACE[name](lib, y, b) * a
    same(name, [x, o], run, fd=name not in ("clamp_", "clamp_min", "masked_fill_"))


@pytest.mark.parametrize("name", OVERWRITES)
def test_overwrites_on_a_tensor_in_the_graph(name):
    x, o = np.array([0.5, -1.25, 2.0]), np.array([1.5, 0.75, -3.0])
    same(name, [x, o], lambda lib, a, b: INPLACE[name](lib, a * 1.5, b) * a)


def test_setitem_with_grad_on_a_0d_tensor():
    same("setitem", [np.array(2.0), np.array(-0.5)], lambda lib, a, b: _setitem(a * 1.5, b * 3) * a)


@pytest.mark.parametrize("name", sorted(set(INPLACE) - {"+=", "*="}))   # (those: test_augmented_assignment_...)
def test_inplace_on_a_leaf_that_requires_grad_raises_as_torch(name):
    x = np.array([0.5, -1.0])

    def run(lib, a):
        INPLACE[name](lib, lib.tensor(a, requires_grad=True), lib.tensor(a))
    raises_like_torch(run, x)
    # under no_grad it is allowed (the optimizer's and nn.init's way), in both
    same_exact(lambda lib, a: _under_no_grad(lib, lambda t: INPLACE[name](lib, t, lib.tensor(a)), a), x)


def test_inplace_errors_as_torch():
    """A float result written into an integer tensor, and a result that would grow the tensor, are errors in both."""
    raises_like_torch(lambda lib: lib.tensor([1, 2]).div_(2))
    raises_like_torch(lambda lib: lib.tensor([1, 2]).add_(0.5))
    raises_like_torch(lambda lib: lib.zeros(3).add_(lib.ones(2, 3)))


def test_copy_of_a_mis_shaped_source_raises_runtime_error():
    raises_like_torch(lambda lib: lib.zeros(3).copy_(lib.ones(2)))


def _under_no_grad(lib, fn, a):
    t = lib.tensor(a, requires_grad=True)
    with lib.no_grad():
        fn(t)
    return t.detach(), t.requires_grad, t.is_leaf


def test_augmented_assignment_on_a_leaf_that_requires_grad_raises():
    raises_like_torch(lambda lib, a: _iadd(lib.tensor(a, requires_grad=True), 1.0), np.array([0.5, -1.0]))


# ---- conversions -----------------------------------------------------------------------------------------------------

@given(st.sampled_from(["float32", "float64", "int64", "bool"]), shapes())
def test_item_tolist_numbers_and_sizes(name, shape):
    x = np.asarray((np.arange(math.prod(shape)).reshape(shape) * 1.25 - 2).astype(name))
    same_exact(lambda lib, a: lib.tensor(a).tolist(), x)
    same_exact(lambda lib, a: (lib.tensor(a).numel(), lib.tensor(a).dim(), tuple(lib.tensor(a).size()),
                               lib.tensor(a).shape == shape, lib.tensor(a).size() == shape, lib.tensor(a).ndim,
                               [lib.tensor(a).size(d) for d in range(-len(shape), len(shape))]), x)
    if x.size == 1:
        same_exact(lambda lib, a: (lib.tensor(a).item(), float(lib.tensor(a)), int(lib.tensor(a)),
                                   bool(lib.tensor(a))), x)
    else:
        raises_like_torch(lambda lib, a: bool(lib.tensor(a)), x)
        raises_like_torch(lambda lib, a: lib.tensor(a).item(), x)
    if shape:
        same_exact(lambda lib, a: (len(lib.tensor(a)), [r.tolist() for r in lib.tensor(a)]), x)
        same_exact(lambda lib, a: [type(r).__name__ == "Tensor" for r in lib.tensor(a)], x)
    else:
        same_exact(lambda lib, a: format(lib.tensor(a), ".4f"), x.astype(np.float64))
        same_exact(lambda lib, a: f"{lib.tensor(a).float():.3e}", x.astype(np.float64))


@given(st.integers(0, 6), st.sampled_from(["int64", "int32", "uint8"]))
def test_index_protocol(n, name):
    """A one-element integer tensor is an index: range(t), list[t], a slice bound, operator.index."""
    import operator
    stuff = list("abcdefgh")
    same_exact(lambda lib, v: (list(range(lib.tensor(v))), stuff[lib.tensor(v)], stuff[:lib.tensor(v)],
                               operator.index(lib.tensor(v))), np.array(n, dtype=name))
    raises_like_torch(lambda lib: stuff[lib.tensor(1.0)])
    raises_like_torch(lambda lib: stuff[lib.tensor([1, 2])])


# ---- nn.functional ---------------------------------------------------------------------------------------------------

def F(lib):
    return lib.nn.functional


@given(st.data())
def test_softmax_and_log_softmax_with_dim_and_dtype(data):
    x = data.draw(floats(shapes(min_dims=1)))
    d = data.draw(dims(x.ndim))
    for op in ("softmax", "log_softmax"):
        same(op, [x], lambda lib, t, op=op: getattr(F(lib), op)(t, dim=d))
        same(op, [x], lambda lib, t, op=op: getattr(F(lib), op)(t, d))
        same(op, [x], lambda lib, t, op=op: getattr(lib, op)(t, d))
        same(op, [x], lambda lib, t, op=op: getattr(t, op)(dim=d))
        # dtype=: cast first (float32 in, float64 out; the float32 step rounds, so no finite differences)
        same(op, [x], lambda lib, t, op=op: getattr(F(lib), op)(t.float(), dim=d, dtype=lib.float64), fd=False)


@given(cross_entropy_cases())
def test_cross_entropy(case):
    """torch's F.cross_entropy and nn.CrossEntropyLoss: every layout, ignore_index, weight, label_smoothing and
    reduction, gradients included (the usual case — (N, C), indices, mean — is the fused node)."""
    logits, target, weight, kw = case
    kept = target.dtype.kind == "f" or np.any(target != kw.get("ignore_index", -100))
    assume(kept or kw["reduction"] != "mean")          # every target ignored: 0 / 0 = nan in both
    assume(weight is None or target.ndim or target.dtype.kind == "f")  # (test_cross_entropy_weight_of_a_0d_target)

    def loss(lib, x):
        w = None if weight is None else lib.tensor(weight)
        return F(lib).cross_entropy(x, lib.tensor(target), weight=w, **kw)
    same("cross_entropy", [logits], loss)

    def module(lib, x):
        w = None if weight is None else lib.tensor(weight)
        return lib.nn.CrossEntropyLoss(weight=w, **kw)(x, lib.tensor(target))
    same("cross_entropy", [logits], module)


def test_cross_entropy_weight_of_a_0d_target():
    same("cross_entropy", [np.array([0.3, -1.2, 2.0])],
         lambda lib, x: F(lib).cross_entropy(x, lib.tensor(1), weight=lib.tensor(np.array([0.5, 1.7, 1.1])),
                                             reduction="sum"))


def test_cross_entropy_of_the_lecture_layout():
    """`logits.view(B*T, C)`, `targets.view(B*T)`: the fused path, float32 in both. Bound: helpers.tol(float32, n)
    with n = 11 + 20 (the log-sum-exp over C = 11 classes, then the mean over B*T = 20 rows; two summation orders)."""
    rng = np.random.default_rng(0)
    logits, targets = rng.standard_normal((4, 5, 11)).astype(np.float32), rng.integers(0, 11, (4, 5))

    def run(lib, x, y):
        x = lib.tensor(x, requires_grad=True)
        B, T, C = x.shape
        loss = F(lib).cross_entropy(x.view(B * T, C), lib.tensor(y).view(B * T))
        loss.backward()
        return loss.detach(), x.grad
    (ours, ours_g), (theirs, theirs_g) = run_both(run, logits, targets)
    assert ours.dtype == np.float32 and ours_g.dtype == np.float32
    bound = tol(np.float32, 11 + 20)
    assert rel_err(ours.numpy(), theirs.numpy()) <= bound and rel_err(ours_g.numpy(), theirs_g.numpy()) <= bound


@given(floats(shapes()))
def test_activations(x):
    for approximate in ("none", "tanh"):
        same("gelu", [x], lambda lib, t, approximate=approximate: F(lib).gelu(t, approximate=approximate))
        same("gelu", [x], lambda lib, t, approximate=approximate: lib.nn.GELU(approximate=approximate)(t))
    same("gelu", [x], lambda lib, t: F(lib).gelu(t))                            # torch's default: exact
    same("gelu", [x], lambda lib, t: lib.nn.GELU()(t))
    same("tanh", [x], lambda lib, t: F(lib).tanh(t))
    same("tanh", [x], lambda lib, t: lib.nn.Tanh()(t))
    same("sigmoid", [x], lambda lib, t: F(lib).sigmoid(t))
    nz = x + np.where(np.abs(x) < 1e-3, 0.5, 0.0)                                # relu: off its kink
    same("relu", [nz], lambda lib, t: F(lib).relu(t))
    same("relu", [nz], lambda lib, t: lib.nn.ReLU()(t))
    same("relu", [nz], lambda lib, t: lib.relu(t))


@given(st.data())
def test_layer_norm(data):
    """Over 1 and 2 trailing axes, weight and bias given or None (F.layer_norm and nn.LayerNorm). A ramp is added to
    each normalised group so that no group is constant: a constant one's x - mean is rounding noise that LayerNorm
    magnifies by 1/sqrt(eps) = 316, past TOL (test_layers.test_layer_norm_constant_rows bounds that case)."""
    k = data.draw(st.integers(1, 2))
    shape = data.draw(shapes(min_dims=k, max_dims=3, min_side=2))
    norm = shape[len(shape) - k:]
    x = data.draw(floats(shape)) + np.arange(math.prod(norm)).reshape(norm) * 0.37
    w, b = data.draw(floats(norm)), data.draw(floats(norm))
    same("layer_norm", [x, w, b], lambda lib, t, wt, bs: F(lib).layer_norm(t, norm, wt, bs))
    same("layer_norm", [x, w], lambda lib, t, wt: F(lib).layer_norm(t, norm, weight=wt))
    same("layer_norm", [x, b], lambda lib, t, bs: F(lib).layer_norm(t, list(norm), bias=bs, eps=1e-3))
    same("layer_norm", [x], lambda lib, t: F(lib).layer_norm(t, norm))
    same("layer_norm", [x], lambda lib, t: lib.nn.LayerNorm(norm, dtype=lib.float64)(t))
    same("layer_norm", [x], lambda lib, t: lib.nn.LayerNorm(norm, elementwise_affine=False)(t))
    same("layer_norm", [x], lambda lib, t: lib.nn.LayerNorm(norm, bias=False, dtype=lib.float64)(t))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_statistics(p):
    """Training: each element kept with probability 1 - p and scaled by 1 / (1 - p), the gradient through the same
    mask. The kept fraction of n = 40,000 elements is binomial, within 5 sigma = 5 sqrt(p (1 - p) / n) <= 0.0125
    of 1 - p (a seeded draw: deterministic; a wrong p or an uninverted scale is off by far more)."""
    n = 40_000
    tg.manual_seed(0)
    x = tg.ones(n, requires_grad=True)
    y = F(tg).dropout(x, p=p, training=True)
    kept = y.numpy() != 0
    assert abs(kept.mean() - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n)
    scale = np.float32(1) / np.float32(1 - p)                                        # torch's, in float32
    np.testing.assert_allclose(y.numpy()[kept], scale, rtol=2 * U32, atol=0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), y.detach().numpy())                # d(x * mask * s)/dx = mask * s
    m = tg.nn.Dropout(p)
    assert m.training and not np.array_equal(m(tg.ones(64)).numpy(), np.ones(64))
    m.eval()
    z = tg.randn(3, 4)
    assert np.array_equal(m(z).numpy(), z.numpy())


@given(floats(shapes()), st.sampled_from([0.0, 0.3, 1.0]))
def test_dropout_identities(x, p):
    """training=False and p=0 are the identity (gradient 1); p=1 gives zeros (gradient 0), in both engines."""
    same("dropout", [x], lambda lib, t: F(lib).dropout(t, p=p, training=False))
    same("dropout", [x], lambda lib, t: F(lib).dropout(t, p=0.0))
    same("dropout", [x], lambda lib, t: F(lib).dropout(t, p=1.0))
    same("dropout", [x], lambda lib, t: lib.nn.Dropout(p).eval()(t))


@given(attention_inputs(causal_square=True), st.sampled_from([None, 0.7]))
def test_sdpa_causal_square(qkv, scale):
    """is_causal with L == S and the default scale: the fused attention core (3-D and 4-D); scale= given, or 2-D
    inputs: the composed path. (v's last axis Ev == E here: test_sdpa_fused_path_with_another_value_width.)"""
    same("sdpa", list(qkv), lambda lib, q, k, v: F(lib).scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                        scale=scale))


def test_sdpa_fused_path_with_another_value_width():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 1))
    same("sdpa", [q, k, v], lambda lib, *t: F(lib).scaled_dot_product_attention(*t, is_causal=True))


@given(attention_inputs())
def test_sdpa_causal_with_more_or_fewer_keys(qkv):
    """L != S: query i sees keys 0..i (torch's top-left alignment); with L > S the last rows see every key."""
    same("sdpa", list(qkv), lambda lib, q, k, v: F(lib).scaled_dot_product_attention(q, k, v, is_causal=True))


@given(attention_inputs(), st.data())
def test_sdpa_with_masks_and_scale(qkv, data):
    """attn_mask bool (True = attend; every row keeps one key, else torch and ours give nan rows) and float (added
    to the scores), broadcast over the leading axes; scale=."""
    q, k, v = qkv
    L, S = q.shape[-2], k.shape[-2]
    mask = data.draw(hnp.arrays(np.bool_, (L, S)))
    mask[np.arange(L), data.draw(hnp.arrays(np.int64, L, elements=st.integers(0, S - 1)))] = True
    bias = data.draw(floats((L, S)))
    scale = data.draw(st.sampled_from([None, 0.25, 2.0]))
    def sdpa(lib):
        return F(lib).scaled_dot_product_attention
    same("sdpa", [q, k, v], lambda lib, *t: sdpa(lib)(*t, attn_mask=lib.tensor(mask), scale=scale))
    same("sdpa", [q, k, v, bias], lambda lib, *t: sdpa(lib)(*t[:3], attn_mask=t[3], scale=scale))
    same("sdpa", [q, k, v], lambda lib, *t: sdpa(lib)(*t))


@given(st.data())
def test_embedding_and_padding_idx(data):
    n, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    w = data.draw(floats((n, dim)))
    idx = data.draw(hnp.arrays(np.int64, shapes(max_dims=2), elements=st.integers(0, n - 1)))
    pad = data.draw(st.one_of(st.none(), st.integers(0, n - 1)))
    # (the padding row's zero gradient is a convention, not a derivative: no finite differences with one)
    same("embedding", [w], lambda lib, wt: F(lib).embedding(lib.tensor(idx), wt, padding_idx=pad), fd=pad is None)
    same("embedding", [w], lambda lib, wt: F(lib).embedding(lib.tensor(idx), wt))


def test_nn_embedding_padding_row_starts_at_zero_and_gets_no_gradient():
    for lib in (tg, torch):
        emb = lib.nn.Embedding(5, 3, padding_idx=2)
        assert np.all(emb.weight.detach().numpy()[2] == 0)
        emb(lib.tensor([[2, 1, 2]])).sum().backward()
        g = emb.weight.grad.numpy()
        assert np.all(g[2] == 0) and np.all(g[1] == 1) and np.all(g[0] == 0)


@given(hnp.arrays(np.int64, shapes(max_dims=2), elements=st.integers(0, 4)), st.sampled_from([-1, 5, 7]))
def test_one_hot(idx, num_classes):
    assume(num_classes != -1 or idx.size)               # (the largest index of nothing: torch raises)
    same_exact(lambda lib, i: F(lib).one_hot(lib.tensor(i), num_classes), idx)
    same_exact(lambda lib, i: F(lib).one_hot(lib.tensor(i), num_classes=num_classes).float(), idx)


@given(broadcastable_shapes().flatmap(lambda p: st.tuples(floats(p[0]), floats(p[0]))),
       st.sampled_from(["mean", "sum", "none"]))
def test_mse_loss(xy, reduction):
    same("mse_loss", list(xy), lambda lib, a, b: F(lib).mse_loss(a, b, reduction=reduction))
    same("mse_loss", list(xy), lambda lib, a, b: lib.nn.MSELoss(reduction=reduction)(a, b))


@given(st.data())
def test_pad(data):
    x = data.draw(floats(shapes(min_dims=1, max_dims=3)))
    k = data.draw(st.integers(1, x.ndim))
    widths = tuple(data.draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k)))
    value = data.draw(st.sampled_from([0.0, -1.5]))
    same("pad", [x], lambda lib, t: F(lib).pad(t, widths))
    same("pad", [x], lambda lib, t: F(lib).pad(t, widths, mode="constant", value=value))


def test_pad_refuses_negative_widths_and_other_modes():
    """torch crops with negative widths and has reflect/replicate/circular modes: here each is an UnsupportedError
    naming the call (a documented part of the supported set), not a wrong result."""
    x = tg.tensor(np.arange(12.0).reshape(3, 4))
    for call in (lambda: F(tg).pad(x, (-1, 1, 0, -2)), lambda: F(tg).pad(x, (1, 1), mode="reflect")):
        with pytest.raises(tg.UnsupportedError, match="F.pad"):
            call()


# ---- nn modules ------------------------------------------------------------------------------------------------------

def module_tree(lib, shared=False):
    """The same nested module tree in either engine: parameters, persistent and non-persistent buffers, a parameter
    set to None, containers (Sequential, ModuleList, ModuleDict with unsorted keys), every layer kind; with
    `shared`, one Linear used by both blocks."""
    nn = lib.nn

    class Block(nn.Module):
        def __init__(self, common):
            super().__init__()
            self.register_buffer("tril", lib.tril(lib.ones(3, 3)))
            self.ln = nn.LayerNorm(4)
            self.proj = nn.Linear(4, 4) if common is None else common
            self.register_buffer("cache", lib.zeros(2), persistent=False)
            self.gain = nn.Parameter(lib.ones(4))
            self.drop = nn.Dropout(0.25)

        def forward(self, x):
            return self.drop(self.proj(self.ln(x))) * self.gain

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(lib.ones(()))
            self.register_buffer("steps", lib.tensor(0))
            self.emb = nn.Embedding(6, 4)
            common = nn.Linear(4, 4, bias=False) if shared else None
            self.blocks = nn.ModuleList([Block(common) for _ in range(2)])
            self.heads = nn.ModuleDict({"z": nn.Linear(4, 2), "a": nn.Sequential(nn.GELU(), nn.Linear(4, 3),
                                                                                 nn.ReLU(), nn.Tanh())})
            self.gone = nn.Parameter(lib.zeros(1))
            self.gone = None
            self.loss = nn.CrossEntropyLoss()

        def forward(self, idx):
            x = self.emb(idx)
            for block in self.blocks:
                x = x + block(x)
            return self.heads["a"](x).sum(-1) * self.scale + self.heads["z"](x)[..., 0]
    return Net()


def _structure(m):
    """Everything about a module tree's layout that torch fixes: names and orders, shapes, flags."""
    visited = []
    m.apply(lambda mod: visited.append(type(mod).__name__))
    return {
        "state_dict": [(k, tuple(v.shape)) for k, v in m.state_dict().items()],
        "named_parameters": [(k, tuple(p.shape)) for k, p in m.named_parameters()],
        "parameters": [tuple(p.shape) for p in m.parameters()],
        "named_buffers": [k for k, _ in m.named_buffers()],
        "buffers": len(list(m.buffers())),
        "named_children": [(k, type(c).__name__) for k, c in m.named_children()],
        "children": [type(c).__name__ for c in m.children()],
        "named_modules": [(k, type(c).__name__) for k, c in m.named_modules()],
        "modules": [type(c).__name__ for c in m.modules()],
        "apply": visited,
        "not recursive": [k for k, _ in m.named_parameters(recurse=False)],
        "prefixed": [k for k, _ in m.blocks[1].named_parameters(prefix="blocks.1")],
    }


def test_module_tree_layout_equals_torchs():
    """state_dict keys (parameters, then persistent buffers, then children, in assignment order; the None parameter
    and the non-persistent buffer left out), named_parameters/parameters/buffers/children/modules/named_modules
    orders and the order apply() visits (children first)."""
    ours, theirs = _structure(module_tree(tg)), _structure(module_tree(torch))
    for key in theirs:
        assert ours[key] == theirs[key], f"{key}: ours {ours[key]}, torch {theirs[key]}"


def test_state_dict_of_a_shared_submodule_has_every_name():
    ours, theirs = _structure(module_tree(tg, shared=True)), _structure(module_tree(torch, shared=True))
    assert ours["named_parameters"] == theirs["named_parameters"]        # (this part holds: one name each)
    assert ours["state_dict"] == theirs["state_dict"]


def test_children_of_a_module_assigned_twice():
    def build(lib):
        m = lib.nn.Module()
        m.a = lib.nn.ReLU()
        m.b = m.a
        return [n for n, _ in m.named_children()], len(list(m.children()))
    same_exact(build)


def test_state_dict_shares_memory_with_the_module():
    """state_dict() values are detached tensors on the module's own memory (torch's): writing one writes the module."""
    def run(lib):
        m = lib.nn.Linear(2, 2)
        sd = m.state_dict()
        sd["bias"].fill_(3.0)
        return m.bias.detach(), sd["bias"].requires_grad, list(sd) == ["weight", "bias"]
    same_exact(run)


def test_train_and_eval_flags():
    def flags(lib):
        m = module_tree(lib)
        out = [[x.training for x in m.modules()]]
        assert m.eval() is m
        out.append([x.training for x in m.modules()])
        m.blocks.train()
        out.append([x.training for x in m.modules()])
        m.train(False)
        out.append([x.training for x in m.modules()])
        return out
    same_exact(flags)


def _copy_weights(ours, theirs):
    """torch's state dict loaded into ours (arrays), so both trees hold the same numbers."""
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})


def test_module_tree_forward_and_gradients_equal_torchs():
    """The whole tree in float64 (eval: no dropout), its weights copied from torch's: output and every parameter's
    gradient within TOL."""
    ours, theirs = module_tree(tg).double().eval(), module_tree(torch).double().eval()
    _copy_weights(ours, theirs)
    idx = np.array([[0, 5, 2], [3, 3, 1]])
    errors = compare(lambda: ours(tg.tensor(idx)), lambda: theirs(torch.tensor(idx)), [],
                     dict(ours.named_parameters()), dict(theirs.named_parameters()))
    assert_errors(errors, TOL, TOL, "module tree")


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    def run(lib):
        m = lib.nn.Sequential(lib.nn.Linear(3, 2), lib.nn.Linear(2, 1))
        m(lib.ones(4, 3)).sum().backward()
        m.zero_grad(set_to_none=set_to_none)
        return [None if p.grad is None else p.grad.tolist() for p in m.parameters()]
    same_exact(run)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_strict_and_not(strict):
    """Missing and unexpected keys: strict raises (RuntimeError), non-strict returns them (torch's namedtuple
    fields) and loads the rest; a shape that does not fit raises either way."""
    def run(lib):
        src = module_tree(lib)
        sd = {k: v.clone() + 1 for k, v in src.state_dict().items()}
        sd.pop("emb.weight")
        sd.pop("blocks.1.tril")
        sd["extra.weight"] = lib.ones(2)
        dst = module_tree(lib)
        if strict:
            with pytest.raises(RuntimeError):
                dst.load_state_dict(sd)
            return None
        result = dst.load_state_dict(sd, strict=False)
        loaded = dst.state_dict()
        return (list(result.missing_keys), list(result.unexpected_keys),
                [bool((loaded[k] == sd[k]).all()) for k in loaded if k in sd])
    same_exact(run)

    def mis_shaped(lib):
        m = lib.nn.Linear(3, 2)
        m.load_state_dict({"weight": lib.ones(3, 2), "bias": lib.ones(2)}, strict=strict)
    raises_like_torch(mis_shaped)


def test_default_initialisation_statistics():
    """Linear (torch's kaiming_uniform_ with a = sqrt(5)): weight and bias inside +-1/sqrt(in_features), with U(-b, b)
    moments: mean 0 and E[w^2] = b^2 / 3, within 5 sigma of their sampling distributions (sd b / sqrt(3 n) and
    b^2 sqrt(4 / 45 / n)). Embedding: N(0, 1) by its mean (sd 1 / sqrt(n)) and E[w^2] = 1 (sd sqrt(2 / n)); LayerNorm
    ones and zeros. Seeded, so deterministic; an N(0, 0.02) or a fan_out bound fails by far."""
    tg.manual_seed(0)
    lin = tg.nn.Linear(50, 400)
    b = 1 / math.sqrt(50)
    for p in (lin.weight, lin.bias):
        w = p.numpy().astype(np.float64)
        n = w.size
        assert p.dtype == np.float32 and np.all(np.abs(w) <= b)
        assert abs(w.mean()) <= 5 * b / math.sqrt(3 * n)
        assert abs((w ** 2).mean() - b * b / 3) <= 5 * b * b * math.sqrt(4 / 45 / n)
    assert np.abs(lin.weight.numpy()).max() > 0.99 * b                     # the bound is reached, not smaller
    emb = tg.nn.Embedding(300, 40).weight.numpy().astype(np.float64)
    n = emb.size
    assert abs(emb.mean()) <= 5 / math.sqrt(n) and abs((emb ** 2).mean() - 1) <= 5 * math.sqrt(2 / n)
    ln = tg.nn.LayerNorm(7)
    assert np.all(ln.weight.numpy() == 1) and np.all(ln.bias.numpy() == 0)
    assert tg.nn.Linear(3, 2, bias=False).bias is None and torch.nn.Linear(3, 2, bias=False).bias is None


def test_nn_init_bounds_and_moments():
    """Each init function on a (300, 200) tensor: uniform ones inside their bound and reaching it, with E[w^2] =
    bound^2 / 3; normal ones with E[w^2] = std^2 (sd std^2 sqrt(2 / n)); all means within 5 sigma of 0. The gains
    are torch's exactly."""
    init = tg.nn.init
    fan_in, fan_out = 200, 300
    n = fan_in * fan_out
    for nl in ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu", "conv2d"):
        assert init.calculate_gain(nl) == torch.nn.init.calculate_gain(nl), nl
    assert init.calculate_gain("leaky_relu", 0.2) == torch.nn.init.calculate_gain("leaky_relu", 0.2)
    tg.manual_seed(1)
    uniform = {
        "uniform_": (lambda t: init.uniform_(t, -0.3, 0.3), 0.3),
        "xavier_uniform_": (lambda t: init.xavier_uniform_(t, gain=2.0), 2.0 * math.sqrt(6 / (fan_in + fan_out))),
        "kaiming_uniform_": (lambda t: init.kaiming_uniform_(t, a=math.sqrt(5)), 1 / math.sqrt(fan_in)),
        "kaiming_uniform_relu": (lambda t: init.kaiming_uniform_(t, nonlinearity="relu", mode="fan_out"),
                                 math.sqrt(2) * math.sqrt(3 / fan_out)),
    }
    for name, (fn, bound) in uniform.items():
        t = tg.empty(fan_out, fan_in)
        assert fn(t) is t
        w = t.numpy().astype(np.float64)
        assert np.all(np.abs(w) <= bound * (1 + U32)) and np.abs(w).max() > 0.99 * bound, name
        assert abs(w.mean()) <= 5 * bound / math.sqrt(3 * n), name
        assert abs((w ** 2).mean() - bound ** 2 / 3) <= 5 * bound ** 2 * math.sqrt(4 / 45 / n), name
    normal = {
        "normal_": (lambda t: init.normal_(t, 0.0, 0.02), 0.02),
        "xavier_normal_": (lambda t: init.xavier_normal_(t), math.sqrt(2 / (fan_in + fan_out))),
        "kaiming_normal_": (lambda t: init.kaiming_normal_(t, nonlinearity="relu"), math.sqrt(2 / fan_in)),
    }
    for name, (fn, std) in normal.items():
        w = fn(tg.empty(fan_out, fan_in)).numpy().astype(np.float64)
        assert abs(w.mean()) <= 5 * std / math.sqrt(n), name
        assert abs((w ** 2).mean() - std ** 2) <= 5 * std ** 2 * math.sqrt(2 / n), name
    w = init.trunc_normal_(tg.empty(fan_out, fan_in), std=1.0, a=-0.5, b=1.0).numpy()
    assert w.min() >= -0.5 and w.max() <= 1.0 and w.min() < -0.49 and w.max() > 0.99
    p = tg.nn.Parameter(tg.ones(3, 2))
    for fn, value in ((init.zeros_, 0.0), (init.ones_, 1.0), (lambda t: init.constant_(t, 0.5), 0.5)):
        assert fn(p) is p and np.all(p.numpy() == value) and p.requires_grad and p.is_leaf


@given(st.sampled_from([0.01, 0.5, 3.0, 1e3]), st.integers(0, 2 ** 16))
def test_clip_grad_norm(max_norm, seed):
    """The returned total norm (before clipping) and the clipped gradients equal torch's (float64, within TOL: the
    norm is a sum of squares in another order)."""
    rng = np.random.default_rng(seed)
    shapes_ = [(3, 2), (2,), (4,)]
    grads = [rng.standard_normal(s) for s in shapes_]

    def run(lib):
        params = [lib.nn.Parameter(lib.zeros(s, dtype=lib.float64)) for s in shapes_]
        for p, g in zip(params, grads, strict=True):
            p.grad = lib.tensor(g)
        params.append(lib.nn.Parameter(lib.zeros(2, dtype=lib.float64)))            # no gradient: skipped
        norm = lib.nn.utils.clip_grad_norm_(params, max_norm)
        return norm, [p.grad for p in params[:3]]
    (norm, clipped), (tnorm, tclipped) = run_both(run)
    assert norm.dtype == np.float64 and norm.shape == ()
    assert rel_err(norm.numpy(), tnorm.numpy()) <= TOL
    for g, tg_ in zip(clipped, tclipped, strict=True):
        assert rel_err(g.numpy(), tg_.numpy()) <= TOL


# ---- optim -----------------------------------------------------------------------------------------------------------

def _regression(lib, seed):
    """A small float64 model (Linear -> tanh -> Linear), its data, and torch's weights in both engines."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    model = lib.nn.Sequential(lib.nn.Linear(3, 4), lib.nn.Tanh(), lib.nn.Linear(4, 2)).double()
    weights = {k: rng.standard_normal(tuple(v.shape)) * 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict({k: lib.tensor(v) for k, v in weights.items()})
    return model, lib.tensor(x), lib.tensor(y)


OPTIMIZERS = {
    "AdamW": lambda lib, groups: lib.optim.AdamW(groups, lr=0.01, weight_decay=0.05),
    "AdamW defaults": lambda lib, groups: lib.optim.AdamW(groups),
    "Adam": lambda lib, groups: lib.optim.Adam(groups, lr=0.02, weight_decay=0.1),
    "Adam betas": lambda lib, groups: lib.optim.Adam(groups, lr=0.02, betas=(0.8, 0.99), eps=1e-6),
    "SGD": lambda lib, groups: lib.optim.SGD(groups, lr=0.1),
    "SGD momentum": lambda lib, groups: lib.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.01),
    "SGD nesterov": lambda lib, groups: lib.optim.SGD(groups, lr=0.05, momentum=0.8, nesterov=True,
                                                      weight_decay=0.02),
    "SGD dampening": lambda lib, groups: lib.optim.SGD(groups, lr=0.05, momentum=0.5, dampening=0.3),
}


@given(st.sampled_from(sorted(OPTIMIZERS)), st.booleans(), st.booleans(), st.integers(0, 2 ** 16))
@settings(max_examples=20)
def test_optimizers_follow_torch_step_by_step(name, groups, set_to_none, seed):
    """Six steps on the same float64 model and data: parameters after every step within TOL of torch's (each step
    is a few roundings per element; the errors do not grow over six steps at these learning rates). Two
    param_groups with their own lr / weight_decay; zero_grad(set_to_none=...) before each backward;
    `param_groups[0]['lr'] = x` after step 3 takes effect."""
    def run(lib):
        model, x, y = _regression(lib, seed)
        first, second = model[0], model[2]
        params = ([{"params": first.parameters(), "lr": 0.03, "weight_decay": 0.2}, {"params": second.parameters()}]
                  if groups else model.parameters())
        opt = OPTIMIZERS[name](lib, params)
        trail = []
        for step in range(6):
            opt.zero_grad(set_to_none=set_to_none)
            assert all((p.grad is None) == set_to_none for p in model.parameters()) or step == 0
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            if step == 2:
                opt.param_groups[0]["lr"] = 0.004
            trail.append([p.detach().numpy().copy() for p in model.parameters()])
        return trail, [g["lr"] for g in opt.param_groups]
    (ours, ours_lr), (theirs, theirs_lr) = run_both(run)
    assert ours_lr == theirs_lr
    for step, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        for i, (a, b) in enumerate(zip(o, t, strict=True)):
            assert rel_err(a, b) <= TOL, f"{name}: step {step}, parameter {i}: {rel_err(a, b):.3g}"


def test_optimizer_skips_parameters_without_gradients_as_torch():
    """A parameter that gets no gradient in a step is left alone (no weight decay either), in both."""
    def run(lib):
        model, x, y = _regression(lib, 7)
        opt = lib.optim.AdamW(model.parameters(), lr=0.01)
        for step in range(3):
            opt.zero_grad()
            out = model[0](x).sum() if step == 1 else ((model(x) - y) ** 2).mean()
            out.backward()
            opt.step()
        return [p.detach().numpy() for p in model.parameters()]
    ours, theirs = run_both(run)
    for a, b in zip(ours, theirs, strict=True):
        assert rel_err(a, b) <= TOL


SCHEDULERS = {
    "cosine": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7),
    "cosine eta_min": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4),
    "cosine T_max=1": lambda lib, opt: lib.optim.lr_scheduler.CosineAnnealingLR(opt, 1, 0.002),
    "lambda": lambda lib, opt: lib.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.9 ** e / (1 + e % 3)),
    "lambda per group": lambda lib, opt: lib.optim.lr_scheduler.LambdaLR(
        opt, [lambda e: min(1.0, (e + 1) / 4), lambda e: 1 / math.sqrt(e + 1)]),
    "step": lambda lib, opt: lib.optim.lr_scheduler.StepLR(opt, step_size=3),
    "step gamma": lambda lib, opt: lib.optim.lr_scheduler.StepLR(opt, 2, gamma=0.7),
}


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_schedulers_give_torchs_learning_rates_exactly(name, optimizer):
    """25 steps (past T_max, where the cosine comes back up): get_last_lr() and every group's lr EQUAL torch's,
    bit for bit (the same float operations in the same order)."""
    def run(lib):
        a, b = lib.nn.Parameter(lib.zeros(2)), lib.nn.Parameter(lib.zeros(3))
        opt = getattr(lib.optim, optimizer)([{"params": [a]}, {"params": [b], "lr": 0.3}], lr=0.1)
        sched = SCHEDULERS[name](lib, opt)
        lrs = [list(sched.get_last_lr())]
        for _ in range(25):
            (a.sum() + b.sum()).backward()
            opt.step()
            sched.step()
            lrs.append(list(sched.get_last_lr()))
            assert lrs[-1] == [g["lr"] for g in opt.param_groups]
        return lrs, [g["initial_lr"] for g in opt.param_groups], sched.last_epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same_exact(run)


@pytest.mark.parametrize("name", ["cosine", "cosine eta_min", "step gamma", "lambda"])
def test_lr_schedulers_resumed_with_last_epoch(name):
    """Built with last_epoch=3 over groups that carry 'initial_lr' (a resumed run): the constructor's step keeps the
    current lrs for CosineAnnealingLR (torch's initial step), StepLR and LambdaLR apply their rules; then as torch."""
    def run(lib):
        a = lib.nn.Parameter(lib.zeros(2))
        opt = lib.optim.SGD([a], lr=0.1)
        opt.param_groups[0]["initial_lr"] = 0.5
        sched = _resumed(lib, name, opt)
        lrs = [list(sched.get_last_lr())]
        for _ in range(12):
            a.sum().backward()
            opt.step()
            sched.step()
            lrs.append(list(sched.get_last_lr()))
        return lrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same_exact(run)


def _resumed(lib, name, opt):
    sch = lib.optim.lr_scheduler
    return {"cosine": lambda: sch.CosineAnnealingLR(opt, T_max=7, last_epoch=3),
            "cosine eta_min": lambda: sch.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4, last_epoch=3),
            "step gamma": lambda: sch.StepLR(opt, 2, gamma=0.7, last_epoch=3),
            "lambda": lambda: sch.LambdaLR(opt, lambda e: 0.9 ** e, last_epoch=3)}[name]()


# ---- random ----------------------------------------------------------------------------------------------------------

DRAWS = {
    "randn": lambda lib, g=None: lib.randn(3, 4, generator=g),
    "rand": lambda lib, g=None: lib.rand((2, 5), generator=g),
    "randint": lambda lib, g=None: lib.randint(0, 1000, (6,), generator=g),
    "randperm": lambda lib, g=None: lib.randperm(20, generator=g),
    "multinomial": lambda lib, g=None: lib.multinomial(lib.ones(2, 50), 10, generator=g),
    "multinomial replacement": lambda lib, g=None: lib.multinomial(lib.tensor([0.2, 0.3, 0.5]), 40, True,
                                                                   generator=g),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_manual_seed_makes_draws_reproducible(name):
    """Same seed, same values; another seed, other values (for these sizes a collision has probability < 1e-9)."""
    draw = DRAWS[name]
    tg.manual_seed(123)
    first = draw(tg).numpy()
    tg.manual_seed(123)
    again = draw(tg).numpy()
    tg.manual_seed(124)
    other = draw(tg).numpy()
    assert np.array_equal(first, again) and not np.array_equal(first, other)


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_a_generator_is_independent_of_the_default_one(name):
    """Draws with generator=g neither consume nor depend on the default generator's state, and g replays from its
    own seed (the makemore notebooks' torch.Generator().manual_seed(2147483647))."""
    draw = DRAWS[name]
    tg.manual_seed(5)
    plain = [draw(tg).numpy() for _ in range(2)]
    tg.manual_seed(5)
    g = tg.Generator().manual_seed(2147483647)
    a = draw(tg).numpy()
    from_g = draw(tg, g).numpy()
    b = draw(tg).numpy()
    assert np.array_equal(a, plain[0]) and np.array_equal(b, plain[1])
    g.manual_seed(2147483647)
    assert np.array_equal(draw(tg, g).numpy(), from_g)
    assert g.initial_seed() == 2147483647


def _chi_square_bound(df):
    """An upper bound for a chi-square statistic with df degrees of freedom: its mean plus 5 standard deviations
    (df + 5 sqrt(2 df)); a wrong distribution exceeds it by orders of magnitude at the sample sizes used."""
    return df + 5 * math.sqrt(2 * df)


def test_multinomial_with_replacement_follows_the_probabilities():
    """N = 20,000 draws from weights (not normalised, one zero): the zero-weight category never drawn, and
    sum (obs - N p)^2 / (N p) over the others within the chi-square bound (df = K - 2)."""
    w = np.array([1.0, 0.0, 3.0, 6.0, 10.0])
    p = w / w.sum()
    tg.manual_seed(0)
    out = tg.multinomial(tg.tensor(w), 20_000, replacement=True)
    assert out.dtype == np.int64 and out.shape == (20_000,)
    counts = np.bincount(out.numpy(), minlength=len(w))
    assert counts[1] == 0
    kept = p > 0
    chi2 = ((counts[kept] - 20_000 * p[kept]) ** 2 / (20_000 * p[kept])).sum()
    assert chi2 <= _chi_square_bound(kept.sum() - 1)


def test_multinomial_without_replacement():
    """No index twice in a row; all of them when num_samples = K (a permutation); the first pick follows the
    probabilities (chi-square bound over 4,000 rows); zero weights drawn only once the others are used up is
    torch's error, so here num_samples <= the number of nonzero weights."""
    w = np.array([1.0, 2.0, 3.0, 4.0])
    tg.manual_seed(1)
    rows = tg.multinomial(tg.tensor(np.tile(w, (4000, 1))), 3).numpy()
    assert rows.shape == (4000, 3) and all(len(set(r)) == 3 for r in rows)
    full = tg.multinomial(tg.tensor(w), 4).numpy()
    assert sorted(full.tolist()) == [0, 1, 2, 3]
    counts = np.bincount(rows[:, 0], minlength=4)
    p = w / w.sum()
    assert ((counts - 4000 * p) ** 2 / (4000 * p)).sum() <= _chi_square_bound(3)
    raises_like_torch(lambda lib: lib.multinomial(lib.tensor([1.0, 2.0]), 3))      # more than K, no replacement


@given(st.integers(-5, 5), st.integers(1, 6), shapes(max_dims=2))
def test_randint_bounds(low, span, shape):
    tg.manual_seed(low * 7 + span)
    x = tg.randint(low, low + span, shape)
    assert x.dtype == np.int64 and x.shape == shape
    assert np.all((x.numpy() >= low) & (x.numpy() < low + span))
    big = tg.randint(low, low + span, (2000,)).numpy()
    assert set(big.tolist()) == set(range(low, low + span))        # each value's chance to be missed: < 1e-40


SHAPED = {
    "randn": lambda lib: lib.randn(2, 3), "randn tuple": lambda lib: lib.randn((4,)),
    "randn float64": lambda lib: lib.randn(2, dtype=lib.float64), "rand": lambda lib: lib.rand(3, 1),
    "rand 0-d": lambda lib: lib.rand(()), "randint": lambda lib: lib.randint(5, (3,)),
    "randint low": lambda lib: lib.randint(2, 5, (2, 2)), "randint int32": lambda lib: lib.randint(3, (2,),
                                                                                                   dtype=lib.int32),
    "randperm": lambda lib: lib.randperm(7), "multinomial": lambda lib: lib.multinomial(lib.ones(2, 4), 3),
    "multinomial 1-D": lambda lib: lib.multinomial(lib.ones(4), 2, replacement=True),
    "randn_like": lambda lib: lib.randn_like(lib.zeros(2, 3, dtype=lib.float64)),
    "rand_like": lambda lib: lib.rand_like(lib.zeros(3)), "normal": lambda lib: lib.normal(0.0, 2.0, (2, 2)),
    "normal tensors": lambda lib: lib.normal(lib.zeros(3), lib.ones(3)),
    "bernoulli": lambda lib: lib.bernoulli(lib.full((4,), 0.5)),
    "normal_": lambda lib: lib.empty(2, 3).normal_(), "uniform_": lambda lib: lib.empty(3).uniform_(-1, 1),
}


@pytest.mark.parametrize("name", sorted(SHAPED))
def test_random_shapes_and_dtypes_equal_torchs(name):
    """The values differ from torch's (the bits are NumPy's PCG64, documented in rng.py); shape and dtype do not."""
    ours, theirs = run_both(SHAPED[name])
    assert ours.shape == tuple(theirs.shape) and ours.dtype == theirs.numpy().dtype


# ---- names outside the supported set ---------------------------------------------------------------------------------

UNSUPPORTED = {
    "torch.fft": lambda: tg.fft,
    "torch.nn.Conv2d": lambda: tg.nn.Conv2d,
    "torch.nn.functional.conv2d": lambda: tg.nn.functional.conv2d,
    "torch.optim.RMSprop": lambda: tg.optim.RMSprop,
    "Tensor.scatter_": lambda: tg.zeros(3).scatter_,
    "torch.nn.init.orthogonal_": lambda: tg.nn.init.orthogonal_,
    "torch.optim.lr_scheduler.OneCycleLR": lambda: tg.optim.lr_scheduler.OneCycleLR,
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_names_raise_one_clear_error(name):
    """UnsupportedError, an AttributeError (so hasattr and getattr with a default work as on torch), with a one-line
    message that names the missing name."""
    with pytest.raises(tg.UnsupportedError) as info:
        UNSUPPORTED[name]()
    assert isinstance(info.value, AttributeError)
    message = str(info.value)
    assert "\n" not in message and message.startswith(name + " ")


def test_hasattr_on_unsupported_names_is_false():
    assert not hasattr(tg, "fft") and not hasattr(tg.nn, "Conv2d") and not hasattr(tg.zeros(1), "scatter_")
    assert getattr(tg.nn.functional, "conv2d", None) is None
    assert hasattr(tg, "einsum") and hasattr(tg.nn, "Linear") and hasattr(tg.zeros(1), "masked_fill_")
