"""The Tensor API at its edges, against torch: axis and shape arguments valid or not (0-d and empty tensors, negative,
repeated and out-of-range axes, -1 in reshape, split sizes of 0, cat of nothing), indexing (negative ints, slices,
integer arrays, bool masks), integer and bool tensors (comparisons, max, sum, promotion with floats), and the
conversions a torch user reaches for (bool(), float(), int(), hashing).

The oracle is torch: where torch computes a result, ours must equal it, and its gradient too, within the op
tolerance of helpers.check (float64, also against finite differences); where torch raises, ours must raise the same
kind of exception (helpers.check_or_raise). Integer results are compared exactly, with their dtype.
"""
import importlib
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from helpers import check, check_or_raise
from strategies import distinct_floats, floats, loose_axes, shapes
from tinygrad_gpt import Tensor, TensorError, kernels

tensor_module = importlib.import_module("tinygrad_gpt.tensor")  # (the package's `tensor` is the factory function)

TORCH_REDUCTION = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}


def _dims(axis):
    """Our axis argument as torch's dim: torch has no dim=None with keepdim; its dim=() is every axis."""
    return () if axis is None else axis


# ---- reductions ----------------------------------------------------------------------------------------------------
@given(st.data())
def test_reductions_over_any_axis_argument(data):
    """sum, mean, max over 0-d and empty tensors, with axis None, an int, a tuple or a list: negative, repeated, out
    of range or empty; keepdims both ways."""
    op = data.draw(st.sampled_from(sorted(TORCH_REDUCTION)))
    shape = data.draw(shapes(min_side=0))
    x = data.draw(distinct_floats(shape) if op == "max" else floats(shape))  # max: no ties (finite differences)
    axis = data.draw(loose_axes(len(shape)))
    keep = data.draw(st.booleans())
    check_or_raise(op, [x], lambda t: getattr(t, op)(axis=axis, keepdims=keep),
                   lambda t: TORCH_REDUCTION[op](t, dim=_dims(axis), keepdim=keep))


@pytest.mark.parametrize("op", sorted(TORCH_REDUCTION))
@pytest.mark.parametrize("axis", [0, -1, (0,), [-1], (), None])
@pytest.mark.parametrize("keep", [False, True])
def test_reductions_of_a_0d_tensor_over_axis_0_or_minus_1(op, axis, keep):
    """A 0-d tensor takes the axes 0 and -1 (it used to raise ZeroDivisionError in the backward pass)."""
    assert check_or_raise(op, [np.array(2.5)], lambda t: getattr(t, op)(axis=axis, keepdims=keep),
                          lambda t: TORCH_REDUCTION[op](t, dim=_dims(axis), keepdim=keep)) == "computed"


@pytest.mark.parametrize("op", sorted(TORCH_REDUCTION))
@pytest.mark.parametrize("axis", [1, -2, (0, -1), [0, 0]])
def test_reductions_of_a_0d_tensor_over_other_axes_raise_as_torch(op, axis):
    assert check_or_raise(op, [np.array(2.5)], lambda t: getattr(t, op)(axis=axis),
                          lambda t: TORCH_REDUCTION[op](t, dim=axis)) == "raised"


@pytest.mark.parametrize("shape, axis", [((0,), None), ((2, 0), 1), ((2, 0), (0, 1)), ((2, 0), 0), ((0, 3), -2),
                                         ((0, 3), 1)])
def test_reductions_of_empty_tensors(shape, axis):
    """Sums of nothing are 0 and means nan, as in torch; a max over an empty axis is an error, over another a result."""
    x = np.zeros(shape)
    for op in sorted(TORCH_REDUCTION):
        check_or_raise(op, [x], lambda t, op=op: getattr(t, op)(axis=axis),
                       lambda t, op=op: TORCH_REDUCTION[op](t, dim=_dims(axis)))
    with np.errstate(all="raise"):  # no RuntimeWarning for the nan of an empty mean
        assert np.isnan(Tensor(np.zeros(0)).mean().item())


