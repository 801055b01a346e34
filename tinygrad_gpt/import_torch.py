"""`tinygrad-gpt import-torch`: a state dict trained with torch -> a tinygrad_gpt checkpoint directory.

Two naming schemes are read (a torch.save file, read by serialization.load without running its pickle, or a
safetensors file):
  lecture   the final gpt.py of "Let's build GPT": token_embedding_table, position_embedding_table,
            blocks.{i}.sa.heads.{j}.{query,key,value}.weight (hs, C) (and the tril buffer, not a weight),
            blocks.{i}.sa.proj, blocks.{i}.ffwd.net.0 / .net.2, blocks.{i}.ln1 / ln2, ln_f, lm_head
  native    SPEC section 2's names (reference/model.py's torch GPT): copied as they are
The sizes (n_layer, n_head, n_embd, block_size, vocab_size) are read from the shapes, and every key and shape is
checked against them before anything is written; the first problem is one UsageError line.

Fusing the heads: head j's query rows go to rows j*hs:(j+1)*hs of the first C rows of attn.qkv.weight (3C, C), its
key rows to the same rows of the second C, its value rows of the third (SPEC section 1), so our one matmul
computes every head's q, k, v and the concatenation of the heads' outputs is what sa.proj read.

Attention scale: our model scales q @ k.T by hs**-0.5 (head size), as the lecture's final gpt.py does. A model
that scaled by C**-0.5 (the lecture notebooks' variant; attention_scale="embd") is imported with its query rows
multiplied by sqrt(hs / C): (q * sqrt(hs/C)) @ k.T * hs**-0.5 = q @ k.T * C**-0.5, the same computation.

Dimension names: V vocab_size, T block_size, C n_embd, H n_head, hs = C // H, L n_layer.
"""
import math
import re
from pathlib import Path

import numpy as np

from . import checkpoint
from .data import load_corpus
from .errors import SerializationError, UsageError
from .model import GPT, GPTConfig, parameter_shapes
from .rundir import holds_run
from .serialization import load
from .tensor import Tensor

LECTURE, NATIVE = "lecture", "native"
SCALES = ("head", "embd")
CHECKPOINT_FILES = ("meta.json", "model.safetensors", "optim.safetensors")


def read_state_dict(path):
    """{name: NumPy array} from a torch.save file or a safetensors file. A training checkpoint that holds the
    state dict under "model", "state_dict" or "model_state_dict" is unwrapped. Raises UsageError."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"state dict not found: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory, not a state dict file")
    try:
        obj = load(path)
    except SerializationError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None

    def tensors_only(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in d.items())
    if isinstance(obj, dict) and not tensors_only(obj):
        inner = [k for k in ("model", "state_dict", "model_state_dict") if tensors_only(obj.get(k))]
        obj = obj[inner[0]] if inner else obj
    if not tensors_only(obj):
        what = type(obj).__name__ if not isinstance(obj, dict) else "an empty dict" if not obj else next(
            f"a dict whose entry {k!r} is a {type(v).__name__}" for k, v in obj.items()
            if not (isinstance(k, str) and isinstance(v, Tensor)))
        raise UsageError(f"{path} is not a state dict (a dict of tensors by name): it holds {what}")
    return {k: v.numpy() for k, v in obj.items()}


def lecture_shapes(V, T, C, H, L):
    """{name: shape} of the lecture gpt.py model's state dict, in its order; the tril buffers are not listed."""
    hs = C // H
    shapes = {"token_embedding_table.weight": (V, C), "position_embedding_table.weight": (T, C)}
    for i in range(L):
        b = f"blocks.{i}."
        for j in range(H):
            for w in ("key", "query", "value"):
                shapes[f"{b}sa.heads.{j}.{w}.weight"] = (hs, C)
        shapes |= {f"{b}sa.proj.weight": (C, C), f"{b}sa.proj.bias": (C,),
                   f"{b}ffwd.net.0.weight": (4 * C, C), f"{b}ffwd.net.0.bias": (4 * C,),
                   f"{b}ffwd.net.2.weight": (C, 4 * C), f"{b}ffwd.net.2.bias": (C,),
                   f"{b}ln1.weight": (C,), f"{b}ln1.bias": (C,), f"{b}ln2.weight": (C,), f"{b}ln2.bias": (C,)}
    shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,), "lm_head.weight": (V, C), "lm_head.bias": (V,)}
    return shapes


