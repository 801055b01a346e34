"""gradcheck: compare the engine's analytic gradients with central finite differences in float64.

For inputs x_0 .. x_{n-1} (float64 NumPy arrays) and `fn` mapping Tensors to a Tensor (or a list of Tensors),
the scalar checked is L(x) = sum_k (out_k * dout_k).sum() with a fixed random upstream gradient `dout_k`, so every
output element takes part with its own weight. The analytic gradient comes from `L.backward()`; the numeric one is

    dL/dx[j] ~ (L(x + eps e_j) - L(x - eps e_j)) / (2 eps)          for every element j of every input.

Error of the numeric estimate (|L| the size of L, u = 2**-53 ~ 1.1e-16 the float64 unit roundoff):
  truncation  eps**2 / 6 * |d3L/dx3|   ~ 1.7e-13 * |L'''|   for eps = 1e-6
  rounding    ~ u * |L| / eps          ~ 1.1e-10 * |L|
For the small inputs this is meant for (tens of elements, values of order 1..10, so |L| <= ~1e3 and |L'''| <= ~1e4
away from the ops' singular points) both stay below ~1e-7, so the default bound |analytic - numeric| <=
atol + rtol * |numeric| with atol=1e-6, rtol=1e-5 has a margin of about 10x, while a wrong gradient is off by O(1).

This module must never import torch: it is the oracle that still works without it.
"""
import numpy as np

from .tensor import Tensor, no_grad


def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, seed=0):
    """Check the gradients of `fn` at `inputs` (float64 NumPy arrays) against central differences.

    Returns True, or raises AssertionError naming the input index, the element and both values.
    `seed` fixes the random upstream gradient.
    """
    xs = []
    for i, x in enumerate(inputs):
        x = np.asarray(x)
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be a float64 array, got {x.dtype}")
        xs.append(np.array(x, dtype=np.float64, copy=True))

    # analytic: d/dx of L = sum_k (out_k * dout_k).sum()
    leaves = [Tensor(x.copy(), requires_grad=True) for x in xs]
    outs = _outputs(fn(*leaves))
    rng = np.random.default_rng(seed)
    douts = [rng.standard_normal(o.shape) for o in outs]
    for k, o in enumerate(outs):
        if o.dtype != np.float64:
            raise TypeError(f"gradcheck: output {k} is {o.dtype}, expected float64 (a float64 input must stay float64)")
    loss = None
    for o, d in zip(outs, douts, strict=True):
        term = (o * Tensor(d)).sum()
        loss = term if loss is None else loss + term
    if loss is not None and loss.requires_grad:  # None: no outputs (a split into no pieces), nothing to check
        loss.backward()
    analytic = []
    for i, (x, t) in enumerate(zip(xs, leaves, strict=True)):
        g = np.zeros_like(x) if t.grad is None else np.asarray(t.grad)
        if g.shape != x.shape:
            raise AssertionError(f"gradcheck: input {i} has shape {x.shape} but its gradient has shape {g.shape}")
        analytic.append(np.asarray(g, dtype=np.float64))

    def value():
        with no_grad():
            vals = _outputs(fn(*[Tensor(x) for x in xs]))
        return sum(float((v.numpy() * d).sum()) for v, d in zip(vals, douts, strict=True))

    for i, x in enumerate(xs):
        flat = x.reshape(-1)  # a view: perturbing it perturbs x
        grad = analytic[i].reshape(-1)
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            plus = value()
            flat[j] = orig - eps
            minus = value()
            flat[j] = orig
            numeric = (plus - minus) / (2 * eps)
            a = float(grad[j])
            if not abs(a - numeric) <= atol + rtol * abs(numeric):  # also fails on nan
                element = tuple(int(e) for e in np.unravel_index(j, x.shape)) if x.ndim else ()
                raise AssertionError(
                    f"gradcheck: input {i}, element {element}: analytic gradient {a!r} != numeric {numeric!r} "
                    f"(|diff| {abs(a - numeric):.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|)")
    return True