def test_reduction_axis_errors_name_the_problem():
    t = Tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match=r"axis 2 is out of range .* 2 dimension.*-2 to 1"):
        t.sum(axis=2)
    with pytest.raises(RuntimeError, match=r"\(0, -2\) names an axis more than once"):
        t.mean(axis=(0, -2))
    with pytest.raises(TypeError, match="an axis must be an int, got float"):
        t.max(axis=1.0)
    with pytest.raises(RuntimeError, match="empty; give the axis"):
        Tensor(np.ones((0, 2))).max()
    with pytest.raises(IndexError, match="axis 0 of shape \\(0, 2\\) has no elements"):
        Tensor(np.ones((0, 2))).max(axis=0)


# ---- reshape -------------------------------------------------------------------------------------------------------
@given(st.data())
def test_reshape_to_any_shape(data):
    """Targets drawn freely: sizes 0..4, -1 (inferred; ambiguous over zero elements), -2 and two -1s (invalid)."""
    x = data.draw(floats(shapes(min_side=0)))
    target = tuple(data.draw(st.lists(st.integers(-2, 4), max_size=4)))
    check_or_raise("reshape", [x], lambda t: t.reshape(target))
    check_or_raise("reshape", [x], lambda t: t.reshape(*target), lambda t: t.reshape(target))


@pytest.mark.parametrize("shape, target", [((0, 3), (-1,)), ((0, 3), (-1, 3)), ((0, 3), (5, 0)), ((0, 3), (-1, 0)),
                                           ((0, 3), (0, -1)), ((2, 3), (-1, -1)), ((2, 3), (-2, 3)), ((2, 3), (4,)),
                                           ((), (-1,)), ((1,), ())])
def test_reshape_edges(shape, target):
    check_or_raise("reshape", [np.arange(math.prod(shape), dtype=np.float64).reshape(shape)],
                   lambda t: t.reshape(target))


def test_reshape_sizes_must_be_ints():
    with pytest.raises(TypeError):
        Tensor(np.ones(6)).reshape(2.0, 3)


# ---- indexing ------------------------------------------------------------------------------------------------------
@st.composite
def loose_index(draw, shape):
    """An index as a torch user writes it, valid or not. Per axis: an int (maybe out of range), a slice (positive
    step: torch has no negative ones), an integer array (as a list, a NumPy array or a Tensor; maybe empty, repeated,
    negative or out of range) or a bool mask (maybe of the wrong length); None and Ellipsis anywhere; sometimes one
    entry more than the axes. Two differences from torch stay out: ints do not meet arrays in one index (NumPy and
    torch order the result's axes differently when a slice stands between them), and arrays into a tensor of no
    elements stay in range (torch does not check them there; NumPy, and so ours, does)."""
    sides = list(shape) + [1]
    over = int(math.prod(shape) > 0)  # how far array indices may run past the axis
    count = draw(st.integers(0, len(sides) if draw(st.booleans()) else len(shape)))
    advanced = draw(st.booleans())
    parts = []
    for n in sides[:count]:
        kind = draw(st.sampled_from(["slice", "array", "mask"] if advanced else ["int", "slice"]))
        if kind == "int":
            parts.append(draw(st.integers(-n - 1, n)))
        elif kind == "slice":
            bound = st.one_of(st.none(), st.integers(-n - 1, n + 1))
            parts.append(slice(draw(bound), draw(bound), draw(st.one_of(st.none(), st.integers(1, 3)))))
        elif kind == "array":
            size = draw(st.integers(0, 3)) if n + over else 0            # (no index fits an empty axis)
            idx = draw(hnp.arrays(np.int64, size, elements=st.integers(-n - over, max(n - 1 + over, 0))))
            parts.append(draw(st.sampled_from([idx, idx.tolist(), Tensor(idx)])))
        else:
            length = n if draw(st.integers(0, 4)) else n + 1
            mask = np.array(draw(st.lists(st.booleans(), min_size=length, max_size=length)), dtype=bool)
            parts.append(draw(st.sampled_from([mask, Tensor(mask)])))
    for extra in (None, Ellipsis):
        if draw(st.booleans()) and (extra is Ellipsis or sum(not isinstance(p, (int, slice)) for p in parts) < 2):
            parts.insert(draw(st.integers(0, len(parts))), extra)  # (None between two arrays: torch differs again)
    return tuple(parts)


