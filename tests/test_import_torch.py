"""`tinygrad-gpt import-torch`: a state dict trained with torch becomes a checkpoint our fused GPT computes the same
logits from.

The lecture's model is written out below in torch, class for class as in the final gpt.py of "Let's build GPT"
(Head, MultiHeadAttention, FeedFoward, Block, GPTLanguageModel), with one switch: the attention scale, head size
(gpt.py) or n_embd (the notebooks' C**-0.5). Its weights are random (LayerNorm's too, so no parameter sits at a
special value), it is saved with torch.save and imported by the command.

Tolerances. Both engines compute the same formula in a different order of operations (fused qkv matmul vs three
per-head ones, their own LayerNorm and softmax), so they agree to rounding. A dot product of length K computed in
precision u (unit roundoff; 2**-53 in float64, 2**-24 in float32) is off by at most K*u relative to the sum of the
absolute values of its terms (the standard gamma_K bound); along the path from the embeddings to a logit the
longest reductions are the MLP's (4C), the projections' (C) and attention's (T) per block, plus ln_f and lm_head
(C). Their sum, K_path = L * (4C + 3C + T) + 2C, times u, times the magnitude of the terms (the weights here are
N(0, 0.3) and the activations stay O(1) after LayerNorm: we allow 16), bounds the logits' absolute error:
atol = 16 * K_path * u. For the tiny model below (C=16, T=8, L=2, logits up to ~3) that is 16 * 272 * 2**-53 =
4.8e-13 in float64, where the measured differences are ~1e-15. Float32 through the checkpoint uses the same bound
with u = 2**-24 (2.6e-4; measured ~1e-6); the weights themselves are copied exactly (float32 in, float32 out, no
arithmetic) except the query rows that the embd scale multiplies, which are rounded once. Importing with the wrong
attention scale moves the logits by ~0.06, far outside both bounds.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cli_support import run
from no_torch import BLOCK_TORCH
from tinygrad_gpt import GPT, GPTConfig
from tinygrad_gpt import checkpoint as ckpt_io
from tinygrad_gpt.data import DEFAULT_CORPUS
from tinygrad_gpt.import_torch import convert, read_state_dict

ROOT = Path(__file__).resolve().parents[1]
V_SHAKESPEARE = 65                           # distinct characters of the packaged tiny Shakespeare
TINY = {"n_embd": 16, "n_head": 4, "n_layer": 2, "block_size": 8}


# ---- the lecture's model, in torch (gpt.py, with the attention scale as a switch) ------------------------------------
class Head(nn.Module):
    """one head of self-attention"""

    def __init__(self, n_embd, head_size, block_size, dropout, scale):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer('tril', torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)
        self.scale = scale

    def forward(self, x):
        _, T, C = x.shape                                            # (B, T, C)
        k = self.key(x)                                              # (B, T, hs)
        q = self.query(x)                                            # (B, T, hs)
        d = k.shape[-1] if self.scale == "head" else C               # gpt.py: head size; the notebooks: C
        wei = q @ k.transpose(-2, -1) * d ** -0.5                    # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)                                            # (B, T, hs)
        return wei @ v                                               # (B, T, hs)


class MultiHeadAttention(nn.Module):
    def __init__(self, n_embd, num_heads, head_size, block_size, dropout, scale):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout, scale) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)          # (B, T, C)
        return self.dropout(self.proj(out))


class FeedFoward(nn.Module):
    def __init__(self, n_embd, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout, scale):
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_embd, n_head, head_size, block_size, dropout, scale)
        self.ffwd = FeedFoward(n_embd, dropout)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPTLanguageModel(nn.Module):
    def __init__(self, vocab_size, n_embd=16, n_head=4, n_layer=2, block_size=8, dropout=0.2, scale="head"):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size, dropout, scale) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx):
        _, T = idx.shape                                                                # (B, T)
        tok_emb = self.token_embedding_table(idx)                                       # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))     # (T, C)
        x = self.blocks(tok_emb + pos_emb)                                              # (B, T, C)
        return self.lm_head(self.ln_f(x))                                               # (B, T, V)


def lecture_model(vocab_size=V_SHAKESPEARE, scale="head", seed=0, dtype=torch.float32, **sizes):
    """The lecture's model with random weights (every parameter N(0, 0.3)), in eval mode."""
    torch.manual_seed(seed)
    model = GPTLanguageModel(vocab_size, scale=scale, **{**TINY, **sizes})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def atol(model_sizes, u):
    """The bound of the module docstring: 16 * (L * (4C + 3C + T) + 2C) * u."""
    C, T, L = model_sizes["n_embd"], model_sizes["block_size"], model_sizes["n_layer"]
    return 16 * (L * (7 * C + T) + 2 * C) * u


