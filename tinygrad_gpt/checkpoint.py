"""Checkpoints (SPEC section 5): a directory of three files, written atomically, verified when read.

    model.safetensors   the state dict: {parameter name: float32 array}, names as in SPEC section 2
    optim.safetensors   AdamW moments by parameter name: "exp_avg.<name>", "exp_avg_sq.<name>" (optional)
    meta.json           format and format_version, the GPTConfig, the tokenizer's characters, the step, RNG states,
                        best validation loss, training settings, and each file's size and SHA-256

No pickle: safetensors holds arrays and nothing executable; meta.json is plain JSON.

Atomic save: everything is written into a fresh temporary directory next to the target and fsync'ed; then the old
checkpoint is renamed aside, the new one renamed into place, and only then is the old one deleted. A crash at any
moment leaves a complete checkpoint: the old one (in place, or renamed aside, which `load` recovers), or the new one.
Loading checks every file's size and hash, so a truncated or corrupted file is reported, never half-loaded.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .data import CharTokenizer, DataError

FORMAT = "tinygrad_gpt.checkpoint"
FORMAT_VERSION = 1
MODEL_FILE, OPTIM_FILE, META_FILE = "model.safetensors", "optim.safetensors", "meta.json"


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, corrupt, foreign or too new; the message is one line."""


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint directory holds, verified."""
    path: Path
    meta: dict
    model_state: dict                  # {name: float32 array}
    optim_state: dict = None           # {"exp_avg.<name>": array, "exp_avg_sq.<name>": array} or None

    @property
    def config(self):
        from .model import GPTConfig
        return GPTConfig(**self.meta["config"])

    @property
    def tokenizer(self):
        return CharTokenizer(self.meta["tokenizer"]["chars"])

    @property
    def step(self):
        return int(self.meta["step"])

    def build_model(self, device="cpu"):
        """A GPT with this checkpoint's config and weights. Raises CheckpointError when they do not fit."""
        from .model import GPT
        model = GPT(self.config, device=device)
        try:
            model.load_state_dict(self.model_state)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {self.path} does not fit its own config: {_one_line(e)}") from None
        return model

    def optimizer_state(self, names):
        """The AdamW state_dict for parameters `names` (in the optimizer's parameter order)."""
        if self.optim_state is None:
            raise CheckpointError(f"checkpoint {self.path} holds no optimizer state ({OPTIM_FILE}), so it cannot "
                                  "resume training")
        try:
            opt = self.meta["optimizer"]
            return {"step": int(opt["step"]), "steps": opt.get("steps"),
                    "exp_avg": [self.optim_state[f"exp_avg.{n}"] for n in names],
                    "exp_avg_sq": [self.optim_state[f"exp_avg_sq.{n}"] for n in names]}
        except KeyError as e:
            raise CheckpointError(f"checkpoint {self.path}: {OPTIM_FILE} lacks the moment {e.args[0]}") from None