def _torch_index(index):
    return tuple(torch.from_numpy(np.asarray(i.numpy())) if isinstance(i, Tensor)
                 else torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in index)


@given(st.data())
def test_indexing_with_any_index(data):
    x = data.draw(floats(shapes(min_side=0)))
    index = data.draw(loose_index(x.shape))
    check_or_raise("getitem", [x], lambda t: t[index], lambda t: t[_torch_index(index)])
    if len(index) == 1:  # t[i] as well as t[(i,)]
        check_or_raise("getitem", [x], lambda t: t[index[0]], lambda t: t[_torch_index(index)[0]])


def test_repeated_indices_inside_a_tuple_add_up():
    """t[[0, 0], [1, 1]]: lists inside a tuple index like arrays, and both picks of x[0, 1] reach its gradient."""
    x = np.arange(6.0).reshape(2, 3)
    check("getitem_array", [x], lambda t: t[[0, 0, 1], [1, 1, 2]])
    t = Tensor(x, requires_grad=True)
    t[[0, 0], [1, 1]].sum().backward()
    assert t.grad[0, 1] == 2.0 and t.grad.sum() == 2.0


@pytest.mark.parametrize("index", [[], ([], slice(None)), (slice(None), []), ([], [])])
def test_an_empty_list_selects_nothing(index):
    check("getitem_array", [np.ones((2, 3))], lambda t: t[index])


def test_bool_masks_index_and_route_the_gradient():
    x = np.arange(6.0).reshape(2, 3) - 2.5
    check("getitem_mask", [x], lambda t: t[t.numpy() > 0], lambda t: t[t > 0])
    check("getitem_mask", [x], lambda t: t[t > 0], lambda t: t[t > 0])             # a bool Tensor
    check("getitem_mask", [x], lambda t: t[[True, False]], lambda t: t[torch.tensor([True, False])])
    check("getitem_mask", [x], lambda t: t[:, np.array([True, False, True])],
          lambda t: t[:, torch.tensor([1, 0, 1]) > 0])
    check("getitem_mask", [np.array(1.5)], lambda t: t[t > 0], lambda t: t[t > 0])  # 0-d: a mask of one


def test_negative_slice_steps_work_as_in_numpy():
    """torch refuses them; ours reverse as NumPy does (its result is torch.flip's)."""
    x = np.arange(12.0).reshape(3, 4)
    check("getitem", [x], lambda t: t[::-1], lambda t: torch.flip(t, [0]))
    check("getitem", [x], lambda t: t[:, ::-2], lambda t: torch.flip(t, [1])[:, ::2])


# ---- split, cat ----------------------------------------------------------------------------------------------------
@given(st.data())
def test_split_with_any_size_and_axis(data):
    """An int size (0 and negative included) or a list of sizes (adding up or not), any axis, 0-d and empty tensors."""
    x = data.draw(floats(shapes(min_side=0)))
    n = max(x.ndim, 1)
    axis = data.draw(st.integers(-n - 1, n))
    length = x.shape[axis] if -x.ndim <= axis < x.ndim else 2
    size = data.draw(st.one_of(st.integers(-1, length + 1), st.lists(st.integers(-1, length), max_size=3),
                               st.lists(st.integers(0, 2), max_size=length).map(tuple)))
    check_or_raise("split", [x], lambda t: t.split(size, axis), lambda t: torch.split(t, size, dim=axis))


@pytest.mark.parametrize("shape, size, axis", [((0, 3), 2, 0), ((0, 3), 0, 0), ((2, 3), 0, 1), ((2, 3), -1, 1),
                                               ((2, 3), [1, 2], 1), ((2, 3), [0, 3], -1), ((2, 3), [1, 1], 1),
                                               ((2, 3), [2, -1], 1), ((2, 3), 1, 2), ((), 1, 0)])
def test_split_edges(shape, size, axis):
    check_or_raise("split", [np.ones(shape)], lambda t: t.split(size, axis), lambda t: torch.split(t, size, dim=axis))