def random_idx(vocab_size, T=TINY["block_size"], B=3, seed=1):
    return np.random.default_rng(seed).integers(0, vocab_size, (B, T))


def torch_logits(model, idx):
    with torch.no_grad():
        return model(torch.from_numpy(idx)).numpy()


def our_logits(model, idx):
    model.eval()
    logits, _ = model(idx)
    return np.asarray(logits.numpy())


def save_lecture(path, **kw):
    model = lecture_model(**kw)
    torch.save(model.state_dict(), path)
    return model


# ---- the mapping, exact in float64 -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["head", "embd"])
def test_lecture_state_dict_gives_the_same_logits_in_float64(tmp_path, scale):
    model = save_lecture(tmp_path / "model.pt", scale=scale, dtype=torch.float64)
    dims, weights = convert(read_state_dict(tmp_path / "model.pt"), attention_scale=scale)
    assert dims == {"vocab_size": V_SHAKESPEARE, "block_size": 8, "n_embd": 16, "n_head": 4, "n_layer": 2,
                    "bias": True}
    assert all(w.dtype == np.float64 for w in weights.values())
    ours = GPT(GPTConfig(**dims), dtype=np.float64)
    ours.load_state_dict(weights)
    idx = random_idx(V_SHAKESPEARE)
    expected = torch_logits(model, idx)
    np.testing.assert_allclose(our_logits(ours, idx), expected, rtol=0, atol=atol(TINY, 2.0 ** -53))
    assert np.abs(expected).max() > 1                   # the comparison is not between near-zero numbers


def test_heads_are_fused_into_qkv_rows_in_order(tmp_path):
    """SPEC section 1's layout, spelled out: head j's query at rows j*hs:(j+1)*hs, keys at C + ..., values 2C + ..."""
    model = save_lecture(tmp_path / "model.pt")
    sd = model.state_dict()
    _, weights = convert(read_state_dict(tmp_path / "model.pt"))
    C, hs = 16, 4
    for i in range(2):
        qkv = weights[f"blocks.{i}.attn.qkv.weight"]
        assert qkv.shape == (3 * C, C)
        for j in range(4):
            for part, w in enumerate(("query", "key", "value")):
                rows = qkv[part * C + j * hs: part * C + (j + 1) * hs]
                np.testing.assert_array_equal(rows, sd[f"blocks.{i}.sa.heads.{j}.{w}.weight"].numpy())


def test_reference_model_state_dict_imports_with_n_head(tmp_path, capsys):
    """A state dict already in SPEC section 2's names (the reference torch GPT): copied, n_head from --n-head."""
    from reference import GPT as RefGPT
    from reference import GPTConfig as RefConfig
    torch.manual_seed(0)
    ref = RefGPT(RefConfig(vocab_size=V_SHAKESPEARE, block_size=8, n_embd=16, n_head=2, n_layer=2)).eval()
    torch.save(ref.state_dict(), tmp_path / "ref.pt")
    code, _, err = run(capsys, "import-torch", tmp_path / "ref.pt", "--out", tmp_path / "ck")
    assert code == 2 and "--n-head" in err
    code, _, err = run(capsys, "import-torch", tmp_path / "ref.pt", "--out", tmp_path / "ck", "--n-head", "2")
    assert code == 0, err
    ck = ckpt_io.load(tmp_path / "ck")
    assert ck.config.n_head == 2
    for name, w in ref.state_dict().items():
        np.testing.assert_array_equal(ck.model_state[name], w.numpy())      # float32 copied: exact


