"""Every op of SPEC section 4 against two oracles, in float64: torch (forward and autograd, relative error <= 1e-10,
see helpers.py for the measure and its derivation) and central finite differences (tinygrad_gpt.gradcheck), over
hypothesis-drawn shapes including broadcasting, size-1 axes and 0-d tensors. Then dtype rules, and numerical edge
cases (softmax on +-1e4, masked_fill with -inf).
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import check, check_or_raise
from strategies import axes, broadcastable_shapes, distinct_floats, floats, index_arrays, new_shapes, shapes
from tinygrad_gpt import Tensor, gradcheck


def _pair(shape_pair, domain_a="any", domain_b="any"):
    sa, sb = shape_pair
    return st.tuples(floats(sa, domain_a), floats(sb, domain_b))


binary_inputs = broadcastable_shapes().flatmap(_pair)
division_inputs = broadcastable_shapes().flatmap(lambda p: _pair(p, "any", "nonzero"))


# ---- elementwise binary ops, with broadcasting ------------------------------------------------------------------
@given(binary_inputs)
def test_add(ab):
    check("add", ab, lambda a, b: a + b)


@given(binary_inputs)
def test_sub(ab):
    check("sub", ab, lambda a, b: a - b)


@given(binary_inputs)
def test_mul(ab):
    check("mul", ab, lambda a, b: a * b)


@given(division_inputs)
def test_div(ab):
    check("div", ab, lambda a, b: a / b)


@given(floats(shapes(min_dims=1)), floats(shapes(min_dims=1), "nonzero"))
def test_binary_ops_with_self_broadcast(x, y):
    """A tensor against a slice of itself that broadcasts back against it."""
    check("mul", [x], lambda a: a * a[..., :1])
    check("div", [y], lambda a: a / a[..., :1])


# ---- Python scalars and NumPy arrays as operands (reverse ops) --------------------------------------------------
@given(floats(shapes()), st.floats(-3, 3))
def test_scalar_operands(x, c):
    check("radd", [x], lambda t: c + t)
    check("rsub", [x], lambda t: 2.0 - t)
    check("rmul", [x], lambda t: c * t)
    check("add_scalar", [x], lambda t: t + 2)
    check("sub_scalar", [x], lambda t: t - c)
    check("mul_scalar", [x], lambda t: t * c)
    check("div_scalar", [x], lambda t: t / 4.0)


@given(floats(shapes(), "nonzero"))
def test_scalar_divided_by_tensor(x):
    check("rdiv", [x], lambda t: 1.0 / t)
    check("rdiv", [x], lambda t: -3 / t)


@given(broadcastable_shapes().flatmap(lambda p: _pair(p, "any", "nonzero")))
def test_numpy_array_operands(ab):
    """ndarray (op) Tensor defers to the Tensor's reflected op; the array is a constant."""
    c, x = ab
    tc = torch.from_numpy(c)
    check("radd", [x], lambda t: c + t, lambda t: tc + t)
    check("rsub", [x], lambda t: c - t, lambda t: tc - t)
    check("rmul", [x], lambda t: c * t, lambda t: tc * t)
    check("rdiv", [x], lambda t: c / t, lambda t: tc / t)


# ---- unary ops -------------------------------------------------------------------------------------------------
@given(floats(shapes()))
def test_neg(x):
    check("neg", [x], lambda t: -t)


@given(st.data())
def test_pow(data):
    exponent = data.draw(st.sampled_from([0, 1, 2, 3, 2.0, -1, -2, 0.5, -0.5, 1.5, -2.5]))
    # integer exponents are defined for any base (negative ones away from 0); fractional ones for positive bases
    domain = "any" if isinstance(exponent, int) and exponent >= 0 else ("nonzero" if isinstance(exponent, int)
                                                                        else "positive")
    x = data.draw(floats(shapes(), domain))
    check("pow", [x], lambda t: t ** exponent)


@given(broadcastable_shapes().flatmap(lambda p: _pair(p, "positive", "any")))
def test_pow_tensor_exponent(ab):
    """a ** b, both tensors (broadcast): d/da = b a^(b-1), d/db = a^b ln a; bases > 0 (ln a, fractional powers)."""
    check("pow_tensor", ab, lambda a, b: a ** b)


