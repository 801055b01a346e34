"""Graph properties of the autograd engine: shared nodes, deep chains, accumulation, freeing, no_grad, detach, and the
errors a user meets (non-scalar backward, mismatched shapes, devices)."""
import operator
import os
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_gpt
from helpers import check
from tinygrad_gpt import DeviceError, Tensor, no_grad
from tinygrad_gpt.backend import CPU, Device


def leaf(values):
    return Tensor(np.asarray(values, dtype=np.float64), requires_grad=True)


# ---- shared nodes ------------------------------------------------------------------------------------------------
def test_node_used_twice():
    a = leaf([1.0, -2.0, 3.0])
    (a + a).sum().backward()
    assert np.array_equal(a.grad, [2.0, 2.0, 2.0])
    b = leaf([1.0, -2.0, 3.0])
    (b * b).sum().backward()
    assert np.array_equal(b.grad, [2.0, -4.0, 6.0])


def test_diamond():
    x = np.array([[0.3, -1.2], [2.0, 0.7]])

    def diamond(a):  # a -> b -> (c, d) -> e: b's gradient must be the sum of both paths before it flows on
        b = a * 2 + 1
        c, d = b.tanh(), b * b
        return c * d + b

    check("diamond", [x], diamond)


def test_same_leaf_in_many_places():
    x = np.array([0.5, 1.5, -0.7])
    w = np.array([[0.2, -0.4, 1.1]])

    def many(a, w):
        return (a * a * a + a / (a * a + 1) - a.exp() * a + (w @ a) * a + a[[0, 0, 2]].sum() - a.max()).tanh()

    check("many_uses", [x, w], many)


def test_cat_of_the_same_tensor_accumulates():
    a = leaf([1.0, 2.0])
    Tensor.cat([a, a, a * 3], 0).sum().backward()
    assert np.array_equal(a.grad, [5.0, 5.0])


# ---- depth -------------------------------------------------------------------------------------------------------
def test_chain_of_10000_ops():
    """Topological order is built iteratively: no RecursionError however deep the graph."""
    x = leaf([1.0, 2.0])
    y = x
    for i in range(10_000):
        y = y * 1.0001 if i % 2 else y + 0.5
    y.sum().backward()
    assert np.allclose(x.grad, 1.0001 ** 5_000, rtol=1e-12)


def test_deep_chain_with_fanout():
    x = leaf([0.1])
    y = x
    for _ in range(3_000):
        y = y + y * 0.0  # every node used twice
    y.sum().backward()
    assert np.array_equal(x.grad, [1.0])


# ---- accumulation and freeing ------------------------------------------------------------------------------------
def test_backward_twice_on_rebuilt_graph_accumulates():
    x = leaf([1.0, 2.0, 3.0])
    for expected in (1, 2, 3):
        (x * x).sum().backward()
        assert np.array_equal(x.grad, expected * 2 * x.numpy())


def test_grad_accumulates_into_user_reset_gradient():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    x.grad = None
    (x * 5).sum().backward()
    assert np.array_equal(x.grad, [5.0, 5.0])


def test_leaf_gradient_is_owned_by_the_leaf():
    """The first gradient stored in a leaf must not alias an array the graph or the user still holds."""
    seed = np.array([1.0, 1.0])
    x = leaf([1.0, 2.0])
    x.backward(seed)
    x.grad += 1
    assert np.array_equal(seed, [1.0, 1.0])
    y = leaf(np.zeros((2, 3)))
    y.sum().backward()  # the gradient of sum is a broadcast view: the leaf must still be able to add into it
    y.grad += 1
    assert np.array_equal(y.grad, np.full((2, 3), 2.0))


def test_backward_on_a_freed_graph_raises():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed"):
        loss.backward()


def test_backward_through_a_freed_inner_node_raises():
    """A node whose graph an earlier backward() freed cannot pass gradients on: that must be an error, like torch's,
    not a silently missing gradient."""
    x = leaf([1.0, 2.0])
    y = x * x
    y.sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        (y * 2).sum().backward()
    assert np.array_equal(x.grad, [2.0, 4.0])  # untouched by the failed call


def test_backward_frees_the_graph():
    x = leaf([1.0, 2.0])
    h = x.exp()
    loss = (h * 2).sum()
    loss.backward()
    assert loss._parents == () and loss._backward is None
    assert h._parents == () and h._backward is None and h.grad is None


def test_backward_on_a_leaf_and_with_explicit_gradient():
    x = leaf([[1.0, 2.0]])
    x.backward(np.array([[3.0, 4.0]]))
    assert np.array_equal(x.grad, [[3.0, 4.0]])
    y = leaf([1.0, 2.0])
    (y * 2).backward([1.0, -1.0])
    assert np.array_equal(y.grad, [2.0, -2.0])


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_zero_d_results_and_gradients_are_backend_arrays():
    """SPEC: t.data is a backend array, also for 0-d tensors (NumPy would hand back scalars); t.grad is a tensor
    (SPEC section 8, torch's) whose .data is the gradient's backend array, changed in place through either."""
    x = leaf(2.0)
    y = (x * 3).exp().sum()
    assert isinstance(y.data, np.ndarray) and y.shape == ()
    assert isinstance(Tensor(np.ones(3)).max().data, np.ndarray)
    y.backward()
    assert isinstance(x.grad, Tensor) and isinstance(x.grad.data, np.ndarray) and x.grad.shape == ()
    assert x.grad is x.grad                        # one tensor per gradient array, as torch's p.grad
    x.grad[...] = 0.0  # a leaf's gradient can be changed in place, as an optimizer does
    assert x.grad == 0.0 and x.grad.data == 0.0
    x.grad += 2.0
    assert x.grad.data == 2.0


