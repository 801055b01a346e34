"""`tinygrad-gpt compare`: the table of runs against the first, read from real tiny runs' logs and checkpoints.

Three runs are trained once for the file with the command-line tests' tiny model (cli_support): a baseline, one with
n_layer 2, and one on another corpus (a slice of the packaged Victor Hugo). Every expected number is read from their
log.jsonl, and the percent change is computed from those numbers.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import TINY_MODEL, log, run, write_corpus
from tinygrad_gpt import checkpoint as ck
from tinygrad_gpt.cli import main
from tinygrad_gpt.data import DATA_DIR

SCHEDULE = ["--max-iters", "8", "--eval-interval", "4", "--sample-chars", "0"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: run directory}: base (n_layer 1), deeper (n_layer 2), hugo (n_layer 1, another corpus)."""
    root = tmp_path_factory.mktemp("compare")
    shakespeare = write_corpus(root)
    hugo = root / "hugo_head.txt"
    hugo.write_text((DATA_DIR / "hugo_contemplations.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    dirs = {"base": (shakespeare, []), "deeper": (shakespeare, ["--n-layer", "2"]), "hugo": (hugo, [])}
    for name, (corpus, extra) in dirs.items():
        code = main([str(a) for a in ["train", "--data", corpus, "--out", root / name, *TINY_MODEL, *SCHEDULE,
                                      *extra]])
        assert code == 0, name
    return {name: root / name for name in dirs}


def compare_json(capsys, *args):
    code, out, err = run(capsys, "compare", *args, "--json")
    assert code == 0, err
    return json.loads(out)


def best_of(records):
    return records[-1]["best_val_loss"]


# ---- the rows ----------------------------------------------------------------------------------------------------
def test_rows_are_the_logged_numbers(capsys, runs):
    result = compare_json(capsys, runs["base"], runs["deeper"], runs["hugo"])
    rows = {Path(r["run"]).name: r for r in result["runs"]}
    assert [Path(r["run"]).name for r in result["runs"]] == ["base", "deeper", "hugo"]
    assert result["baseline"] == str(runs["base"]) and rows["base"]["baseline"]
    base_best = best_of(log(runs["base"]))
    for name, row in rows.items():
        recs = log(runs[name])
        last = recs[-1]
        assert (row["step"], row["max_iters"]) == (last["step"], last["max_iters"]) == (8, 8)
        assert row["elapsed_s"] == last["elapsed_s"]
        assert row["train_loss"] == last["train_loss"] and row["val_loss"] == last["val_loss"]
        assert row["best_val_loss"] == best_of(recs) == min(r["val_loss"] for r in recs[1:])   # step 0 is not saved
        assert row["best_val_change_pct"] == 100 * (best_of(recs) - base_best) / base_best
        # the run's rate: each logged rate covers the steps since the record before it
        steps = [b["step"] - a["step"] for a, b in zip(recs, recs[1:], strict=False)]
        rates = [r["tokens_per_s"] for r in recs[1:]]
        assert row["tokens_per_s"] == pytest.approx(sum(steps) / sum(s / t for s, t in zip(steps, rates, strict=True)))
        assert row["ranks"] == 1 and row["evaluations"] == len(recs)
    assert rows["base"]["best_val_change_pct"] == 0.0
    assert rows["base"]["changes"] == {} and rows["deeper"]["changes"] == {"n_layer": [1, 2]}
    hugo_vocab = len(set(Path(runs["hugo"].parent / "hugo_head.txt").read_text(encoding="utf-8")))
    shakespeare_vocab = len(set(Path(runs["base"].parent / "shakespeare_head.txt").read_text(encoding="utf-8")))
    assert rows["hugo"]["changes"] == {"vocab_size": [shakespeare_vocab, hugo_vocab]}
    assert [r["other_corpus"] for r in result["runs"]] == [False, False, True] and result["corpora_differ"]
    assert rows["hugo"]["corpus"]["name"] == "hugo_head.txt"


def test_the_table(capsys, runs):
    code, out, err = run(capsys, "compare", runs["base"], runs["deeper"], runs["hugo"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    head, body, note = lines[0], lines[1:4], lines[-1]
    assert head.split() == ["run", "step", "time", "tokens/s", "train", "val", "best", "val", "change", "changes",
                            "from", "the", "baseline"]
    assert lines[4] == "" and len(lines) == 6
    base, deeper, hugo = body
    assert base.startswith(str(runs["base"])) and base.endswith("base  baseline")
    assert deeper.endswith("n_layer 1 -> 2") and hugo.startswith(str(runs["hugo"]) + " *")
    assert note.startswith("* trained on another corpus (hugo_head.txt) than the baseline (shakespeare_head.txt)")
    recs = log(runs["deeper"])
    pct = 100 * (best_of(recs) - best_of(log(runs["base"]))) / best_of(log(runs["base"]))
    assert f"{recs[-1]['train_loss']:.4f}" in deeper and f"{pct:+.2f}%" in deeper and "8/8" in deeper
    # numbers are right-aligned: each row's best val ends where the header's does
    end = head.index("best val") + len("best val")
    for row, name in zip(body, ("base", "deeper", "hugo"), strict=True):
        assert row[:end].endswith(f"{best_of(log(runs[name])):.4f}")


def test_markdown_json_and_plot(capsys, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "compare", runs["base"], runs["deeper"], runs["hugo"], "--markdown", "t.md", "--plot")
    assert code == 0, err
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG                    # --plot alone: here, compare.png
    assert f"plot written to {tmp_path / 'compare.png'}" in out and f"markdown written to {tmp_path / 't.md'}" in out
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[0].startswith("| run | step | time |") and md[1].startswith("| --- | ---: |")
    assert [line.split(" | ")[0] for line in md[2:5]] == [f"| {runs['base']}", f"| {runs['deeper']}",
                                                         f"| {runs['hugo']} *"]
    assert md[6].startswith("\\* trained on another corpus") and md[-1] == "![validation loss of each run](compare.png)"

    sub = tmp_path / "out"
    sub.mkdir()
    result = compare_json(capsys, runs["base"], runs["deeper"], "--plot", sub / "curves.svg")
    assert result["plot"] == str(sub / "curves.svg") and "markdown" not in result
    assert (sub / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_a_run_without_a_log_or_without_checkpoints(capsys, runs, tmp_path):
    no_log, no_ckpt = tmp_path / "no_log", tmp_path / "no_ckpt"
    shutil.copytree(runs["deeper"], no_log)
    (no_log / "log.jsonl").unlink()
    shutil.copytree(runs["deeper"], no_ckpt)
    shutil.rmtree(no_ckpt / "last")
    shutil.rmtree(no_ckpt / "best")
    result = compare_json(capsys, runs["base"], no_log, no_ckpt)
    _, from_meta, from_log = result["runs"]
    meta = json.loads((runs["deeper"] / "last" / "meta.json").read_text())
    assert (from_meta["step"], from_meta["elapsed_s"], from_meta["val_loss"], from_meta["best_val_loss"]) == \
           (meta["step"], meta["elapsed_s"], meta["val_loss"], meta["best_val_loss"])
    assert from_meta["train_loss"] is None and from_meta["tokens_per_s"] is None
    assert from_meta["changes"] == {"n_layer": [1, 2]}
    assert from_log["changes"] is None and from_log["ranks"] is None and from_log["val_loss"] == log(no_ckpt)[-1][
        "val_loss"]
    table = run(capsys, "compare", runs["base"], no_log, no_ckpt)[1].splitlines()
    assert table[2].split()[3:5] == ["-", "-"]                     # the checkpoint logs no rate and no train loss
    assert table[3].split()[-1] == "-"                             # without a checkpoint, no settings to compare


def test_a_ladder_rung_is_compared_by_its_model(capsys, runs, tmp_path):
    """A rung's checkpoint names its model in meta.json (`model`: kind, rung, hyperparameters); faked here on a copy
    of the baseline, its checksum recomputed as checkpoint.save computes it."""
    rung = tmp_path / "bigram"
    shutil.copytree(runs["base"], rung)
    meta_path = rung / "last" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"] = {"kind": "lecture-rung", "rung": "bigram", "hp": {"vocab_size": meta["config"]["vocab_size"]}}
    meta["train"]["rung"] = "bigram"
    meta[ck.META_DIGEST] = ck._meta_digest(meta)
    meta_path.write_text(json.dumps(meta))
    row = compare_json(capsys, runs["base"], rung)["runs"][1]
    assert row["changes"] == {"model": ["gpt", "bigram"]} and row["model"]["rung"] == "bigram"


def test_the_rungs_of_a_ladder(capsys, runs, tmp_path):
    """Each rung of `tinygrad-gpt ladder` is a run directory: compared with each other and with a train run."""
    out = tmp_path / "ladder"
    code, _, err = run(capsys, "ladder", "--time", "10m", "--max-steps", "40", "--rungs", "bigram,one-head",
                       "--data", runs["base"].parent / "shakespeare_head.txt", "--out", out, "--no-progress")
    assert code == 0, err
    result = compare_json(capsys, out / "bigram", out / "one-head", runs["base"])
    bigram, one_head, base = result["runs"]
    assert one_head["changes"]["model"] == ["bigram", "one-head"] and base["changes"]["model"] == ["bigram", "gpt"]
    assert one_head["best_val_loss"] == log(out / "one-head")[-1]["best_val_loss"] and not result["corpora_differ"]
    assert [r["step"] for r in result["runs"]] == [log(out / "bigram")[-1]["step"], log(out / "one-head")[-1]["step"],
                                                   8]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpiexec", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("mpiexec") is None, reason="needs an mpiexec (pip install -e '.[mpi]')")
def test_a_data_parallel_run_shows_its_ranks(capsys, runs, tmp_path):
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    ddp = tmp_path / "ddp"
    r = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "tinygrad_gpt", "train", "--data",
                        str(runs["base"].parent / "shakespeare_head.txt"), "--out", str(ddp), *TINY_MODEL, *SCHEDULE],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    row = compare_json(capsys, runs["base"], ddp)["runs"][1]
    assert row["ranks"] == 2 and row["changes"] == {} and row["best_val_loss"] == best_of(log(ddp))
    table = run(capsys, "compare", runs["base"], ddp)[1].splitlines()
    assert table[0].split()[:2] == ["run", "ranks"] and table[2].split()[1] == "2"


# ---- bad input ---------------------------------------------------------------------------------------------------
def _replace_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _edit_record(index, **fields):
    def edit(run_dir):
        path = run_dir / "log.jsonl"
        rec = json.loads(path.read_text().splitlines()[index])
        for k, v in fields.items():
            if v is None:
                del rec[k]
            else:
                rec[k] = v
        _replace_line(path, index, json.dumps(rec))
    return edit


def _mkdir(path):
    path.mkdir()
    return [path]


def _edit_meta(text):
    def edit(run_dir):
        (run_dir / "last" / "meta.json").write_text(text((run_dir / "last" / "meta.json").read_text()))
    return edit


# (what breaks, how: a function of a copy of the baseline run -> the extra arguments, what the error line says)
BAD = {
    "missing path": (lambda d: ["nowhere"], "run directory not found: nowhere"),
    "a file": (lambda d: [d / "log.jsonl"], "is not a run directory (it is a file)"),
    "not a run": (lambda d: _mkdir(d / "empty"), "empty is not a run directory (no log.jsonl, no last/ or best/"),
    "a checkpoint": (lambda d: [d / "last"], "it is a checkpoint; pass the run directory that holds it"),
    "a directory of runs": (lambda d: [d.parent], "it holds runs:"),
    "log line not JSON": (lambda d: _replace_line(d / "log.jsonl", 1, '{"step": 4, "train_lo'), "line 2 is not JSON"),
    "log line not an object": (lambda d: _replace_line(d / "log.jsonl", 0, "[1, 2]"), "line 1 is not a JSON object"),
    "log record lacks val_loss": (_edit_record(2, val_loss=None), "line 3 lacks the field 'val_loss'"),
    "log step not an integer": (_edit_record(1, step="4"), "line 2: step must be an integer"),
    "log loss NaN": (_edit_record(2, val_loss=float("nan")), "line 3: val_loss must be a finite number, got nan"),
    "meta edited": (_edit_meta(lambda t: t.replace('"n_layer": 1', '"n_layer": 3')), "is corrupt or was edited"),
    "meta not JSON": (_edit_meta(lambda t: t[:40]), "meta.json is unreadable or corrupt"),
    "meta missing": (lambda d: (d / "last" / "meta.json").unlink(), "(no meta.json)"),
    "plot not an image name": (lambda d: ["--plot", d / "curves.txt"], "must end in one of .png, .svg, .pdf"),
    "plot before the runs": (lambda d: ["--plot", d], "must end in one of .png"),       # --plot RUN_DIR RUN_DIR
    "markdown in no directory": (lambda d: ["--markdown", d / "no" / "t.md"], "the directory"),
    "markdown a directory": (lambda d: ["--markdown", d / "last"], "is a directory, not a file name"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_exit_2(capsys, runs, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "runs" / "copy"
    shutil.copytree(runs["base"], copy)
    make, message = BAD[case]
    extra = make(copy) or []
    args = [*extra, copy] if extra[:1] == ["--plot"] else [copy, *extra]
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = run(capsys, "compare", *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before                          # nothing written


def test_no_run_is_a_usage_error(capsys):
    code, out, err = run(capsys, "compare")
    assert code == 2 and err.startswith("error: the following arguments are required: RUN_DIR") and \
           err.count("\n") == 1
