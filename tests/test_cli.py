"""The command line end to end: train, sample, resume exactly, never lose work, never crash on bad input, no torch.

Runs use a tiny model (C=16, L=1) on a 20,000-character slice of tiny Shakespeare so each takes a second or so.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from cli_support import TINY_MODEL, log, run
from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.data import DATA_DIR
from tinygrad_gpt.errors import TrainingDiverged
from tinygrad_gpt.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
TINY = [*TINY_MODEL, "--sample-chars", "20"]


def train(capsys, corpus, out, *extra):
    return run(capsys, "train", "--data", corpus, "--out", out, *TINY, *extra)


def snapshot(root):
    """Every file under root with the hash of its bytes: to show that nothing was written or changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def weights(run_dir, which="last"):
    return load_file(str(Path(run_dir) / which / "model.safetensors"))


def env_with(*paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in paths] + [str(REPO), env.get("PYTHONPATH", "")])
    return env


# ---- train, then sample ------------------------------------------------------------------------------------------
def test_train_then_sample(capsys, corpus, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = train(capsys, corpus, out, "--max-iters", "8", "--eval-interval", "4")
    assert code == 0, err
    assert {"last", "best", "log.jsonl", "loss.png", "sample.txt"} <= set(os.listdir(out))
    recs = log(out)
    assert [r["step"] for r in recs] == [0, 4, 8]
    assert set(recs[-1]) >= {"step", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"}
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 8/8" in stdout and "finished at step 8" in stdout
    assert ck.load(out / "last").step == 8

    code, stdout, err = run(capsys, "sample", "--ckpt", out, "--prompt", "ROMEO:", "-n", "50",
                            "--temperature", "0.8", "--top-k", "5", "--seed", "1")
    assert code == 0, err
    assert stdout.startswith("ROMEO:") and len(stdout) == len("ROMEO:") + 50 + 1      # streamed, then a newline
    again = run(capsys, "sample", "--ckpt", out / "best", "--prompt", "ROMEO:", "-n", "50",
                "--temperature", "0.8", "--top-k", "5", "--seed", "1")
    assert again[1] == stdout                                # a run directory means its best checkpoint
    greedy = run(capsys, "sample", "--ckpt", out, "-n", "30", "--temperature", "0")[1]
    assert greedy == run(capsys, "sample", "--ckpt", out, "-n", "30", "--temperature", "0", "--seed", "9")[1]


def test_sample_with_the_kv_cache_gives_the_tokens_of_full_recomputation(capsys, corpus, tmp_path):
    """Through the CLI, then on the model directly, across the point where the context window fills up."""
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "10", "--eval-interval", "10", "--dropout", "0.1")[0] == 0
    args = ["sample", "--ckpt", out, "--prompt", "First", "-n", "60", "--seed", "3"]   # 60 > block_size 16
    cached, full = run(capsys, *args), run(capsys, *args, "--no-cache")
    assert cached[0] == full[0] == 0 and cached[1] == full[1]

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=4, n_layer=2), seed=5)
    ctx = np.array([[1, 2, 3], [4, 5, 6]])
    for kw in (dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(temperature=0)):
        a = model.generate(ctx, 30, seed=11, use_cache=True, **kw)
        b = model.generate(ctx, 30, seed=11, use_cache=False, **kw)
        assert a.shape == (2, 33) and np.array_equal(a, b), kw


def test_default_corpus_from_any_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "train", *TINY, "--max-iters", "2", "--eval-interval", "2", "--sample-chars", "0")
    assert code == 0, err
    assert "tinyshakespeare.txt (1,115,394 chars, vocab 65" in stdout
    assert (tmp_path / "runs" / "cpu" / "last").is_dir()             # the default --out is runs/<preset>
    assert run(capsys, "sample", "-n", "5")[0] == 0                   # and the default --ckpt is runs/cpu


def test_accented_french(capsys, tmp_path):
    out = tmp_path / "hugo"
    code, _, err = run(capsys, "train", "--data", DATA_DIR / "hugo_contemplations.txt", "--out", out, *TINY,
                       "--max-iters", "2", "--eval-interval", "2")
    assert code == 0, err
    code, stdout, err = run(capsys, "sample", "--ckpt", out, "--prompt", "Demain, dès l'aube", "-n", "10")
    assert code == 0 and stdout.startswith("Demain, dès l'aube"), err
    assert len(ck.load(out / "best").tokenizer.chars) == 101