# ---- the command, in float32 through the checkpoint ----------------------------------------------------------------
@pytest.mark.parametrize("scale", ["head", "embd"])
def test_command_writes_a_checkpoint_with_the_same_logits(tmp_path, capsys, scale):
    model = save_lecture(tmp_path / "model.pt", scale=scale)
    code, out, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck",
                         "--attention-scale", scale)
    assert code == 0, err
    assert "n_layer=2 n_head=4 n_embd=16 block_size=8 vocab_size=65" in out
    ck = ckpt_io.load(tmp_path / "ck")
    assert ck.config == GPTConfig(vocab_size=65, block_size=8, n_embd=16, n_head=4, n_layer=2, dropout=0.0)
    assert ck.tokenizer.chars == sorted(set(DEFAULT_CORPUS.read_text(encoding="utf-8")))
    assert ck.meta["data"]["path"] is None and ck.step == 0
    sd = model.state_dict()
    np.testing.assert_array_equal(ck.model_state["lm_head.weight"], sd["lm_head.weight"].numpy())
    qkv = ck.model_state["blocks.1.attn.qkv.weight"]
    q3 = sd["blocks.1.sa.heads.3.query.weight"].numpy()
    factor = 1.0 if scale == "head" else math.sqrt(4 / 16)
    np.testing.assert_array_equal(qkv[12:16], (q3.astype(np.float64) * factor).astype(np.float32))
    idx = random_idx(V_SHAKESPEARE)
    np.testing.assert_allclose(our_logits(ck.build_model(), idx), torch_logits(model, idx), rtol=0,
                               atol=atol(TINY, 2.0 ** -24))


def test_safetensors_state_dict_is_read_too(tmp_path, capsys):
    from safetensors.torch import save_file
    model = lecture_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    code, _, err = run(capsys, "import-torch", tmp_path / "model.safetensors", "--out", tmp_path / "ck")
    assert code == 0, err
    idx = random_idx(V_SHAKESPEARE)
    np.testing.assert_allclose(our_logits(ckpt_io.load(tmp_path / "ck").build_model(), idx),
                               torch_logits(model, idx), rtol=0, atol=atol(TINY, 2.0 ** -24))


def test_training_checkpoint_dict_is_unwrapped(tmp_path, capsys):
    """{'model': state_dict, 'iter': ...} (a training loop's checkpoint) is read through its 'model' entry."""
    model = lecture_model()
    torch.save({"model": model.state_dict(), "iter": 5000, "name": "x"}, tmp_path / "ckpt.pt")
    code, _, err = run(capsys, "import-torch", tmp_path / "ckpt.pt", "--out", tmp_path / "ck")
    assert code == 0, err


