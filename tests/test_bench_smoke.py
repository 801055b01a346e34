"""The benchmark suite (benchmarks/) and the `tinygrad-gpt bench` command.

Speed goals are benchmarks, never timed unit tests: nothing here compares a time with a threshold. The quick run
uses the small config, one thread and minimal rounds; it must produce the JSON, markdown, PNG and README table, time
every engine that computes the same math, and refuse to time one that does not (tests/bench_fake_engines.py).
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import engines, protocol, report
from tinygrad_gpt import cli
from tinygrad_gpt.backend import cuda_available
from tinygrad_gpt.model import GPTConfig, count_parameters

ROOT = Path(__file__).resolve().parents[1]
WRONG = "tests.bench_fake_engines:LectureLearningRate"
WRONG_EPS = "tests.bench_fake_engines:LayerNormEps"
BROKEN = "tests.bench_fake_engines:Unbuildable"


def test_model_flops_formula_on_the_lecture_config():
    bc = protocol.CONFIGS["lecture"]
    f = protocol.model_flops(bc, count_parameters(GPTConfig(**bc.gpt_config())))
    B, T, C, L, V = 64, 256, 384, 6, 65
    n_mm = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + V * C    # qkv, proj, fc, mlp proj; lm_head
    assert f["n_params"] == 10_788_929                                # the lecture notebook's count (SPEC 2)
    assert f["n_matmul_params"] == n_mm
    assert f["total"] == 6 * n_mm * B * T + 12 * L * B * T * T * C


def test_perturbed_scales_every_weight_up_or_down_by_the_perturbation():
    w = {"a": np.random.default_rng(0).standard_normal((50, 40)).astype(np.float32)}
    p = protocol.perturbed(w, seed=1)["a"]
    rel = p.astype(np.float64) / w["a"] - 1                          # +-2^-20, to within float32 rounding (2^-24)
    assert p.dtype == np.float32
    np.testing.assert_allclose(np.abs(rel), protocol.PERTURBATION, atol=2.0 ** -23)
    assert (rel > 0).any() and (rel < 0).any()
    assert np.array_equal(p, protocol.perturbed(w, seed=1)["a"])
    assert not np.array_equal(p, protocol.perturbed(w, 2)["a"])


def test_check_tolerance_step_one_from_its_own_spread_later_steps_from_the_largest():
    exact = np.array([4.0, 3.9, 3.8])
    runs = exact + np.array([[1e-7, 2e-6, -1e-5],                     # the largest spread: 1e-5, at step 3
                             [-3e-7, 0.0, 1e-6]])
    tol = protocol.check_tolerance(runs, exact, n_terms=400)
    floor = 20 * protocol.U32 * exact                                   # sqrt(400) u |loss|
    k = protocol.SPREAD_FACTOR
    np.testing.assert_allclose(tol, [k * 3e-7 + floor[0], k * 1e-5 + floor[1], k * 1e-5 + floor[2]], rtol=1e-9)
    ok = protocol.check_trajectory(exact + tol * 0.99, exact, tol)
    bad = protocol.check_trajectory(exact + np.array([0, 0, 1.01]) * tol, exact, tol)
    assert ok["passed"] and not bad["passed"] and bad["worst_step"] == 3
    assert not protocol.check_trajectory([4.0, np.nan, 3.8], exact, tol)["passed"]


def test_engine_groups_each_hold_ours_and_torch_fused_and_split_the_rest():
    from benchmarks.runner import plan_groups
    names = ["tinygrad_gpt", "tinygrad_gpt-numpy", "torch-fused", "torch-lecture", "jax", "autograd", "tinygrad"]
    groups = plan_groups(names, 4)
    assert groups == [["tinygrad_gpt", "torch-fused", "tinygrad_gpt-numpy", "torch-lecture"],
                      ["tinygrad_gpt", "torch-fused", "jax", "autograd"], ["tinygrad_gpt", "torch-fused", "tinygrad"]]
    assert plan_groups(names, 0) == [names] and plan_groups(names[:3], 4) == [names[:3]]
    assert plan_groups(["jax", "autograd", "tinygrad"], 2) == [["jax", "autograd"], ["tinygrad"]]


def test_every_registered_engine_names_a_class_of_its_module():
    for name, spec in engines.ENGINES.items():
        path = ROOT / (spec.path.replace(".", "/") + ".py")
        assert f"class {spec.cls}" in path.read_text(), name
    assert set(engines.QUICK_ENGINES) <= set(engines.CPU_ENGINES)


def test_readmes_hold_the_blocks_the_tools_write():
    assert report.README_START in (ROOT / "README.md").read_text()          # bench.py --update-readme
    assert "<!-- check-power:start -->" in (ROOT / "benchmarks" / "README.md").read_text()   # check_power.py


@pytest.mark.slow
def test_quick_run_times_the_same_math_and_refuses_the_rest(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    timed = ["tinygrad_gpt", "tinygrad_gpt-numpy", "torch-fused", "torch-default-adamw"]
    # --force: CI's machine is busy running the other tests; a busy run is otherwise not published (tested below)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--configs", "small", "--threads", "1",
           "--engines", *timed, "autograd", WRONG, WRONG_EPS, BROKEN, "--rounds", "2", "--block", "2", "--warmup",
           "1", "--check-steps", "4", "--check-runs", "2", "--layer-samples", "1", "--min-sample-ms", "0",
           "--settle-ms", "200", "--sample-tokens", "10", "--out", str(out), "--update-readme", str(readme), "--force"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    res = json.loads((out / "bench.json").read_text())
    small = res["configs"]["small"]
    if importlib.util.find_spec("autograd"):
        timed.append("autograd")
    else:
        assert "autograd" in small["skipped"] and "pip install" in small["skipped"]["autograd"]
    assert set(small["engines"]) == set(timed)
    for name, e in small["engines"].items():
        assert e["check"]["passed"] and e["check"]["independent"], name
        # never judged by its own library's runs
        assert e["check"]["judged_by"] == ("tinygrad_gpt" if name.startswith("torch") else "torch"), name
        assert e["step"]["n"] == 2 * 2 and 0 < e["step"]["min_ms"] <= e["step"]["median_ms"] <= e["step"]["max_ms"]
        assert np.isfinite(e["step"]["of_matmul_rate"]) and e["step"]["of_matmul_rate"] > 0
        assert e["memory"]["process_peak_rss_bytes"] > 0
    for name in ("tinygrad_gpt", "tinygrad_gpt-numpy", "torch-fused"):
        assert set(small["engines"][name]["layers"]) == set(engines.LAYERS)
    assert small["engines"]["tinygrad_gpt"]["memory"]["tracemalloc_step_bytes"] > 0
    # the wrong engines (variants of ours, judged by torch's runs) ran their check, missed the tolerance, and were
    # not timed; the LayerNorm one at step 1 (a different forward), the learning-rate one after the first update
    for name, first_wrong_step in ((WRONG, 2), (WRONG_EPS, 1)):
        wrong = small["failed_check"][name]["check"]
        assert not wrong["passed"] and wrong["diff_at_worst"] > wrong["tol_at_worst"] and wrong["judged_by"] == "torch"
        assert wrong["worst_step"] >= first_wrong_step
    assert small["failed_check"][WRONG_EPS]["check"]["worst_step"] == 1
    assert "cannot be built" in small["errors"][BROKEN]
    # the references, torch's and ours: float32 runs from the weights and two perturbed copies, a float64 run; the
    # two float64 trajectories agree (tests/test_trajectory.py holds them to 1e-8)
    refs = small["references"]
    assert set(refs) == {"torch", "tinygrad_gpt"}
    for ref in refs.values():
        assert np.asarray(ref["runs32"]).shape == (3, 4) and len(ref["exact"]) == len(ref["tol"]) == 4
    np.testing.assert_allclose(refs["torch"]["exact"], refs["tinygrad_gpt"]["exact"], rtol=0, atol=1e-8)
    assert res["meta"]["load"]["windows"] > 0 and res["meta"]["allocator"] == "tuned"
    assert res["meta"]["hardware_peak"] is None or res["meta"]["hardware_peak"]["gflops"] > 0
    assert set(small["blas_floor"]) == {"numpy", "torch"}
    assert all(f["per_step_ms"] > 0 and len(f["rows"]) == 15 for f in small["blas_floor"].values())
    assert res["matmul"]["peak_gflops"] > 0
    s = res["sampling"]["tinygrad_gpt"]
    assert s["kv_cache"]["tokens_per_s"] > 0 and s["no_cache"]["tokens_per_s"] > 0

    md = (out / "bench.md").read_text()
    assert "| small | tinygrad_gpt |" in md and "**failed**" in md and "## Each layer alone" in md
    # --render writes the same tables again from the results file, measuring nothing
    from benchmarks import bench
    assert bench.main(["--render", str(out / "bench.json"), "--out", str(tmp_path / "again"), "--force"]) == 0
    assert (tmp_path / "again" / "bench.md").read_text() == md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = readme.read_text()
    assert table.startswith("before\n") and table.endswith("after\n") and "old table" not in table
    assert "| tinygrad_gpt |" in table and "| torch-fused |" in table and f"| {WRONG} |" in table


@pytest.mark.slow
def test_matmul_shapes_times_every_linear_product_in_both_libraries():
    pytest.importorskip("torch")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "matmul_shapes.py"), "--config", "small", "--threads", "1",
           "--rounds", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5 * 3                       # qkv, attn proj, mlp fc, mlp proj, lm_head; forward, dx, dW
    for row in rows:
        numpy_ms, numpy_gf, torch_ms, torch_gf = (float(c) for c in row.strip("|").split("|")[2:])
        # GFLOP/s are printed as whole numbers: a small product timed on a busy machine rounds to 0
        assert min(numpy_ms, torch_ms) > 0 and min(numpy_gf, torch_gf) >= 0
    assert "per step (every linear layer, forward and backward): numpy" in proc.stdout


def test_a_busy_run_is_published_only_when_forced(tmp_path):
    from benchmarks import bench
    args = bench.parse(["--out", str(tmp_path), "--update-readme", str(tmp_path / "README.md")])
    assert bench.publish_targets(args, busy=False) == (str(tmp_path), str(tmp_path / "README.md"))
    assert bench.publish_targets(args, busy=True) == (str(tmp_path / "unpublished"), None)
    forced = bench.parse(["--out", str(tmp_path), "--update-readme", str(tmp_path / "README.md"), "--force"])
    assert bench.publish_targets(forced, busy=True) == (str(tmp_path), str(tmp_path / "README.md"))


def test_load_watch_marks_a_run_busy_by_the_other_processes_load():
    watch = protocol.LoadWatch(cpus=None)
    assert watch.summary()["busy"] is None
    watch.samples = [0.05, 0.1, 0.0]
    assert not watch.summary()["busy"]
    watch.samples = [0.05, 0.1, 2 * protocol.BUSY_CPUS + 0.01]           # one window far above: busy
    assert watch.summary()["busy"]
    watch.samples = [protocol.BUSY_CPUS + 0.1] * 3                      # a steady neighbour: busy
    assert watch.summary()["busy"]
    got = protocol.cpu_busy(0.05)
    assert got is None or 0 <= got <= (os.cpu_count() or 1) + 1e-9


def test_hardware_peak_is_cores_times_lanes_times_units_times_two_times_clock():
    hw = protocol.hardware_peak(2)
    if hw is None:
        pytest.skip("no /proc/cpuinfo")
    assert hw["gflops"] == pytest.approx(2 * hw["fp32_lanes"] * hw["fma_units"] * 2 * hw["ghz"])
    assert hw["fp32_lanes"] in (4, 8, 16) and hw["ghz"] > 0.1


def test_the_judge_of_an_engine_is_never_its_own_library():
    for name in engines.ENGINES:
        assert engines.same_math_judge(name) != engines.family(name), name
    assert engines.same_math_judge(WRONG) == "torch"


def test_cli_bench_times_a_preset(capsys):
    assert cli.main(["bench", "--preset", "small", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["device"] == "cpu" and row["steps"] == 2 and row["batch_size"] == 16 and row["block_size"] == 32
    assert row["iqr_ms"][0] <= row["step_ms"] <= row["iqr_ms"][1]
    assert row["tokens_per_s"] == pytest.approx(16 * 32 / row["step_ms"] * 1e3)


def test_cli_bench_bad_input_is_one_error_line(capsys):
    assert cli.main(["bench", "--steps", "0"]) == 2
    assert cli.main(["bench", "--preset", "huge"]) == 2
    if not cuda_available():
        assert cli.main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("error: ") for line in err) and len(err) == (2 if cuda_available() else 3)