def _shape(sd, name, ndim):
    """sd[name]'s shape, which must have `ndim` axes."""
    if name not in sd:
        raise UsageError(f"the state dict lacks {name}")
    shape = tuple(sd[name].shape)
    if len(shape) != ndim:
        raise UsageError(f"{name} has shape {shape}, expected {ndim} axes")
    return shape


def _layers(sd):
    """n_layer: the blocks.{i} indices must be 0 .. L-1."""
    found = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not found:
        raise UsageError("the state dict has no blocks.{i}.* keys (no transformer blocks)")
    if found != list(range(len(found))):
        missing = min(set(range(found[-1] + 1)) - set(found))
        raise UsageError(f"the state dict has blocks up to blocks.{found[-1]} but no blocks.{missing}")
    return len(found)


def _check_keys(sd, expected, ignore=None):
    """Every expected key present with its shape and a floating-point dtype, and nothing else but `ignore`
    (names -> shape or None for any shape); raises UsageError naming the first problem."""
    ignore = ignore or {}
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"the state dict lacks {missing[0]}{more}")
    extra = [k for k in sd if k not in expected and k not in ignore]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UsageError(f"the state dict has an unexpected key {extra[0]}{more}")
    for k, shape in list(expected.items()) + [(k, s) for k, s in ignore.items() if k in sd and s is not None]:
        if tuple(sd[k].shape) != tuple(shape):
            raise UsageError(f"{k} has shape {tuple(sd[k].shape)}, expected {tuple(shape)} from the other "
                             "weights' sizes")
    for k in expected:
        if sd[k].dtype.kind != "f":
            raise UsageError(f"{k} is {sd[k].dtype}, expected floating-point weights")


