"""The one comparison helper (in the spirit of tinygrad's helper_test_op), used from single ops up to the whole GPT.

`compare` feeds the same arrays to a tinygrad_gpt function and its torch twin (float inputs get gradients, integer
inputs are passed as they are; module parameters are matched by name), compares the forward outputs, then the
gradients of sum_k (out_k * dout_k).sum() for random upstream gradients `dout_k`, and returns every error.
`assert_errors` asserts one tolerance over them. `check` is the one-line op test built on both: float64, the op
tolerance TOL, and the second oracle, float64 central differences (`tinygrad_gpt.gradcheck`). `check_or_raise` is
`check` for argument edge cases: where torch raises, ours must raise an exception of the same type.
`unit_roundoff`, `tol` and `close` are the kernel tests' bound (kernel against its NumPy twin, see `tol`).

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
import contextlib

import numpy as np
import torch

from tinygrad_gpt import Tensor, gradcheck
from tinygrad_gpt.backend import to_host

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



def unit_roundoff(dtype):
    """u = eps / 2 of a float dtype, the largest relative error of one rounding: 6.0e-8 in float32, 1.1e-16 in
    float64."""
    return float(np.finfo(dtype).eps) / 2


def tol(dtype, n):
    """TOL(n) = 8 (n + 8) u: how closely (normwise, as rel_err) a compiled kernel agrees with its NumPy twin
    (test_cpu_kernels.py, test_kernels_sim.py), n the longest chain of reductions behind the output. Both compute the
    same formulas, but the kernel sums in another order (vectorised, reassociated, split over threads). A sum of n
    terms in floating point is off by at most n u sum|terms|, so two orders differ by at most 2 n u sum|terms|, plus
    a few (< 8) more roundings per output; on O(1) random data sum|terms| / max|output| stays below ~4, hence
    8 (n + 8) u relative to max|output|."""
    return 8 * (n + 8) * unit_roundoff(dtype)


def close(ours, ref, bound, what="", floor=TINY):
    """rel_err(ours, ref, floor) <= bound, with the same shape and dtype; `floor` the smallest max|ref| it divides
    by (see test_cpu_kernels.test_attention); `what` names the array in the messages."""
    assert np.shape(ours) == np.shape(ref), f"{what}: shape {np.shape(ours)} vs {np.shape(ref)}"
    assert np.asarray(ours).dtype == np.asarray(ref).dtype, f"{what}: dtype {np.asarray(ours).dtype}"
    err = rel_err(ours, ref, floor)
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound:.3g}"

def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def compare(ours_fn, torch_fn, inputs, ours_params=None, torch_params=None, *, grad=True, seed=0, floor=TINY):
    """Run ours_fn(*Tensors), then torch_fn(*torch tensors), on the same arrays `inputs` (float arrays get gradients,
    integer arrays are passed as they are, to ours as NumPy arrays); compare the outputs (a tensor or a list), then,
    with `grad`, the gradients of sum_k (out_k * dout_k).sum(), dout_k ~ N(0, 1) drawn from `seed`, for every float
    input and every parameter ({name: param} of each engine; the names must match; grads zeroed before).

    Returns {"forward": err, "grad input i": err, "grad <name>": err}, each a rel_err with this `floor`."""
    ours_params, torch_params = ours_params or {}, torch_params or {}
    assert sorted(ours_params) == sorted(torch_params), \
        f"parameter names differ: ours {sorted(ours_params)}, torch {sorted(torch_params)}"
    ours_in, torch_in = [], []
    for x in inputs:
        x = np.asarray(x)
        is_float = x.dtype.kind == "f"
        ours_in.append(Tensor(x.copy(), requires_grad=grad) if is_float else x.copy())
        torch_in.append(torch.tensor(x, requires_grad=grad and is_float))
    ours, theirs = _as_list(ours_fn(*ours_in)), _as_list(torch_fn(*torch_in))
    assert len(ours) == len(theirs), f"{len(ours)} outputs, torch gives {len(theirs)}"
    for o, t in zip(ours, theirs, strict=True):
        assert o.dtype == t.detach().numpy().dtype, f"output dtype {o.dtype}, torch {t.dtype}"
    errors = {"forward": max((rel_err(o.numpy(), t.detach().numpy(), floor) for o, t in zip(ours, theirs, strict=True)),
                             default=0.0)}
    if not grad or not ours:  # (a split into no pieces has no output to differentiate)
        return errors

    # its own stream: drawn from the inputs' seed, dout would be proportional to the input (LayerNorm then cancels)
    rng = np.random.default_rng((seed, 0xD0))
    douts = [rng.standard_normal(t.shape).astype(o.dtype) for o, t in zip(ours, theirs, strict=True)]
    with np.errstate(invalid="ignore"):  # only differentiated: outputs holding -inf (masked_fill) may sum to nan
        loss = sum((o * Tensor(d, device=o.device)).sum() for o, d in zip(ours, douts, strict=True))
    torch_loss = sum((t * torch.from_numpy(d)).sum() for t, d in zip(theirs, douts, strict=True))
    if loss.requires_grad:  # else no input reaches the output: every gradient must then be None or zero
        loss.backward()
    if torch_loss.requires_grad:
        torch_loss.backward()
    for i, (o, t) in enumerate(zip(ours_in, torch_in, strict=True)):
        if isinstance(o, Tensor):
            errors[f"grad input {i}"] = _grad_err(o.grad, t.grad, f"input {i}", o.shape, floor)
    for name, p in ours_params.items():
        errors[f"grad {name}"] = _grad_err(p.grad, torch_params[name].grad, name, p.shape, floor)
    return errors


def _grad_err(ours, theirs, what, shape, floor):
    """rel_err of two gradients; None (no gradient reached the input) stands for zeros."""
    ours = np.zeros(shape) if ours is None else np.asarray(to_host(ours), dtype=np.float64)
    theirs = np.zeros(shape) if theirs is None else theirs.numpy()
    assert ours.shape == theirs.shape == tuple(shape), \
        f"gradient of {what} has shape {ours.shape}, torch's {theirs.shape}, the input {tuple(shape)}"
    return rel_err(ours, theirs, floor)


def assert_errors(errors, tol_fwd, tol_grad, what=""):
    """One assertion over a dict of errors from `compare`; the message names the worst entries."""
    bad = {k: v for k, v in errors.items() if not v <= (tol_fwd if k == "forward" else tol_grad)}
    assert not bad, f"{what}: errors above tolerance (fwd {tol_fwd:.3g}, grad {tol_grad:.3g}): " + ", ".join(
        f"{k}={v:.3g}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))


def check(op, inputs, fn, torch_fn=None, *, grad=True, fd=True, tol=TOL, seed=0):
    """The op test: `compare` `fn` (on tinygrad_gpt Tensors) with `torch_fn` (on torch tensors; `fn` itself when
    omitted) at the float64 arrays `inputs`, floor OP_FLOOR, and assert the forward and every gradient error <= `tol`;
    with `fd` the op must also pass `gradcheck`. Returns (forward error, largest gradient error), and records the
    largest errors per `op` in MAX_ERRORS."""
    inputs = [np.asarray(x) for x in inputs]
    for x in inputs:
        assert x.dtype == np.float64, f"check() takes float64 inputs, got {x.dtype}"
    errors = compare(fn, torch_fn or fn, inputs, grad=grad, seed=seed, floor=OP_FLOOR)
    fwd = errors["forward"]
    bwd = max([v for k, v in errors.items() if k != "forward"], default=0.0)
    worst = MAX_ERRORS.setdefault(op, [0.0, 0.0])
    worst[0], worst[1] = max(worst[0], fwd), max(worst[1], bwd)
    assert_errors(errors, tol, tol, f"{op} against torch")
    if grad and fd:
        gradcheck(fn, inputs, seed=seed)
    return fwd, bwd


# torch's exception types a check_or_raise compares: a torch error is matched by the first of these it derives from
EXCEPTIONS = (IndexError, TypeError, NotImplementedError, RuntimeError, ValueError)


def check_or_raise(op, inputs, fn, torch_fn=None, **kw):
    """`check` where torch computes a result; where torch raises, ours must raise the same kind of exception (one
    of EXCEPTIONS: ours may be a subclass, as TensorError is both RuntimeError and ValueError), with a message.
    Returns "raised" or "computed" (so a test can count that it saw both)."""
    torch_fn = torch_fn or fn
    try:
        torch_fn(*[torch.tensor(np.asarray(x)) for x in inputs])
    except Exception as e:  # noqa: BLE001 (any torch error: ours must raise its kind)
        kind = next(k for k in EXCEPTIONS if isinstance(e, k))
        try:
            fn(*[Tensor(np.asarray(x)) for x in inputs])
        except kind as ours:
            assert str(ours), f"{op}: {type(ours).__name__} without a message (torch: {e})"
            return "raised"
        except Exception as ours:  # noqa: BLE001 (any other error of ours is the wrong kind)
            raise AssertionError(f"{op}: torch raises {type(e).__name__} ({e}), ours {type(ours).__name__} "
                                 f"({ours})") from ours
        raise AssertionError(f"{op}: torch raises {type(e).__name__} ({e}), ours computes a result") from e
    check(op, inputs, fn, torch_fn, **kw)
    return "computed"


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


@contextlib.contextmanager
def query_blocks(n):
    """The CPU attention kernel in query blocks of n queries (kernels/cpu/tuning.py; None: the defaults)."""
    from tinygrad_gpt.kernels.cpu import tuning
    names = ("QUERY_BLOCK", "QUERY_BLOCK_MIN")
    saved = [getattr(tuning, k) for k in names]
    if n is not None:
        for name, value in zip(names, (n, 1), strict=True):
            setattr(tuning, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(tuning, name, value)
