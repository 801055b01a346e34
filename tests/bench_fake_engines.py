"""Engines for tests/test_bench_smoke.py that the benchmark must not time: one computes different math, one cannot
be built. They plug in as user engines ("module:Class" on the command line)."""
from benchmarks.engines.ours import TinygradGPT
from tinygrad_gpt import AdamW


class LectureLearningRate(TinygradGPT):
    """tinygrad_gpt with the lecture script's learning rate, 3e-4, instead of the benchmark's 1e-3: the same model,
    another step, so another loss trajectory from the second step on."""

    def __init__(self, bc, state_dict, device="cpu"):
        super().__init__(bc, state_dict, device)
        self.opt = AdamW(self.model.parameters(), lr=3e-4)


class Unbuildable:
    def __init__(self, bc, state_dict, device="cpu"):
        raise RuntimeError("this engine cannot be built here")
