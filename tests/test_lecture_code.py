"""The same lecture-style source under torch and under tinygrad_gpt (SPEC section 8): tests/lecture_code/models.py is
executed twice, as written and with only its three import lines swapped for tinygrad_gpt's, and the two engines must
agree: state-dict keys and parameter counts, then, from torch's weights loaded with load_state_dict, the logits, the
loss, every gradient and several AdamW steps (float64), with the attention chain on the fused core where the
pattern fits (patterns.py) and on the plain ops where it does not. tests/lecture_code/gpt_script.py (a whole training
script) runs end to end in a process where torch cannot be imported.

Tolerances (float64): model_helpers' TOL64_FWD = 1e-10 and TOL64_GRAD = 1e-9, derived there: both engines do the same
O(10) roundings per element on O(1) data, ~1e-14 apart, while a wrong formula is off by O(1); after AdamW steps
test_trajectory's TOL64 = 1e-8 (the update divides by sqrt(v) + eps, which magnifies the gradients' rounding in the
first steps by up to lr / eps). Float32: model_helpers.f32_tol of the GPT's reductions (its docstring).
"""
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import tinygrad_gpt
from helpers import rel_err
from model_helpers import TOL64_FWD, TOL64_GRAD, f32_tol, gpt_depth, red_gpt
from no_torch import BLOCK_TORCH
from tinygrad_gpt import fused

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE = (HERE / "lecture_code" / "models.py").read_text()
TORCH_IMPORTS = ("import torch\n", "import torch.nn as nn\n", "from torch.nn import functional as F\n")
OUR_IMPORTS = ("import tinygrad_gpt as torch\n", "import tinygrad_gpt.nn as nn\n",
               "from tinygrad_gpt.nn import functional as F\n")
TOL64 = 1e-8
HP = dict(vocab_size=13, block_size=12, n_embd=24, n_head=3, n_layer=2, dropout=0.2)
VARIANTS = ("head", "embd", "div", "peek", "sdpa")


def swap_imports(text):
    """What a user does: the three torch import lines become tinygrad_gpt's, nothing else changes."""
    for theirs, ours in zip(TORCH_IMPORTS, OUR_IMPORTS, strict=True):
        assert text.count(theirs) == 1
        text = text.replace(theirs, ours)
    return text


def build(engine):
    """tests/lecture_code/models.py as a module, run by torch or by tinygrad_gpt."""
    mod = types.ModuleType(f"lecture_models_{engine}")
    text = SOURCE if engine == "torch" else swap_imports(SOURCE)
    exec(compile(text, str(HERE / "lecture_code" / "models.py"), "exec"), mod.__dict__)
    assert (mod.torch is torch) == (engine == "torch")
    return mod


THEIRS, OURS = build("torch"), build("ours")


def pair(variant, dtype=torch.float64, hp=HP, seed=0):
    """(torch model, our model) of one variant holding torch's weights, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    theirs = THEIRS.GPTLanguageModel(hp, variant).to(dtype).eval()
    ours = OURS.GPTLanguageModel(hp, variant)
    ours.to(np.float64 if dtype == torch.float64 else np.float32)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours.eval()


def batch(hp=HP, B=3, seed=1):
    rng = np.random.default_rng(seed)
    d = rng.integers(0, hp["vocab_size"], (B, hp["block_size"] + 1))
    return d[:, :-1].copy(), d[:, 1:].copy()


@pytest.fixture
def attention_calls(monkeypatch):
    """Counts the fused attention core's forward calls (the pattern's and SDPA's)."""
    calls = []
    original = fused.attention_forward

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)
    monkeypatch.setattr(fused, "attention_forward", counting)
    return calls


