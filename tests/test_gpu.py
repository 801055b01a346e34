"""The model on the cuda device (CuPy arrays, with the custom kernels and without them), against the torch reference
and against the cpu device. Marked `gpu`: skipped on machines without a CUDA GPU (`pytest -m gpu` runs them, as
benchmarks/gpu.sh does). The kernels themselves are checked on the GPU by tests/test_kernels_sim.py's "cuda" cases.

Tolerances are those of the model issue's tests (tests/model_helpers.py):
  float64: forward relative error <= 1e-10, every gradient <= 1e-9 (both engines make O(10) roundings of 1e-16 per
           output; any wrong formula is off by O(1));
  float32: f32_tol(reduction, depth) = 2 u32 (reduction + depth) 8, reduction the summed reduction lengths of the
           whole GPT's forward and backward passes (red_gpt), depth its elementwise steps (gpt_depth).
  float64 trajectories (20 AdamW steps): losses and final weights within 1e-8 relative (tests/test_trajectory.py).
TF32 is never used by these tests: CuPy's default (CUPY_TF32 unset) computes float32 matmuls in full float32.
"""
import numpy as np
import pytest

from tinygrad_gpt import GPT, AdamW, GPTConfig, cuda_available, kernels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU with CuPy")]

if cuda_available():                       # the imports below need torch and the reference; only on a GPU machine
    import torch

    import reference
    from helpers import assert_errors, compare, rel_err
    from model_helpers import (
        TOL64_FWD,
        TOL64_GRAD,
        RecordingMasks,
        ReplayMasks,
        f32_tol,
        gpt_depth,
        make_pair,
        named_params,
        red_gpt,
    )

CFG = dict(vocab_size=13, block_size=16, n_embd=32, n_head=4, n_layer=2, dropout=0.0)
B, T = 3, 16


@pytest.fixture(params=[True, False], ids=["kernels", "cupy"])
def kernels_on(request):
    kernels.set_enabled(request.param, "cuda")
    yield request.param
    kernels.set_enabled(None)


def batch(seed, vocab=CFG["vocab_size"], b=B, t=T):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (b, t)), rng.integers(0, vocab, (b, t))


def on_cuda(cfg, dtype, seed=0):
    """(ours on cuda, torch reference) with the same non-trivial weights."""
    ours, ref = make_pair(cfg, dtype, seed)
    return ours.to("cuda"), ref


def assert_matches_reference(ours, ref, idx, tgt, tol_fwd, tol_grad, what, seed=0):
    """helpers.compare twice: the logits with a random upstream gradient, then the loss; every parameter gradient."""
    ours_p, ref_p = named_params(ours), named_params(ref)
    assert_errors(compare(lambda i: ours(i)[0], lambda i: ref(i)[0], [idx], ours_p, ref_p, seed=seed),
                  tol_fwd, tol_grad, f"{what}: logits")
    ours.zero_grad()
    ref.zero_grad(set_to_none=True)
    assert_errors(compare(lambda i, y: ours(i, y)[1], lambda i, y: ref(i, y)[1], [idx, tgt], ours_p, ref_p,
                          seed=seed), tol_fwd, tol_grad, f"{what}: loss")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_gpt_float64_on_cuda_matches_torch(kernels_on, bias, activation):
    cfg = dict(CFG, bias=bias, activation=activation)
    ours, ref = on_cuda(cfg, np.float64)
    idx, tgt = batch(1)
    assert_matches_reference(ours, ref, idx, tgt, TOL64_FWD, TOL64_GRAD, "float64 GPT on cuda")


@pytest.mark.parametrize("t", [1, 7, T])
def test_gpt_float32_on_cuda_matches_torch(kernels_on, t):
    ours, ref = on_cuda(CFG, np.float32)
    idx, tgt = batch(2, t=t)
    tol = f32_tol(red_gpt(CFG, B, t), gpt_depth(CFG))
    assert_matches_reference(ours, ref, idx, tgt, tol, tol, f"float32 GPT on cuda (t = {t})")
    assert ours.tok_emb.weight.grad.dtype == np.float32


def test_dropout_with_given_masks_matches_torch(kernels_on):
    cfg = dict(CFG, dropout=0.2)
    ours, ref = on_cuda(cfg, np.float64)
    ours.train()
    ref.train()
    rec = RecordingMasks(0.2, seed=3)
    idx, tgt = batch(4)
    ref.set_mask_source(rec)
    ref(torch.from_numpy(idx), torch.from_numpy(tgt))                  # draws the masks both engines then replay

    def replaying(model):
        def run(i, y):
            model.set_mask_source(ReplayMasks(rec.masks))
            return model(i, y)[1]
        return run
    errors = compare(replaying(ours), replaying(ref), [idx, tgt], named_params(ours), named_params(ref))
    assert_errors(errors, TOL64_FWD, TOL64_GRAD, "float64 GPT with dropout masks on cuda")


