"""Checkpoints (SPEC section 5): a directory of three files, written atomically, verified when read.

    model.safetensors   the state dict: {parameter name: float32 array}, names as in SPEC section 2
    optim.safetensors   AdamW moments by parameter name: "exp_avg.<name>", "exp_avg_sq.<name>" (optional)
    meta.json           format and format_version, the GPTConfig, the tokenizer's characters, the step, RNG states,
                        best validation loss, training settings, each file's size and SHA-256, and its own SHA-256;
                        for a model other than the GPT (a rung of the lecture's ladder, tinygrad_gpt/lecture/),
                        "model": which one and its hyperparameters (the config then holds the same sizes)

No pickle: safetensors holds arrays and nothing executable; meta.json is plain JSON.

Atomic save: everything is written into a fresh temporary directory next to the target and fsync'ed; then the old
checkpoint is renamed aside, the new one renamed into place, and only then is the old one deleted. A crash at any
moment leaves a complete checkpoint: the old one (in place, or renamed aside, which `load` recovers), or the new one.

Verified load: every byte is covered by a checksum. The tensor files by their size and SHA-256 in meta.json;
meta.json by "meta_sha256", the SHA-256 of its other fields written as canonical JSON (keys sorted, no spaces,
UTF-8; see _meta_digest), so a renamed key or a changed value is caught like a flipped bit. Behind the checksums
(format version 1 had none for meta.json) every field is checked against the schema below, with no field missing or
unknown, and the tensors against the layout of the model the config describes (names, shapes, float32, finite).
Any problem is one CheckpointError line; nothing is half-loaded.

Format versions: 1 (meta.json without its checksum; still read), 2 (meta_sha256).
"""
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from . import __version__, lecture, rng
from .backend import get_device
from .data import CharTokenizer
from .errors import CheckpointError
from .fileio import fsync_dir as _fsync_dir
from .fileio import write_file as _write_file
from .model import GPT, GPTConfig, parameter_shapes

