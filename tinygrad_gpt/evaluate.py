"""`tinygrad-gpt eval`: a checkpoint's mean cross-entropy on every full block of a corpus split.

The split follows the training rule (data.split_point: the first 90% of the characters train, the last 10%
validate), or is the whole text ("all"). It is cut into consecutive blocks of block_size positions: block i reads
characters [i T, (i+1) T) and predicts [i T + 1, (i+1) T + 1], so consecutive blocks share one boundary character
and every character of the split but the first is predicted once, until the last full block; the few characters
after it ((n - 1) mod T of them) are left out, and the count of characters covered says so. Each block starts
from an empty context, as in training, where every window is a block of its own.

The result is the mean over every predicted character of -ln p(character | the block's characters before it):
nats per character, the same quantity as the training log's losses (which sample eval_iters random batches);
bits per character = nats / ln 2; perplexity = e^nats.
"""
import math
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .checkpoint import load_model
from .data import load_corpus
from .errors import CheckpointError, DataError, UsageError
from .tensor import Tensor, no_grad

SPLITS = ("val", "train", "all")


def split_ids(corpus, split):
    """The token ids of one split of `corpus`: "train" and "val" by the training rule, "all" the whole text."""
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return corpus.ids if split == "all" else corpus.split(split)


def blocks(ids, block_size):
    """(inputs, targets) of every full block of `ids`: two int64 arrays of shape (n_blocks, block_size)."""
    n = (len(ids) - 1) // block_size                                       # full blocks
    ids = np.asarray(ids, dtype=np.int64)
    x = ids[:n * block_size].reshape(n, block_size)                        # (n, T)
    y = ids[1:n * block_size + 1].reshape(n, block_size)                   # (n, T): shifted by one
    return x, y


def checkpoint_corpus(ckpt):
    """The corpus file a checkpoint was trained on (None: the packaged tiny Shakespeare)."""
    data = ckpt.meta.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("path"), (str, type(None))):
        raise CheckpointError(f"checkpoint {ckpt.path} does not say which corpus it was trained on: "
                              "pass --data FILE")
    path = data["path"]
    if path is not None and not Path(path).exists():
        raise DataError(f"the corpus checkpoint {ckpt.path} was trained on, {path}, is not found: pass --data FILE")
    return path


def evaluate(ckpt_path, data=None, split="val", batch_size=32, device="cpu", progress=False, note=None):
    """Mean cross-entropy of the checkpoint at `ckpt_path` (a run directory: its best checkpoint) on every full
    block of a split of `data` (None: the checkpoint's own corpus). Returns a dict of the figures; `note(text)` is
    told, at the end, when the corpus is not the one the checkpoint was trained on. Raises CheckpointError, DataError,
    UsageError (impossible settings), DeviceError."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if split not in SPLITS:
        raise UsageError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    model, _, ckpt = load_model(ckpt_path, device)                       # in eval mode
    path = checkpoint_corpus(ckpt) if data is None else data
    corpus = load_corpus(path, tokenizer=ckpt.tokenizer)       # a character outside the vocabulary: DataError
    T = ckpt.config.block_size
    ids = split_ids(corpus, split)
    x, y = blocks(ids, T)                                                  # (n, T), (n, T)
    if len(x) == 0:
        raise DataError(f"the {split} split of {corpus.name} has {len(ids)} characters: too few for one block of "
                        f"block_size + 1 = {T + 1}")
    total = 0.0                                                            # sum of -ln p over predicted chars
    with no_grad(), tqdm(total=len(x), unit="block", file=sys.stderr, dynamic_ncols=True,
                         disable=None if progress else True, leave=False) as bar:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]              # (b, T), (b, T)
            _, loss = model(Tensor(xb), Tensor(yb))                        # mean over the b * T positions
            total += loss.item() * yb.size
            bar.update(len(xb))
    trained_on = (ckpt.meta.get("data") or {}).get("sha256")
    if note is not None and trained_on is not None and trained_on != corpus.sha256:
        note(f"note: {corpus.name} is not the corpus checkpoint {ckpt.path} was trained on")
    covered = x.size
    nats = total / covered
    return {"checkpoint": str(ckpt.path), "step": ckpt.step, "corpus": corpus.name,
            "split": split,
            "split_chars": int(len(ids)), "block_size": T, "blocks": int(len(x)), "chars_covered": int(covered),
            "nats_per_char": nats, "bits_per_char": nats / math.log(2), "perplexity": math.exp(nats)}


def describe(r):
    """The human-readable lines of an evaluate() result."""
    name = Path(r["corpus"]).name
    where = f"all of {name}" if r["split"] == "all" else f"{name}, {r['split']} split"
    return (f"checkpoint {r['checkpoint']} (step {r['step']}) on {where}: {r['split_chars']:,} characters, "
            f"{r['blocks']:,} blocks of {r['block_size']} -> {r['chars_covered']:,} characters covered\n"
            f"{r['nats_per_char']:.4f} nats/char | {r['bits_per_char']:.4f} bits/char | "
            f"perplexity {r['perplexity']:.3f}")