# ---- no_grad, detach -------------------------------------------------------------------------------------------
def test_no_grad_builds_no_graph():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = (x * 2).exp().sum()
        z = Tensor.cat([x, x[0:1]], 0).softmax(-1)
    for t in (y, z):
        assert not t.requires_grad and t._parents == () and t._backward is None
    out = x * 2  # enabled again on exit
    assert out.requires_grad and out._parents


def test_no_grad_nests_and_restores_after_an_exception():
    x = leaf([1.0])
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            with no_grad():
                pass
            assert not (x * 2).requires_grad
            raise ZeroDivisionError
    assert (x * 2).requires_grad


def test_no_grad_as_decorator():
    @no_grad()
    def f(t):
        return t * 2

    x = leaf([1.0])
    assert not f(x).requires_grad and f.__name__ == "f"
    assert (x * 2).requires_grad


def test_detach_stops_gradients():
    x = leaf([1.0, 2.0])
    d = x.detach()
    assert not d.requires_grad and d._parents == ()
    (d * x + x).sum().backward()
    assert np.array_equal(x.grad, [2.0, 3.0])  # d is a constant: d + 1


def test_ops_without_requires_grad_record_nothing():
    a, b = Tensor(np.ones(2)), Tensor(np.ones(2))
    out = (a * b).exp()
    assert not out.requires_grad and out._parents == ()


# ---- errors ----------------------------------------------------------------------------------------------------
def test_non_scalar_backward_without_gradient_is_a_clear_error():
    x = leaf([[1.0, 2.0]])
    with pytest.raises(RuntimeError, match=r"scalar.*\(1, 2\)"):
        (x * 2).backward()


def test_backward_gradient_of_the_wrong_shape_names_both_shapes():
    x = leaf([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"\(2,\).*\(1, 2\)"):
        (x * 2).backward(np.ones(2))


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_mismatched_shapes_name_both_shapes(op):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](a, b)


def test_mismatched_shapes_in_matmul_cat_reshape():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        Tensor(np.ones((2, 3))) @ Tensor(np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        Tensor.cat([Tensor(np.ones((2, 3))), Tensor(np.ones((3, 2)))], axis=0)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)


# ---- devices ---------------------------------------------------------------------------------------------------
# A second device that is really NumPy under another name: mixing it with cpu must still be refused.
FAKE = Device("fake", np)


def test_mixing_devices_is_an_error():
    a = Tensor(np.ones(2), device="cpu")
    b = Tensor(np.ones(2), device=FAKE)
    assert b.device == FAKE and a.device != b.device
    for fn in (lambda: a + b, lambda: b * a, lambda: a @ b, lambda: b - a, lambda: Tensor.cat([a, b])):
        with pytest.raises(DeviceError, match="cpu.*fake|fake.*cpu"):
            fn()


def test_ops_stay_on_their_device():
    """A graph built on another device stays there, forward and backward, and computes what cpu computes. The
    weights w make the gradient far from 0 (softmax rows sum to 1: without them it would be ~0 whatever the ops do)."""
    x = np.arange(4.0).reshape(2, 2) / 3
    w = np.array([[1.0, -2.0], [0.5, 3.0]])
    grads = {}
    for device in (CPU, FAKE):
        b = Tensor(x, device=device, requires_grad=True)
        out = (((b * 2 + 1) @ b).softmax(-1) * Tensor(w, device=device)).sum()
        assert out.device == device
        out.backward()
        grads[device.name] = b.grad
    assert np.abs(grads["cpu"]).max() > 0.1
    assert np.array_equal(grads["fake"], grads["cpu"])


def test_unknown_device_is_a_clear_error():
    with pytest.raises(DeviceError, match="tpu"):
        Tensor([1.0], device="tpu")


def test_cpu_to_cpu_and_numpy():
    t = Tensor(np.arange(3.0))
    assert t.to("cpu") is t and str(t.device) == "cpu"
    assert isinstance(t.numpy(), np.ndarray)


# ---- the package -----------------------------------------------------------------------------------------------
def test_import_tinygrad_gpt():
    for name in ("Tensor", "TensorError", "no_grad", "DeviceError", "cuda_available", "gradcheck"):
        assert hasattr(tinygrad_gpt, name), name
    assert tinygrad_gpt.gradcheck(lambda a: a.exp(), [np.array([0.5])])



def test_tune_host_allocator_keeps_freed_blocks_for_reuse():
    """backend.tune_host_allocator (the glibc tuning the CPU kernels make on first use, kernels/cpu/setup.py: no mmap
    threshold below 1 GiB, no trim) makes glibc keep a freed large block in the heap, so allocating it again touches no
    fresh page. Untuned, a 64 MiB block is always a fresh mapping (glibc maps blocks above 32 MiB at the most), and each
    of its 16,384 pages of 4 KiB faults on first touch (NumPy's advice for transparent huge pages is off here, so each
    page is its own fault). Measured in a fresh process, before and after the call (a process-wide setting); the second
    call returns what the first did."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    code = ("import resource, numpy as np\n"
            "from tinygrad_gpt.backend import tune_host_allocator as tune\n"
            "def faults():\n"
            "    a = np.ones(1 << 23); del a\n"                     # 64 MiB, touched, freed
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    b = np.ones(1 << 23)\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "untuned = faults(); first, second = tune(), tune()\n"
            "print(untuned, faults(), first, second)")
    env = dict(os.environ, NUMPY_MADVISE_HUGEPAGE="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    untuned, tuned, first, second = out.split()
    assert first == second == "True"
    pages = (64 << 20) // 4096
    assert int(untuned) >= pages // 2, f"untuned: {untuned} page faults, expected ~{pages} (a fresh mapping)"
    assert int(tuned) <= pages // 64, f"tuned: {tuned} page faults for a block that was freed and taken again"
