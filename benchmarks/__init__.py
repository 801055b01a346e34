"""Benchmarks: tinygrad_gpt against torch (bench.py) and the torch models it is timed against (torch_models.py)."""
