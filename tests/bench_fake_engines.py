"""Engines for tests/test_bench_smoke.py that the benchmark must not time: one computes different math, one cannot
be built. They plug in as user engines ("module:Class" on the command line)."""
from benchmarks.engines.ours import TinygradGPT
from tinygrad_gpt import AdamW


class WeightDecay01(TinygradGPT):
    """tinygrad_gpt with AdamW's weight decay at 0.1 (nanoGPT's setting) instead of torch's default 0.01: the same
    model, a different update, so a different loss trajectory from the second step on."""

    def __init__(self, bc, state_dict, device="cpu"):
        super().__init__(bc, state_dict, device)
        self.name = "weight-decay-0.1"
        self.opt = AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)


class Unbuildable:
    def __init__(self, bc, state_dict, device="cpu"):
        raise RuntimeError("this engine cannot be built here")