FORMAT = "tinygrad_gpt.checkpoint"
FORMAT_VERSION = 2
MODEL_FILE, OPTIM_FILE, META_FILE = "model.safetensors", "optim.safetensors", "meta.json"
META_DIGEST = "meta_sha256"
# what a training run stores besides the model, and `--resume` needs (train.py writes them)
RESUME_FIELDS = ("optimizer", "rng", "train", "data", "elapsed_s", "best_val_loss", "val_loss")


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint directory holds, verified."""
    path: Path
    meta: dict
    model_state: dict                  # {name: float32 array}
    optim_state: dict = None           # {"exp_avg.<name>": array, "exp_avg_sq.<name>": array} or None

    @property
    def config(self):
        return GPTConfig(**self.meta["config"])

    @property
    def tokenizer(self):
        return CharTokenizer(self.meta["tokenizer"]["chars"])

    @property
    def step(self):
        return int(self.meta["step"])

    def build_model(self, device="cpu"):
        """The model (a GPT, or the lecture rung meta.json names) with this checkpoint's weights. Raises
        CheckpointError when they do not fit."""
        spec = self.meta.get("model")
        if spec is not None:
            with rng.preserved():                           # building draws weights: leave the user's stream alone
                model = lecture.build(spec["rung"], dict(spec["hp"])).to(device)
        else:
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
        opt = self.meta["optimizer"]
        if sorted(names) != sorted(opt["param_order"]):
            raise CheckpointError(f"checkpoint {self.path}: the optimizer state is for other parameters than "
                                  "the model's")
        steps = opt["steps"]
        if steps is not None:                       # stored in the saving optimizer's order: put them in ours
            by_name = dict(zip(opt["param_order"], steps, strict=True))
            steps = [by_name[n] for n in names]
        return {"step": opt["step"], "steps": steps,
                "exp_avg": [self.optim_state[f"exp_avg.{n}"] for n in names],
                "exp_avg_sq": [self.optim_state[f"exp_avg_sq.{n}"] for n in names]}

    def check_resumable(self):
        """Raise CheckpointError unless this checkpoint holds everything `train --resume` reads (a training run's
        checkpoint, loaded with its optimizer)."""
        lacking = [k for k in RESUME_FIELDS if k not in self.meta]
        lacking += [OPTIM_FILE] if self.optim_state is None else []
        if lacking:
            raise CheckpointError(f"checkpoint {self.path} lacks what resuming a run needs: {', '.join(lacking)}")


# ---- saving ------------------------------------------------------------------------------------------------------
def save(path, model, tokenizer, step, optimizer=None, optimizer_names=None, meta=None):
    """Write a checkpoint directory atomically.

    model: a GPT; tokenizer: its CharTokenizer; step: optimizer steps done. optimizer: an AdamW whose parameters,
    in order, are named by `optimizer_names` (default: the model's parameter names). meta: the training run's fields
    (RNG states, best_val_loss, train settings, ...), each checked against the meta.json schema below (ValueError
    for one it does not know or of the wrong type).
    """
    return write(path, tokenizer=tokenizer, step=step, meta=meta, **contents(model, optimizer, optimizer_names))


def contents(model, optimizer=None, optimizer_names=None):
    """write()'s config, model_state, optimizer_state and optimizer_names from a model and its AdamW (a lecture
    rung has no GPTConfig: its meta gives the "config")."""
    names = list(optimizer_names) if optimizer_names is not None else [n for n, _ in model.named_parameters()]
    return {"config": getattr(model, "config", None), "model_state": {k: v.numpy() for k, v in
                                                                       model.state_dict().items()},
            "optimizer_state": None if optimizer is None else optimizer.state_dict(), "optimizer_names": names}


def write(path, config, tokenizer, step, model_state, optimizer_state=None, optimizer_names=None, meta=None):
    """save(), from the states: model_state {name: array}, optimizer_state an AdamW state_dict whose parameters
    are named by optimizer_names, in order (what a training run's Trainer.state() holds)."""
    path = Path(path)
    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model_state.items()}
    files = {MODEL_FILE: st_save(state, metadata={"format": FORMAT})}
    info = dict(meta or {})
    if optimizer_state is not None:
        names, sd = list(optimizer_names), optimizer_state
        if len(names) != len(sd["exp_avg"]):
            raise ValueError(f"{len(names)} names for {len(sd['exp_avg'])} optimizer parameters")
        moments = {}
        for n, m, v in zip(names, sd["exp_avg"], sd["exp_avg_sq"], strict=True):
            moments[f"exp_avg.{n}"], moments[f"exp_avg_sq.{n}"] = np.asarray(m), np.asarray(v)
        files[OPTIM_FILE] = st_save(moments, metadata={"format": FORMAT})
        info["optimizer"] = {"type": "AdamW", "step": int(sd["step"]), "param_order": names,
                             "steps": [int(n) for n in sd.get("steps", [])] or None}
    info.update({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tinygrad_gpt_version": __version__,
        "config": dataclasses.asdict(config) if "model" not in info else info["config"],
        "tokenizer": {"type": "char", "chars": list(tokenizer.chars)},
        "step": int(step),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()},
    })
    info = json.loads(json.dumps(info, allow_nan=False))   # the JSON values `load` will read (tuples -> lists ...)
    info[META_DIGEST] = _meta_digest(info)
    try:                                                   # never write a checkpoint that `load` refuses
        _check_meta_fields(info)
        _check_meta_values(path, info)
    except _Invalid as e:
        raise ValueError(f"checkpoint.save: {META_FILE} {e}") from None
    except CheckpointError as e:
        raise ValueError(f"checkpoint.save: {e}") from None
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
    """Read and verify a checkpoint directory. Raises CheckpointError with one line on any problem.
    with_optimizer=False: optim.safetensors is verified (size and SHA-256) but its moments are not kept."""
    path = Path(path)
    if not path.exists():
        olds, _ = _asides(path)
        if olds:                            # an interrupted save: read the complete previous checkpoint
            path = olds[0]
        else:
            raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    meta = _read_meta(path)
    try:
        _check_meta_fields(meta)
    except _Invalid as e:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} {e}") from None
    shapes, params = _check_meta_values(path, meta)
    model_state = _read_tensors(path, MODEL_FILE, meta)
    _check_tensors(path, MODEL_FILE, model_state, shapes)
    optim_state = None
    if OPTIM_FILE in meta["files"]:
        data = _read_verified(path, OPTIM_FILE, meta)
        if with_optimizer:
            optim_state = _parse_tensors(path, OPTIM_FILE, data)
            _check_tensors(path, OPTIM_FILE, optim_state, {f"{kind}.{n}": shape for kind in ("exp_avg", "exp_avg_sq")
                                                           for n, shape in params.items()})
    return Checkpoint(path, meta, model_state, optim_state)