# ---- structure ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_keys_order_and_counts_equal_torchs(variant):
    theirs, ours = pair(variant)
    tsd, osd = theirs.state_dict(), ours.state_dict()
    assert list(osd) == list(tsd)                                        # keys and order (buffers: the tril masks)
    assert [tuple(v.shape) for v in osd.values()] == [tuple(v.shape) for v in tsd.values()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    if variant == "head":
        assert "blocks.0.sa.heads.0.tril" in osd and "blocks.1.ffwd.net.2.bias" in osd


def test_default_initialisation_is_torchs_distribution():
    """Without _init_weights: Linear U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, Embedding N(0, 1), LayerNorm ones
    and zeros (the values differ from torch's: the generator is NumPy's)."""
    tinygrad_gpt.manual_seed(0)
    lin, emb, ln = OURS.nn.Linear(400, 300), OURS.nn.Embedding(500, 400), OURS.nn.LayerNorm(7)
    bound = 1 / np.sqrt(400)
    w = lin.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(lin.bias.numpy()).max() <= bound
    # U(-b, b) has mean 0 and variance b^2 / 3: over 120,000 draws the sample moments sit within 5 standard errors
    assert abs(w.mean()) < 5 * bound / np.sqrt(3 * w.size)
    assert abs(w.var() / (bound ** 2 / 3) - 1) < 5 * np.sqrt(0.8 / w.size)
    e = emb.weight.numpy()
    assert abs(e.mean()) < 5 / np.sqrt(e.size) and abs(e.var() - 1) < 5 * np.sqrt(2 / e.size)
    assert np.all(ln.weight.numpy() == 1) and np.all(ln.bias.numpy() == 0)


# ---- the same numbers ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_same_logits_loss_gradients_and_adamw_steps_float64(variant, attention_calls):
    theirs, ours = pair(variant)
    x, y = batch()
    tl, tloss = theirs(torch.from_numpy(x), torch.from_numpy(y))
    ol, oloss = ours(OURS.torch.tensor(x), OURS.torch.tensor(y))
    assert ol.dtype == np.float64 and tuple(ol.shape) == tuple(tl.shape)
    assert rel_err(ol.numpy(), tl.detach().numpy()) <= TOL64_FWD
    assert rel_err(oloss.numpy(), tloss.detach().numpy()) <= TOL64_FWD
    fused_heads = HP["n_layer"] * (1 if variant == "sdpa" else HP["n_head"])
    assert len(attention_calls) == fused_heads, "the attention did not run on the fused core"
    tloss.backward()
    oloss.backward()
    tparams = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        err = rel_err(p.grad.numpy(), tparams[name].grad.numpy())
        assert err <= TOL64_GRAD, f"{variant}: gradient of {name} differs from torch's by {err:.3g}"
    topt = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    oopt = OURS.torch.optim.AdamW(ours.parameters(), lr=1e-2)
    for step in range(3):
        for model, opt, tensor in ((theirs, topt, torch.from_numpy), (ours, oopt, OURS.torch.tensor)):
            if step:
                opt.zero_grad(set_to_none=True)
                model(tensor(x), tensor(y))[1].backward()
            opt.step()
    for name, p in ours.named_parameters():
        err = rel_err(p.numpy(), tparams[name].detach().numpy())
        assert err <= TOL64, f"{variant}: {name} after 3 AdamW steps differs from torch's by {err:.3g}"


def test_float32_logits_within_the_float32_bound():
    theirs, ours = pair("head", dtype=torch.float32)
    x, _ = batch()
    got, want = ours(OURS.torch.tensor(x))[0].numpy(), theirs(torch.from_numpy(x))[0].detach().numpy()
    cfg = dict(HP)
    assert got.dtype == np.float32
    assert rel_err(got, want) <= f32_tol(red_gpt(cfg, *x.shape), gpt_depth(cfg))


def test_peeked_attention_weights_are_torchs():
    """A head that reads its weights (the chain's softmax) gets them computed by the plain ops, as torch's."""
    theirs, ours = pair("peek")
    x, _ = batch()
    theirs(torch.from_numpy(x))
    ours(OURS.torch.tensor(x))
    for th, oh in zip(theirs.blocks[0].sa.heads, ours.blocks[0].sa.heads, strict=True):
        assert abs(oh.entropy.item() - th.entropy.item()) <= TOL64_FWD * abs(th.entropy.item())


def test_chains_the_pattern_does_not_fit_run_on_the_plain_ops(attention_calls):
    """A mask that is not causal, a softmax over another axis, a finite fill value: torch's numbers, no fused call."""
    rng = np.random.default_rng(3)
    q0, k0, v0 = (rng.standard_normal((2, 6, 4)) for _ in range(3))
    def chain(mask, fill, dim):
        def run(M, F, q, k, v):
            s = (q @ k.transpose(-2, -1)).masked_fill(mask(M) == 0, fill)
            return F.softmax(s, dim=dim) @ v
        return run
    cases = {"mask sees one key ahead": chain(lambda M: M.tril(M.ones(6, 6), diagonal=1), float("-inf"), -1),
             "softmax over the queries": chain(lambda M: M.tril(M.ones(6, 6)), -1e30, 1),
             "fill -5": chain(lambda M: M.tril(M.ones(6, 6)), -5.0, -1)}
    for name, fn in cases.items():
        grads = {}
        for M, F in ((torch, torch.nn.functional), (OURS.torch, OURS.F)):
            leaves = [M.tensor(a, requires_grad=True) for a in (q0, k0, v0)]
            out = fn(M, F, *[t * 1 for t in leaves])
            (out * M.tensor(np.cos(np.arange(out.numel())).reshape(tuple(out.shape)))).sum().backward()
            grads[M.__name__] = [np.asarray(out.detach().numpy())] + [t.grad.numpy() for t in leaves]
        for a, b in zip(grads["tinygrad_gpt"], grads["torch"], strict=True):
            assert rel_err(a, b) <= TOL64_GRAD, name
    assert not attention_calls


def test_pending_scores_read_before_the_chain_ends():
    """Reading the scores (printing them, a shape) on the way gives the plain values; the chain still ends right."""
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((2, 5, 3)) for _ in range(3)]
    outs = {}
    for M, F in ((torch, torch.nn.functional), (OURS.torch, OURS.F)):
        q, k, v = (M.tensor(a) * 1 for a in arrays)
        s = q @ k.transpose(-2, -1) * 0.5
        assert tuple(s.shape) == (2, 5, 5)
        first = s[0, 0, 0].item()
        w = F.softmax(s.masked_fill(M.tril(M.ones(5, 5)) == 0, float("-inf")), dim=-1)
        outs[M.__name__] = (first, w.numpy().copy(), (w @ v).numpy())
    assert outs["tinygrad_gpt"][0] == pytest.approx(outs["torch"][0], rel=1e-14)
    for a, b in zip(outs["tinygrad_gpt"][1:], outs["torch"][1:], strict=True):
        assert rel_err(a, b) <= TOL64_FWD


