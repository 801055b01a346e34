"""Checkpoint directories (SPEC section 5): round trip, atomic writes, and one clear error for every bad one."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.data import CharTokenizer
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW

TOK = CharTokenizer("\n abcdefgh")
CFG = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=0.1)


def trained(steps=2, seed=0):
    """A tiny model and its optimizer after a few steps (so the moments are non-zero)."""
    model = GPT(CFG, seed=seed)
    opt = AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.integers(0, CFG.vocab_size, (2, CFG.block_size))
        _, loss = model(x, np.roll(x, -1, axis=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def save(path, model, opt, step=2, **meta):
    return ck.save(path, model, TOK, step, optimizer=opt, meta={"rng": {"model": model.rng.bit_generator.state},
                                                                **meta})


@pytest.fixture
def saved(tmp_path):
    model, opt = trained()
    path = save(tmp_path / "last", model, opt, best_val_loss=1.5)
    return path, model, opt


def one_line_error(path, match):
    with pytest.raises(ck.CheckpointError, match=match) as e:
        ck.load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- round trip ----------------------------------------------------------------------------------------------------
def test_round_trip(saved):
    path, model, opt = saved
    assert sorted(os.listdir(path)) == ["meta.json", "model.safetensors", "optim.safetensors"]
    c = ck.load(path)
    assert c.step == 2 and c.config == CFG and c.tokenizer == TOK and c.meta["best_val_loss"] == 1.5
    assert c.meta["format_version"] == ck.FORMAT_VERSION
    sd = model.state_dict()
    assert c.model_state.keys() == sd.keys()
    assert all(np.array_equal(c.model_state[k], v) and c.model_state[k].dtype == np.float32 for k, v in sd.items())
    rebuilt = c.build_model()
    assert all(np.array_equal(rebuilt.state_dict()[k], v) for k, v in sd.items())
    names = [n for n, _ in model.named_parameters()]
    o = c.optimizer_state(names)
    ref = opt.state_dict()
    assert o["step"] == ref["step"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(o["exp_avg"] + o["exp_avg_sq"], ref["exp_avg"] + ref["exp_avg_sq"]))
    rng = np.random.default_rng()
    rng.bit_generator.state = c.meta["rng"]["model"]
    assert rng.random() == model.rng.random()


def test_files_are_plain_safetensors_and_json(saved):
    """What the reference and other tools read: safetensors keyed by SPEC names; moments by parameter name."""
    path, model, _ = saved
    weights = load_file(str(path / "model.safetensors"))
    assert set(weights) == {n for n, _ in model.named_parameters()}
    moments = load_file(str(path / "optim.safetensors"))
    assert set(moments) == {f"{k}.{n}" for k in ("exp_avg", "exp_avg_sq") for n, _ in model.named_parameters()}
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    assert meta["config"] == {"vocab_size": 10, "block_size": 8, "n_embd": 16, "n_head": 2, "n_layer": 2,
                              "dropout": 0.1, "bias": True, "activation": "relu"}
    assert meta["tokenizer"]["chars"] == list("\n abcdefgh")


def test_resumed_optimizer_continues_exactly(saved):
    path, model, opt = saved
    c = ck.load(path)
    model2 = c.build_model()
    opt2 = AdamW(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(c.optimizer_state([n for n, _ in model2.named_parameters()]))
    x = np.arange(16).reshape(2, 8) % CFG.vocab_size
    for m, o in ((model, opt), (model2, opt2)):
        m.eval()
        _, loss = m(x, x)
        o.zero_grad()
        loss.backward()
        o.step()
    assert all(np.array_equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_bias_free_config_round_trips(tmp_path):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=4, n_embd=8, n_head=2, n_layer=1, bias=False)
    model = GPT(cfg)
    ck.save(tmp_path / "c", model, TOK, 0)
    c = ck.load(tmp_path / "c")
    assert c.optim_state is None and c.config == cfg
    with pytest.raises(ck.CheckpointError, match="no optimizer state"):
        c.optimizer_state([])


# ---- atomic writes -------------------------------------------------------------------------------------------------
def test_a_save_failing_halfway_leaves_the_previous_checkpoint(saved, monkeypatch):
    path, model, opt = saved
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    real_write, calls = ck._write_file, []

    def half_then_crash(p, data):
        calls.append(p)
        if len(calls) == 2:                                 # the second file: write half of it, then "crash"
            with open(p, "wb") as f:
                f.write(data[:len(data) // 2])
            raise OSError(28, "No space left on device")
        real_write(p, data)
    model2, opt2 = trained(steps=3, seed=1)
    monkeypatch.setattr(ck, "_write_file", half_then_crash)
    with pytest.raises(OSError):
        save(path, model2, opt2, step=3)
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    assert ck.load(path).step == 2
    assert os.listdir(path.parent) == ["last"]               # the half-written temporary directory is gone
    monkeypatch.setattr(ck, "_write_file", real_write)
    save(path, model2, opt2, step=3)
    assert ck.load(path).step == 3


def test_a_crash_between_the_two_renames_is_recovered(saved, monkeypatch):
    """The window where the old checkpoint is renamed aside and the new one not yet in place."""
    path, model, opt = saved
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt                          # e.g. killed right there
        real_rename(src, dst)
    monkeypatch.setattr(ck.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save(path, *trained(steps=3, seed=1), step=3)
    monkeypatch.setattr(ck.os, "rename", real_rename)
    assert not path.exists()
    assert ck.load(path).step == 2                           # read from the copy set aside
    assert ck.resolve(path.parent) == path
    save(path, model, opt, step=4)                           # the next save puts things back in order
    assert ck.load(path).step == 4 and os.listdir(path.parent) == ["last"]


# ---- bad checkpoints: one line each --------------------------------------------------------------------------------
def test_missing(tmp_path):
    one_line_error(tmp_path / "nothing", "not found")


def test_not_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    one_line_error(tmp_path / "f", "not a checkpoint directory")


def test_foreign_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ckpt.pt").write_bytes(b"\x80\x02")                   # e.g. a nanoGPT run
    one_line_error(tmp_path / "a", "not a tinygrad_gpt checkpoint")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meta.json").write_text(json.dumps({"format": "something-else", "format_version": 1}))
    one_line_error(tmp_path / "b", "not a tinygrad_gpt checkpoint")


def test_corrupt_meta(saved):
    path = saved[0]
    (path / "meta.json").write_text("{not json")
    one_line_error(path, "meta.json is unreadable or corrupt")


def test_truncated_weights(saved):
    path = saved[0]
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:len(data) // 3])
    one_line_error(path, "model.safetensors is truncated")


def test_corrupt_weights(saved):
    path = saved[0]
    data = bytearray((path / "optim.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "optim.safetensors").write_bytes(bytes(data))
    one_line_error(path, "optim.safetensors is corrupt")


def test_missing_weights(saved):
    path = saved[0]
    (path / "model.safetensors").unlink()
    one_line_error(path, "incomplete: model.safetensors is missing")


def test_newer_format_version(saved):
    path = saved[0]
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = ck.FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    msg = one_line_error(path, "newer than this tinygrad_gpt reads")
    assert f"format version {ck.FORMAT_VERSION + 1}" in msg


def test_weights_that_do_not_match_the_config(saved):
    path = saved[0]
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["n_embd"] = 32
    (path / "meta.json").write_text(json.dumps(meta))
    one_line_error(path, "does not match its config: mis-shaped tok_emb.weight")


def test_impossible_config_in_meta(saved):
    path = saved[0]
    meta = json.loads((path / "meta.json").read_text())
    meta["config"]["n_head"] = 3
    (path / "meta.json").write_text(json.dumps(meta))
    one_line_error(path, "invalid config")


def test_tokenizer_and_config_disagree(saved):
    path = saved[0]
    meta = json.loads((path / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:-1]
    (path / "meta.json").write_text(json.dumps(meta))
    one_line_error(path, "tokenizer has 9 characters but the config says vocab_size 10")


# ---- finding a checkpoint from --ckpt ------------------------------------------------------------------------------
def test_resolve_prefers_best_then_last(tmp_path):
    model, opt = trained()
    run = tmp_path / "run"
    save(run / "last", model, opt)
    assert ck.resolve(run) == run / "last"
    save(run / "best", model, opt)
    assert ck.resolve(run) == run / "best"
    assert ck.resolve(run / "last") == run / "last"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="holds no tinygrad_gpt checkpoint"):
        ck.resolve(tmp_path / "empty")
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.resolve(Path(tmp_path / "nowhere"))