# ---- exact resume ------------------------------------------------------------------------------------------------
def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)     # bitwise
    ma, mb = load_file(str(a / "last" / "optim.safetensors")), load_file(str(b / "last" / "optim.safetensors"))
    assert all(np.array_equal(ma[k], mb[k]) for k in ma)
    la = {r["step"]: (r["train_loss"], r["val_loss"], r["lr"]) for r in log(a)}
    lb = {r["step"]: (r["train_loss"], r["val_loss"], r["lr"]) for r in log(b)}   # may hold one more evaluation,
    assert la.keys() <= lb.keys() and all(la[s] == lb[s] for s in la)            # where the run was stopped


@pytest.mark.slow
def test_resume_is_exact_n_plus_n_equals_2n(capsys, corpus, tmp_path):
    """Constant learning rate, dropout on (so the dropout generator's state matters): 2N == N, stop, resume N."""
    common = ["--dropout", "0.2", "--eval-interval", "3", "--lr-schedule", "constant"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(capsys, corpus, one, "--max-iters", "12", *common)[0] == 0
    assert train(capsys, corpus, two, "--max-iters", "6", *common)[0] == 0
    code, stdout, err = run(capsys, "train", "--out", two, "--resume", "--max-iters", "12", "--no-progress")
    assert code == 0, err
    assert "from step 6" in stdout
    assert_same_run(one, two)


@pytest.mark.slow
def test_resume_is_exact_with_cosine_and_stop_at(capsys, corpus, tmp_path):
    """A cosine schedule depends on max_iters: stop part-way with --stop-at, then resume the same schedule."""
    common = ["--dropout", "0.1", "--eval-interval", "4", "--lr-schedule", "cosine", "--warmup-iters", "3",
              "--max-iters", "10", "--grad-clip", "1.0"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(capsys, corpus, one, *common)[0] == 0
    code, stdout, _ = train(capsys, corpus, two, *common, "--stop-at", "5")
    assert code == 0 and "stopped at step 5" in stdout
    assert ck.load(two / "last").step == 5
    assert run(capsys, "train", "--out", two, "--resume", "--no-progress")[0] == 0
    assert_same_run(one, two)


def test_resume_from_another_directory_finds_the_corpus(capsys, corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(capsys, "train", "--out", "run", "--resume", "--max-iters", "4", "--no-progress")
    assert code == 0, err
    assert ck.load(out / "last").step == 4


# ---- never lose work ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_saves_and_exits(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tinygrad_gpt", "train", "--data", str(corpus), "--out", str(out), *TINY,
           "--max-iters", "1000000", "--eval-interval", "1000000"]
    proc = subprocess.Popen(cmd, env=env_with(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "loss.png").exists():                   # the step-0 evaluation is done: training
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stdout and "--resume" in stdout and "Traceback" not in stderr
    saved = ck.load(out / "last")
    assert f"interrupted at step {saved.step}:" in stdout and saved.meta["optimizer"]["step"] == saved.step


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(capsys, corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "4", "--eval-interval", "2")[0] == 0
    real_call, calls, at_nan = GPT.__call__, [], {}

    def poisoned(self, idx, targets=None):
        logits, loss = real_call(self, idx, targets)
        if self.training:
            calls.append(1)
            if len(calls) == 3:                              # step 7: the 3rd training step after resuming at 4
                at_nan.update(snapshot(out / "last"))        # (last/ then holds step 6)
                loss = loss * float("nan")
        return logits, loss
    monkeypatch.setattr(GPT, "__call__", poisoned)
    code, stdout, err = run(capsys, "train", "--out", out, "--resume", "--max-iters", "10", "--no-progress")
    assert code == 1
    assert err.count("\n") == 1 and "loss is nan at step 7" in err and "(step 6), is untouched" in err
    assert snapshot(out / "last") == at_nan and ck.load(out / "last").step == 6
    assert [r["step"] for r in log(out)] == [0, 2, 4, 6]


def test_a_failed_save_stops_with_one_line_and_keeps_the_previous_checkpoint(capsys, corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    before = snapshot(out / "last")
    real_write = ck._write_file

    def disk_full(path, data):
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ck, "_write_file", disk_full)
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--max-iters", "4", "--no-progress")
    monkeypatch.setattr(ck, "_write_file", real_write)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert "could not save the step-4 checkpoint" in err and "No space left on device" in err and "intact" in err
    assert snapshot(out / "last") == before and ck.load(out / "last").step == 2


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "latin1.txt").write_bytes("Il était une fois".encode("latin-1"))
    (d / "short.txt").write_text("to be or not to be", encoding="utf-8")
    (d / "accents.txt").write_text("Noë → ok\n" * 20, encoding="utf-8")
    (d / "foreign").mkdir()
    (d / "foreign" / "ckpt.pt").write_bytes(b"\x80\x04pickle")
    return d


def make_run(capsys, corpus, out):
    assert train(capsys, corpus, out, "--max-iters", "2", "--eval-interval", "2")[0] == 0
    return out


def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, corpus, bad_inputs, tmp_path, monkeypatch):
    run_dir = make_run(capsys, corpus, tmp_path / "run")
    truncated = make_run(capsys, corpus, tmp_path / "truncated")
    data = (truncated / "best" / "model.safetensors").read_bytes()
    (truncated / "best" / "model.safetensors").write_bytes(data[:100])
    corrupt = make_run(capsys, corpus, tmp_path / "corrupt")
    (corrupt / "best" / "meta.json").write_text("{")
    newer = make_run(capsys, corpus, tmp_path / "newer")
    meta = json.loads((newer / "best" / "meta.json").read_text())
    meta["format_version"] = 99
    (newer / "best" / "meta.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    fresh = ["--out", tmp_path / "fresh"]
    d = bad_inputs
    cases = {
        "missing corpus": (["train", "--data", d / "nope.txt", *fresh], "corpus file not found"),
        "corpus is a directory": (["train", "--data", d, *fresh], "directory"),
        "empty corpus": (["train", "--data", d / "empty.txt", *fresh], "is empty"),
        "not UTF-8": (["train", "--data", d / "latin1.txt", *fresh],
                      "not UTF-8 text: invalid byte 0xe9 at byte offset 3"),
        "too short": (["train", "--data", d / "short.txt", *fresh], "too short for block_size"),
        "n_embd % n_head": (["train", "--data", corpus, "--n-embd", "30", "--n-head", "4", *fresh],
                            "n_embd (30) must be divisible by n_head (4)"),
        "negative size": (["train", "--data", corpus, "--n-layer", "0", *fresh], "n_layer must be a positive"),
        "dropout 1": (["train", "--data", corpus, "--dropout", "1", *fresh], "dropout must be in [0, 1)"),
        "negative lr": (["train", "--data", corpus, "--lr", "-1", *fresh], "lr must be a positive number"),
        "not a number": (["train", "--data", corpus, "--lr", "fast", *fresh], "invalid float value"),
        "unknown flag": (["train", "--bogus", *fresh], "unrecognized arguments: --bogus"),
        "out holds a run": (["train", "--data", corpus, "--out", run_dir, *TINY], "already holds a run"),
        "resume and force": (["train", "--out", run_dir, "--resume", "--force"], "contradict"),
        "resume nothing": (["train", *fresh, "--resume"], "no run to resume"),
        "resume, other shape": (["train", "--out", run_dir, "--resume", "--n-layer", "3"], "cannot change n_layer"),
        "resume, finished": (["train", "--out", run_dir, "--resume"], "already at step 2"),
        "resume, stop in the past": (["train", "--out", run_dir, "--resume", "--max-iters", "9", "--stop-at", "1"],
                                     "--stop-at 1 is not after the step of the run"),
        "prompt outside vocab": (["sample", "--ckpt", run_dir, "--prompt", "Noë → ok"],
                                 ("2 character(s) outside the vocabulary of", ": 'ë' '→'")),
        "missing checkpoint": (["sample", "--ckpt", tmp_path / "nowhere"], "checkpoint not found"),
        "truncated checkpoint": (["sample", "--ckpt", truncated], "model.safetensors is truncated"),
        "corrupt checkpoint": (["sample", "--ckpt", corrupt], "meta.json is unreadable or corrupt"),
        "foreign checkpoint": (["sample", "--ckpt", d / "foreign"], "holds no tinygrad_gpt checkpoint"),
        "newer checkpoint": (["sample", "--ckpt", newer], "format version 99, newer than"),
        "bad temperature": (["sample", "--ckpt", run_dir, "--temperature", "-1"], "temperature must be"),
        "bad top-k": (["sample", "--ckpt", run_dir, "--top-k", "0"], "top_k must be a positive integer"),
        "negative seed (train)": (["train", "--data", corpus, "--seed", "-1", *fresh], "seed must be a non-negative"),
        "negative seed (sample)": (["sample", "--ckpt", run_dir, "--seed", "-1"], "seed must be a non-negative"),
        "negative length": (["sample", "--ckpt", run_dir, "-n", "-5"], "number of characters must be >= 0"),
        "malformed duration": (["train", "--data", corpus, "--time", "5 minutes", *fresh],
                               "--time: cannot read '5 minutes' as a duration: write it like 90s, 5m, 1h or 1h30m"),
        "zero duration": (["train", "--data", corpus, "--time", "0m", *fresh], "--time must be a positive duration"),
        "time and max-iters": (["train", "--data", corpus, "--time", "5m", "--max-iters", "9", *fresh],
                               "--time and --max-iters contradict each other"),
        "grad-accum 0": (["train", "--data", corpus, "--grad-accum", "0", *fresh], "grad_accum must be a positive"),
        "grad-accum does not divide": (["train", "--data", corpus, *TINY, "--grad-accum", "3", *fresh],
                                       "batch_size 4 does not split into 3 equal micro-batches"),
        "eval: missing checkpoint": (["eval", "--ckpt", tmp_path / "nowhere"], "checkpoint not found"),
        "eval: corrupt checkpoint": (["eval", "--ckpt", corrupt], "meta.json is unreadable or corrupt"),
        "eval: truncated checkpoint": (["eval", "--ckpt", truncated], "model.safetensors is truncated"),
        "eval: empty corpus": (["eval", "--ckpt", run_dir, "--data", d / "empty.txt"], "is empty"),
        "eval: not UTF-8": (["eval", "--ckpt", run_dir, "--data", d / "latin1.txt"], "is not UTF-8 text"),
        "eval: outside vocab": (["eval", "--ckpt", run_dir, "--data", d / "accents.txt"],
                                "has 2 character(s) outside the checkpoint's vocabulary: 'ë' '→'"),
        "eval: split too short": (["eval", "--ckpt", run_dir, "--data", d / "short.txt"],
                                  "the val split of"),
        "eval: bad split": (["eval", "--ckpt", run_dir, "--split", "test"], "invalid choice: 'test'"),
        "eval: bad batch size": (["eval", "--ckpt", run_dir, "--batch-size", "0"], "batch size must be a positive"),
    }
    from tinygrad_gpt.backend import cuda_available
    if not cuda_available():
        cases["cuda without a GPU (train)"] = (["train", "--data", corpus, "--device", "cuda", *fresh], "cuda")
        cases["cuda without a GPU (sample)"] = (["sample", "--ckpt", run_dir, "--device", "cuda"], "cuda")
    before = snapshot(tmp_path)
    for name, (args, expected) in cases.items():
        code, stdout, err = run(capsys, *args)
        assert code == 2, (name, stdout, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err + stdout, name
        for part in (expected,) if isinstance(expected, str) else expected:
            assert part in err, (name, err)
        assert snapshot(tmp_path) == before, name
    assert not (tmp_path / "fresh").exists()


def test_force_starts_over_and_keeps_unrelated_files(capsys, corpus, tmp_path):
    out = make_run(capsys, corpus, tmp_path / "run")
    (out / "notes.txt").write_text("mine")
    code, _, err = train(capsys, corpus, out, "--max-iters", "1", "--eval-interval", "1", "--force")
    assert code == 0, err
    assert ck.load(out / "last").step == 1 and [r["step"] for r in log(out)] == [0, 1]
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_drops_log_lines_past_the_checkpoint(capsys, corpus, tmp_path):
    """After a crash the log may run ahead of the last checkpoint; resuming rewinds it."""
    out = make_run(capsys, corpus, tmp_path / "run")
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "train_loss": 0, "val_loss": 0, "lr": 0}) + "\n{\"step\": 4, \"tra")
    assert run(capsys, "train", "--out", out, "--resume", "--max-iters", "4", "--eval-interval", "4",
               "--no-progress")[0] == 0
    assert [r["step"] for r in log(out)] == [0, 2, 4]


