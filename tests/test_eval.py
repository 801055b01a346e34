"""`tinygrad-gpt eval` (tinygrad_gpt/evaluate.py): a checkpoint's loss on every full block of a split, checked
against a direct computation written here from the definitions, by an independent forward pass: the torch reference
model (reference/model.py) holding the checkpoint's weights (read from model.safetensors by safetensors itself), in
float64. Nothing of our model's forward is reused, so a wrong logit anywhere in eval's path shows.

Tolerance of the comparison: |eval - direct| <= the cross-entropy's float32 rounding + the float32 forward's.
- Cross-entropy, given the logits. Per position, float32 logsumexp - z_y (max-shifted) errs by at most gamma_V (the
  sum of V exponentials) plus about 3 u times the term's size (the log, the shift and the subtraction; both parts
  are at most the term, as ln sum >= 0 >= z_y - max). The float32 mean of a batch's K = b T terms adds gamma_K
  relative (Higham, sec. 4.2); the float64 sums over batches add nothing at this scale: gamma_V + (3 + K) u L_max,
  with u = 2^-24, gamma_n = n u and L_max the largest per-position loss.
- The logits. Eval's are float32, the oracle's float64 from the same (float32) weights: eval's differ from the
  exact ones by the float32 forward's rounding, bounded as model_helpers.f32_tol bounds a layer (Higham 3.1: a
  reduction of length n is within n u sum|terms|, an elementwise step adds u; KAPPA = 8 for sum|terms| / max|out|)
  for one engine against exact arithmetic and the forward's reductions only: per block LayerNorm's mean and
  variance (2 C), the qkv product (C), the scores (hs), the softmax's sum and A V (2 T), the projection (C), the
  second LayerNorm (2 C), the MLP's products (C and 4 C); then the final LayerNorm (2 C) and the head (C); plus the
  elementwise depth (model_helpers.gpt_depth). So |dz| <= TOL_FWD max|z|, and a per-position loss
  logsumexp(z) - z_y moves by at most 2 max|dz| (logsumexp is 1-Lipschitz in the max norm): 2 TOL_FWD max|z|.
"""
import json
import math

import numpy as np
import pytest

import reference
from cli_support import TINY_MODEL, run, write_corpus
from model_helpers import KAPPA, U32, gpt_depth
from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.cli import main
from tinygrad_gpt.data import DEFAULT_CORPUS

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


def forward_tol(cfg):
    """TOL_FWD of the module docstring: the float32 forward's logits against exact arithmetic, relative to max|z|."""
    C, T, hs = cfg.n_embd, cfg.block_size, cfg.n_embd // cfg.n_head
    reductions = cfg.n_layer * (2 * C + C + hs + 2 * T + C + 2 * C + C + 4 * C) + 2 * C + C
    return U32 * (reductions + gpt_depth(vars(cfg))) * KAPPA


def tolerance(ckpt_dir, worst, zmax):
    """The module docstring's bound on |eval - direct| (K = BATCH * T terms per batch mean)."""
    ckpt = ck.load(ckpt_dir)
    cfg = ckpt.config
    return (len(ckpt.tokenizer.chars) * U + (3 + BATCH * cfg.block_size) * U * worst
            + 2 * forward_tol(cfg) * zmax)


def direct(ckpt_dir, text, split):
    """The mean of -ln p(next char) over every full block of the split, from the definitions, in float64 with the
    torch reference model; and the blocks, the characters predicted, the largest per-position loss and the largest
    |logit|."""
    import torch
    ckpt = ck.load(ckpt_dir)                                   # the config and the vocabulary only
    assert ckpt.tokenizer.chars == sorted(set(text))           # the corpus's sorted characters
    model = reference.GPT(reference.as_config(ckpt.config), dtype=torch.float64)
    model.load_state_dict(reference.load_safetensors(ckpt_dir))   # float32 weights, held exactly in float64
    model.eval()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = [stoi[c] for c in text]
    cut = int(len(ids) * 0.9)                                  # the lecture's split: 90% train, 10% validation
    part = {"train": ids[:cut], "val": ids[cut:], "all": ids}[split]
    T = ckpt.config.block_size
    starts = list(range(0, len(part) - T, T))                  # block at s: inputs s..s+T-1, targets s+1..s+T
    losses, zmax = [], 0.0
    for b in range(0, len(starts), BATCH):
        x = np.array([part[s:s + T] for s in starts[b:b + BATCH]])
        y = np.array([part[s + 1:s + T + 1] for s in starts[b:b + BATCH]])
        with torch.no_grad():
            logits, _ = model(x)
        z = logits.numpy()                                     # (b, T, V) float64
        zmax = max(zmax, float(np.abs(z).max()))
        m = z.max(axis=-1, keepdims=True)
        log_p = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        losses.append(-np.take_along_axis(log_p, y[..., None], axis=-1)[..., 0].ravel())
    losses = np.concatenate(losses)
    return losses.mean(), len(starts), losses.size, losses.max(), zmax


@pytest.mark.parametrize("split", ["val", "train", "all"])
def test_eval_is_the_direct_computation_on_every_full_block(capsys, trained, split):
    corpus, out = trained
    code, stdout, err = run(capsys, "eval", "--ckpt", out, "--split", split, "--json", "--no-progress")
    assert code == 0, err
    r = json.loads(stdout)
    text = corpus.read_text(encoding="utf-8")
    nats, blocks, covered, worst, zmax = direct(out / "best", text, split)
    assert r["corpus"] == str(corpus) and r["checkpoint"] == str(out / "best") and r["step"] == 30
    assert (r["blocks"], r["chars_covered"], r["block_size"]) == (blocks, covered, 16)
    assert r["split_chars"] == {"val": 2000, "train": 18000, "all": 20000}[split]
    assert r["split_chars"] - 16 <= covered <= r["split_chars"] - 1    # only a partial block's tail is left out
    bound = tolerance(out / "best", worst, zmax)
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
    want, _, _, worst, zmax = direct(out / "last", corpus.read_text(encoding="utf-8"), "val")
    assert abs(nats - want) <= 5e-5 + tolerance(out / "last", worst, zmax)     # 4 decimals shown
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