def test_in_place_change_of_an_input_before_the_product_is_refused():
    q, k = (OURS.torch.randn(2, 4, 3, dtype=np.float64) * 1 for _ in range(2))
    s = q @ k.transpose(-2, -1)
    q.add_(1.0)
    with pytest.raises(RuntimeError, match="changed in place"):
        s.numpy()


def test_dropout_in_training_mode_is_reproducible_and_fused_equals_plain():
    """Training mode: dropout changes the loss; the same seed gives the same bits; the fused chain and the plain ops
    (the chain broken by reading the weights) draw the same masks, so they agree to rounding."""
    theirs, ours = pair("head")
    _, peek = pair("peek")
    x, y = batch()
    ours.train()
    peek.train()
    losses = []
    for model in (ours, ours, peek):
        tinygrad_gpt.manual_seed(7)
        losses.append(model(OURS.torch.tensor(x), OURS.torch.tensor(y))[1].item())
    eval_loss = ours.eval()(OURS.torch.tensor(x), OURS.torch.tensor(y))[1].item()
    assert losses[0] == losses[1]
    assert abs(losses[0] - losses[2]) <= TOL64_FWD * abs(losses[0])
    assert abs(losses[0] - eval_loss) > 1e-3


def test_torch_saved_state_dict_loads_into_our_model(tmp_path):
    """torch.save(model.state_dict()) in torch, tinygrad_gpt.load and load_state_dict here: the same logits."""
    theirs, ours = pair("head", seed=5)
    torch.save(theirs.state_dict(), tmp_path / "model.pt")
    fresh = OURS.GPTLanguageModel(HP, "head").double().eval()
    fresh.load_state_dict(OURS.torch.load(tmp_path / "model.pt"))
    x, _ = batch()
    assert rel_err(fresh(OURS.torch.tensor(x))[0].numpy(), theirs(torch.from_numpy(x))[0].detach().numpy()) \
        <= TOL64_FWD
    OURS.torch.save(fresh.state_dict(), tmp_path / "ours.safetensors")
    back = OURS.torch.load(tmp_path / "ours.safetensors")
    assert list(back) == list(fresh.state_dict())