@given(floats(shapes()), st.sampled_from([2, 0.5, 3.0, np.e, 1.0]))
def test_scalar_to_the_power_of_a_tensor(x, base):
    """scalar ** tensor (torch's __rpow__): d/dx base^x = base^x ln(base)."""
    check("rpow", [x], lambda t: base ** t)


@given(broadcastable_shapes().flatmap(lambda p: _pair(p, "positive", "any")))
def test_numpy_array_to_the_power_of_a_tensor(ab):
    c, x = ab
    check("rpow", [x], lambda t: c ** t, lambda t: torch.from_numpy(c) ** t)


def test_pow_at_a_zero_base_follows_torch():
    """At a = 0 the derivatives are limits torch fixes by convention: d/db 0^b = 0 for b >= 0 (0^b is 0, or 1 at
    b = 0), and d/da a^0 = 0; for b < 0, 0^b = inf. Compared with torch, non-finite entries included (no finite
    differences: the functions are not differentiable there)."""
    a = np.array([0.0, 0.0, 0.0, 0.0, 2.0, 0.5])
    b = np.array([0.0, 1.0, 2.5, -1.0, 0.0, -2.0])
    check("pow_tensor", [a, b], lambda x, y: x ** y, fd=False)
    check("rpow", [b], lambda t: 0.0 ** t, fd=False)
    check("rpow", [b], lambda t: 0 ** t, fd=False)


@given(floats(shapes()))
def test_exp(x):
    check("exp", [x], lambda t: t.exp())


@given(floats(shapes(), "positive"))
def test_log(x):
    check("log", [x], lambda t: t.log())


@given(floats(shapes(), "positive"))
def test_sqrt(x):
    check("sqrt", [x], lambda t: t.sqrt())


@given(floats(shapes()))
def test_tanh(x):
    check("tanh", [x], lambda t: t.tanh())


@given(floats(shapes(), "nonzero"))
def test_relu(x):
    check("relu", [x], lambda t: t.relu())


@given(floats(shapes()))
def test_gelu(x):
    check("gelu", [x], lambda t: t.gelu(), lambda t: torch.nn.functional.gelu(t, approximate="tanh"))


def test_gelu_wide_range():
    """Far into both tails, where tanh saturates."""
    x = np.linspace(-12, 12, 49)
    check("gelu", [x], lambda t: t.gelu(), lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
    check("gelu", [x], lambda t: t.gelu(approximate="tanh"), lambda t: torch.nn.functional.gelu(t, approximate="tanh"))


@given(floats(shapes()))
def test_gelu_exact(x):
    """The exact GELU x Phi(x) (erf), torch's default gelu and nn.GELU()."""
    check("gelu_exact", [x], lambda t: t.gelu(approximate="none"), torch.nn.functional.gelu)


def test_gelu_exact_wide_range():
    """Into both tails: Phi(x) rounds to 0 below x ~ -38 and to 1 above x ~ 8.3 in float64."""
    x = np.concatenate([np.linspace(-40, 40, 81), [-1e-300, 0.0, 1e-300, 1e-8]])
    check("gelu_exact", [x], lambda t: t.gelu(approximate="none"), torch.nn.functional.gelu)
    torch_default = torch.nn.GELU()
    check("gelu_exact", [x], lambda t: t.gelu(approximate="none"), torch_default)


def test_gelu_approximate_must_be_none_or_tanh():
    with pytest.raises(RuntimeError, match="'none' or 'tanh'.*'erf'"):
        Tensor(np.ones(2)).gelu(approximate="erf")


def test_relu_gradient_at_zero_is_zero_like_torch():
    check("relu", [np.array([-1.0, 0.0, 2.0])], lambda t: t.relu(), fd=False)  # the kink: no finite difference


# ---- matmul ------------------------------------------------------------------------------------------------------
@st.composite
def matmul_inputs(draw):
    """Batched matmul operands with broadcasting batch dims, and 1-D operands on either or both sides."""
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(max_dims=2))
    a = (k,) if draw(st.booleans()) else batch_a + (n, k)
    b = (k,) if draw(st.booleans()) else batch_b + (k, m)
    return draw(floats(a)), draw(floats(b))


