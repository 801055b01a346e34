"""`tinygrad-gpt eval` (tinygrad_gpt/evaluate.py): a checkpoint's loss on every full block of a split, checked
against a direct computation written here from the definitions.

Tolerance of the comparison. The oracle runs the model on the same batches of blocks (so the logits are the
same arrays) and computes -ln softmax in float64; what differs is eval's float32 cross-entropy and its mean.
Per position, float32 logsumexp - z_y (max-shifted) errs by at most gamma_V (the sum of V exponentials) plus about
3 u times the term's size (the log, the shift and the subtraction; both parts are at most the term, as
ln sum >= 0 >= z_y - max). The float32 mean of a batch's K = b T terms adds gamma_K relative (Higham, sec. 4.2);
the float64 sums over batches add nothing at this scale. So |eval - direct| <= gamma_V + (3 + K) u L_max, with u =
2^-24, gamma_n = n u and L_max the largest per-position loss.
"""
import json
import math

import numpy as np
import pytest

from cli_support import TINY_MODEL, run, write_corpus
from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.cli import main
from tinygrad_gpt.data import DEFAULT_CORPUS
from tinygrad_gpt.tensor import no_grad

U = 2.0 ** -24
BATCH = 32                                   # eval's default --batch-size
TINY = [*TINY_MODEL, "--sample-chars", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for 30 steps on a 20,000-character slice of tiny Shakespeare."""
    root = tmp_path_factory.mktemp("eval")
    corpus = write_corpus(root)
    out = root / "run"
    assert main(["train", "--data", str(corpus), "--out", str(out), *TINY, "--max-iters", "30",
                 "--eval-interval", "30"]) == 0
    return corpus, out


def direct(ckpt_dir, text, split):
    """The mean of -ln p(next char) over every full block of the split, from the definitions, in float64; and the
    blocks, the characters predicted, and the largest per-position loss."""
    ckpt = ck.load(ckpt_dir)
    model = ckpt.build_model()
    model.eval()
    ids = [ckpt.tokenizer.stoi[c] for c in text]
    cut = int(len(ids) * 0.9)                                  # the lecture's split: 90% train, 10% validation
    part = {"train": ids[:cut], "val": ids[cut:], "all": ids}[split]
    T = ckpt.config.block_size
    starts = list(range(0, len(part) - T, T))                  # block at s: inputs s..s+T-1, targets s+1..s+T
    losses = []
    for b in range(0, len(starts), BATCH):
        x = np.array([part[s:s + T] for s in starts[b:b + BATCH]])
        y = np.array([part[s + 1:s + T + 1] for s in starts[b:b + BATCH]])
        with no_grad():
            logits, _ = model(x)
        z = logits.numpy().astype(np.float64)                 # (b, T, V)
        m = z.max(axis=-1, keepdims=True)
        log_p = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        losses.append(-np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0].ravel())
    losses = np.concatenate(losses)
    return losses.mean(), len(starts), losses.size, losses.max()


@pytest.mark.parametrize("split", ["val", "train", "all"])
def test_eval_is_the_direct_computation_on_every_full_block(capsys, trained, split):
    corpus, out = trained
    code, stdout, err = run(capsys, "eval", "--ckpt", out, "--split", split, "--json", "--no-progress")
    assert code == 0, err
    r = json.loads(stdout)
    text = corpus.read_text(encoding="utf-8")
    nats, blocks, covered, worst = direct(out / "best", text, split)
    assert r["corpus"] == str(corpus) and r["checkpoint"] == str(out / "best") and r["step"] == 30
    assert (r["blocks"], r["chars_covered"], r["block_size"]) == (blocks, covered, 16)
    assert r["split_chars"] == {"val": 2000, "train": 18000, "all": 20000}[split]
    assert r["split_chars"] - 16 <= covered <= r["split_chars"] - 1    # only a partial block's tail is left out
    vocab = len(ck.load(out / "best").tokenizer.chars)
    bound = vocab * U + (3 + BATCH * 16) * U * worst
    assert abs(r["nats_per_char"] - nats) <= bound, (r["nats_per_char"], nats, bound)
    assert r["bits_per_char"] == pytest.approx(r["nats_per_char"] / math.log(2), rel=1e-15)
    assert r["perplexity"] == pytest.approx(math.exp(r["nats_per_char"]), rel=1e-15)


def test_eval_text_lines_and_another_corpus(capsys, trained, tmp_path):
    corpus, out = trained
    code, stdout, err = run(capsys, "eval", "--ckpt", out / "last", "--no-progress")
    assert code == 0 and err == ""
    lines = stdout.splitlines()
    assert len(lines) == 2 and "val split: 2,000 characters, 124 blocks of 16 -> 1,984 characters covered" in lines[0]
    nats = float(lines[1].split()[0])
    assert abs(nats - direct(out / "last", corpus.read_text(encoding="utf-8"), "val")[0]) < 1e-4   # 4 decimals shown
    other = tmp_path / "other.txt"                         # characters of the vocabulary, another text
    other.write_text(corpus.read_text(encoding="utf-8")[5000:9000], encoding="utf-8")
    code, stdout, err = run(capsys, "eval", "--ckpt", out, "--data", other, "--split", "all", "--json")
    assert code == 0 and err.startswith("note: ") and "is not the corpus" in err
    assert json.loads(stdout)["split_chars"] == 4000


def test_eval_defaults_to_the_checkpoint_s_own_corpus_the_packaged_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "train", *TINY, "--max-iters", "1", "--eval-interval", "1")[0] == 0
    code, stdout, err = run(capsys, "eval", "--json")                # --ckpt runs/cpu, as `sample`
    assert code == 0, err
    r = json.loads(stdout)
    assert r["corpus"] == str(DEFAULT_CORPUS) and r["split_chars"] == 1_115_394 - int(1_115_394 * 0.9)


def test_eval_of_a_checkpoint_whose_corpus_is_gone_asks_for_data(capsys, trained, tmp_path):
    corpus, _ = trained
    moved = tmp_path / "gone.txt"
    moved.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "run"
    assert run(capsys, "train", "--data", moved, "--out", out, *TINY, "--max-iters", "1")[0] == 0
    moved.unlink()
    code, _, err = run(capsys, "eval", "--ckpt", out)
    assert code == 2 and err.count("\n") == 1
    assert f"the corpus checkpoint {out / 'best'} was trained on, {moved}, is not found: pass --data FILE" in err
    assert run(capsys, "eval", "--ckpt", out, "--data", corpus, "--no-progress")[0] == 0
