"""Training to a time budget and with gradient accumulation (tinygrad_gpt/train.py, config.py), single process.

Runs use cli_support.TINY_MODEL on a 20,000-character slice of tiny Shakespeare (cli_support.write_corpus). The
data-parallel side of gradient accumulation is in test_distributed.py.

Gradient accumulation against the whole batch, and to what tolerance: with A micro-batches of B/A rows each, the
step's gradient is (1/A) * the sum of the A micro-batch mean gradients, which in exact arithmetic is the mean over
the whole batch; in float32 only the order of the additions differs. That is the 2-rank data-parallel argument of
test_distributed.py's docstring, with micro-batches for ranks: per-step losses within 2 gamma_K L (K = B T terms
per sum, gamma_K = K u, u = 2^-24), parameters within S (spacing(p) + 4 lr gamma_K) after S steps. And
addition by addition, one process accumulating A micro-batches does what tests/ddp_driver.py's `simulate` does
for 1 rank with grad_accum A, so those two must agree bitwise.
"""
import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file

import ddp_driver
from cli_support import TINY_MODEL, log, run
from tinygrad_gpt import budget
from tinygrad_gpt.budget import evaluations_between, fit_steps, parse_duration
from tinygrad_gpt.errors import ConfigError

TINY = [*TINY_MODEL, "--sample-chars", "0"]


def meta(run_dir, which="last"):
    return json.loads((run_dir / which / "meta.json").read_text())


def assert_bitwise_same_run(stopped, whole):
    """Same parameters, AdamW moments, logged losses and learning rates (the timings may differ). The run that was
    stopped and resumed holds one more evaluation, at the step where it stopped."""
    for name in ("model.safetensors", "optim.safetensors"):
        ta, tb = load_file(str(stopped / "last" / name)), load_file(str(whole / "last" / name))
        assert ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta), name
    keep = ("train_loss", "val_loss", "lr", "max_iters")
    a = {r["step"]: [r[k] for k in keep] for r in log(stopped)}
    b = {r["step"]: [r[k] for k in keep] for r in log(whole)}
    assert len(a) == len(b) + 1 and all(a[s] == b[s] for s in b)


# ---- durations and the budget's arithmetic -----------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2m5s", 125),
                                           ("1h0m1s", 3601), (" 5M ", 300), (45, 45), (2.5, 2.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "-5m", "1.5m", "30s1m", "1 h", "h1", "0s", "0h0m", 0, -3,
                                  float("inf"), True])
def test_malformed_durations(text):
    with pytest.raises(ConfigError, match="--time"):
        parse_duration(text)


def test_fit_steps_by_hand():
    # 1 s a step, 10 s an evaluation every 25 steps: 70 steps bring evaluations at 25, 50 and 70 -> 100 s;
    # 71 steps (25, 50, 71) -> 101 s, 75 steps (25, 50, 75) -> 105 s
    assert fit_steps(100, 0, 1.0, 10.0, 25) == 70
    # from step 40: 60 steps end at 100 with evaluations at 50, 75, 100 -> 90 s; 61 steps add one at 101 -> 101 s
    assert fit_steps(100, 40, 1.0, 10.0, 25) == 60
    assert fit_steps(10.9, 0, 1.0, 10.0, 25) == 0              # one step and its evaluation need 11 s
    assert fit_steps(11, 0, 1.0, 10.0, 25) == 1


def loop_cost(start, n, step_s, eval_s, eval_interval):
    """The cost of n steps from `start`, added up as the training loop spends it: each step, then an evaluation at
    every multiple of eval_interval and at the last step."""
    cost, end = 0, start + n
    for step in range(start + 1, end + 1):
        cost += step_s
        if step % eval_interval == 0 or step == end:
            cost += eval_s
    return cost


@given(seconds=st.integers(0, 400), start=st.integers(0, 60), step_s=st.integers(1, 20), eval_s=st.integers(0, 50),
       eval_interval=st.integers(1, 30))
