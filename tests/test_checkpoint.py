"""Checkpoint directories (SPEC section 5): round trip, atomic writes, and one clear error for every bad one.
(The command line's answer to systematic corruption of each file is in test_checkpoint_corruption.py.)"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save as st_save

from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.data import CharTokenizer
from tinygrad_gpt.errors import CheckpointError
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


def save(path, model, opt, step=2, optimizer_names=None, **meta):
    rng = {"model": model.rng.bit_generator.state, "batch": np.random.default_rng(7).bit_generator.state}
    return ck.save(path, model, TOK, step, optimizer=opt, optimizer_names=optimizer_names,
                   meta={"rng": rng, **meta})


def edit_meta(path, edit, seal=True):
    """Apply edit(meta) to meta.json; seal=True recomputes its checksum (a consistent edit, as a tool or a bug might
    make: what the field checks behind the checksum must catch), seal=False leaves it (what corruption looks like)."""
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    edit(meta)
    if seal:
        meta[ck.META_DIGEST] = ck._meta_digest(meta)
    (path / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def rewrite_tensors(path, name, edit):
    """Apply edit(tensors) to a safetensors file of the checkpoint, and record its new size and hash, sealed."""
    tensors = load_file(str(path / name))
    edit(tensors)
    data = st_save(tensors)
    (path / name).write_bytes(data)
    edit_meta(path, lambda m: m["files"].update({name: {"bytes": len(data),
                                                        "sha256": hashlib.sha256(data).hexdigest()}}))


@pytest.fixture
def saved(tmp_path):
    model, opt = trained()
    path = save(tmp_path / "last", model, opt, best_val_loss=1.5)
    return path, model, opt


def one_line_error(path, match):
    with pytest.raises(CheckpointError, match=match) as e:
        ck.load(path)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- round trip ----------------------------------------------------------------------------------------------------
def test_round_trip(saved):
    path, model, opt = saved
    assert sorted(os.listdir(path)) == ["meta.json", "model.safetensors", "optim.safetensors"]
    c = ck.load(path)
    assert c.step == 2 and c.config == CFG and c.tokenizer == TOK and c.meta["best_val_loss"] == 1.5
    assert c.meta["format_version"] == ck.FORMAT_VERSION and c.meta[ck.META_DIGEST] == ck._meta_digest(c.meta)
    sd = model.state_dict()
    assert c.model_state.keys() == sd.keys()
    assert all(np.array_equal(c.model_state[k], v) and c.model_state[k].dtype == np.float32 for k, v in sd.items())
    rebuilt = c.build_model()
    assert all(np.array_equal(rebuilt.state_dict()[k], v) for k, v in sd.items())
    names = [n for n, _ in model.named_parameters()]
    o = c.optimizer_state(names)
    ref = opt.state_dict()
    assert o["step"] == ref["step"] == 2
    assert all(np.array_equal(a, b)
               for a, b in zip(o["exp_avg"] + o["exp_avg_sq"], ref["exp_avg"] + ref["exp_avg_sq"], strict=True))
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
    assert all(np.array_equal(a, b)
               for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True))


def test_bias_free_config_round_trips(tmp_path):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=4, n_embd=8, n_head=2, n_layer=1, bias=False)
    model = GPT(cfg)
    ck.save(tmp_path / "c", model, TOK, 0)
    c = ck.load(tmp_path / "c")
    assert c.optim_state is None and c.config == cfg
    with pytest.raises(CheckpointError, match="no optimizer state"):
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
    edit_meta(path, lambda m: m.update(format_version=ck.FORMAT_VERSION + 1))
    msg = one_line_error(path, "newer than this tinygrad_gpt reads")
    assert f"format version {ck.FORMAT_VERSION + 1}" in msg


def test_weights_that_do_not_match_the_config(saved):
    path = saved[0]
    edit_meta(path, lambda m: m["config"].update(n_embd=32))
    one_line_error(path, "does not match its config: mis-shaped tok_emb.weight")


def test_impossible_config_in_meta(saved):
    path = saved[0]
    edit_meta(path, lambda m: m["config"].update(n_head=3))
    one_line_error(path, "invalid config")


def test_tokenizer_and_config_disagree(saved):
    path = saved[0]
    edit_meta(path, lambda m: m["tokenizer"].update(chars=m["tokenizer"]["chars"][:-1]))
    one_line_error(path, "tokenizer has 9 characters but the config says vocab_size 10")


def test_meta_is_covered_by_its_checksum(saved):
    """A changed value or a renamed key with the checksum left as it was: what a flipped bit does."""
    path = saved[0]
    edit_meta(path, lambda m: m.update(step=3), seal=False)
    one_line_error(path, "meta.json is corrupt or was edited")
    edit_meta(path, lambda m: m.update(step=2), seal=False)
    assert ck.load(path).step == 2
    edit_meta(path, lambda m: m.update(sTep=m.pop("step")), seal=False)
    one_line_error(path, "meta.json is corrupt or was edited")
    edit_meta(path, lambda m: m.pop(ck.META_DIGEST), seal=False)
    one_line_error(path, "meta.json is corrupt or was edited")


def test_json_that_only_parses_leniently_is_refused(saved):
    path = saved[0]
    text = (path / "meta.json").read_text(encoding="utf-8")
    (path / "meta.json").write_text(text.replace('"step": 2', '"step": 2, "step": 2'), encoding="utf-8")
    one_line_error(path, "duplicate key 'step'")
    (path / "meta.json").write_text(text.replace('"best_val_loss": 1.5', '"best_val_loss": NaN'), encoding="utf-8")
    one_line_error(path, "NaN is not a JSON number")
    (path / "meta.json").write_text(text.replace('"char"', '"\\ud800"'), encoding="utf-8")   # a lone surrogate
    one_line_error(path, "meta.json is unreadable or corrupt")


def test_format_version_1_has_no_meta_checksum_and_still_loads(saved):
    """Checkpoints written before meta.json had its checksum: read, every field still checked."""
    path = saved[0]
    edit_meta(path, lambda m: (m.pop(ck.META_DIGEST), m.update(format_version=1)), seal=False)
    c = ck.load(path)
    assert c.step == 2 and c.config == CFG
    edit_meta(path, lambda m: m.update(stpe=m.pop("step")), seal=False)
    one_line_error(path, "meta.json lacks the field step")
    edit_meta(path, lambda m: m.update(step=2, **{ck.META_DIGEST: "0" * 64}), seal=False)
    one_line_error(path, f"meta.json has an unknown field '{ck.META_DIGEST}'")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["config"].update(bias="yes"), "field config.bias must be true or false, got str 'yes'"),
    (lambda m: m["config"].update(dropout="0.1"), "field config.dropout must be a finite number, got str '0.1'"),
    (lambda m: m["config"].update(n_layer=True), "field config.n_layer must be an integer, got bool True"),
    (lambda m: m["config"].pop("activation"), "lacks the field config.activation"),
    (lambda m: m["tokenizer"].update(chars="abc"), "field tokenizer.chars must be a list"),
    (lambda m: m["tokenizer"]["chars"].__setitem__(0, 7), "field tokenizer.chars[0] must be a string, got int 7"),
    (lambda m: m.update(step=-1), "field step must be an integer >= 0"),
    (lambda m: m["files"]["model.safetensors"].update(bytes="12"), "field files.model.safetensors.bytes"),
    (lambda m: m["files"]["model.safetensors"].update(sha256="x" * 64), "must be a SHA-256 digest"),
    (lambda m: m["files"].update(extra={"bytes": 0, "sha256": "0" * 64}), "has an unknown field files.'extra'"),
    (lambda m: m["optimizer"].update(type="SGD"), "field optimizer.type must be 'AdamW'"),
    (lambda m: m["optimizer"]["param_order"].__setitem__(0, "bogus"), "param_order does not name each parameter"),
    (lambda m: m["optimizer"].update(steps=m["optimizer"]["steps"][1:]), "optimizer.steps must hold one count"),
    (lambda m: m["optimizer"].update(steps=[3] * len(m["optimizer"]["steps"])), "one count <= optimizer.step (2)"),
    (lambda m: m.pop("optimizer"), "the optimizer fields and the file list disagree on optim.safetensors"),
    (lambda m: m["rng"]["model"]["state"].update(inc=2 ** 128), "field rng.model.state.inc must be an integer in"),
    (lambda m: m["rng"]["batch"].update(has_uint32=7), "field rng.batch.has_uint32 must be an integer in [0, 2)"),
    (lambda m: m["rng"]["batch"].update(bit_generator="MT19937"), "field rng.batch.bit_generator must be 'PCG64'"),
    (lambda m: m["rng"].update(model_ranks=[m["rng"]["model"]]), "rng.model_ranks must hold one dropout stream"),
    (lambda m: m.update(best_val_loss="1.5"), "field best_val_loss must be a finite number, got str '1.5'"),
    (lambda m: m.update(elapsed_s=-1), "field elapsed_s must be a finite number >= 0"),
    (lambda m: m.update(train={"lr": [1e-3]}), "field train.lr must be a string, number, true/false or null"),
    (lambda m: m.update(sTep=m.pop("step")), "lacks the field step"),
])
def test_every_field_is_checked_behind_the_checksum(saved, edit, message):
    """Edits that keep meta.json consistent with its checksum (a tool, a bug, a format 1 checkpoint): the field
    checks catch each, with one line naming the field."""
    path = saved[0]
    edit_meta(path, edit)
    assert message in one_line_error(path, "meta.json")


def test_save_refuses_what_load_would_refuse(tmp_path):
    model, opt = trained()
    with pytest.raises(ValueError, match="unknown field 'bogus'"):
        save(tmp_path / "a", model, opt, bogus=1)
    with pytest.raises(ValueError, match="field best_val_loss must be a finite number"):
        save(tmp_path / "a", model, opt, best_val_loss="low")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("file, edit, message", [
    ("model.safetensors", lambda t: t["ln_f.weight"].__setitem__(3, np.nan), "ln_f.weight in model.safetensors "
                                                                                "holds NaN or infinite values"),
    ("model.safetensors", lambda t: t.update({"lm_head.bias": t["lm_head.bias"].astype(np.float64)}),
     "lm_head.bias in model.safetensors is float64, expected float32"),
    ("model.safetensors", lambda t: t.pop("blocks.1.mlp.fc.bias"), "missing blocks.1.mlp.fc.bias"),
    ("model.safetensors", lambda t: t.update(extra=np.zeros(2, np.float32)), "unexpected extra"),
    ("optim.safetensors", lambda t: t["exp_avg_sq.tok_emb.weight"].__setitem__((0, 0), -1.0),
     "negative second moments"),
    ("optim.safetensors", lambda t: t["exp_avg.pos_emb.weight"].__setitem__((0, 0), np.inf), "NaN or infinite"),
    ("optim.safetensors", lambda t: t.pop("exp_avg_sq.ln_f.bias"), "missing exp_avg_sq.ln_f.bias"),
    ("optim.safetensors", lambda t: t.update({"exp_avg.ln_f.bias": np.zeros(3, np.float32)}),
     "mis-shaped exp_avg.ln_f.bias (3,) (expected (16,))"),
])
def test_tensors_are_checked_behind_the_checksum(saved, file, edit, message):
    path = saved[0]
    rewrite_tensors(path, file, edit)
    assert message in one_line_error(path, file)


def test_sampling_verifies_the_optimizer_file_too(saved):
    """load(with_optimizer=False) keeps no moments but still checks the file: a damaged checkpoint is reported."""
    path = saved[0]
    assert ck.load(path, with_optimizer=False).optim_state is None
    data = bytearray((path / "optim.safetensors").read_bytes())
    data[100] ^= 1
    (path / "optim.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optim.safetensors is corrupt"):
        ck.load(path, with_optimizer=False)


def test_every_single_bit_flip_in_meta_is_caught_or_harmless(saved):
    """Flip one bit of each byte of meta.json (bit i mod 8 at byte i): the load fails with one line, or the flip
    left the content the same (e.g. 1e-05 against 1E-05) and the checkpoint loads as saved."""
    path = saved[0]
    original = (path / "meta.json").read_bytes()
    expected = ck.load(path).meta
    harmless = 0
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 1 << (i % 8)
        (path / "meta.json").write_bytes(bytes(data))
        try:
            meta = ck.load(path).meta
        except CheckpointError as e:
            assert "\n" not in str(e)
        else:
            assert meta == expected, f"byte {i}: a changed meta.json loaded"
            harmless += 1
    assert harmless < len(original) // 100


def test_truncated_or_flipped_tensor_files(saved):
    path = saved[0]
    for name in ("model.safetensors", "optim.safetensors"):
        original = (path / name).read_bytes()
        header = 8 + int.from_bytes(original[:8], "little")
        cuts = [0, 1, 7, 8, header - 1, header, len(original) // 2, len(original) - 1]
        for n in cuts:
            (path / name).write_bytes(original[:n])
            one_line_error(path, f"{name} is truncated")
        (path / name).write_bytes(original + b" ")
        one_line_error(path, f"{name} is truncated or altered")
        for i in list(range(0, header + 64, 13)) + list(range(header, len(original), 997)):
            data = bytearray(original)
            data[i] ^= 1 << (i % 8)
            (path / name).write_bytes(bytes(data))
            one_line_error(path, f"{name} is corrupt")
        (path / name).write_bytes(original)
    assert ck.load(path).step == 2


def test_optimizer_step_counts_follow_the_parameter_names(tmp_path):
    """A checkpoint of an optimizer whose parameters are in another order than the model's, with a parameter that
    skipped a step (no gradient, so one update fewer, as torch counts): each count comes back to its parameter."""
    model, _ = trained(steps=0)
    named = list(reversed(list(model.named_parameters())))
    opt = AdamW([p for _, p in named], lr=1e-2)
    x = np.arange(16).reshape(2, 8) % CFG.vocab_size
    for step in range(2):
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        if step == 1:
            dict(named)["ln_f.bias"].grad = None
        opt.step()
    save(tmp_path / "c", model, opt, optimizer_names=[n for n, _ in named])
    c = ck.load(tmp_path / "c")
    names = [n for n, _ in model.named_parameters()]
    state = c.optimizer_state(names)
    assert state["steps"] == [1 if n == "ln_f.bias" else 2 for n in names]
    opt2 = AdamW(c.build_model().parameters(), lr=1e-2)
    opt2.load_state_dict(state)
    assert opt2.groups[0].steps == state["steps"]


def test_only_a_training_runs_checkpoint_can_resume(saved, tmp_path):
    path, model, opt = saved
    with pytest.raises(CheckpointError, match="lacks what resuming a run needs: train, data, elapsed_s, val_loss"):
        ck.load(path).check_resumable()
    with pytest.raises(CheckpointError, match="val_loss, optim.safetensors$"):
        ck.load(path, with_optimizer=False).check_resumable()


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
    with pytest.raises(CheckpointError, match="holds no tinygrad_gpt checkpoint"):
        ck.resolve(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not found"):
        ck.resolve(Path(tmp_path / "nowhere"))
