"""Corpora, the character tokenizer, and the random batches a training run draws.

Any UTF-8 text file is a corpus. Its distinct characters, sorted, are the vocabulary (as in the lecture);
the first 90% of the characters train and the last 10% validate. A batch is B windows of T + 1 consecutive
characters at uniformly random start positions: inputs are the first T, targets the last T (shifted by one).

Dimension names: B batch size, T block size (context length).
"""
import hashlib
from pathlib import Path

import numpy as np

from .errors import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"      # the corpora shipped inside the package
DEFAULT_CORPUS = DATA_DIR / "tinyshakespeare.txt"
VAL_FRACTION = 0.1


class CharTokenizer:
    """Characters <-> integer ids. `chars` is the vocabulary in id order."""

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise DataError("a tokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise DataError("tokenizer characters must be single-character strings")
        if len(set(chars)) != len(chars):
            raise DataError("tokenizer characters must be distinct")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        """The vocabulary of a text: its distinct characters, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def unknown(self, text):
        """The characters of `text` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text):
        """str -> int64 array (n,). Raises DataError naming the characters outside the vocabulary."""
        bad = self.unknown(text)
        if bad:
            raise DataError(f"{len(bad)} character(s) not in the vocabulary: {describe_chars(bad)}")
        stoi = self.stoi
        return np.fromiter((stoi[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids):
        """Sequence of ids -> str."""
        chars = self.chars
        return "".join(chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def __eq__(self, other):
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def default_prompt(tokenizer):
    """The context a sample starts from when no prompt is given: a newline if the vocabulary has one."""
    return "\n" if "\n" in tokenizer.stoi else tokenizer.chars[0]


def describe_chars(chars, limit=20):
    """Characters for an error line, unambiguous even for whitespace and control characters: 'é' '\\t' ..."""
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" ... ({len(chars) - limit} more)" if len(chars) > limit else "")


def read_corpus(path):
    """The text of a UTF-8 file. Raises DataError (one line) when it is missing, unreadable, empty or not UTF-8."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus file not found: {path}")
    if path.is_dir():
        raise DataError(f"corpus path is a directory, not a file: {path}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read corpus {path}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"corpus {path} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start:e.start + 1].hex()
        raise DataError(f"corpus {path} is not UTF-8 text: invalid byte 0x{bad} at byte offset {e.start} "
                        f"({e.reason}); convert it first, e.g. iconv -f latin1 -t utf-8") from None
    if text.startswith("\ufeff"):          # a byte-order mark is not part of the text
        text = text[1:]
    if not text:
        raise DataError(f"corpus {path} is empty")
    return text


def min_corpus_length(block_size, val_fraction=VAL_FRACTION):
    """The fewest characters for which both splits hold one window of block_size + 1 characters."""
    need = block_size + 1
    n = 2 * need
    while split_point(n, val_fraction) < need or n - split_point(n, val_fraction) < need:
        n += 1
    return n


def split_point(n, val_fraction=VAL_FRACTION):
    """Index where validation starts: the first (1 - val_fraction) of n tokens train (the lecture's int(0.9 n))."""
    return int(n * (1.0 - val_fraction))


class Corpus:
    """A text, its tokenizer, and its token ids split into train and validation parts."""

    def __init__(self, text, tokenizer=None, name="<text>", val_fraction=VAL_FRACTION):
        self.name = str(name)
        self.text, self.val_fraction = text, val_fraction
        self.tokenizer = tokenizer or CharTokenizer.from_text(text)
        bad = self.tokenizer.unknown(text)
        if bad:
            raise DataError(f"corpus {self.name} has {len(bad)} character(s) outside the checkpoint's vocabulary: "
                            f"{describe_chars(bad)}")
        self.ids = self.tokenizer.encode(text)                        # (N,)
        cut = split_point(len(self.ids), val_fraction)
        self.train = self.ids[:cut]                                   # (N_train,)
        self.val = self.ids[cut:]                                     # (N_val,)
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __reduce__(self):
        """Pickled as its text and tokenizer (data-parallel rank 0 sends the corpus it read): the receiver encodes
        and splits it again, rather than receiving the ids too."""
        return Corpus, (self.text, self.tokenizer, self.name, self.val_fraction)

    def check_block_size(self, block_size):
        """Raise DataError unless both splits hold at least one window of block_size + 1 characters."""
        need = block_size + 1
        if len(self.train) < need or len(self.val) < need:
            raise DataError(
                f"corpus {self.name} has {len(self.ids)} characters, too short for block_size {block_size}: "
                f"the train ({len(self.train)}) and validation ({len(self.val)}) parts each need at least {need}, "
                f"so the corpus needs at least {min_corpus_length(block_size)} (or use a smaller --block-size)")
        return self

    def record(self, path):
        """What a checkpoint's meta.json keeps of the corpus read from `path` (None: the packaged default): its
        resolved path, name, length and SHA-256."""
        return {"path": str(Path(path).resolve()) if path else None, "name": Path(self.name).name,
                "chars": len(self.ids), "sha256": self.sha256}

    def split(self, name):
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def load_corpus(path=None, block_size=None, tokenizer=None):
    """Read, tokenize and split a corpus file (None: the packaged tiny Shakespeare). With block_size, also check
    that it is long enough. With a tokenizer (from a checkpoint), every character must be in its vocabulary."""
    path = DEFAULT_CORPUS if path is None else Path(path)
    corpus = Corpus(read_corpus(path), tokenizer=tokenizer, name=str(path))
    if block_size is not None:
        corpus.check_block_size(block_size)
    return corpus


class BatchSampler:
    """Random (inputs, targets) int64 batches of shape (B, T) from one split, drawn from a seeded Generator
    whose state can be saved and restored (exact resume).

    rows: a slice of each batch to return instead of all B rows. Data-parallel rank r of N passes
    slice(r * B // N, (r + 1) * B // N): every rank draws the same B window starts (B integers, the same random
    stream as one process), then keeps its own rows, so the ranks' parts are disjoint and together are exactly the
    batch one process would train on.

    xp: the array module of the device the batches are for. On the GPU (CuPy) the corpus is copied there once
    and batches are gathered there: only the B window starts (drawn on the host, the same stream as on the CPU)
    cross to the device each step."""

    def __init__(self, ids, block_size, batch_size, seed=0, rows=None, xp=np):
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) < block_size + 1:
            raise DataError(f"{len(ids)} tokens cannot hold a window of block_size + 1 = {block_size + 1}")
        self.block_size, self.batch_size, self.rows = block_size, batch_size, rows
        self.windows = np.lib.stride_tricks.sliding_window_view(ids, block_size + 1)   # (N - T, T + 1), a view
        self.rng = np.random.default_rng(seed)
        self.xp = xp
        if xp is not np:
            self.device_ids = xp.asarray(ids)                                         # (N,) on the device
            self.offsets = xp.arange(block_size + 1)                                  # (T + 1,)

    def sample(self):
        ix = self.rng.integers(0, len(self.windows), size=self.batch_size)            # (B,) window starts
        if self.rows is not None:
            ix = ix[self.rows]                                                        # (B / N,) this rank's rows
        if self.xp is not np:
            xp = self.xp
            w = self.device_ids[xp.asarray(ix)[:, None] + self.offsets]              # (B, T + 1) gathered there
            return xp.ascontiguousarray(w[:, :-1]), xp.ascontiguousarray(w[:, 1:])   # (B, T), (B, T)
        w = self.windows[ix]                                                          # (B, T + 1), a copy
        return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])       # (B, T), (B, T)

    @property
    def state(self):
        """The generator's state: a JSON-serialisable dict."""
        return self.rng.bit_generator.state

    @state.setter
    def state(self, value):
        self.rng.bit_generator.state = value


def fixed_batches(ids, block_size, batch_size, n_batches, seed, rows=None, xp=np):
    """n_batches batches drawn once from their own generator: the same every evaluation, so successive
    evaluations compare like with like, and the training sampler's random stream is left alone.
    rows: as BatchSampler's (a data-parallel rank's part of each batch)."""
    sampler = BatchSampler(ids, block_size, batch_size, seed, rows=rows, xp=xp)
    return [sampler.sample() for _ in range(n_batches)]


def micro_batches(x, y, parts):
    """(x, y) of shape (b, T) -> `parts` pairs of (b / parts, T): contiguous row views."""
    m = x.shape[0] // parts
    return [(x[i:i + m], y[i:i + m]) for i in range(0, x.shape[0], m)]
