"""Smoke test of the benchmark suite (benchmarks/bench.py, tinygrad_gpt/bench.py).

Speed goals are benchmarks, never timed unit tests: nothing here compares a time with a threshold. The quick mode runs
on the small config in a fresh process (the suite pins thread counts globally, which must not leak into other tests)
and must produce the JSON, markdown and PNG with positive times and ratios, and engines that compute the same loss.
One thread and minimal repeats keep it short on a busy CI machine.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import bench as tb

ROOT = Path(__file__).resolve().parents[1]


def test_model_flops_formula_on_the_lecture_config():
    f = tb.model_flops(tb.CONFIGS["lecture"])
    B, T, C, L, V = 64, 256, 384, 6, 65
    n_mm = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + V * C    # qkv, proj, fc, mlp proj; lm_head
    assert f["n_params"] == 10_788_929                                # the lecture notebook's count (SPEC 2)
    assert f["n_matmul_params"] == n_mm
    assert f["total"] == 6 * n_mm * B * T + 12 * L * B * T * T * C


def test_time_interleaved_calls_each_function_warmup_plus_repeats_times():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
        return fn
    t = tb.time_interleaved({"a": make("a"), "b": make("b")}, warmup=2, repeats=5)
    assert calls == {"a": 2 + 5, "b": 2 + 5}
    for timing in t.values():
        d = timing.to_dict()
        assert d["repeats"] == 5 and d["min_ms"] <= d["median_ms"] <= d["max_ms"]


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_chart(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--configs", "small", "--threads", "1",
           "--warmup", "1", "--repeats", "2", "--min-sample-ms", "0", "--sample-tokens", "40", "--devices", "cpu",
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    res = json.loads((out / "bench.json").read_text())
    small = res["configs"]["small"]
    engines = {"tinygrad_gpt-cpu", "torch-fused-cpu", "torch-lecture-cpu"}
    assert set(small["engines"]) == engines
    for e in small["engines"].values():
        assert e["step"]["median_ms"] > 0 and e["step"]["repeats"] == 2
        assert set(e["layers"]) == set(tb.LAYERS)
        assert all(t["median_ms"] > 0 for t in e["layers"].values())
        assert 0 < e["step"]["mfu"] < 10
    ratios = small["ratios"]
    assert set(ratios) == {"tinygrad_gpt-cpu / torch-fused-cpu", "tinygrad_gpt-cpu / torch-lecture-cpu"}
    assert all(np.isfinite(r["step"]) and r["step"] > 0 for r in ratios.values())
    # same weights, same batch: the three engines compute the same initial loss (float32 rounding apart)
    assert small["initial_loss_max_abs_diff"] < 1e-4
    assert small["engines"]["tinygrad_gpt-cpu"]["memory"]["step_peak_bytes"] > 0
    assert res["matmul"]["peak_gflops"] > 0
    s = res["sampling"]["tinygrad_gpt"]
    assert s["kv_cache"]["tokens_per_s"] > 0 and s["no_cache"]["tokens_per_s"] > 0

    md = (out / "bench.md").read_text()
    assert "tinygrad-cpu / torch-fused-cpu" in md and "| small | tinygrad-cpu |" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_matmul_shapes_times_every_linear_product_of_a_step():
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "matmul_shapes.py"), "--config", "small", "--threads", "1",
           "--repeats", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and " ms" not in line]
    assert len(rows) == 5 * 3                       # qkv, attn proj, mlp fc, mlp proj, lm_head; forward, dx, dW
    for row in rows:
        numpy_ms, numpy_gf, torch_ms, torch_gf = (float(c) for c in row.strip("|").split("|")[2:])
        # GFLOP/s are printed as whole numbers: a small product timed on a busy machine rounds to 0
        assert min(numpy_ms, torch_ms) > 0 and min(numpy_gf, torch_gf) >= 0
    assert "per step (every linear layer, forward and backward): NumPy" in proc.stdout