@given(st.data())
def test_cat_of_any_pieces_along_any_axis(data):
    """0 to 3 pieces of ranks 0 to 3 (0-d and empty ones included), most sharing a shape outside the axis."""
    base = data.draw(shapes(min_side=0, max_dims=3))
    n = max(len(base), 1)
    axis = data.draw(st.integers(-n - 1, n))
    pieces = []
    for _ in range(data.draw(st.integers(0, 3))):
        shape = list(base) if data.draw(st.integers(0, 3)) else list(data.draw(shapes(min_side=0, max_dims=3)))
        if shape and -len(shape) <= axis < len(shape):
            shape[axis] = data.draw(st.integers(0, 2))
        pieces.append(data.draw(floats(tuple(shape))))
    # torch's legacy rule skips 1-D empty pieces (joining tensors of any rank, along any axis); ours does not
    assume(not any(p.shape == (0,) for p in pieces))
    check_or_raise("cat", pieces, lambda *ts: Tensor.cat(ts, axis), lambda *ts: torch.cat(ts, dim=axis))


def test_cat_edges():
    two = np.arange(6.0).reshape(2, 3)
    for pieces, axis in [([], 0), ([np.array(1.0), np.array(2.0)], 0), ([two, two], 2), ([two, two], -3),
                         ([two, two[0]], 0), ([two, two[:, :2]], 0), ([two, np.ones((0, 3))], 0), ([two], -1)]:
        check_or_raise("cat", pieces, lambda *ts, axis=axis: Tensor.cat(ts, axis),
                       lambda *ts, axis=axis: torch.cat(ts, dim=axis))


def test_cat_promotes_dtypes_as_torch():
    f32, f64 = Tensor(np.ones(2, np.float32), requires_grad=True), Tensor(np.ones(2), requires_grad=True)
    ints = Tensor(np.array([1, 2]))
    assert Tensor.cat([f32, ints]).dtype == np.float32            # NumPy would give float64
    out = Tensor.cat([f32, f64])
    assert out.dtype == np.float64
    (out * 2).sum().backward()
    assert f32.grad.dtype == np.float32 and f64.grad.dtype == np.float64
    assert Tensor.cat([np.ones(2), ints]).dtype == np.float64      # NumPy arrays join too


# ---- transpose, permute, .T, .mT, softmax axes -----------------------------------------------------------------------
@given(st.data())
def test_transpose_and_permute_with_any_axes(data):
    x = data.draw(floats(shapes(min_side=0)))
    n = max(x.ndim, 1)
    a, b = data.draw(st.integers(-n - 1, n)), data.draw(st.integers(-n - 1, n))
    check_or_raise("transpose", [x], lambda t: t.transpose(a, b))
    order = tuple(data.draw(st.lists(st.integers(-n - 1, n), min_size=max(x.ndim - 1, 0), max_size=x.ndim + 1)))
    if data.draw(st.booleans()) and x.ndim:
        order = tuple(p - x.ndim if data.draw(st.booleans()) else p for p in data.draw(st.permutations(range(x.ndim))))
    check_or_raise("permute", [x], lambda t: t.permute(order))
    check_or_raise("permute", [x], lambda t: t.permute(*order), lambda t: t.permute(order))


def test_mT_and_T():
    x = np.arange(24.0).reshape(2, 3, 4)
    check("mT", [x], lambda t: t.mT)
    check("mT", [x[0]], lambda t: t.mT)
    for bad in (x, x[0, 0], x[0, 0, 0]):
        with pytest.raises(TensorError, match=r"\.T needs a 2-D tensor"):
            _ = Tensor(bad).T
    with pytest.raises(RuntimeError, match=r"\.mT needs .* at least 2"):
        _ = Tensor(x[0, 0]).mT


@given(st.data())
def test_softmax_along_any_axis(data):
    """0-d tensors (softmax 1, log_softmax 0, as torch), empty ones, axes out of range."""
    x = data.draw(floats(shapes(min_side=0)))
    n = max(x.ndim, 1)
    axis = data.draw(st.integers(-n - 1, n))
    check_or_raise("softmax", [x], lambda t: t.softmax(axis), lambda t: torch.softmax(t, dim=axis))
    check_or_raise("log_softmax", [x], lambda t: t.log_softmax(axis), lambda t: torch.log_softmax(t, dim=axis))