# ---- saving ------------------------------------------------------------------------------------------------------
def save(path, model, tokenizer, step, optimizer=None, optimizer_names=None, meta=None):
    """Write a checkpoint directory atomically.

    model: a GPT; tokenizer: its CharTokenizer; step: optimizer steps done. optimizer: an AdamW whose parameters,
    in order, are named by `optimizer_names` (default: the model's parameter names). meta: more JSON-serialisable
    fields to store (RNG states, best_val_loss, train settings, ...).
    """
    from . import __version__
    path = Path(path)
    files = {MODEL_FILE: st_save(model.state_dict(), metadata={"format": FORMAT})}
    info = dict(meta or {})
    if optimizer is not None:
        names = list(optimizer_names) if optimizer_names is not None else [n for n, _ in model.named_parameters()]
        sd = optimizer.state_dict()
        if len(names) != len(sd["exp_avg"]):
            raise ValueError(f"{len(names)} names for {len(sd['exp_avg'])} optimizer parameters")
        moments = {}
        for n, m, v in zip(names, sd["exp_avg"], sd["exp_avg_sq"]):
            moments[f"exp_avg.{n}"], moments[f"exp_avg_sq.{n}"] = np.asarray(m), np.asarray(v)
        files[OPTIM_FILE] = st_save(moments, metadata={"format": FORMAT})
        info["optimizer"] = {"type": "AdamW", "step": int(sd["step"]), "param_order": names,
                             "steps": [int(n) for n in sd.get("steps", [])] or None}
    info.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tinygrad_gpt_version": __version__,
        "config": dataclasses.asdict(model.config),
        "tokenizer": {"type": "char", "chars": list(tokenizer.chars)},
        "step": int(step),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()},
    })
    files[META_FILE] = (json.dumps(info, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    write_dir_atomic(path, files)
    return path


def write_dir_atomic(path, files):
    """Replace directory `path` by one holding `files` ({name: bytes}); see the module docstring."""
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tag = uuid.uuid4().hex[:8]
    tmp = parent / f".{path.name}.tmp-{tag}"
    old = parent / f".{path.name}.old-{tag}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        if path.exists():
            os.rename(path, old)           # the previous checkpoint is kept, complete, until the new one is in place
        os.rename(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _cleanup_stale(path)


def _write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:                        # e.g. Windows: directories cannot be opened; rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _asides(path):
    """Temporary siblings of `path` left by saves: (old complete copies, unfinished new ones)."""
    parent, name = path.parent, path.name
    if not parent.is_dir():
        return [], []
    olds = sorted(parent.glob(f".{name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    tmps = list(parent.glob(f".{name}.tmp-*"))
    return olds, tmps


def recover(path):
    """If a save was interrupted between its two renames, `path` is missing and the previous checkpoint sits aside
    as `.NAME.old-*`: move it back. Returns True when something was recovered."""
    path = Path(path)
    if path.exists():
        return False
    olds, _ = _asides(path)
    if olds:
        os.rename(olds[0], path)
        return True
    return False


def _cleanup_stale(path):
    olds, tmps = _asides(path)
    for p in olds + tmps:
        shutil.rmtree(p, ignore_errors=True)


# ---- loading -----------------------------------------------------------------------------------------------------
def load(path, with_optimizer=True):
    """Read and verify a checkpoint directory. Raises CheckpointError with one line on any problem."""
    path = Path(path)
    if not path.exists():
        olds, _ = _asides(path)
        if olds:                            # an interrupted save: read the complete previous checkpoint
            path = olds[0]
        else:
            raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a tinygrad_gpt checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} is unreadable or corrupt ({_one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinygrad_gpt checkpoint ({META_FILE} has no "
                              f"\"format\": \"{FORMAT}\")")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"checkpoint {path}: {META_FILE} has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this tinygrad_gpt reads "
                              f"({FORMAT_VERSION}): upgrade tinygrad_gpt to load it")
    _check_meta(path, meta)
    model_state = _read_tensors(path, MODEL_FILE, meta)
    optim_state = None
    if with_optimizer and OPTIM_FILE in meta["files"]:
        optim_state = _read_tensors(path, OPTIM_FILE, meta)
    ckpt = Checkpoint(path, meta, model_state, optim_state)
    _check_shapes(ckpt)
    return ckpt


def _check_meta(path, meta):
    missing = [k for k in ("config", "tokenizer", "step", "files") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} lacks {', '.join(missing)}")
    if MODEL_FILE not in meta["files"]:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} lists no {MODEL_FILE}")
    from .model import GPTConfig
    try:
        cfg = GPTConfig(**meta["config"])
        cfg.validate()
        tok = CharTokenizer(meta["tokenizer"]["chars"])
    except (TypeError, ValueError, KeyError, DataError) as e:
        raise CheckpointError(f"checkpoint {path}: invalid config or tokenizer in {META_FILE} "
                              f"({_one_line(e)})") from None
    if tok.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"checkpoint {path}: the tokenizer has {tok.vocab_size} characters but the config "
                              f"says vocab_size {cfg.vocab_size}")


def _read_tensors(path, name, meta):
    f = path / name
    expect = meta["files"][name]
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        data = f.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {f}: {e.strerror or e}") from None
    if len(data) != expect.get("bytes"):
        raise CheckpointError(f"checkpoint {path}: {name} is truncated or altered ({len(data)} bytes, "
                              f"expected {expect.get('bytes')})")
    if hashlib.sha256(data).hexdigest() != expect.get("sha256"):
        raise CheckpointError(f"checkpoint {path}: {name} is corrupt (its SHA-256 does not match {META_FILE})")
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {name} is not a valid safetensors file ({_one_line(e)})") from None
    return tensors


def _check_shapes(ckpt):
    """Each parameter present with the shape the config implies (and float32); moments shaped like parameters."""
    cfg = ckpt.config
    expected = _expected_shapes(cfg)
    got = ckpt.model_state
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{n} {tuple(got[n].shape)} (expected {expected[n]})" for n in expected
             if n in got and tuple(got[n].shape) != tuple(expected[n])]
    problems = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + \
               ([f"mis-shaped {'; '.join(wrong[:5])}"] if wrong else [])
    if problems:
        raise CheckpointError(f"checkpoint {ckpt.path}: {MODEL_FILE} does not match its config: "
                              + " | ".join(problems))
    for n, a in got.items():
        if a.dtype != np.float32:
            raise CheckpointError(f"checkpoint {ckpt.path}: {n} is {a.dtype}, expected float32")
    if ckpt.optim_state is not None:
        for n, a in ckpt.optim_state.items():
            kind, _, pname = n.partition(".")
            if kind not in ("exp_avg", "exp_avg_sq") or pname not in expected:
                raise CheckpointError(f"checkpoint {ckpt.path}: unexpected tensor {n} in {OPTIM_FILE}")
            if tuple(a.shape) != tuple(expected[pname]):
                raise CheckpointError(f"checkpoint {ckpt.path}: {n} in {OPTIM_FILE} has shape {tuple(a.shape)}, "
                                      f"expected {expected[pname]}")


def _expected_shapes(cfg):
    """Parameter shapes from SPEC section 2, computed without building a model."""
    V, T, C, L = cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (T, C)}

    def add(name, shape, is_bias=False):
        if not is_bias or cfg.bias:
            shapes[name] = shape
    for i in range(L):
        p = f"blocks.{i}."
        add(p + "ln1.weight", (C,)); add(p + "ln1.bias", (C,), True)
        add(p + "attn.qkv.weight", (3 * C, C))
        add(p + "attn.proj.weight", (C, C)); add(p + "attn.proj.bias", (C,), True)
        add(p + "ln2.weight", (C,)); add(p + "ln2.bias", (C,), True)
        add(p + "mlp.fc.weight", (4 * C, C)); add(p + "mlp.fc.bias", (4 * C,), True)
        add(p + "mlp.proj.weight", (C, 4 * C)); add(p + "mlp.proj.bias", (C,), True)
    add("ln_f.weight", (C,)); add("ln_f.bias", (C,), True)
    add("lm_head.weight", (V, C)); add("lm_head.bias", (V,), True)
    return shapes


# ---- finding checkpoints -----------------------------------------------------------------------------------------
BEST, LAST = "best", "last"


def resolve(path):
    """--ckpt: a run directory (its best checkpoint, else its last) or a checkpoint directory -> checkpoint dir.
    Reads nothing but names; `load` then verifies the checkpoint."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    for name in (BEST, LAST):
        sub = path / name
        if (sub / META_FILE).is_file() or (not sub.exists() and _asides(sub)[0]):
            return sub
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    raise CheckpointError(f"{path} holds no tinygrad_gpt checkpoint (no {META_FILE}, and no {BEST}/ or {LAST}/ "
                          "checkpoint inside)")


def _one_line(e):
    return " ".join(str(e).split())