def test_the_notebook_cells():
    """The averaging trick three ways, the hand-written LayerNorm1d, the bigram model: torch's results."""
    OURS.torch.manual_seed(1337)
    x, xbow, xbow2, xbow3, same2, same3 = OURS.averaging_three_ways(4, 8, 2)
    assert same2 and same3
    assert np.allclose(xbow.numpy(), np.cumsum(x.numpy(), 1) / np.arange(1, 9)[None, :, None], atol=1e-6)
    data = np.random.default_rng(0).standard_normal((32, 100)).astype(np.float32)
    outs = [mod.LayerNorm1d(100)(mod.torch.tensor(data)).numpy() for mod in (THEIRS, OURS)]
    assert rel_err(outs[1], outs[0]) <= f32_tol(100, 8)
    bigram = OURS.BigramLanguageModel(65)
    idx = OURS.torch.zeros((4, 8), dtype=OURS.torch.long)
    logits, loss = bigram(idx, idx)
    assert tuple(logits.shape) == (32, 65) and loss.item() > 3


def test_generate_under_no_grad():
    OURS.torch.manual_seed(0)
    model = OURS.GPTLanguageModel(HP, "head")
    out = model.generate(OURS.torch.zeros((1, 1), dtype=OURS.torch.long), max_new_tokens=20)
    assert tuple(out.shape) == (1, 21) and out.dtype == np.int64 and 0 <= int(out.min()) and int(out.max()) < 13
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


# ---- the whole script, without torch --------------------------------------------------------------------------------

NO_TORCH = BLOCK_TORCH + """
import runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""


@pytest.mark.slow   # a subprocess training for ~20 s
def test_lecture_script_runs_without_torch(tmp_path):
    script = tmp_path / "gpt.py"
    script.write_text(swap_imports((HERE / "lecture_code" / "gpt_script.py").read_text()))
    corpus = tmp_path / "input.txt"
    corpus.write_text((ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), LS_ITERS="120", LS_BATCH="16", LS_BLOCK="32", LS_EMBD="32")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(script), str(corpus), str(tmp_path / "model.pt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    evals = [line for line in lines if line.startswith("step ")]
    first = float(evals[0].split("val loss ")[1])
    last = float(evals[-1].split("val loss ")[1])
    assert abs(first - np.log(len(set(corpus.read_text(encoding="utf-8"))))) < 0.2   # ~ uniform at the start
    assert last < first - 0.5, f"the loss did not fall: {evals}"
    sample = proc.stdout.split("SAMPLE:", 1)[1]
    assert len(sample) >= 150
    sd = tinygrad_gpt.load(tmp_path / "model.pt")
    assert "blocks.0.sa.heads.0.key.weight" in sd and "token_embedding_table.weight" in sd
    assert importlib.util.find_spec("torch") is not None     # (this process has torch: only the child was blocked)