@given(matmul_inputs())
def test_matmul(ab):
    check("matmul", ab, lambda a, b: a @ b)


@given(matmul_inputs())
def test_matmul_numpy_operand(ab):
    a, b = ab
    check("rmatmul", [b], lambda t: a @ t, lambda t: torch.from_numpy(a) @ t)


def test_matmul_rejects_0d():
    with pytest.raises(ValueError, match="0-d"):
        Tensor(np.ones(3)) @ Tensor(np.array(2.0))


# ---- reductions --------------------------------------------------------------------------------------------------
def _dims(axis, ndim):
    """A NumPy axis argument as a torch dim argument (torch has no axis=None with keepdim)."""
    return tuple(range(ndim)) if axis is None else axis


@st.composite
def reduction_inputs(draw, distinct=False):
    shape = draw(shapes())
    x = draw(distinct_floats(shape) if distinct else floats(shape))
    return x, draw(axes(len(shape))), draw(st.booleans())


@given(reduction_inputs())
def test_sum(xak):
    x, axis, keep = xak
    check("sum", [x], lambda t: t.sum(axis=axis, keepdims=keep),
          lambda t: t.sum(dim=_dims(axis, t.ndim), keepdim=keep))


@given(reduction_inputs())
def test_mean(xak):
    x, axis, keep = xak
    check("mean", [x], lambda t: t.mean(axis=axis, keepdims=keep),
          lambda t: t.mean(dim=_dims(axis, t.ndim), keepdim=keep))


@given(reduction_inputs(distinct=True))
def test_max(xak):
    x, axis, keep = xak
    check("max", [x], lambda t: t.max(axis=axis, keepdims=keep),
          lambda t: torch.amax(t, dim=_dims(axis, t.ndim), keepdim=keep))


def test_reductions_default_arguments():
    x = np.arange(6.0).reshape(2, 3) / 7
    check("sum", [x], lambda t: t.sum(), lambda t: t.sum())
    check("mean", [x], lambda t: t.mean(), lambda t: t.mean())
    check("max", [x], lambda t: t.max(), lambda t: t.max())


def test_max_ties_share_the_gradient_like_torch_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    check("max", [x], lambda t: t.max(axis=1), lambda t: torch.amax(t, dim=1), fd=False)  # ties: not differentiable
    check("max", [x], lambda t: t.max(), lambda t: torch.amax(t), fd=False)


# ---- shapes ------------------------------------------------------------------------------------------------------
@st.composite
def reshape_inputs(draw):
    """An array and a new shape of the same size: its prime factors regrouped, size-1 axes inserted, maybe a -1."""
    shape = draw(shapes())
    return draw(floats(shape)), draw(new_shapes(shape))


@given(reshape_inputs())
def test_reshape(x_shape):
    x, shape = x_shape
    check("reshape", [x], lambda t: t.reshape(*shape), lambda t: t.reshape(shape))
    check("reshape", [x], lambda t: t.reshape(shape))


@given(st.data())
def test_transpose(data):
    x = data.draw(floats(shapes(min_dims=1)))
    a, b = (data.draw(st.integers(-x.ndim, x.ndim - 1)) for _ in range(2))
    check("transpose", [x], lambda t: t.transpose(a, b))


@given(st.data())
def test_permute(data):
    x = data.draw(floats(shapes(min_dims=1)))
    order = [p - x.ndim if data.draw(st.booleans()) else p for p in data.draw(st.permutations(range(x.ndim)))]
    check("permute", [x], lambda t: t.permute(*order))
    check("permute", [x], lambda t: t.permute(tuple(order)), lambda t: t.permute(*order))


@given(floats(shapes(min_dims=2, max_dims=2, max_side=4)))
def test_T(x):
    check("T", [x], lambda t: t.T)


def test_T_needs_2d():
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        _ = Tensor(np.ones((2, 2, 2))).T