# ---- integer and bool tensors ----------------------------------------------------------------------------------------
INT_DTYPES = [np.int64, np.int32, np.uint8, np.bool_]


def _same(ours, theirs):
    """Exactly torch's values and dtype (a non-float result carries no graph)."""
    want = theirs.numpy()
    got = ours.numpy()
    assert got.dtype == want.dtype, f"dtype {got.dtype}, torch {want.dtype}"
    assert got.shape == want.shape and np.array_equal(got, want, equal_nan=True), f"{got} != torch's {want}"
    if got.dtype.kind != "f":
        assert not ours.requires_grad


ANY_SHAPE = shapes()


def int_arrays(dtype, shape=ANY_SHAPE):
    if dtype == np.bool_:
        return hnp.arrays(dtype, shape)
    lo = 0 if dtype == np.uint8 else -9
    return hnp.arrays(dtype, shape, elements=st.integers(lo, 9))


COMPARISONS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


@given(st.data())
def test_comparisons_give_bool_tensors_as_torch(data):
    """Integer, bool and float tensors against Python ints and floats (out of the dtype's range too: they compare
    by value), tensors of other dtypes (broadcast) and NumPy arrays on either side. No gradient flows."""
    dtype = data.draw(st.sampled_from(INT_DTYPES + [np.float32, np.float64]))
    x = data.draw(int_arrays(dtype) if dtype in INT_DTYPES else floats(shapes()).map(lambda a: a.astype(dtype)))
    low = 0 if dtype == np.uint8 else -300  # torch wraps a negative int to uint8 (0 < -1 is True there); ours does not
    other = data.draw(st.one_of(st.integers(low, 300), st.floats(-10, 10), st.booleans(),
                                st.sampled_from(INT_DTYPES + [np.float32]).flatmap(
                                    lambda d: int_arrays(d, st.sampled_from([(), x.shape[-1:], x.shape])))))
    name = data.draw(st.sampled_from(sorted(COMPARISONS)))
    fn = COMPARISONS[name]
    t = Tensor(x, requires_grad=dtype not in INT_DTYPES)
    theirs_other = torch.from_numpy(other) if isinstance(other, np.ndarray) else other
    _same(fn(t, Tensor(other) if isinstance(other, np.ndarray) else other), fn(torch.from_numpy(x), theirs_other))
    if isinstance(other, np.ndarray):
        _same(fn(other, t), fn(theirs_other, torch.from_numpy(x)))   # the NumPy array on the left


def test_comparison_with_other_objects_is_identity_or_a_type_error():
    t = Tensor(np.ones(2))
    assert (t == None) is False and (t != "a") is True  # noqa: E711 (as torch: no elementwise result)
    with pytest.raises(TypeError):
        _ = t < None
    assert len({t, Tensor(np.ones(2))}) == 2 and t in {t}  # hashable, by identity


@given(st.data())
def test_integer_arithmetic_promotes_as_torch(data):
    """+ - * / ** with Python numbers and with tensors of other dtypes: values and dtypes as torch's (an int tensor
    times 2.5 is float32, no longer truncated to an int; int / int is float32; int64 + float32 is float32)."""
    dtype = data.draw(st.sampled_from(INT_DTYPES[:-1]))
    x = data.draw(int_arrays(dtype))
    other = data.draw(st.one_of(st.integers(0, 3), st.sampled_from([0.5, 2.5, -1.25, np.int64(2), np.float64(0.5)]),
                                int_arrays(np.int64, st.just(x.shape)),
                                floats(st.just(x.shape)).map(lambda a: a.astype(np.float32))))
    op = data.draw(st.sampled_from(["+", "-", "*", "/", "**"]))
    fn = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
          "**": lambda a, b: a ** b}[op]
    if op == "**" and isinstance(other, np.ndarray):
        other = np.abs(other) % 3                                    # small powers, no negative integer power
    ours_other = Tensor(other) if isinstance(other, np.ndarray) else other
    theirs_other = torch.from_numpy(other) if isinstance(other, np.ndarray) else other
    with np.errstate(all="ignore"):  # x / 0 is inf or nan and 9 / 1e-40 inf, as in torch
        ours = fn(Tensor(x), ours_other)
    theirs = fn(torch.from_numpy(x), theirs_other)
    assert ours.dtype == theirs.numpy().dtype, f"{dtype} {op} {other!r}: {ours.dtype}, torch {theirs.dtype}"
    # float32 results: both compute the float32 operation once, up to torch's division by a reciprocal (1 ulp)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=2 * np.finfo(np.float32).eps, atol=0)


