"""Weights move between the engines through safetensors with no renaming and no transposes (SPEC 2, 5):
save with one engine, load with the other, same weights bit for bit and equal logits. Strict loading names the key.

Logit tolerances: the weights are the same float32 values in both engines, so the logits differ by rounding only:
float64 engines TOL64_FWD; float32 engines the whole-GPT forward bound of model_helpers.f32_tol (see test_layers).
"""
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference
from helpers import rel_err
from model_helpers import TOL64_FWD, f32_tol, gpt_depth, red_gpt
from strategies import gpt_configs
from tinygrad_gpt import GPT, GPTConfig
from tinygrad_gpt.data import CharTokenizer

B = 2


def logits_close(ours, ref, cfg, idx):
    """Logits of both engines on idx, float64 and float32 engines alike."""
    got, want = ours(idx)[0].numpy(), ref(idx)[0].detach().numpy()
    tol = TOL64_FWD if got.dtype == np.float64 else f32_tol(red_gpt(cfg, *idx.shape), gpt_depth(cfg))
    err = rel_err(got, want)
    assert err <= tol, f"logits differ after the exchange: {err:.3g} > {tol:.3g}"


def same_weights(ours, ref):
    rsd = ref.state_dict()
    for k, v in ours.state_dict().items():
        assert np.array_equal(v, rsd[k].numpy().astype(np.float32)), f"{k} changed in the exchange"


configs = gpt_configs(with_options=True)


@given(cfg=configs, seed=st.integers(0, 2 ** 16), f64=st.booleans())
def test_ours_to_torch_through_safetensors(cfg, seed, f64):
    """safetensors.numpy.save_file(our state_dict) -> reference.load_safetensors -> torch load_state_dict."""
    ours = GPT(GPTConfig(**cfg), seed=seed, dtype=np.float64 if f64 else np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        f32 = {k: v.numpy().astype(np.float32) for k, v in ours.state_dict().items()}   # a checkpoint's float32
        safetensors.numpy.save_file(f32, str(path))
        ref = reference.GPT(reference.GPTConfig(**cfg), seed=seed + 1, dtype=torch.float64 if f64 else torch.float32)
        ref.load_state_dict(reference.load_safetensors(d))                   # a directory holding model.safetensors
    if f64:                                                                   # ours holds float64 draws: round them
        ours.load_state_dict(f32)
    same_weights(ours, ref)
    logits_close(ours, ref, cfg, np.random.default_rng(seed).integers(0, cfg["vocab_size"], (B, cfg["block_size"])))


@given(cfg=configs, seed=st.integers(0, 2 ** 16), f64=st.booleans(), via_file=st.booleans())
def test_torch_to_ours(cfg, seed, f64, via_file):
    """reference.numpy_state_dict (or safetensors.torch.save_file -> safetensors.numpy.load_file) -> our strict
    load_state_dict."""
    ref = reference.GPT(reference.GPTConfig(**cfg), seed=seed, dtype=torch.float64 if f64 else torch.float32)
    if via_file:
        with tempfile.TemporaryDirectory() as d:
            safetensors.torch.save_file(ref.state_dict(), str(Path(d) / "model.safetensors"))
            sd = safetensors.numpy.load_file(str(Path(d) / "model.safetensors"))
    else:
        sd = reference.numpy_state_dict(ref)
    ours = GPT(GPTConfig(**cfg), seed=seed + 1, dtype=np.float64 if f64 else np.float32)
    ours.load_state_dict(sd)
    for k, p in ours.named_parameters():
        assert np.array_equal(p.data, sd[k]), f"{k} changed in the exchange"
    logits_close(ours, ref, cfg, np.random.default_rng(seed).integers(0, cfg["vocab_size"], (B, cfg["block_size"])))


def test_checkpoint_model_file_loads_into_the_reference(tmp_path):
    """SPEC 5: the reference loads a checkpoint's model.safetensors with load_state_dict and no renaming."""
    from tinygrad_gpt import checkpoint
    cfg = dict(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=2)
    ours = GPT(GPTConfig(**cfg), seed=3)
    checkpoint.save(tmp_path / "ckpt", ours, CharTokenizer("abcdefghijk"), step=0)
    ref = reference.GPT(reference.GPTConfig(**cfg), seed=4)
    ref.load_state_dict(reference.load_safetensors(tmp_path / "ckpt"))
    same_weights(ours, ref)
    logits_close(ours, ref, cfg, np.random.default_rng(0).integers(0, 11, (B, 8)))


# ---- strict loading -----------------------------------------------------------------------------------------------

def corrupted(sd, kind, key):
    sd = dict(sd)
    if kind == "missing":
        del sd[key]
    elif kind == "unexpected":
        sd[key] = np.zeros(3, np.float32)
    else:
        sd[key] = np.zeros(sd[key].shape[:-1] + (sd[key].shape[-1] + 1,), np.float32)
    return sd


@pytest.mark.parametrize("kind, key", [("missing", "blocks.1.attn.proj.bias"), ("missing", "lm_head.weight"),
                                       ("unexpected", "blocks.0.attn.bias"), ("unexpected", "transformer.wte.weight"),
                                       ("mis-shaped", "pos_emb.weight"), ("mis-shaped", "blocks.0.mlp.fc.weight")])
def test_strict_load_names_the_key_and_changes_nothing(kind, key):
    cfg = GPTConfig(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=2)
    model = GPT(cfg, seed=0)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}   # (state_dict() shares memory)
    bad = corrupted({k: v.numpy() for k, v in GPT(cfg, seed=1).state_dict().items()}, kind, key)
    with pytest.raises(ValueError, match=re.escape(key)):
        model.load_state_dict(bad)
    after = model.state_dict()
    assert all(np.array_equal(after[k], before[k]) for k in before), "a failed load changed the model"


def test_strict_load_of_the_wrong_config():
    """A bias=False state dict into a bias=True model: every missing bias is named."""
    sd = GPT(GPTConfig(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=1, bias=False)).state_dict()
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_embd=12, n_head=3, n_layer=1))
    with pytest.raises(ValueError) as e:
        model.load_state_dict(sd)
    for k in ("blocks.0.ln1.bias", "blocks.0.mlp.fc.bias", "ln_f.bias", "lm_head.bias"):
        assert k in str(e.value)
