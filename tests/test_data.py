"""Corpora, the character tokenizer, the train/val split and batch sampling (tinygrad_gpt/data.py)."""
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt.data import (
    DATA_DIR,
    DEFAULT_CORPUS,
    BatchSampler,
    CharTokenizer,
    Corpus,
    fixed_batches,
    load_corpus,
    min_corpus_length,
    read_corpus,
    split_point,
)
from tinygrad_gpt.errors import DataError


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ---- tokenizer ---------------------------------------------------------------------------------------------------
def test_tokenizer_vocab_is_sorted_distinct_chars_and_round_trips():
    text = "hello, wörld\n"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert tok.decode(ids) == text
    assert tok.decode([]) == ""


def test_tokenizer_names_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError) as e:
        tok.encode("abzé\t")
    msg = str(e.value)
    assert "'z'" in msg and "'é'" in msg and "'\\t'" in msg and "\n" not in msg


def test_tokenizer_rejects_bad_vocabularies():
    for chars in ([], ["a", "a"], ["ab"]):
        with pytest.raises(DataError):
            CharTokenizer(chars)


# ---- reading corpora ---------------------------------------------------------------------------------------------
def test_missing_corpus(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "nope.txt")


def test_directory_is_not_a_corpus(tmp_path):
    with pytest.raises(DataError, match="directory"):
        read_corpus(tmp_path)


def test_empty_corpus(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_corpus(write(tmp_path / "e.txt", b""))
    with pytest.raises(DataError, match="empty"):                      # a byte-order mark and nothing else
        read_corpus(write(tmp_path / "bom.txt", b"\xef\xbb\xbf"))


def test_unreadable_corpus(tmp_path, monkeypatch):
    f = write(tmp_path / "locked.txt", "some text")

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match="cannot read corpus .*Permission denied"):
        read_corpus(f)


def test_non_utf8_corpus_names_the_byte_offset(tmp_path):
    f = write(tmp_path / "latin1.txt", "caf".encode() + "é au lait".encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_corpus(f)
    assert "not UTF-8" in str(e.value) and "byte offset 3" in str(e.value) and "0xe9" in str(e.value)


def test_utf8_with_bom_and_accents(tmp_path):
    f = write(tmp_path / "fr.txt", b"\xef\xbb\xbf" + "Demain, dès l'aube".encode())
    assert read_corpus(f) == "Demain, dès l'aube"


def test_split_is_first_90_percent_train_last_10_percent_val():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    c = Corpus(text)
    cut = split_point(1000)
    assert cut == 900
    assert c.tokenizer.decode(c.train) == text[:900] and c.tokenizer.decode(c.val) == text[900:]


@pytest.mark.parametrize("block_size", [1, 8, 64, 256])
def test_min_corpus_length_is_exact(tmp_path, block_size):
    n = min_corpus_length(block_size)
    ok = write(tmp_path / "ok.txt", "ab" * (n // 2) + "a" * (n % 2))
    load_corpus(ok, block_size=block_size)
    short = write(tmp_path / "short.txt", "ab" * ((n - 1) // 2) + "a" * ((n - 1) % 2))
    with pytest.raises(DataError, match=f"too short for block_size {block_size}.*at least {n}"):
        load_corpus(short, block_size=block_size)


def test_corpus_outside_a_given_vocabulary(tmp_path):
    f = write(tmp_path / "c.txt", "abcxyz" * 100)
    with pytest.raises(DataError, match="outside the checkpoint's vocabulary: 'x' 'y' 'z'"):
        load_corpus(f, tokenizer=CharTokenizer("abc"))


def test_packaged_corpora_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_CORPUS.is_file() and DEFAULT_CORPUS.parent == DATA_DIR
    text = read_corpus(DEFAULT_CORPUS)
    assert len(text) == 1_115_394 and len(set(text)) == 65                     # SPEC section 7
    hugo = read_corpus(DATA_DIR / "hugo_contemplations.txt")
    assert len(hugo) == 285_222 and len(set(hugo)) == 101 and "é" in hugo


# ---- batches -----------------------------------------------------------------------------------------------------
def test_batches_are_int64_windows_with_targets_shifted_by_one():
    ids = np.arange(100, dtype=np.int64)                   # id == position, so a window shows where it starts
    s = BatchSampler(ids, block_size=8, batch_size=5, seed=0)
    for _ in range(20):
        x, y = s.sample()
        assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == y.shape == (5, 8)
        assert x.flags.c_contiguous and y.flags.c_contiguous
        assert (np.diff(x, axis=1) == 1).all() and (y == x + 1).all()
        assert x.min() >= 0 and y.max() <= 99


def test_every_window_start_is_reachable_including_the_last():
    ids = np.arange(10, dtype=np.int64)
    s = BatchSampler(ids, block_size=8, batch_size=64, seed=0)   # starts 0 and 1 only (a window is 9 tokens)
    starts = set(s.sample()[0][:, 0].tolist())
    assert starts == {0, 1}


def test_sampler_is_seeded_and_its_state_restores():
    ids = np.arange(1000, dtype=np.int64)
    a, b = BatchSampler(ids, 16, 4, seed=7), BatchSampler(ids, 16, 4, seed=7)
    for _ in range(3):
        assert all((u == v).all() for u, v in zip(a.sample(), b.sample(), strict=True))
    state = a.state
    expected = [a.sample() for _ in range(3)]
    c = BatchSampler(ids, 16, 4, seed=123)
    c.state = state
    for (ex, ey), (x, y) in zip(expected, [c.sample() for _ in range(3)], strict=True):
        assert (ex == x).all() and (ey == y).all()


def test_fixed_batches_are_the_same_every_time_and_leave_other_streams_alone():
    ids = np.arange(500, dtype=np.int64)
    one = fixed_batches(ids, 8, 4, 3, seed=[1, 3])
    two = fixed_batches(ids, 8, 4, 3, seed=[1, 3])
    assert len(one) == 3 and all((a[0] == b[0]).all() for a, b in zip(one, two, strict=True))


def test_too_few_tokens_for_a_window():
    with pytest.raises(DataError):
        BatchSampler(np.arange(8), block_size=8, batch_size=1)