@given(st.data())
def test_integer_reductions_as_torch(data):
    """max keeps the dtype, sum is int64 (bool counts), mean is an error (torch's RuntimeError)."""
    dtype = data.draw(st.sampled_from(INT_DTYPES))
    x = data.draw(int_arrays(dtype, shapes(min_dims=1)))
    axis = data.draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    keep = data.draw(st.booleans())
    dims = _dims(axis)
    _same(Tensor(x).max(axis=axis, keepdims=keep), torch.amax(torch.from_numpy(x), dim=dims, keepdim=keep))
    _same(Tensor(x).sum(axis=axis, keepdims=keep), torch.sum(torch.from_numpy(x), dim=dims, keepdim=keep))
    with pytest.raises(RuntimeError, match="floating-point"):
        Tensor(x).mean(axis=axis)


def test_integer_tensors_in_float_functions_become_float32():
    """Each engine's float32 exp, tanh, sqrt and erf are within ~1 ulp of the true value: 4 ulp apart at most."""
    ints = np.array([[0, 1], [2, 3]])
    theirs = torch.from_numpy(ints)
    with np.errstate(divide="ignore"):  # log(0) = -inf
        log = Tensor(ints).log()
    for ours, want in [(Tensor(ints).exp(), theirs.exp()), (Tensor(ints).tanh(), theirs.tanh()),
                       (Tensor(ints).sqrt(), theirs.sqrt()), (log, theirs.log()),
                       (Tensor(ints).gelu(), torch.nn.functional.gelu(theirs.float(), approximate="tanh")),
                       (Tensor(ints).gelu(approximate="none"), torch.nn.functional.gelu(theirs.float()))]:
        assert ours.dtype == np.float32 and want.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), want.numpy(), rtol=4 * np.finfo(np.float32).eps, atol=0)
    assert Tensor(ints).softmax(-1).dtype == np.float32 and Tensor(ints).relu().dtype == np.int64


def test_integers_to_negative_integer_powers_are_an_error():
    with pytest.raises(RuntimeError, match="negative integer powers"):
        Tensor(np.array([1, 2])) ** -1
    with pytest.raises(RuntimeError, match="negative integer powers"):
        Tensor(np.array([1, 2])) ** Tensor(np.array([1, -1]))
    assert (Tensor(np.array([1, 2])) ** -1.0).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.bool_, np.int64])
def test_logical_operators_on_bool_and_integer_tensors(dtype):
    a = np.array([True, False, True, False]).astype(dtype)
    b = np.array([True, True, False, False]).astype(dtype)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    for fn in (lambda p, q: p & q, lambda p, q: p | q, lambda p, q: p ^ q, lambda p, q: p & True):
        _same(fn(Tensor(a), Tensor(b)), fn(ta, tb))
    _same(~Tensor(a), ~ta)
    _same((Tensor(a) > 0) & (Tensor(b) > 0), (ta > 0) & (tb > 0))
    with pytest.raises(TypeError, match="bool or integer"):
        Tensor(np.ones(2)) & Tensor(np.ones(2))
    with pytest.raises(TypeError, match="bool or integer"):
        ~Tensor(np.ones(2))


def test_a_comparison_on_a_tensor_that_requires_grad_records_no_graph():
    x = Tensor(np.array([-1.0, 2.0]), requires_grad=True)
    mask = x > 0
    assert mask.dtype == np.bool_ and not mask.requires_grad and mask.is_leaf
    (x * mask).sum().backward()                          # the mask is a constant factor
    assert np.array_equal(x.grad, [0.0, 1.0])