def test_sample_and_eval_run_on_the_imported_checkpoint(tmp_path, capsys, corpus):
    """--data gives the vocabulary, and eval then reads that corpus by default."""
    V = len(set(corpus.read_text(encoding="utf-8")))
    save_lecture(tmp_path / "model.pt", vocab_size=V)
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck", "--data", corpus)
    assert code == 0, err
    code, out, err = run(capsys, "sample", "--ckpt", tmp_path / "ck", "-n", "30", "--seed", "1", "--prompt", "ROMEO:")
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) == len("ROMEO:") + 30
    code, out, err = run(capsys, "eval", "--ckpt", tmp_path / "ck", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["corpus"] == str(corpus) and math.isfinite(result["nats_per_char"])


# ---- bad input: exit 2, one error line, nothing written ------------------------------------------------------------
def _lecture_sd():
    return dict(lecture_model().state_dict())


def _renamed(sd):
    sd["blocks.0.ln_1.weight"] = sd.pop("blocks.0.ln1.weight")
    return sd


def _reshaped(sd):
    sd["blocks.1.ffwd.net.0.weight"] = torch.zeros(50, 16)
    return sd


def _odd_heads(sd):
    sd["blocks.0.sa.heads.0.key.weight"] = torch.zeros(5, 16)
    return sd


def _extra(sd):
    sd["blocks.0.sa.bias"] = torch.zeros(16)
    return sd


def _missing(sd):
    del sd["lm_head.bias"]
    return sd


def _gap(sd):
    return {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}


BAD_STATE_DICTS = {
    "renamed key": (_renamed, "blocks.0.ln1.weight"),
    "missing key": (_missing, "lm_head.bias"),
    "unexpected key": (_extra, "blocks.0.sa.bias"),
    "inconsistent shape": (_reshaped, "blocks.1.ffwd.net.0.weight has shape (50, 16)"),
    "heads do not make n_embd": (_odd_heads, "heads of size 5"),
    "a block missing": (_gap, "no blocks.0"),
    "not a GPT": (lambda sd: dict(nn.Linear(3, 4).state_dict()), "not a GPT"),
    "integer weights": (lambda sd: {**sd, "ln_f.bias": torch.zeros(16, dtype=torch.int64)}, "ln_f.bias is int64"),
    "not a state dict": (lambda sd: [1, 2, 3], "not a state dict"),
    "a dict of numbers": (lambda sd: {"a": 1}, "not a state dict"),
}


@pytest.mark.parametrize("case", BAD_STATE_DICTS)
def test_bad_state_dict_is_one_error_line(tmp_path, capsys, case):
    edit, expected = BAD_STATE_DICTS[case]
    torch.save(edit(_lecture_sd()), tmp_path / "model.pt")
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck")
    assert_one_error(code, err, expected)
    assert not (tmp_path / "ck").exists()


def assert_one_error(code, err, expected):
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err


def test_missing_file_pickle_and_legacy_format_are_one_error_line(tmp_path, capsys):
    code, _, err = run(capsys, "import-torch", tmp_path / "nope.pt", "--out", tmp_path / "ck")
    assert_one_error(code, err, "not found")
    (tmp_path / "plain.pkl").write_bytes(__import__("pickle").dumps({"a": 1}))
    code, _, err = run(capsys, "import-torch", tmp_path / "plain.pkl", "--out", tmp_path / "ck")
    assert_one_error(code, err, "plain Python pickle")
    torch.save(_lecture_sd(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    code, _, err = run(capsys, "import-torch", tmp_path / "old.pt", "--out", tmp_path / "ck")
    assert_one_error(code, err, "legacy format")
    code, _, err = run(capsys, "import-torch", tmp_path, "--out", tmp_path / "ck")
    assert_one_error(code, err, "is a directory")
    assert not (tmp_path / "ck").exists()


def test_vocabulary_mismatch_names_both_sizes(tmp_path, capsys, corpus):
    save_lecture(tmp_path / "model.pt")                                      # V = 65
    V = len(set(corpus.read_text(encoding="utf-8")))
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck", "--data", corpus)
    assert_one_error(code, err, f"vocab_size 65 but {corpus} has {V} distinct characters")
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck", "--data",
                       tmp_path / "missing.txt")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "ck").exists()


def test_n_head_that_contradicts_the_heads_is_refused(tmp_path, capsys):
    save_lecture(tmp_path / "model.pt")
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "ck", "--n-head", "2")
    assert_one_error(code, err, "4 heads per block")


def test_output_directory_rules(tmp_path, capsys):
    """A run directory or a directory of other files is never written to; a checkpoint only with --force."""
    save_lecture(tmp_path / "model.pt")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text("{}\n")
    for flags in ([], ["--force"]):
        code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", run_dir, *flags)
        assert_one_error(code, err, "holds a training run")
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.jsonl"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", other, "--force")
    assert_one_error(code, err, "is not empty")
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", tmp_path / "file")
    assert_one_error(code, err, "not a directory")

    ck = tmp_path / "ck"
    assert run(capsys, "import-torch", tmp_path / "model.pt", "--out", ck)[0] == 0
    before = (ck / "meta.json").read_bytes()
    code, _, err = run(capsys, "import-torch", tmp_path / "model.pt", "--out", ck)
    assert_one_error(code, err, "already holds a checkpoint")
    assert (ck / "meta.json").read_bytes() == before
    save_lecture(tmp_path / "model2.pt", seed=1)
    assert run(capsys, "import-torch", tmp_path / "model2.pt", "--out", ck, "--force")[0] == 0
    assert (ck / "meta.json").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no temporaries left


# ---- the whole command where torch cannot be imported ----------------------------------------------------------------
NO_TORCH = BLOCK_TORCH + r"""
import sys
from tinygrad_gpt.cli import main
model, out = sys.argv[1:3]
codes = [main(["import-torch", model, "--out", out]), main(["sample", "--ckpt", out, "-n", "20", "--seed", "0"])]
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print("codes", codes)
"""


@pytest.mark.slow  # a subprocess
def test_import_and_sample_without_torch(tmp_path):
    save_lecture(tmp_path / "model.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path / "model.pt"), str(tmp_path / "ck")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "codes [0, 0]" in proc.stdout
