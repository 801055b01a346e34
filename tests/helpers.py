"""The one comparison helper (in the spirit of tinygrad's helper_test_op): the same NumPy arrays go into a
tinygrad_gpt function and its torch twin; the forward outputs are compared, then the gradients of
(out * dout).sum() for a random upstream gradient `dout`; optionally the op is also checked against float64 central
differences with `tinygrad_gpt.gradcheck` (the second oracle).

Error measure (per compared array a = ours, b = torch):
    rel_err(a, b, tiny) = max|a - b| / max(max|b|, tiny)
i.e. the largest absolute difference relative to the largest magnitude of the reference, so near-zero entries of an
array do not blow the measure up. `tiny` defaults to the smallest normal float64 (a purely relative measure, what
the model tests use); `check` passes OP_FLOOR = 1e-3. Why: a gradient that is exactly 0 in exact arithmetic
(log_softmax of a constant row, softmax over a size-1 axis) comes out as a cancellation residue of ~u * O(1) (e.g.
1e-20 from torch, exact 0 from us), which no relative measure can compare. The op tests draw inputs in [-4, 4]
(|1/x| <= 10) and upstream gradients from N(0, 1), so genuine values are O(1e-2 .. 1e2); a reference array whose
entries all lie below 1e-3 is such a residue, and it is compared absolutely at TOL * OP_FLOOR = 1e-13 (~1000 u).
Non-finite entries (+-inf from masked_fill) must sit at the same places with the same values and are left out.

Tolerance: in float64 an elementwise op is a handful of roundings (u = 2**-53 ~ 1.1e-16 each) in either engine, so
they agree to a few u. Sums (reductions, matmul, and a gradient summed over broadcast axes) may be ordered
differently; they differ by at most ~n u sum|terms| (n <= 81 here), i.e. relative to the result by n u times the
cancellation factor sum|terms| / |result|. The worst seen over the 300-example dev profile is ~1e-12 (div's gradient
summed over a broadcast axis: terms of +-12.6 adding up to 0.045); the conftest summary prints the worst of each run.
TOL = 1e-10, the issue's bound, sits 100x above that, while a wrong formula is off by O(1).
"""
import numpy as np
import torch

from tinygrad_gpt import Tensor, gradcheck

TOL = 1e-10
TINY = np.finfo(np.float64).tiny
OP_FLOOR = 1e-3  # the `tiny` check() uses, see above

# op name -> [largest forward error, largest gradient error] seen in this session (printed by conftest at the end)
MAX_ERRORS = {}


def rel_err(a, b, tiny=TINY):
    """max|a - b| / max(max|b|, tiny) over the finite entries; the non-finite ones must match exactly."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: ours {a.shape}, torch {b.shape}"
    fa, fb = np.isfinite(a), np.isfinite(b)
    assert np.array_equal(fa, fb) and np.array_equal(a[~fa], b[~fb], equal_nan=True), \
        f"non-finite entries differ: ours {a[~fa]}, torch {b[~fb]}"
    if not fb.any():
        return 0.0
    return float(np.max(np.abs(a[fb] - b[fb])) / max(float(np.max(np.abs(b[fb]))), tiny))


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def check(op, inputs, fn, torch_fn=None, *, grad=True, fd=True, tol=TOL, seed=0):
    """Compare `fn` (on tinygrad_gpt Tensors) with `torch_fn` (on torch tensors; `fn` itself when omitted) at the
    float64 arrays `inputs`. Returns (forward error, gradient error), each the largest rel_err over outputs and
    inputs, after asserting both are <= `tol`. With `grad` the gradients of sum_k (out_k * dout_k).sum() are
    compared (dout_k random, from `seed`); with `fd` the op must also pass `gradcheck`. The largest errors per `op`
    are recorded in MAX_ERRORS."""
    torch_fn = torch_fn or fn
    inputs = [np.asarray(x) for x in inputs]
    for x in inputs:
        assert x.dtype == np.float64, f"check() takes float64 inputs, got {x.dtype}"

    ours_in = [Tensor(x.copy(), requires_grad=grad) for x in inputs]
    theirs_in = [torch.tensor(x, dtype=torch.float64, requires_grad=grad) for x in inputs]
    ours, theirs = _as_list(fn(*ours_in)), _as_list(torch_fn(*theirs_in))
    assert len(ours) == len(theirs), f"{op}: {len(ours)} outputs, torch gives {len(theirs)}"
    for o, t in zip(ours, theirs):
        assert o.dtype == np.float64, f"{op}: float64 inputs gave a {o.dtype} output"
    fwd = max(rel_err(o.numpy(), t.detach().numpy(), OP_FLOOR) for o, t in zip(ours, theirs))

    bwd = 0.0
    if grad:
        rng = np.random.default_rng(seed)
        douts = [rng.standard_normal(t.shape) for t in theirs]
        loss = sum((o * Tensor(d)).sum() for o, d in zip(ours, douts))
        tloss = sum((t * torch.from_numpy(d)).sum() for t, d in zip(theirs, douts))
        loss.backward()
        tloss.backward()
        for i, (o, t) in enumerate(zip(ours_in, theirs_in)):
            tg = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
            og = np.zeros(o.shape) if o.grad is None else o.grad
            assert np.shape(og) == tg.shape, f"{op}: gradient of input {i} has shape {np.shape(og)}, torch {tg.shape}"
            bwd = max(bwd, rel_err(og, tg, OP_FLOOR))

    worst = MAX_ERRORS.setdefault(op, [0.0, 0.0])
    worst[0], worst[1] = max(worst[0], fwd), max(worst[1], bwd)
    assert fwd <= tol, f"{op}: forward differs from torch, relative error {fwd:.3g} > {tol:g}"
    assert bwd <= tol, f"{op}: gradient differs from torch autograd, relative error {bwd:.3g} > {tol:g}"
    if grad and fd:
        gradcheck(fn, inputs, seed=seed)
    return fwd, bwd


def error_summary():
    """Lines for the end-of-session report: the largest relative errors against torch per op."""
    if not MAX_ERRORS:
        return []
    width = max(len(op) for op in MAX_ERRORS)
    lines = [f"{'op':<{width}}  max forward rel err  max grad rel err"]
    for op in sorted(MAX_ERRORS):
        f, g = MAX_ERRORS[op]
        lines.append(f"{op:<{width}}  {f:19.3g}  {g:16.3g}")
    return lines