def load_model(path, device="cpu"):
    """(model in eval mode, tokenizer, Checkpoint) from `path`, a run directory (its best checkpoint, else its last)
    or a checkpoint directory; the optimizer's moments are verified, not kept. Raises DeviceError before reading
    anything for a device this machine lacks, CheckpointError for an unusable checkpoint."""
    device = get_device(device)
    ckpt = load(resolve(path), with_optimizer=False)
    model = ckpt.build_model(device)
    model.eval()
    return model, ckpt.tokenizer, ckpt


def _read_meta(path):
    """meta.json parsed (duplicate keys and NaN/Infinity refused), its format and version checked, and its checksum
    verified (format version 2 on)."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a tinygrad_gpt checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_no_constants)
        # computed here for every version: it encodes each string as UTF-8, which refuses a lone surrogate (a
        # "\ud800" escape parses, but is no text)
        digest = _meta_digest(meta) if isinstance(meta, dict) else None
    except (OSError, UnicodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} is unreadable or corrupt ({_one_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinygrad_gpt checkpoint ({META_FILE} has no "
                              f"\"format\": \"{FORMAT}\")")
    version = meta.get("format_version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} has no valid format_version (a positive integer)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this tinygrad_gpt reads "
                              f"({FORMAT_VERSION}): upgrade tinygrad_gpt to load it")
    if version >= 2 and meta.get(META_DIGEST) != digest:
        raise CheckpointError(f"checkpoint {path}: {META_FILE} is corrupt or was edited (its content does not match "
                              f"its {META_DIGEST})")
    return meta


def _meta_digest(meta):
    """SHA-256 of meta's fields other than META_DIGEST, as canonical JSON: keys sorted, no spaces, UTF-8."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def _no_constants(name):
    raise ValueError(f"{name} is not a JSON number")


# ---- the fields of meta.json -------------------------------------------------------------------------------------
# A check is a function (value, where) that raises _Invalid naming `where`, the field's dotted path. A record's keys
# are all required, except those written with a trailing "?"; a key it does not list is an error (a renamed key is a
# missing one plus an unknown one).
class _Invalid(Exception):
    pass


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v):
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _value(test, what):
    def check(v, where):
        if not test(v):
            raise _Invalid(f"field {where} must be {what}, got {_show(v)}")
    return check


def _integer(lo=None, hi=None):
    span = f" in [{lo}, {hi})" if hi is not None else f" >= {lo}" if lo is not None else ""
    return _value(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v < hi), f"an integer{span}")


def _number(lo=None):
    return _value(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (lo is None or v >= lo), "a finite number" + (f" >= {lo}" if lo is not None else ""))


_string = _value(lambda v: isinstance(v, str), "a string")
_boolean = _value(lambda v: isinstance(v, bool), "true or false")
_sha256 = _value(lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None,
                 "a SHA-256 digest (64 hex digits)")
_scalar = _value(lambda v: v is None or isinstance(v, (str, bool, int, float)), "a string, number, true/false or null")


def _equals(expected):
    return _value(lambda v: type(v) is type(expected) and v == expected, repr(expected))


def _optional(check):
    def optional(v, where):
        if v is not None:
            check(v, where)
    return optional


def _list(check):
    def list_of(v, where):
        if not isinstance(v, list):
            raise _Invalid(f"field {where} must be a list, got {_show(v)}")
        for i, item in enumerate(v):
            check(item, f"{where}[{i}]")
    return list_of


