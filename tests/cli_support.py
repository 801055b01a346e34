"""What the command-line test files share: a tiny model's flags, a short corpus, main() with its output captured, a
run's log. (The module-scoped `corpus` fixture, write_corpus in a temporary directory, is in conftest.py.)

The tiny model (B=4, T=16, C=16, H=2, L=1) trains a step in milliseconds, so a run of the whole command takes a
second or so; each file adds its own --sample-chars and schedule flags to TINY_MODEL.
"""
import json
from pathlib import Path

from tinygrad_gpt.cli import main
from tinygrad_gpt.data import DEFAULT_CORPUS

TINY_MODEL = ["--batch-size", "4", "--block-size", "16", "--n-embd", "16", "--n-head", "2", "--n-layer", "1",
              "--eval-iters", "2", "--no-progress"]
HEAD_CHARS = 20_000                  # the corpus slice: 18,000 training and 2,000 validation characters


def write_corpus(directory, chars=HEAD_CHARS):
    """The first `chars` characters of tiny Shakespeare as directory/shakespeare_head.txt; returns its path."""
    path = directory / "shakespeare_head.txt"
    path.write_text(DEFAULT_CORPUS.read_text(encoding="utf-8")[:chars], encoding="utf-8")
    return path


def run(capsys, *args):
    """main(args) in this process -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def log(run_dir):
    """The records of run_dir/log.jsonl, one dict a line."""
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
