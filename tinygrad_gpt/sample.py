"""Sampling text from a checkpoint, streamed character by character as it is generated.

Generation runs the model in eval mode with its key/value cache (each new character costs one position's forward
pass); `use_cache=False` recomputes the whole context each time and gives the same characters for the same seed.
"""
import math
import sys

import numpy as np

from .checkpoint import load_model
from .data import default_prompt, describe_chars
from .errors import DataError, UsageError
from .model import sample_next
from .tensor import Tensor

DEFAULT_RUN = "runs/cpu"      # where `tinygrad-gpt train` with no arguments writes


def sample(ckpt=DEFAULT_RUN, prompt=None, num_chars=500, temperature=1.0, top_k=None, seed=None, device="cpu",
           use_cache=True, stream=None, window="slide"):
    """Generate `num_chars` characters after `prompt` (None or "": a newline, not printed). Writes the prompt and then
    each character to `stream` as it comes (None: write nothing). Returns the prompt plus the generated text.
    Raises DataError for prompt characters outside the vocabulary, UsageError for impossible settings,
    CheckpointError for an unusable checkpoint."""
    if not isinstance(num_chars, int) or num_chars < 0:
        raise UsageError(f"the number of characters must be >= 0, got {num_chars!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise UsageError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise UsageError(f"top_k must be a positive integer, got {top_k!r}")
    if window not in ("slide", "shift"):
        raise UsageError(f"window must be 'slide' or 'shift', got {window!r}")
    if seed is not None and (not isinstance(seed, int) or seed < 0):
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    model, tok, ck = load_model(ckpt, device)
    shown = prompt or ""
    if prompt:
        bad = tok.unknown(prompt)
        if bad:
            raise DataError(f"the prompt has {len(bad)} character(s) outside the vocabulary of {ck.path}: "
                            f"{describe_chars(bad)}")
    context = tok.encode(prompt or default_prompt(tok))[None, :]    # (1, t)
    pieces = [shown]
    if stream is not None and shown:
        stream.write(shown)
        stream.flush()
    if hasattr(model, "generate_iter"):                          # the GPT: a key/value cache, window rules
        tokens = model.generate_iter(context, num_chars, temperature=temperature, top_k=top_k, seed=seed,
                                     use_cache=use_cache, window=window)
    else:                                                       # a lecture rung: the lecture's sliding window
        tokens = generate_plain(model, context, num_chars, ck.config.block_size, temperature, top_k, seed)
    for nxt in tokens:
        ch = tok.chars[int(nxt[0])]
        pieces.append(ch)
        if stream is not None:
            stream.write(ch)
            stream.flush()
    if stream is not None:
        stream.write("\n")
        stream.flush()
    return "".join(pieces)


def main_stream():
    """stdout, made safe for any character (a terminal that cannot show one gets an escape, not a crash)."""
    out = sys.stdout
    if hasattr(out, "reconfigure") and (out.encoding or "").lower().replace("-", "") != "utf8":
        try:
            out.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    return out


def generate_plain(model, context, n, block_size, temperature=1.0, top_k=None, seed=None):
    """Yield n tokens (B,) sampled from any model whose model(idx) gives (logits (B, t, V), _): the whole context (its
    last block_size tokens) recomputed for each, as the lecture's generate does; temperature, top_k and the draws as
    GPT.generate_iter's (model.sample_next)."""
    rng = np.random.default_rng(seed)
    ctx = np.asarray(context, dtype=np.int64)                  # (B, t)
    with model.evaluating():
        for _ in range(n):
            logits, _ = model(Tensor(ctx[:, -block_size:]))    # (B, t, V)
            nxt = sample_next(logits.numpy()[:, -1], temperature, top_k, rng)   # (B,)
            ctx = np.concatenate([ctx, nxt[:, None]], axis=1)
            yield nxt
