"""Systematic corruption of a training run's checkpoint, through the command line: every key of meta.json renamed,
retyped or removed, bytes flipped in each of its three files, each file truncated or missing. `tinygrad-gpt train
--resume` and `tinygrad-gpt sample` answer each with exit code 2 and one `error: ...` line (no traceback), and
leave the checkpoint as it was.

Two kinds of edit of meta.json: raw (its checksum left as it was: what a flipped bit or a torn write does) and sealed
(the checksum recomputed: a consistent edit, as a tool or a bug might make, or a format-1 checkpoint, which has no
checksum). Raw edits are caught by the checksum; sealed ones by the field checks behind it.

In process (cli.main), on one tiny run made once: each case restores the run directory, so they are independent.
"""
import json
import shutil

import pytest

from cli_support import TINY_MODEL, run, write_corpus
from tinygrad_gpt import budget
from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.cli import main

# cli_support's tiny model made smaller still, T=8 and C=8 (of a repeated flag the later wins), with dropout 0.1, one
# evaluation batch and no sample
TINY = [*TINY_MODEL, "--block-size", "8", "--n-embd", "8", "--dropout", "0.1", "--eval-iters", "1",
        "--sample-chars", "0"]
FILES = (ck.MODEL_FILE, ck.OPTIM_FILE, ck.META_FILE)
# top-level fields a training run writes and `train --resume` needs, but sampling does not read
RUN_ONLY = set(ck.RESUME_FIELDS) - {"optimizer"}
# written only by some runs (a time budget's plan): neither command needs them
OPTIONAL = {"budget"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A run directory after 2 steps (checkpoints in last/ and best/), never modified. Trained to a time budget
    (fit_steps pinned to 2 steps: the plan does not depend on this machine's speed) so that its checkpoint holds
    every field a run can write, the budget's plan included."""
    root = tmp_path_factory.mktemp("corruption")
    corpus = write_corpus(root, chars=5_000)
    run_dir = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "fit_steps", lambda *args: 2)
        assert main(["train", "--data", str(corpus), "--out", str(run_dir), "--time", "1m", "--eval-interval", "2",
                     *TINY]) == 0
    return run_dir


class Case:
    """A fresh copy of the run for one corruption; `check` runs a command on it and asserts the outcome."""

    def __init__(self, pristine, tmp_path, capsys):
        self.dir = tmp_path / "run"
        self.last = self.dir / ck.LAST
        self.pristine, self.capsys = pristine, capsys
        self.reset()

    def reset(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.copytree(self.pristine, self.dir)

    def command(self, which):
        if which == "resume":
            return ["train", "--out", str(self.dir), "--resume", "--max-iters", "3", "--no-progress"]
        return ["sample", "--ckpt", str(self.last), "-n", "3", "--seed", "0"]

    def check(self, which, what, expect_error=True):
        """Run `which` ("resume" or "sample") on the corrupted checkpoint: exit 2, one error line, the checkpoint's
        files untouched; or, with expect_error=False, a normal run (exit 0)."""
        before = {f: (self.last / f).read_bytes() if (self.last / f).is_file() else None for f in FILES}
        code, out, err = run(self.capsys, *self.command(which))
        if not expect_error:
            assert code == 0, (which, what, err)
            return
        assert code == 2, (which, what, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (which, what, err)
        assert "Traceback" not in out + err, (which, what)
        after = {f: (self.last / f).read_bytes() if (self.last / f).is_file() else None for f in FILES}
        assert after == before, (which, what, "the checkpoint was changed")
        return err


@pytest.fixture
def case(pristine, tmp_path, capsys):
    return Case(pristine, tmp_path, capsys)


# ---- meta.json, key by key ---------------------------------------------------------------------------------------
def paths(value, prefix=()):
    """Every field of a JSON document: a path of keys (and, for lists, index 0), depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list) and value:
        yield prefix + (0,)
        yield from paths(value[0], prefix + (0,))


def retyped(v):
    """A value of another JSON type than v."""
    if isinstance(v, bool):
        return "true"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return 7
    if isinstance(v, dict):
        return []
    if isinstance(v, list):
        return {}
    return []                                              # null


def mutate(meta, path, how):
    """meta with the field at `path` renamed (one bit of its first character flipped), retyped or removed."""
    meta = json.loads(json.dumps(meta))
    *parent_path, key = path
    parent = meta
    for k in parent_path:
        parent = parent[k]
    if how == "retype":
        parent[key] = retyped(parent[key])
    elif how == "remove":
        del parent[key]
    elif how == "rename":
        new = chr(ord(key[0]) ^ 1) + key[1:]
        assert new not in parent
        parent[new] = parent.pop(key)
    return meta


def mutations(meta):
    for path in paths(meta):
        for how in ("rename", "retype", "remove"):
            if how != "rename" or isinstance(path[-1], str):
                yield path, how


def write_meta(case, meta, seal):
    if seal:
        meta[ck.META_DIGEST] = ck._meta_digest(meta)
    (case.last / ck.META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")


def test_the_sweep_covers_every_field(pristine):
    """The run's meta.json holds every field of the format, so the sweeps below mutate each of them."""
    meta = json.loads((pristine / ck.LAST / ck.META_FILE).read_text(encoding="utf-8"))
    assert set(ck.RESUME_FIELDS) < meta.keys()
    assert {"config", "tokenizer", "step", "files", "optimizer", "budget", ck.META_DIGEST} < meta.keys()
    assert ck.OPTIM_FILE in meta["files"] and len(list(mutations(meta))) > 200


@pytest.mark.parametrize("which", ["resume", "sample"])
def test_raw_edits_of_meta_are_caught_by_its_checksum(case, which):
    meta = json.loads((case.last / ck.META_FILE).read_text(encoding="utf-8"))
    for path, how in mutations(meta):
        write_meta(case, mutate(meta, path, how), seal=False)
        err = case.check(which, (path, how))
        assert "meta.json" in err, (path, how, err)
    case.reset()
    case.check(which, "untouched", expect_error=False)


@pytest.mark.parametrize("which", ["resume", "sample"])
def test_sealed_edits_of_meta_are_caught_by_the_field_checks(case, which):
    """Behind the checksum. Sampling reads no training state: it works without the fields only a run needs
    (RUN_ONLY), and the training settings (train.*) are checked when a run resumes, not when it samples. Both
    work without an OPTIONAL field (what a run without a time budget writes)."""
    meta = json.loads((case.last / ck.META_FILE).read_text(encoding="utf-8"))
    sampled = 0
    for path, how in mutations(meta):
        if path[0] == ck.META_DIGEST:                      # sealing rewrites it: covered by the raw edits
            continue
        if which == "sample" and path[0] == "train" and len(path) > 1:
            continue
        works = how == "remove" and len(path) == 1 and (path[0] in OPTIONAL or which == "sample"
                                                        and path[0] in RUN_ONLY)
        write_meta(case, mutate(meta, path, how), seal=True)
        case.check(which, (path, how), expect_error=not works)
        if works:
            case.reset()
        sampled += works
    assert sampled == len(OPTIONAL) + (len(RUN_ONLY) if which == "sample" else 0)


# ---- bytes of each file ------------------------------------------------------------------------------------------
def same_json(a, b):
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


@pytest.mark.parametrize("which", ["resume", "sample"])
@pytest.mark.parametrize("name", FILES)
def test_flipped_bytes_truncations_and_missing_files(case, which, name):
    """Flips through the safetensors header (all of meta.json) and through the data; truncations at the edges and in
    the middle (meta.json's last byte is its closing newline: without it the content is whole, so the cuts stop
    before); the file missing. A flip that leaves meta.json's content the same (an exponent's 'e' against 'E') is
    no corruption: the command then works."""
    f = case.last / name
    original = f.read_bytes()
    n = len(original)
    head = n if name == ck.META_FILE else 8 + int.from_bytes(original[:8], "little")
    positions = sorted(set(range(0, head, max(1, head // 40))) | set(range(head, n, max(1, (n - head) // 10))))
    for i in positions:
        data = bytearray(original)
        data[i] ^= 1 << (i % 8)
        f.write_bytes(bytes(data))
        harmless = name == ck.META_FILE and same_json(bytes(data), original)
        case.check(which, f"{name}: bit {i % 8} of byte {i} flipped", expect_error=not harmless)
        if harmless:
            case.reset()
    for cut in (0, 1, 8, head // 2, n // 2, n - 2):
        f.write_bytes(original[:cut])
        case.check(which, f"{name}: truncated to {cut} bytes")
    f.unlink()
    err = case.check(which, f"{name}: missing")
    assert name in err or "no meta.json" in err, err


def test_a_run_saved_in_format_1_still_samples_and_resumes(case):
    """Checkpoints written before meta.json had its checksum (format version 1) are read, fields checked; those
    older than --grad-accum lack its setting, which then means 1 (in format 2 a missing setting is an error)."""
    meta = json.loads((case.last / ck.META_FILE).read_text(encoding="utf-8"))
    del meta[ck.META_DIGEST], meta["train"]["grad_accum"], meta["budget"]
    meta["format_version"] = 1
    write_meta(case, meta, seal=False)
    case.check("sample", "format 1", expect_error=False)
    case.check("resume", "format 1", expect_error=False)
    assert ck.load(case.last).step == 3 and ck.load(case.last).meta["format_version"] == ck.FORMAT_VERSION
