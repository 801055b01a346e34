"""Per-op cost of the torch-shaped front end beside torch's: tiny tensors, so what is timed is each op's Python and
dispatch overhead, not its arithmetic. One engine per process, one thread:

    python benchmarks/op_cost.py tinygrad_gpt
    python benchmarks/op_cost.py torch

Prints microseconds per call (the best of 5 repeats of 2,000 calls). docs/torch-front-end.md keeps the numbers.
"""
import os
import sys
import timeit

for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

if sys.argv[1:] == ["torch"]:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(1)
elif sys.argv[1:] == ["tinygrad_gpt"]:
    import tinygrad_gpt as torch
    import tinygrad_gpt.nn as nn
    from tinygrad_gpt.nn import functional as F
else:
    sys.exit("usage: python benchmarks/op_cost.py tinygrad_gpt|torch")

a, b = torch.randn(4, 4), torch.randn(4, 4)
mask = torch.tril(torch.ones(4, 4)) == 0
linear = nn.Linear(4, 4)
x = torch.randn(2, 4, requires_grad=True)


def backward():
    (x * 2).sum().backward()


CASES = {"a + b": lambda: a + b, "a @ b": lambda: a @ b, "a.masked_fill(m, -inf)": lambda: a.masked_fill(mask, -1e9),
         "F.softmax(a, dim=-1)": lambda: F.softmax(a, dim=-1), "nn.Linear(4, 4)(a)": lambda: linear(a),
         "a.sum(1)": lambda: a.sum(1), "(x * 2).sum().backward()": backward}

for name, fn in CASES.items():
    seconds = min(timeit.repeat(fn, number=2000, repeat=5)) / 2000
    print(f"{sys.argv[1]:13s} {name:28s} {seconds * 1e6:7.2f} us")