def _record(fields):
    required = {k for k in fields if not k.endswith("?")}
    checks = {k.rstrip("?"): c for k, c in fields.items()}

    def record(v, where):
        if not isinstance(v, dict):
            raise _Invalid(f"{'field ' + where if where else 'content'} must be an object, got {_show(v)}")
        prefix = f"{where}." if where else ""
        missing = sorted(required - v.keys())
        if missing:
            raise _Invalid(f"lacks the field {prefix}{missing[0]}")
        unknown = sorted(v.keys() - checks.keys())
        if unknown:
            raise _Invalid(f"has an unknown field {prefix}{unknown[0]!r}")
        for k, check in checks.items():
            if k in v:
                check(v[k], prefix + k)
    return record


def _mapping(check):
    def mapping(v, where):
        if not isinstance(v, dict):
            raise _Invalid(f"field {where} must be an object, got {_show(v)}")
        for k, item in v.items():
            check(item, f"{where}.{k}")
    return mapping


_PCG64 = _record({"bit_generator": _equals("PCG64"),            # numpy's default_rng state, as bit_generator.state
                  "state": _record({"state": _integer(0, 2 ** 128), "inc": _integer(0, 2 ** 128)}),
                  "has_uint32": _integer(0, 2), "uinteger": _integer(0, 2 ** 32)})
_FILE = _record({"bytes": _integer(0), "sha256": _sha256})


def _meta_schema(version):
    by_type = {int: _integer(), float: _number(), bool: _boolean, str: _string}
    fields = {
        "format": _equals(FORMAT),
        "format_version": _integer(1),
        "tinygrad_gpt_version": _string,
        "saved_at": _string,
        "config": _record({f.name: by_type[f.type] for f in dataclasses.fields(GPTConfig)}),
        "tokenizer": _record({"type": _equals("char"), "chars": _list(_string)}),
        "step": _integer(0),
        "files": _record({MODEL_FILE: _FILE, OPTIM_FILE + "?": _FILE}),
        "optimizer?": _record({"type": _equals("AdamW"), "step": _integer(0), "param_order": _list(_string),
                               "steps": _optional(_list(_integer(0)))}),
        # written by training runs (RESUME_FIELDS)
        "rng?": _record({"model": _PCG64, "batch": _PCG64, "model_ranks?": _list(_PCG64)}),
        "best_val_loss?": _optional(_number()),
        "val_loss?": _optional(_number()),
        "elapsed_s?": _number(0),
        "train?": _mapping(_scalar),                  # the TrainConfig; config.check_saved_settings checks it
        "data?": _record({"path": _optional(_string), "name": _string, "chars": _integer(0), "sha256": _sha256}),
        "data_parallel?": _record({"ranks": _integer(1), "rows_per_rank": _integer(1)}),
        "model?": _record({"kind": _equals("lecture-rung"), "rung": _string, "hp": _mapping(_scalar)}),
        "budget?": _record({"time": _string, "seconds": _number(0), "from_step": _integer(0),   # budget.py's plan
                            "max_iters": _integer(1), "step_s": _number(0), "eval_s": _number(0),
                            "evaluations": _integer(0), "startup_s": _number(0), "planned_end_s": _number(0)}),
    }
    if version >= 2:
        fields[META_DIGEST] = _sha256
    return _record(fields)


def _check_meta_fields(meta):
    """Every field of meta.json present, known and of its type; raises _Invalid."""
    _meta_schema(meta["format_version"])(meta, "")