def test_fit_steps_is_the_most_steps_the_loop_can_take(seconds, start, step_s, eval_s, eval_interval):
    """Against the loop's own accounting, step by step (whole numbers, so the sums are exact)."""
    n = fit_steps(float(seconds), start, float(step_s), float(eval_s), eval_interval)
    fits = [m for m in range(1, seconds // step_s + 2) if loop_cost(start, m, step_s, eval_s, eval_interval) <= seconds]
    assert n == max(fits, default=0)
    evals = sum(1 for s in range(start + 1, start + n + 1) if s % eval_interval == 0 or s == start + n)
    assert evaluations_between(start, start + n, eval_interval) == evals


# ---- time budget -------------------------------------------------------------------------------------------------
# How many steps fit a budget depends on this machine's speed and load, so these tests pin fit_steps' answer (its
# arithmetic is tested above); the rest runs for real: the rehearsal and its undoing, the timed evaluation and
# trial checkpoint, the plan stored, logged and resumed.
BUDGET_RUN = ["--dropout", "0.1", "--lr-schedule", "cosine", "--warmup-iters", "0", "--grad-clip", "1.0",
              "--eval-interval", "50"]


def pin_fit_steps(monkeypatch, n):
    """fit_steps answers n, and records what it was asked."""
    asked = []

    def fit(seconds, start, step_s, eval_s, eval_interval):
        asked.append(dict(seconds=seconds, start=start, step_s=step_s, eval_s=eval_s, eval_interval=eval_interval))
        return n
    monkeypatch.setattr(budget, "fit_steps", fit)
    return asked


def test_a_timed_run_is_the_max_iters_run_it_chose_and_resumes_exactly(capsys, corpus, tmp_path, monkeypatch):
    """Dropout on and a cosine schedule from step 0, so the rehearsal steps would show if they left any trace
    (dropout generator, batch stream, parameters, moments) or if any step used another max_iters. The timed run
    stops part-way (--stop-at) and resumes without --time: the stored max_iters carries the schedule on."""
    asked = pin_fit_steps(monkeypatch, 150)
    timed, plain = tmp_path / "timed", tmp_path / "plain"
    code, stdout, err = run(capsys, "train", "--data", corpus, "--out", timed, *TINY, *BUDGET_RUN, "--time", "1m",
                            "--stop-at", "70")
    assert code == 0, err
    plan = meta(timed)["budget"]
    (a,) = asked
    assert 0 < a["seconds"] < 0.95 * 60 and a["start"] == 0 and a["step_s"] > 0 and a["eval_s"] > 0
    assert a["eval_interval"] == 50
    assert plan["max_iters"] == 150 and meta(timed)["train"]["max_iters"] == 150 and plan["seconds"] == 60
    assert plan["from_step"] == 0 and plan["evaluations"] == 3 and plan["time"] == "1m"
    assert plan["planned_end_s"] == pytest.approx(plan["startup_s"] + 150 * plan["step_s"] + 3 * plan["eval_s"],
                                                  abs=2e-3)                 # the plan's figures are rounded
    assert "time budget 1m: max_iters 150 (150 steps of" in stdout and "stopped at step 70" in stdout
    assert all(r["max_iters"] == 150 for r in log(timed)) and log(timed)[0]["budget"] == plan
    assert run(capsys, "train", "--out", timed, "--resume", "--no-progress")[0] == 0
    assert meta(timed)["step"] == 150 and meta(timed)["budget"] == plan
    code, _, err = run(capsys, "train", "--data", corpus, "--out", plain, *TINY, *BUDGET_RUN, "--max-iters", "150")
    assert code == 0, err
    assert_bitwise_same_run(timed, plain)


def test_a_resumed_run_can_train_on_for_a_new_budget(capsys, corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run(capsys, "train", "--data", corpus, "--out", out, *TINY, "--max-iters", "20",
               "--eval-interval", "10")[0] == 0
    asked = pin_fit_steps(monkeypatch, 15)
    code, stdout, err = run(capsys, "train", "--out", out, "--resume", "--time", "2m", "--no-progress")
    assert code == 0, err
    assert asked[0]["start"] == 20
    plan = meta(out)["budget"]
    assert plan["from_step"] == 20 and plan["max_iters"] == 35 and meta(out)["step"] == 35 and plan["evaluations"] == 2
    assert "max_iters 35 (15 steps of" in stdout
    records = log(out)
    assert [r["step"] for r in records] == [0, 10, 20, 30, 35]
    assert "budget" in records[3] and not any("budget" in r for r in records[:3] + records[4:])


def test_a_budget_too_short_is_one_error_and_leaves_nothing(capsys, corpus, tmp_path, monkeypatch):
    """fit_steps finds no room: the run must stop before writing anything, removing the directory it made."""
    pin_fit_steps(monkeypatch, 0)
    out = tmp_path / "new" / "run"
    code, stdout, err = run(capsys, "train", "--data", corpus, "--out", out, *TINY, "--time", "1m")
    assert code == 2 and err.startswith("error: --time 1m is too short: start-up and timing took ")
    assert err.count("\n") == 1 and "give a longer --time" in err
    assert not out.exists()
    previous = tmp_path / "previous"                           # --force deletes the old run only once training starts
    assert run(capsys, "train", "--data", corpus, "--out", previous, *TINY, "--max-iters", "2")[0] == 0
    before = sorted(p.name for p in previous.iterdir())
    assert run(capsys, "train", "--data", corpus, "--out", previous, *TINY, "--time", "1m", "--force")[0] == 2
    assert sorted(p.name for p in previous.iterdir()) == before and meta(previous)["step"] == 2


# ---- gradient accumulation ---------------------------------------------------------------------------------------
B, T_, STEPS, LR = 8, 16, 12, 1e-3
K = B * T_                           # terms of each sum over the batch's positions
GAMMA32, GAMMA64 = K * 2.0 ** -24, K * 2.0 ** -53     # Higham's gamma_K = K u in float32 and float64
ACCUM = dict(batch_size=B, block_size=T_, n_embd=32, n_head=2, n_layer=2, dropout=0.0, max_iters=STEPS, lr=LR,
             lr_schedule="constant", warmup_iters=0, grad_clip=1.0, eval_interval=STEPS, eval_iters=2, sample_chars=0)


@pytest.fixture(scope="module")
def accumulated(corpus, tmp_path_factory):
    """Single-process runs with grad_accum 1, 2, 4 in float32 and 1, 4 in float64; the simulation of 1 rank
    accumulating 2 and 4 micro-batches (float32)."""
    root = tmp_path_factory.mktemp("accum")
    runs = {}
    for a, dtype in ((1, "float32"), (2, "float32"), (4, "float32"), (1, "float64"), (4, "float64")):
        kw = dict(ACCUM, data=str(corpus), grad_accum=a, dtype=dtype, out=str(root / f"run{a}{dtype}"))
        ddp_driver.train_and_record(root / f"run{a}{dtype}.npz", kw)
        runs[a, dtype] = np.load(root / f"run{a}{dtype}.npz")
        if a > 1 and dtype == "float32":
            ddp_driver.simulate(root / f"sim{a}.npz", 1, kw)
            runs["sim", a] = np.load(root / f"sim{a}.npz")
    return runs


@pytest.mark.parametrize("a", [2, 4])
def test_accumulation_does_addition_by_addition_what_the_simulation_does(accumulated, a):
    run, sim = accumulated[a, "float32"], accumulated["sim", a]
    assert len(run["losses"]) == STEPS and set(run.files) == set(sim.files)
    np.testing.assert_array_equal(run["losses"], sim["losses"])
    for name in run.files:
        np.testing.assert_array_equal(run[name], sim[name], err_msg=name)


@pytest.mark.parametrize("a", [2, 4])
def test_accumulated_micro_batches_give_the_losses_of_the_whole_batch(accumulated, a):
    """float32: each loss is a mean of K positive terms, so the two summation orders agree within 2 gamma_K L."""
    one, acc = accumulated[1, "float32"], accumulated[a, "float32"]
    np.testing.assert_allclose(acc["losses"], one["losses"], rtol=2 * GAMMA32, atol=0)
    assert not np.array_equal(acc["losses"], one["losses"])      # the orders do differ: the test is not vacuous


def test_accumulated_micro_batches_give_the_parameters_of_the_whole_batch(accumulated):
    """float64, within ddp_driver.parameter_bound (derivation in test_distributed.py's docstring)."""
    one, acc = accumulated[1, "float64"], accumulated[4, "float64"]
    np.testing.assert_allclose(acc["losses"], one["losses"], rtol=2 * GAMMA64, atol=0)
    worst = ddp_driver.worst_parameter_difference(one, acc, STEPS, LR, GAMMA64)
    assert worst > 0
    print(f"grad_accum 4, float64: largest parameter difference {worst:.2g} of its bound")


def test_accumulation_that_does_not_divide_the_batch_is_one_error(capsys, corpus, tmp_path):
    code, _, err = run(capsys, "train", "--data", corpus, "--out", tmp_path / "run", *TINY, "--grad-accum", "3")
    assert code == 2 and err == ("error: batch_size 4 does not split into 3 equal micro-batches (--grad-accum 3): "
                                 "use a batch size that is a multiple of 3\n")
    assert not (tmp_path / "run").exists()


def test_accumulation_settings_go_into_the_checkpoint_and_may_change_on_resume(capsys, corpus, tmp_path):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--data", corpus, "--out", out, *TINY, "--max-iters", "4",
                          "--eval-interval", "2", "--grad-accum", "2")
    assert code == 0 and "gradient accumulation: 2 micro-batches of 2 rows per step" in stdout
    assert meta(out)["train"]["grad_accum"] == 2
    assert run(capsys, "train", "--out", out, "--resume", "--max-iters", "6", "--grad-accum", "4",
               "--no-progress")[0] == 0
    assert meta(out)["train"]["grad_accum"] == 4 and meta(out)["step"] == 6
    assert math.isfinite(log(out)[-1]["val_loss"])