def convert(sd, attention_scale="head", n_head=None):
    """A state dict in either naming (see the module docstring) -> (dims, weights): dims {vocab_size, block_size,
    n_embd, n_head, n_layer, bias} read from the shapes, weights {name: array} in SPEC section 2's names, in the
    input's floating dtype (float64 stays float64). Raises UsageError naming the first problem."""
    if attention_scale not in SCALES:
        raise UsageError(f"attention scale must be one of {', '.join(SCALES)}, got {attention_scale!r}")
    sd = {k: v.numpy() if isinstance(v, Tensor) else np.asarray(v) for k, v in sd.items()}
    sd = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in sd.items()}   # exact widening
    if "token_embedding_table.weight" in sd:
        scheme, tok, pos = LECTURE, "token_embedding_table.weight", "position_embedding_table.weight"
    elif "tok_emb.weight" in sd:
        scheme, tok, pos = NATIVE, "tok_emb.weight", "pos_emb.weight"
    else:
        raise UsageError("the state dict has neither token_embedding_table.weight (the lecture's gpt.py) nor "
                         "tok_emb.weight (tinygrad_gpt's names): it is not a GPT of the lecture")
    V, C = _shape(sd, tok, 2)
    T, C_pos = _shape(sd, pos, 2)
    if C_pos != C:
        raise UsageError(f"{pos} has shape {(T, C_pos)} but {tok} has {C} columns (n_embd)")
    L = _layers(sd)
    if scheme == LECTURE:
        heads = sorted({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.0\.sa\.heads\.(\d+)\.", k))})
        if heads != list(range(len(heads))) or not heads:
            raise UsageError("blocks.0.sa.heads.* must be heads 0 .. H-1, found "
                             f"{heads[:8] if heads else 'none'}")
        H = len(heads)
        hs, _ = _shape(sd, "blocks.0.sa.heads.0.key.weight", 2)
        if H * hs != C:
            raise UsageError(f"blocks.0.sa has {H} heads of size {hs}, which do not make n_embd {C}")
        if n_head is not None and n_head != H:
            raise UsageError(f"--n-head {n_head} was given, but the state dict has {H} heads per block")
        tril = {f"blocks.{i}.sa.heads.{j}.tril": (T, T) for i in range(L) for j in range(H)}
        _check_keys(sd, lecture_shapes(V, T, C, H, L), ignore=tril)
        weights = _from_lecture(sd, L, H)
        bias = True
    else:
        bias = "ln_f.bias" in sd
        _check_keys(sd, parameter_shapes(GPTConfig(V, T, C, 1, L, bias=bias)))      # H does not show in shapes
        if n_head is None:
            raise UsageError("a state dict in tinygrad_gpt's names does not show n_head (the fused qkv weight "
                             "is (3C, C) for any head count): pass --n-head")
        if n_head < 1 or C % n_head:
            raise UsageError(f"--n-head {n_head} does not divide n_embd {C}")
        H = n_head
        weights = dict(sd)
    if attention_scale == "embd":           # see the module docstring: q * sqrt(hs / C) under our hs**-0.5
        for i in range(L):
            name = f"blocks.{i}.attn.qkv.weight"
            qkv = weights[name].copy()                                 # (3C, C)
            qkv[:C] = qkv[:C].astype(np.float64) * math.sqrt((C // H) / C)   # q rows, rounded once to qkv's dtype
            weights[name] = qkv
    dims = {"vocab_size": V, "block_size": T, "n_embd": C, "n_head": H, "n_layer": L, "bias": bias}
    return dims, weights


def _from_lecture(sd, L, H):
    """The lecture's names -> SPEC section 2's, the per-head q/k/v fused into attn.qkv.weight."""
    out = {"tok_emb.weight": sd["token_embedding_table.weight"],
           "pos_emb.weight": sd["position_embedding_table.weight"]}
    for i in range(L):
        b = f"blocks.{i}."
        qkv = [np.concatenate([sd[f"{b}sa.heads.{j}.{w}.weight"] for j in range(H)])   # H x (hs, C) -> (C, C)
               for w in ("query", "key", "value")]
        out[f"{b}ln1.weight"], out[f"{b}ln1.bias"] = sd[f"{b}ln1.weight"], sd[f"{b}ln1.bias"]
        out[f"{b}attn.qkv.weight"] = np.concatenate(qkv)                               # (3C, C): q, k, v
        out[f"{b}attn.proj.weight"], out[f"{b}attn.proj.bias"] = sd[f"{b}sa.proj.weight"], sd[f"{b}sa.proj.bias"]
        out[f"{b}ln2.weight"], out[f"{b}ln2.bias"] = sd[f"{b}ln2.weight"], sd[f"{b}ln2.bias"]
        out[f"{b}mlp.fc.weight"], out[f"{b}mlp.fc.bias"] = sd[f"{b}ffwd.net.0.weight"], sd[f"{b}ffwd.net.0.bias"]
        out[f"{b}mlp.proj.weight"] = sd[f"{b}ffwd.net.2.weight"]
        out[f"{b}mlp.proj.bias"] = sd[f"{b}ffwd.net.2.bias"]
    for name in ("ln_f.weight", "ln_f.bias", "lm_head.weight", "lm_head.bias"):
        out[name] = sd[name]
    return out


def check_out(out, force):
    """Where the checkpoint may go: a new or empty directory, or (with force) one holding only a checkpoint.
    A run directory or a directory of other files is never replaced. Raises UsageError."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path {out} exists and is not a directory")
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if holds_run(out):
        raise UsageError(f"output directory {out} holds a training run: choose another --out "
                         "(import-torch writes a checkpoint directory and never replaces a run)")
    if "meta.json" in entries and set(entries) <= set(CHECKPOINT_FILES):
        if force:
            return
        raise UsageError(f"output directory {out} already holds a checkpoint: pass --force to replace it, or "
                         "choose another --out")
    raise UsageError(f"output directory {out} is not empty (it holds {entries[0]}): choose a new or empty "
                     "directory")


def import_state_dict(path, out, data=None, attention_scale="head", n_head=None, activation="relu", force=False):
    """Read the state dict at `path`, check it, and write a checkpoint directory `out` for `sample` and `eval`
    (float32 weights, dropout 0, the vocabulary of corpus `data`, None: the packaged tiny Shakespeare).
    Returns (out, GPTConfig, scheme). Raises UsageError or DataError; writes nothing then."""
    check_out(out, force)
    sd = read_state_dict(path)
    scheme = LECTURE if "token_embedding_table.weight" in sd else NATIVE
    dims, weights = convert(sd, attention_scale, n_head)
    corpus = load_corpus(data)
    tok = corpus.tokenizer                               # the lecture's chars = sorted(list(set(text)))
    if tok.vocab_size != dims["vocab_size"]:
        raise UsageError(f"the state dict has vocab_size {dims['vocab_size']} but {corpus.name} has "
                         f"{tok.vocab_size} distinct characters: pass the corpus the model was trained on "
                         "with --data")
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    bad = next((k for k, v in weights.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        raise UsageError(f"{bad} holds NaN or infinite values (or values beyond float32's range)")
    cfg = GPTConfig(dropout=0.0, activation=activation, **dims)
    model = GPT(cfg)
    model.load_state_dict(weights)
    info = {"path": str(Path(data).resolve()) if data is not None else None, "name": Path(corpus.name).name,
            "chars": len(corpus.ids), "sha256": corpus.sha256}
    checkpoint.save(out, model, tok, step=0, meta={"data": info})
    return Path(out), cfg, scheme