def test_training_trajectory_float64_matches_torch(kernels_on):
    ours, ref = on_cuda(CFG, np.float64, seed=5)
    opt, ref_opt = AdamW(ours.parameters(), lr=3e-3), reference.make_adamw(ref, lr=3e-3)
    for step in range(20):
        idx, tgt = batch(100 + step)
        opt.zero_grad()
        loss = ours(idx, tgt)[1]
        loss.backward()
        opt.step()
        ref_opt.zero_grad()
        ref_loss = ref(torch.from_numpy(idx), torch.from_numpy(tgt))[1]
        ref_loss.backward()
        ref_opt.step()
        err = rel_err(loss.numpy(), ref_loss.detach().numpy())
        assert err <= 1e-8, f"step {step}: loss {float(loss.numpy())} vs torch {ref_loss.item()} (rel {err:.3g})"
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        err = rel_err(p.data.get(), ref_params[name].detach().numpy())
        assert err <= 1e-8, f"after 20 steps, {name}: relative error {err:.3g}"


def test_kernels_on_and_off_agree_in_float32():
    idx, tgt = batch(6)
    grads = {}
    for on in (True, False):
        kernels.set_enabled(on, "cuda")
        try:
            model, _ = on_cuda(dict(CFG, dropout=0.0), np.float32, seed=7)
            loss = model(idx, tgt)[1]
            loss.backward()
            grads[on] = {"loss": loss.numpy()} | {n: p.grad.get() for n, p in model.named_parameters()}
        finally:
            kernels.set_enabled(None)
    tol = f32_tol(red_gpt(CFG, B, T), gpt_depth(CFG))
    bad = {k: rel_err(grads[True][k], grads[False][k]) for k in grads[True]}
    assert max(bad.values()) <= tol, {k: v for k, v in bad.items() if v > tol}


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_on_cuda_equals_cpu(use_cache):
    cpu, _ = make_pair(CFG, np.float64, 8)
    gpu, _ = make_pair(CFG, np.float64, 8)
    gpu.to("cuda")
    prompt = np.array([[1, 2, 3]])
    a = cpu.generate(prompt, 40, temperature=0.0, use_cache=use_cache)     # 40 > block_size: the window slides
    b = gpu.generate(prompt, 40, temperature=0.0, use_cache=use_cache)
    np.testing.assert_array_equal(a, b)


def test_checkpoint_state_moves_between_devices():
    model = GPT(GPTConfig(**CFG), seed=9, device="cuda")
    opt = AdamW(model.parameters())
    for step in range(2):
        idx, tgt = batch(200 + step)
        opt.zero_grad()
        model(idx, tgt)[1].backward()
        opt.step()
    sd, osd = model.state_dict(), opt.state_dict()
    assert all(v.device == "cuda" and v.dtype == np.float32 for v in sd.values())     # torch's: on the model's device
    sd = {k: v.numpy().copy() for k, v in sd.items()}                                 # host copies
    cpu = GPT(GPTConfig(**CFG), seed=0)
    cpu_opt = AdamW(cpu.parameters())
    cpu.load_state_dict(sd)
    cpu_opt.load_state_dict(osd)
    for k, v in cpu.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    back = GPT(GPTConfig(**CFG), seed=0, device="cuda")
    back.load_state_dict(cpu.state_dict())
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    for a, b in zip(cpu_opt.state_dict()["exp_avg"], osd["exp_avg"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_masks_are_drawn_on_the_device():
    import cupy
    p = 0.25
    model = GPT(GPTConfig(**dict(CFG, dropout=p)), seed=11, device="cuda").train()
    drop = model.dropouts()[0]
    keep = drop.mask((64, 4, 16, 16), cupy)
    assert isinstance(keep, cupy.ndarray) and keep.dtype == bool
    n = keep.size
    frac = float(keep.mean())
    assert abs(frac - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / n), frac      # 5 standard deviations
    twin = GPT(GPTConfig(**dict(CFG, dropout=p)), seed=11, device="cuda").train()
    assert bool((twin.dropouts()[0].mask((64, 4, 16, 16), cupy) == keep).all()), "same seed, different masks"


def test_training_step_does_not_synchronize():
    """With CuPy's synchronisation detector on, a steady-state step raises if a CuPy call waits for the GPU
    (reading a value back, a data-dependent output size). Launches of the numba kernels are not seen by it:
    tests/test_cuda_namespace.py checks the whole step on the CPU."""
    import cupy
    import cupyx
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize (deprecated since v10)")
    model = GPT(GPTConfig(**dict(CFG, dropout=0.1)), seed=12, device="cuda").train()
    opt = AdamW(model.parameters())
    idx, tgt = (cupy.asarray(a) for a in batch(13))
    for step in range(2):
        ctx = cupyx.allow_synchronize(False) if step == 1 else _nothing()
        with ctx:
            opt.zero_grad()
            loss = model(idx, tgt)[1]
            loss.backward()
            opt.step()
    assert isinstance(loss.data, cupy.ndarray)
    assert np.isfinite(float(loss.data))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
