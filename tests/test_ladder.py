"""The lecture's ladder (issue 22): the rungs of tinygrad_gpt/lecture/ (examples/lecture/), each a model in the
lecture's style on the torch-shaped front end; `tinygrad-gpt ladder` training them into run directories that
`sample` and `eval` read; its table, plot and samples; its errors.
"""
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

import tinygrad_gpt
from cli_support import run, write_corpus
from tinygrad_gpt import Tensor, lecture
from tinygrad_gpt import checkpoint as ckpt_io
from tinygrad_gpt.data import load_corpus
from tinygrad_gpt.ladder import LADDER_FILES, RungRun

ROOT = Path(__file__).resolve().parents[1]


# ---- the rungs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rung", lecture.RUNGS, ids=lambda r: r.name)
def test_each_rung_trains_a_step_in_the_lectures_style(rung):
    """Every rung: the three import lines of a lecture script and nothing else from the engine, a (logits, loss)
    forward like the lecture's, a loss near ln(vocab) at the start (uniform guesses), gradients for every parameter,
    and a loss that falls over a few AdamW steps on one batch."""
    source = inspect.getsource(lecture.module(rung.name))
    engine_imports = [line for line in source.splitlines() if "tinygrad_gpt" in line and "import" in line]
    assert all(line in ("import tinygrad_gpt as torch", "import tinygrad_gpt.nn as nn",
                        "from tinygrad_gpt.nn import functional as F") for line in engine_imports), engine_imports
    hp = lecture.hyperparameters(rung.name, 65, block_size=8, n_embd=16, n_head=2, n_layer=2)
    tinygrad_gpt.manual_seed(0)
    model = lecture.build(rung.name, hp)
    rng = np.random.default_rng(0)
    x, y = (Tensor(rng.integers(0, 65, (4, 8))) for _ in range(2))
    logits, loss = model(x, y)
    assert tuple(logits.shape) == (4, 8, 65)
    first = loss.item()
    assert abs(first - math.log(65)) < 0.6                      # rung 1's N(0, 1) table starts a little higher
    opt = tinygrad_gpt.optim.AdamW(model.parameters(), lr=hp["learning_rate"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    for _ in range(20):
        opt.step()
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
    assert loss.item() < first


def test_each_rung_builds_on_the_one_before():
    """Reading r1 to r8 in order is reading the lecture: each rung module imports a part of an earlier one."""
    for i, rung in enumerate(lecture.RUNGS[1:], start=1):
        source = inspect.getsource(lecture.module(rung.name))
        earlier = [r.module for r in lecture.RUNGS[:i]]
        assert any(f"from .{m} import" in source for m in earlier), f"{rung.name} imports no earlier rung"
    assert (ROOT / "examples" / "lecture" / "r1_bigram.py").read_text() == \
        inspect.getsource(lecture.module("bigram")), "examples/lecture/ is the package's lecture/"


def test_rung_checkpoint_round_trip_gives_the_same_logits(tmp_path, corpus):
    """A rung trained a few steps, saved as the ladder saves it, loaded by checkpoint.load: the same logits bit for
    bit (float32 weights both ways), and the default generator's state untouched by the load."""
    job = RungRun(lecture.BY_NAME["multi-head"], load_corpus(corpus), tmp_path, seed=3, force=False)
    for _ in range(5):
        job.step()
    job.rundir.save(ckpt_io.LAST, 5, **job.checkpoint(job.meta(5, 1, 2.0, 2.0, 1.0)))
    state = tinygrad_gpt.get_rng_state()
    ck = ckpt_io.load(tmp_path / "multi-head" / ckpt_io.LAST)
    model = ck.build_model().eval()
    assert tinygrad_gpt.get_rng_state() == state
    assert ck.meta["model"]["rung"] == "multi-head" and ck.config.block_size == job.hp["block_size"]
    x = Tensor(np.arange(16).reshape(2, 8) % 20)
    np.testing.assert_array_equal(model(x)[0].numpy(), job.model.eval()(x)[0].numpy())


def test_a_checkpoint_naming_an_unknown_rung_is_refused(tmp_path, corpus):
    job = RungRun(lecture.BY_NAME["bigram"], load_corpus(corpus), tmp_path, seed=3, force=False)
    meta = job.meta(1, 1, 2.0, 2.0, 1.0)
    meta["model"]["rung"] = "transformer-xl"
    with pytest.raises(ValueError, match="not a rung of the lecture's ladder"):
        ckpt_io.save(tmp_path / "bad", job.model, job.corpus.tokenizer, 1, meta=meta)


# ---- the command ----------------------------------------------------------------------------------------------------

@pytest.mark.slow   # a ladder of three rungs, a few seconds
def test_a_small_ladder_end_to_end(tmp_path, capsys):
    """40 steps a rung (--max-steps) within a budget that fits them on a busy machine, so the rows do not depend on
    the machine's speed."""
    data = write_corpus(tmp_path, 30_000)
    out = tmp_path / "ladder"
    code, stdout, err = run(capsys, "ladder", "--time", "10m", "--max-steps", "40", "--data", data, "--out", out,
                            "--no-progress", "--rungs", "bigram,one-head,layernorm")
    assert code == 0, err
    assert all((out / name).is_file() for name in LADDER_FILES)
    report = json.loads((out / "ladder.json").read_text())
    rows = report["rows"]
    assert [r["rung"] for r in rows] == ["bigram", "one-head", "layernorm"]
    for r in rows:
        run_dir = out / r["rung"]
        assert {"best", "last", "log.jsonl", "loss.png", "sample.txt"} <= {p.name for p in run_dir.iterdir()}
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        assert records[0]["step"] == 0 and records[-1]["step"] == r["steps"] == 40
        assert r["val_loss"] == records[-1]["val_loss"] and math.isfinite(r["val_loss"])
        assert (run_dir / "sample.txt").read_text().strip()
    bigram_start = json.loads((out / "bigram" / "log.jsonl").read_text().splitlines()[0])["val_loss"]
    assert rows[0]["val_loss"] < bigram_start                   # 40 steps at the lecture's lr 1e-2: it learned
    md = (out / "ladder.md").read_text()
    assert "val 2.49 after 3,000 steps (the lecture)" in md and "helped most" in md and "## Samples" in md
    change = rows[1]["val_loss"] - rows[0]["val_loss"]
    assert f"{change:+.3f}" in md
    # the rungs' run directories are ordinary: sample, eval and resume-free loading work on them
    code, text, err = run(capsys, "sample", "--ckpt", out / "one-head", "-n", "40", "--seed", "1")
    assert code == 0 and len(text) >= 40, err
    code, text, err = run(capsys, "eval", "--ckpt", out / "layernorm", "--json")
    assert code == 0, err
    assert json.loads(text)["nats_per_char"] > 0
    # a second ladder into the same directory needs --force
    code, _, err = run(capsys, "ladder", "--time", "1m", "--data", data, "--out", out, "--rungs", "bigram")
    assert code == 2 and err.startswith("error: ") and "--force" in err


@pytest.mark.parametrize("args, message", [
    (["--rungs", "bigram,transformer"], "unknown rung 'transformer'"),
    (["--time", "1s"], "too short"),
    (["--time", "5 minutes"], "cannot read"),
    (["--data", "no/such/file.txt"], "not found"),
])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, capsys, corpus, args, message):
    argv = ["ladder", "--out", tmp_path / "l", "--no-progress", "--data", corpus] + args
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "l" / "ladder.md").exists()