# ---- indexing ----------------------------------------------------------------------------------------------------
@st.composite
def basic_index(draw, shape):
    """A basic index: ints (maybe negative), slices with positive steps (torch has no negative ones), None, ...;
    empty slices included."""
    parts = []
    for n in shape[:draw(st.integers(0, len(shape)))]:
        kind = draw(st.sampled_from(["int", "slice", "full"]))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.one_of(st.none(), st.integers(-n - 1, n + 1))
            parts.append(slice(draw(bound), draw(bound), draw(st.one_of(st.none(), st.integers(1, 3)))))
        else:
            parts.append(slice(None))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), Ellipsis)
    return tuple(parts)


@given(st.data())
def test_getitem_basic(data):
    x = data.draw(floats(shapes()))
    index = data.draw(basic_index(x.shape))  # (an Ellipsis may move the ints onto shorter axes: torch then raises)
    check_or_raise("getitem", [x], lambda t: t[index])


@given(st.data())
def test_getitem_integer_array(data):
    """t[idx] on the first axis, indices repeated and negative (repeats must add up in the gradient); the index as a
    NumPy array, a Tensor and a list."""
    x = data.draw(floats(shapes(min_dims=1)))
    idx = data.draw(index_arrays(x.shape[0]))
    tidx = torch.from_numpy(idx)
    check("getitem_array", [x], lambda t: t[idx], lambda t: t[tidx])
    check("getitem_array", [x], lambda t: t[Tensor(idx)], lambda t: t[tidx])
    check("getitem_array", [x], lambda t: t[idx.tolist()], lambda t: t[tidx])


@given(st.data())
def test_getitem_integer_arrays_mixed_with_slices(data):
    x = data.draw(floats(shapes(min_dims=2)))
    i0 = data.draw(index_arrays(x.shape[0]))
    i1 = data.draw(index_arrays(x.shape[1], shape=i0.shape))  # two index arrays broadcast together
    t0, t1 = torch.from_numpy(i0), torch.from_numpy(i1)
    check("getitem_array", [x], lambda t: t[:, i1], lambda t: t[:, t1])
    check("getitem_array", [x], lambda t: t[i0, i1], lambda t: t[t0, t1])
    check("getitem_array", [x], lambda t: t[i0, 1:], lambda t: t[t0, 1:])
    check("getitem_array", [x], lambda t: t[Tensor(i0), ..., None], lambda t: t[t0, ..., None])
    if x.ndim >= 3:  # advanced indices separated by a slice: the indexed axes move to the front
        i2 = data.draw(index_arrays(x.shape[2], shape=i0.shape))
        check("getitem_array", [x], lambda t: t[i0, :, i2], lambda t: t[t0, :, torch.from_numpy(i2)])


def test_getitem_repeated_indices_accumulate():
    x = np.arange(12.0).reshape(4, 3) / 5
    idx = np.array([0, 2, 0, 0, -1, 2])
    check("getitem_array", [x], lambda t: t[idx], lambda t: t[torch.from_numpy(idx)])
    t = Tensor(x, requires_grad=True)
    t[idx].sum().backward()
    assert np.array_equal(t.grad, np.array([3.0, 0.0, 2.0, 1.0])[:, None] * np.ones((4, 3)))