# ---- no torch at runtime -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_and_sample_where_torch_cannot_be_imported(corpus, tmp_path):
    fake = tmp_path / "no_torch"
    (fake / "torch").mkdir(parents=True)
    marker = tmp_path / "torch_was_imported"
    (fake / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('torch is not installed here')\n")
    env = env_with(fake)
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is not installed here" in check.stderr
    marker.unlink()
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tinygrad_gpt"]
    r = subprocess.run(cmd + ["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "3",
                              "--eval-interval", "3"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(cmd + ["sample", "--ckpt", str(out), "--prompt", "First", "-n", "20", "--seed", "0"],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("First") and len(r.stdout) >= 25
    assert not marker.exists()                                   # nothing even tried to import torch


def test_gpu_loss_readback_names_the_diverged_step():
    """On the GPU the trainer keeps each step's loss on the device and reads them back in one go (sync_losses,
    every SYNC_EVERY steps and before any evaluation or save). The read-back must still name the first bad step."""
    from types import SimpleNamespace

    from tinygrad_gpt import train as T
    run = T.Trainer.__new__(T.Trainer)
    run.model = SimpleNamespace(device=SimpleNamespace(xp=np))
    run.pending = [(5, np.asarray(2.0, np.float32)), (6, np.asarray(np.nan, np.float32)),
                   (7, np.asarray(np.inf, np.float32))]
    run.ema_loss, run.saved_step, run.out = None, 4, Path("runs/x")
    with pytest.raises(TrainingDiverged, match="at step 6"):
        run.sync_losses()
    assert run.pending == [] and run.ema_loss == 2.0
    run.sync_losses()                                  # nothing pending: no-op