# ---- conversions -----------------------------------------------------------------------------------------------------
def test_bool_float_int_of_one_element_tensors():
    assert bool(Tensor([2.0])) is True and bool(Tensor(np.array([[0]]))) is False
    assert float(Tensor([[2.5]])) == 2.5 and int(Tensor([2.7])) == 2 and Tensor([[3.0]]).item() == 3.0
    if Tensor(np.array(1.0)) > 0:
        pass
    else:
        raise AssertionError("if (t > 0) took the wrong branch")
    for bad in (Tensor(np.ones(2)), Tensor(np.ones(0))):
        with pytest.raises(RuntimeError, match="ambiguous"):
            bool(bad)
        with pytest.raises(ValueError, match="one element"):
            float(bad)
        with pytest.raises(ValueError, match="one element"):
            int(bad)
        with pytest.raises(RuntimeError, match="not one number"):
            bad.item()
    with pytest.raises(TypeError, match="0-d"):
        len(Tensor(np.array(1.0)))


# ---- erf behind the exact GELU ---------------------------------------------------------------------------------------
def _erf_inputs():
    rng = np.random.default_rng(0)
    return np.concatenate([np.linspace(-7, 7, 2801), rng.standard_normal(2000) * 3, [0.0, -0.0, 1e-300, -1e-20, 6.5,
                                                                                      30.0, -np.inf, np.inf]])


def _ulp_errors(got, want):
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(got.dtype)).astype(np.float64)


@pytest.fixture
def cpu_kernels():
    """`cpu_kernels(on)` turns the CPU kernels on or off for this test, so that the next erf (tensor.erf, a twin of
    the kernels' table) runs the numba ufunc (kernels/cpu/erf.py) or math.erf per element. Afterwards the setting is
    back to the environment's choice."""
    def switch(on):
        kernels.set_enabled(on, "cpu")
    try:
        yield switch
    finally:
        kernels.set_enabled(None, "cpu")


@pytest.mark.parametrize("on", [True, False], ids=["kernels", "no-kernels"])
def test_erf_matches_math_erf(cpu_kernels, on):
    """The cpu erf against Python's math.erf (the C library's, within 1 ulp of the true value): the numba ufunc
    compiled from the same C function, and with the CPU kernels off math.erf itself. Both within 2 ulp of it in
    float64, and in float32 (numba calls the C library's float erff) within 2 float32 ulp of math.erf rounded."""
    cpu_kernels(on)
    erf = tensor_module.erf
    assert (kernels.launcher("erf", "cpu") is not None) == on
    x = _erf_inputs()
    want = np.array([math.erf(v) for v in x])
    got = erf(x)
    assert got.dtype == np.float64 and got.shape == x.shape
    assert _ulp_errors(got, want).max() <= 2
    if not on:
        assert np.array_equal(got, want)
    x32 = x.astype(np.float32)
    want32 = np.array([math.erf(float(v)) for v in x32])
    got32 = erf(x32)
    assert got32.dtype == np.float32 and _ulp_errors(got32, want32).max() <= 2
    assert erf(np.array(0.5)).shape == ()


def test_exact_gelu_with_kernels_off_equals_gelu_with_kernels_on(cpu_kernels):
    x = _erf_inputs()
    with np.errstate(invalid="ignore"):  # gelu(-inf) = -inf * 0 = nan, as in torch
        cpu_kernels(True)
        on = Tensor(x).gelu(approximate="none").numpy()
        assert kernels.launcher("erf", "cpu") is not None
        cpu_kernels(False)
        off = Tensor(x).gelu(approximate="none").numpy()
        assert kernels.launcher("erf", "cpu") is None
    np.testing.assert_allclose(off, on, rtol=4 * np.finfo(np.float64).eps, atol=0)


def test_the_cuda_erf_exists_in_cupy():
    """On cuda the exact GELU calls cupyx.scipy.special.erf (importable without a GPU)."""
    special = pytest.importorskip("cupyx.scipy.special", reason="CuPy is not installed")
    assert callable(special.erf)
