"""The benchmark suite: tinygrad_gpt beside torch and its peers, each engine in its own process (bench.py, runner.py,
worker.py, engines/), with the BLAS floor (matmul_shapes.py) and data-parallel throughput (ddp_bench.py)."""