def _check_meta_values(path, meta):
    """What the fields say, checked against each other: a valid config, a tokenizer of vocab_size characters, the
    optimizer's parameters and step counts, the data-parallel streams. Returns the state dict's shapes the config
    implies, {name: shape}, and the parameters' (the same for the GPT; a lecture rung's state dict holds buffers
    too), read from the model itself (model.parameter_shapes, lecture.parameter_shapes)."""

    def bad(message):
        return CheckpointError(f"checkpoint {path}: {META_FILE}: {message}")
    try:
        cfg = GPTConfig(**meta["config"]).validate()
        tok = CharTokenizer(meta["tokenizer"]["chars"])
    except ValueError as e:                                 # the tokenizer's DataError is one too
        raise bad(f"invalid config or tokenizer ({_one_line(e)})") from None
    if tok.vocab_size != cfg.vocab_size:
        raise bad(f"the tokenizer has {tok.vocab_size} characters but the config says vocab_size {cfg.vocab_size}")
    spec = meta.get("model")
    if spec is None:
        shapes = params = parameter_shapes(cfg)
    else:
        if spec["rung"] not in lecture.BY_NAME:
            raise bad(f"model.rung {spec['rung']!r} is not a rung of the lecture's ladder "
                      f"({', '.join(lecture.BY_NAME)})")
        if spec["hp"].get("vocab_size") != cfg.vocab_size:
            raise bad("model.hp.vocab_size and config.vocab_size disagree")
        try:
            shapes, params = lecture.parameter_shapes(spec["rung"], dict(spec["hp"]))
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"model.hp does not build rung {spec['rung']} ({_one_line(e)})") from None
    opt = meta.get("optimizer")
    if (opt is None) != (OPTIM_FILE not in meta["files"]):
        raise bad(f"the optimizer fields and the file list disagree on {OPTIM_FILE}")
    if opt is not None:
        order = opt["param_order"]
        if sorted(order) != sorted(params):
            raise bad("optimizer.param_order does not name each parameter of the model once")
        if opt["steps"] is not None and (len(opt["steps"]) != len(order) or max(opt["steps"]) > opt["step"]):
            raise bad(f"optimizer.steps must hold one count <= optimizer.step ({opt['step']}) per parameter")
    ranks = meta.get("rng", {}).get("model_ranks")
    dp = meta.get("data_parallel")
    if (ranks is None) != (dp is None) or (dp is not None and len(ranks) != dp["ranks"]):
        raise bad("rng.model_ranks must hold one dropout stream per data-parallel rank (data_parallel.ranks)")
    return shapes, params


def _read_verified(path, name, meta):
    """The bytes of file `name`, checked against the size and SHA-256 meta.json lists for it."""
    f = path / name
    expect = meta["files"][name]
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        data = f.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {f}: {e.strerror or e}") from None
    if len(data) != expect["bytes"]:
        raise CheckpointError(f"checkpoint {path}: {name} is truncated or altered ({len(data)} bytes, "
                              f"expected {expect['bytes']})")
    if hashlib.sha256(data).hexdigest() != expect["sha256"]:
        raise CheckpointError(f"checkpoint {path}: {name} is corrupt (its SHA-256 does not match {META_FILE})")
    return data


def _parse_tensors(path, name, data):
    try:
        return st_load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {path}: {name} is not a valid safetensors file ({_one_line(e)})") from None


def _read_tensors(path, name, meta):
    return _parse_tensors(path, name, _read_verified(path, name, meta))


def _check_tensors(path, name, tensors, expected):
    """Exactly the `expected` names ({name: shape}), each float32 of its shape with finite values (a training run
    never saves a non-finite step); second moments (exp_avg_sq.*) are >= 0."""
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong = [f"{n} {tuple(tensors[n].shape)} (expected {expected[n]})" for n in expected
             if n in tensors and tuple(tensors[n].shape) != tuple(expected[n])]
    problems = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + \
               ([f"mis-shaped {'; '.join(wrong[:5])}"] if wrong else [])
    if problems:
        raise CheckpointError(f"checkpoint {path}: {name} does not match its config: " + " | ".join(problems))
    for n, a in tensors.items():
        if a.dtype != np.float32:
            raise CheckpointError(f"checkpoint {path}: {n} in {name} is {a.dtype}, expected float32")
        if not np.isfinite(a).all():
            raise CheckpointError(f"checkpoint {path}: {n} in {name} holds NaN or infinite values")
        if n.startswith("exp_avg_sq.") and (a < 0).any():
            raise CheckpointError(f"checkpoint {path}: {n} in {name} holds negative second moments")


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
