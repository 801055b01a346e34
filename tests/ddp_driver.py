"""Worker for tests/test_distributed.py, tests/test_train.py and benchmarks: train through tinygrad_gpt.train.train()
(under mpiexec: the real data-parallel path) and record every step's loss; rank 0 writes them with the final
parameters to an .npz.

    [mpiexec -n N] python tests/ddp_driver.py train NPZ -- [train() keyword=JSON value ...]
    python tests/ddp_driver.py simulate NPZ N -- [...]     # one process doing what N ranks do, addition by addition

The keyword dtype="float64" builds the model (so the parameters, gradients and AdamW's state) in float64, where
summation-order differences shrink to about 1e-16 relative; parameters are recorded from memory, in the run's dtype.

`simulate` is the oracle for "the MPI plumbing adds nothing": it draws the same global batch, computes each of the N
row blocks' gradients in turn exactly as rank r would (same shapes, same ops; with grad_accum A, the rank's A
micro-batches one after the other, their gradients summed in .grad), sums the N flat gradient buffers and scales by
1/(N A) as the gradient hook does, then takes the same AdamW step. For N = 2 the sum of two floats does not depend
on the order MPI adds them in, so a 2-rank run must match it bitwise; for N = 1 it is the arithmetic a
single-process run with gradient accumulation must match bitwise.
"""
import functools
import json
import math
import sys

import numpy as np


def parse(args):
    kw = {}
    for a in args:
        k, _, v = a.partition("=")
        kw[k] = json.loads(v)
    return kw


# Parameters of two runs whose gradients differ only in the order of their float additions, after S AdamW steps
# (the derivation is in test_distributed.py's docstring): each step moves a parameter differently by at most
# lr * 4 gamma_K * CANCELLATION plus one rounding, np.spacing(p). CANCELLATION allows a gradient element (or an
# Adam moment) to be that many times smaller than the sum of its terms' magnitudes, which the rounding bound is
# relative to; it is generous, so the bound is only meaningful with float64's gamma_K.
CANCELLATION = 1e6


def parameter_bound(p, steps, lr, gamma):
    """The largest |difference| allowed, elementwise, for parameters `p` (the whole-batch run's), in float64."""
    return steps * (np.spacing(np.abs(p)).astype(np.float64) + 4 * lr * gamma * CANCELLATION)


def worst_parameter_difference(one, other, steps, lr, gamma):
    """max over parameters of |other - one| / parameter_bound; raises AssertionError naming the first above 1."""
    worst = 0.0
    for name in (k for k in one.files if k.startswith("p.")):
        p, q = one[name], other[name]
        bound = parameter_bound(p, steps, lr, gamma)
        ratio = float((np.abs(q.astype(np.float64) - p) / bound).max())
        assert ratio <= 1, f"{name}: max |dp| {np.abs(q - p).max():.3g}, {ratio:.2f} x the bound"
        worst = max(worst, ratio)
    return worst


def model_class(dtype):
    from tinygrad_gpt.model import GPT
    return functools.partial(GPT, dtype=np.dtype(dtype).type)


def train_and_record(npz, kw):
    from tinygrad_gpt import distributed
    from tinygrad_gpt import train as T
    kw = dict(kw)
    losses, params = [], {}
    originals = T.Trainer.train_step, T.finish, T.GPT

    def recording(self):
        value = originals[0](self)
        losses.append(value)
        return value

    def finish(trainer, status):
        # a host copy taken now (Tensor.numpy: CuPy data too; .copy: on cpu it is the parameter's own array)
        params.update({n: p.numpy().copy() for n, p in trainer.model.named_parameters()})
        return originals[1](trainer, status)
    T.Trainer.train_step, T.finish, T.GPT = recording, finish, model_class(kw.pop("dtype", "float32"))
    try:
        T.train(progress=False, say=lambda *a, **k: None, **kw)
    finally:                                          # (the tests also call this in their own process)
        T.Trainer.train_step, T.finish, T.GPT = originals
    dist = distributed.active()
    if dist is None or dist.is_root:
        np.savez(npz, losses=np.array(losses), **{f"p.{k}": v for k, v in params.items()})


def simulate(npz, n_ranks, kw):
    """One process, N row blocks: the data-parallel arithmetic without MPI (see the module docstring)."""
    from tinygrad_gpt.config import make_config
    from tinygrad_gpt.data import BatchSampler, load_corpus
    from tinygrad_gpt.optim import AdamW
    kw = dict(kw)
    GPT = model_class(kw.pop("dtype", "float32"))
    tc = make_config(kw.pop("preset", None), **kw)
    corpus = load_corpus(tc.data, block_size=tc.model.block_size)
    model = GPT(tc.model_config(corpus.tokenizer.vocab_size), seed=tc.seed)
    opt = AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                max_grad_norm=tc.grad_clip or None)
    assert len(opt.groups) == 1
    sampler = BatchSampler(corpus.train, tc.model.block_size, tc.batch_size, seed=[tc.seed, 2])
    rows = tc.batch_size // n_ranks                                   # a rank's rows
    micro = rows // tc.grad_accum                                     # a micro-batch's rows
    losses = []
    for step in range(tc.max_iters):
        opt.set_lr(tc.lr_at(step))
        x, y = sampler.sample()                                       # (B, T): the global batch
        total = None                                                  # [gradients..., loss], as the MPI buffer
        for r in range(n_ranks):
            opt.zero_grad()
            loss_sum = None
            for a in range(r * rows, (r + 1) * rows, micro):
                _, loss = model(x[a:a + micro], y[a:a + micro])
                loss.backward()                                       # .grad sums the micro-batches' gradients
                loss_sum = loss.data if loss_sum is None else loss_sum + loss.data
            opt.gather_grads()
            part = np.append(opt.groups[0].grad, loss_sum)
            total = part if r == 0 else total + part                  # the Allreduce's SUM
        if n_ranks * tc.grad_accum > 1:
            total *= 1.0 / (n_ranks * tc.grad_accum)                  # ... then the scale by 1/(N A)

        def averaged(o, total=total):
            o.groups[0].grad[...] = total[:-1]
        opt.step(grad_hook=averaged)
        losses.append(float(total[-1]))
        assert math.isfinite(losses[-1])
    np.savez(npz, losses=np.array(losses), **{f"p.{k}": p.numpy() for k, p in model.named_parameters()})


if __name__ == "__main__":
    mode, npz = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    if mode == "simulate":
        n, rest = int(rest[0]), rest[1:]
    kw = parse(rest[1:] if rest[:1] == ["--"] else rest)
    if mode == "train":
        train_and_record(npz, kw)
    else:
        simulate(npz, n, kw)