# ---- softmax family, masked_fill -----------------------------------------------------------------------------------
@given(st.data())
def test_softmax(data):
    x = data.draw(floats(shapes(min_dims=1)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check("softmax", [x], lambda t: t.softmax(axis), lambda t: torch.softmax(t, dim=axis))
    check("softmax", [x], lambda t: t.softmax(), lambda t: torch.softmax(t, dim=-1))


@given(st.data())
def test_log_softmax(data):
    x = data.draw(floats(shapes(min_dims=1)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    check("log_softmax", [x], lambda t: t.log_softmax(axis), lambda t: torch.log_softmax(t, dim=axis))
    check("log_softmax", [x], lambda t: t.log_softmax(), lambda t: torch.log_softmax(t, dim=-1))


@st.composite
def masks_for(draw, shape):
    """A bool mask that broadcasts to `shape`: leading axes dropped, some axes of size 1."""
    tail = shape[draw(st.integers(0, len(shape))):]
    mshape = tuple(1 if draw(st.booleans()) else n for n in tail)
    return draw(st.lists(st.booleans(), min_size=math.prod(mshape), max_size=math.prod(mshape))
                .map(lambda v: np.array(v, dtype=bool).reshape(mshape)))


@given(st.data())
def test_masked_fill(data):
    x = data.draw(floats(shapes()))
    mask = data.draw(masks_for(x.shape))
    value = data.draw(st.floats(-10, 10))
    tmask = torch.from_numpy(mask)
    check("masked_fill", [x], lambda t: t.masked_fill(mask, value), lambda t: t.masked_fill(tmask, value))
    check("masked_fill", [x], lambda t: t.masked_fill(Tensor(mask), value), lambda t: t.masked_fill(tmask, value))


# ---- cat, split --------------------------------------------------------------------------------------------------
@given(st.data())
def test_cat(data):
    base = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    pieces = []
    for _ in range(data.draw(st.integers(1, 3))):
        shape = list(base)
        shape[axis] = data.draw(st.integers(1, 3))
        pieces.append(data.draw(floats(tuple(shape))))
    check("cat", pieces, lambda *ts: Tensor.cat(list(ts), axis), lambda *ts: torch.cat(ts, dim=axis))
    check("cat", pieces[:1], lambda t: Tensor.cat([t, t * 2, t], axis), lambda t: torch.cat([t, t * 2, t], dim=axis))


@given(st.data())
def test_split(data):
    x = data.draw(floats(shapes(min_dims=1)))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    size = data.draw(st.integers(1, x.shape[axis] + 1))
    check("split", [x], lambda t: t.split(size, axis), lambda t: torch.split(t, size, dim=axis))


def test_split_default_axis_returns_list():
    parts = Tensor(np.arange(10.0)).split(3)
    assert isinstance(parts, list) and [p.shape for p in parts] == [(3,), (3,), (3,), (1,)]


# ---- composite: a small attention-like expression through many ops at once -----------------------------------------
@given(st.data())
def test_composite_expression(data):
    T, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    x, w = data.draw(floats((2, T, C))), data.draw(floats((3 * C, C)))
    mask = np.triu(np.ones((T, T), dtype=bool), k=1)
    tmask = torch.from_numpy(mask)

    def ours(x, w):
        q, k, v = (x @ w.T).split(C, axis=-1)
        a = (q @ k.transpose(-2, -1) * C ** -0.5).masked_fill(mask, -math.inf).softmax(-1)
        return (a @ v).gelu().tanh().log_softmax(-1).mean(axis=(0, 2))

    def theirs(x, w):
        q, k, v = (x @ w.T).split(C, dim=-1)
        a = torch.softmax((q @ k.transpose(-2, -1) * C ** -0.5).masked_fill(tmask, -math.inf), dim=-1)
        return torch.log_softmax(torch.nn.functional.gelu(a @ v, approximate="tanh").tanh(), dim=-1).mean(dim=(0, 2))

    check("composite", [x, w], ours, theirs)


# ---- numerical edge cases ------------------------------------------------------------------------------------------
EXTREME = np.array([[1e4, -1e4, 0.0, 1.0],
                    [-1e4, -1e4, -1e4, -1e4],
                    [1e4, 1e4, 1e4 - 1, -1e4],
                    [-1e4, 3.0, 1e4, 1e4]])


def test_softmax_on_extreme_rows_is_finite_and_matches_torch():
    check("softmax", [EXTREME], lambda t: t.softmax(-1), lambda t: torch.softmax(t, dim=-1))
    check("softmax", [EXTREME], lambda t: t.softmax(0), lambda t: torch.softmax(t, dim=0))
    out = Tensor(EXTREME).softmax(-1).numpy()
    assert np.all(np.isfinite(out)) and np.allclose(out.sum(-1), 1.0, rtol=0, atol=1e-15)
    assert np.all(np.isfinite(Tensor(EXTREME.astype(np.float32)).softmax(-1).numpy()))


def test_log_softmax_on_extreme_rows_is_finite_and_matches_torch():
    # no finite differences here: |L| ~ 1e4 makes their rounding error (~u |L| / eps ~ 1e-6) exceed gradcheck's atol;
    # the torch comparison still bounds the gradient at 1e-10.
    check("log_softmax", [EXTREME], lambda t: t.log_softmax(-1), lambda t: torch.log_softmax(t, dim=-1), fd=False)
    check("log_softmax", [EXTREME], lambda t: t.log_softmax(0), lambda t: torch.log_softmax(t, dim=0), fd=False)
    assert np.all(np.isfinite(Tensor(EXTREME).log_softmax(-1).numpy()))
    assert np.all(np.isfinite(Tensor(EXTREME.astype(np.float32)).log_softmax(-1).numpy()))


def test_masked_fill_minus_inf_then_softmax_gives_exact_zeros():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 4))
    mask = np.triu(np.ones((4, 4), dtype=bool), k=1)  # causal: row i sees columns 0..i
    tmask = torch.from_numpy(mask)
    check("masked_softmax", [x], lambda t: t.masked_fill(mask, -math.inf).softmax(-1),
          lambda t: torch.softmax(t.masked_fill(tmask, -math.inf), dim=-1))

    t = Tensor(x, requires_grad=True)
    out = t.masked_fill(mask, -math.inf).softmax(-1)
    assert np.all(out.numpy()[:, mask] == 0.0)           # exact zeros, not tiny numbers
    assert np.allclose(out.numpy().sum(-1), 1.0, rtol=0, atol=1e-15)
    (out * Tensor(rng.standard_normal(out.shape))).sum().backward()
    assert np.all(t.grad[:, mask] == 0.0)                # no gradient reaches the masked logits
    assert np.all(t.grad[:, ~mask][:, 1:] != 0.0)        # it does reach the others (row 0 alone has softmax = 1)

    x32 = Tensor(x.astype(np.float32)).masked_fill(mask, -math.inf).softmax(-1).numpy()
    assert x32.dtype == np.float32 and np.all(x32[:, mask] == 0.0)


def test_masked_fill_minus_inf_matches_torch():
    x = np.arange(6.0).reshape(2, 3)
    mask = np.array([True, False, True])
    check("masked_fill", [x], lambda t: t.masked_fill(mask, -math.inf),
          lambda t: t.masked_fill(torch.from_numpy(mask), -math.inf), fd=False)  # L = -inf: no finite differences


def test_masked_fill_mask_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        Tensor(np.ones((2, 3))).masked_fill(np.ones((3, 2), dtype=bool), 0.0)
    with pytest.raises(ValueError, match=r"\(2, 2, 3\).*\(2, 3\)"):  # broadcasts, but would grow the tensor
        Tensor(np.ones((2, 3))).masked_fill(np.ones((2, 2, 3), dtype=bool), 0.0)


# ---- the finite-difference oracle itself -----------------------------------------------------------------------------
def _bad_square(t):
    """x**2 whose backward forgets the factor 2."""
    return Tensor._make(t.data ** 2, (t,), lambda g: (g * t.data,), "bad_square")


def test_gradcheck_accepts_a_correct_gradient():
    assert gradcheck(lambda a, b: (a * b).tanh(), [np.array([0.5, -1.0]), np.array([[2.0], [0.3]])]) is True


def test_gradcheck_names_input_element_and_values_of_a_wrong_gradient():
    with pytest.raises(AssertionError, match=r"input 1, element \(0, 1\): analytic .* numeric"):
        gradcheck(lambda a, b: a + _bad_square(b), [np.ones(2), np.array([[0.0, 1.5]])])


def test_gradcheck_catches_a_missing_gradient():
    def detached(a):
        return a.detach() * a      # the detached factor gets no gradient
    with pytest.raises(AssertionError, match="input 0"):
        gradcheck(detached, [np.array([1.0, 2.0])])


def test_gradcheck_wants_float64():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: a * 2, [np.ones(2, dtype=np.float32)])


# ---- dtypes ----------------------------------------------------------------------------------------------------------
F32_OPS = {
    "add_scalar": lambda t: t + 1, "radd": lambda t: 1 + t, "sub_scalar": lambda t: t - 0.5,
    "rsub": lambda t: 2.0 - t, "mul_scalar": lambda t: t * 0.5, "rmul": lambda t: 0.5 * t,
    "div_scalar": lambda t: t / 3, "rdiv": lambda t: 1.0 / t, "pow2": lambda t: t ** 2, "pow_half": lambda t: t ** 0.5,
    "pow_neg": lambda t: t ** -1.5, "neg": lambda t: -t, "exp": lambda t: t.exp(), "log": lambda t: t.log(),
    "sqrt": lambda t: t.sqrt(), "tanh": lambda t: t.tanh(), "relu": lambda t: t.relu(), "gelu": lambda t: t.gelu(),
    "sum": lambda t: t.sum(), "sum_axis": lambda t: t.sum(axis=0), "mean": lambda t: t.mean(),
    "mean_axis": lambda t: t.mean(axis=(0, 1), keepdims=True), "max": lambda t: t.max(axis=1),
    "matmul": lambda t: t @ t.T, "reshape": lambda t: t.reshape(-1), "transpose": lambda t: t.transpose(0, 1),
    "permute": lambda t: t.permute(1, 0), "getitem": lambda t: t[1:, 0], "getitem_array": lambda t: t[[0, 0, 1]],
    "softmax": lambda t: t.softmax(-1), "log_softmax": lambda t: t.log_softmax(0),
    "masked_fill": lambda t: t.masked_fill(np.array([True, False, False]), -math.inf).softmax(-1),
    "cat": lambda t: Tensor.cat([t, t * 2], 1), "split": lambda t: t.split(1, 1)[1],
    "add_f32": lambda t: t + Tensor([1.0, 2.0, 3.0]),
    "gelu_exact": lambda t: t.gelu(approximate="none"), "rpow": lambda t: 2.0 ** t, "rpow_int": lambda t: 2 ** t,
    "pow_tensor": lambda t: t ** (t * 0.5), "pow_int_tensor": lambda t: t ** Tensor(np.array([1, 2, 3])),
    "mT": lambda t: t.mT, "mean_empty_axes": lambda t: t.mean(axis=()),
}


@pytest.mark.parametrize("name", sorted(F32_OPS))
def test_float32_stays_float32(name):
    """Python scalars and lists take the tensor's dtype: no silent upcast, forward or backward."""
    t = Tensor(np.array([[0.5, 1.5, 2.0], [0.25, 3.0, 1.0]], dtype=np.float32), requires_grad=True)
    out = F32_OPS[name](t)
    assert out.dtype == np.float32, f"{name}: float32 input gave {out.dtype}"
    (out * out).sum().backward()
    assert t.grad.dtype == np.float32, f"{name}: gradient is {t.grad.dtype}"
    assert np.all(np.isfinite(t.grad))


@pytest.mark.parametrize("data", [3, 2.5, True, [1, 2, 3], [[1.0, 2.0]], (0.5, 1), [[1, 2.5], [3, 4]]])
def test_python_data_becomes_float32(data):
    t = Tensor(data)
    assert t.dtype == np.float32
    assert np.array_equal(t.numpy(), np.asarray(data, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_float_arrays_keep_their_dtype(dtype):
    x = np.arange(6, dtype=dtype).reshape(2, 3) / 4
    t = Tensor(x, requires_grad=True)
    assert t.dtype == dtype
    out = ((t * 2 + 1) ** 2).exp().sum()
    assert out.dtype == dtype
    out.backward()
    assert t.grad.dtype == dtype


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_arrays_stay_integer(dtype):
    t = Tensor(np.array([[1, 2], [0, 1]], dtype=dtype))
    assert t.dtype == dtype
    assert t[0].dtype == dtype and t.reshape(-1).dtype == dtype
    with pytest.raises(TypeError, match="floating"):
        Tensor(np.array([1, 2], dtype=dtype), requires_grad=True)


def test_integer_tensor_indexes_a_float32_tensor():
    table = Tensor(np.arange(12, dtype=np.float32).reshape(4, 3), requires_grad=True)
    idx = Tensor(np.array([[3, 0], [0, 0]]))
    out = table[idx]
    assert idx.dtype == np.int64 and out.dtype == np.float32 and out.shape == (2, 2, 3)
    out.sum().backward()
    assert table.grad.dtype == np.float32
    assert np.array_equal(table.grad[:, 0], np.array([3.0, 0.0, 0.0, 1.0], dtype=np.float32))


def test_explicit_dtype_argument():
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(np.ones(2), dtype=np.float32).dtype == np.float32
