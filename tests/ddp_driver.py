"""Worker for tests/test_distributed.py and benchmarks: train through tinygrad_gpt.train.train() (under mpiexec: the
real data-parallel path) and record every step's loss; rank 0 writes them with the final parameters to an .npz.

    [mpiexec -n N] python tests/ddp_driver.py train NPZ -- [train() keyword=JSON value ...]
    python tests/ddp_driver.py simulate NPZ N -- [...]     # one process doing what N ranks do, addition by addition

`simulate` is the oracle for "the MPI plumbing adds nothing": it draws the same global batch, computes each of the N
row blocks' gradients in turn exactly as rank r would (same shapes, same ops), sums the N flat gradient buffers and
scales by 1/N as the Allreduce does, then takes the same AdamW step. For N = 2 the sum of two floats does not depend
on the order MPI adds them in, so a 2-rank run must match it bitwise.
"""
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


def train_and_record(npz, kw):
    from tinygrad_gpt import distributed
    from tinygrad_gpt import train as T
    losses = []
    original = T.Run.train_step

    def recording(self):
        value = original(self)
        losses.append(value)
        return value
    T.Run.train_step = recording
    result = T.train(progress=False, say=lambda *a, **k: None, **kw)
    dist = distributed.active()
    if dist is None or dist.is_root:
        from safetensors.numpy import load_file
        params = load_file(str(result.out / "last" / "model.safetensors"))
        np.savez(npz, losses=np.array(losses), **{f"p.{k}": v for k, v in params.items()})


def simulate(npz, n_ranks, kw):
    """One process, N row blocks: the data-parallel arithmetic without MPI (see the module docstring)."""
    from tinygrad_gpt.data import BatchSampler, load_corpus
    from tinygrad_gpt.model import GPT
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.train import make_config
    tc = make_config(kw.pop("preset", None), **kw)
    corpus = load_corpus(tc.data, block_size=tc.block_size)
    model = GPT(tc.model_config(corpus.tokenizer.vocab_size), seed=tc.seed)
    opt = AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay,
                max_grad_norm=tc.grad_clip or None)
    assert len(opt.groups) == 1
    sampler = BatchSampler(corpus.train, tc.block_size, tc.batch_size, seed=[tc.seed, 2])
    rows = tc.batch_size // n_ranks
    losses = []
    for step in range(tc.max_iters):
        opt.set_lr(tc.lr_at(step))
        x, y = sampler.sample()                                       # (B, T): the global batch
        total = np.zeros(opt.groups[0].flat.size + 1, np.float32)     # [gradients..., loss], as the MPI buffer
        for r in range(n_ranks):
            _, loss = model(x[r * rows:(r + 1) * rows], y[r * rows:(r + 1) * rows])
            opt.zero_grad()
            loss.backward()
            opt.gather_grads()
            part = np.append(opt.groups[0].grad, np.float32(loss.item()))
            total = part if r == 0 else total + part                  # the Allreduce's SUM
        total *= 1.0 / n_ranks                                        # ... then the scale by 1/N

        def averaged(o):
            o.groups[0].grad[...] = total[:-1]
        opt.step(grad_hook=averaged)
        losses.append(float(total[-1]))
        assert math.isfinite(losses[-1])
    np.savez(npz, losses=np.array(losses), **{f"p.{k}": v for k, v in model.state_dict().items()})


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
