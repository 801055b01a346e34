"""The run directory: what a training run leaves on disk, and the checks made before anything is written there.

    last/        the latest checkpoint (saved at every evaluation, at the end, and on Ctrl-C)
    best/        the checkpoint with the lowest validation loss so far
    log.jsonl    one JSON object per evaluation: step, train_loss, val_loss, lr, tokens_per_s, elapsed_s, max_iters,
                 best_val_loss, and the time budget's plan (`budget`) in the first record after it was made
    loss.png     the loss curves, redrawn at every evaluation
    sample.txt   a sample from the final model

Only these names are ever written or removed (`--force` removes them and leaves any other file alone). In a
data-parallel run rank 0 alone writes: the other ranks hold a RunDir with writes=False, whose writing methods
do nothing.
"""
import contextlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path

from . import checkpoint as ckpt_io
from .errors import ConfigError, SaveFailed

RUN_FILES = ("log.jsonl", "loss.png", "sample.txt")
LAST, BEST = ckpt_io.LAST, ckpt_io.BEST


def holds_run(out):
    """True when `out` holds (part of) a training run: checkpoints, a log, a plot or a sample."""
    out = Path(out)
    if not out.is_dir():
        return False
    if any((out / n).exists() for n in (LAST, BEST) + RUN_FILES):
        return True
    return any(out.glob(f".{LAST}.*")) or any(out.glob(f".{BEST}.*"))


def has_checkpoint(out):
    """True when `out` holds a last/ checkpoint to resume (or the complete copy an interrupted save set aside)."""
    out = Path(out)
    return (out / LAST).exists() or any(out.glob(f".{LAST}.old-*"))


class RunDir:
    def __init__(self, path, writes=True):
        self.path, self.writes = Path(path), writes
        self.created = False                   # whether open() made the directory (so a failed start removes it)
        self.log_path, self.plot_path = self.path / "log.jsonl", self.path / "loss.png"

    def open(self, resume, force):
        """Check that the run can write here, before anything is written: `path` is a directory or can be one,
        it is writable, and it holds no other run (unless resuming it, or starting over with force)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output path {out} exists and is not a directory")
        if not resume and holds_run(out) and not force:
            raise ConfigError(f"output directory {out} already holds a run: pass --resume to continue it, "
                              "--force to start over (deleting it), or choose another --out")
        if not self.writes:
            return self
        try:
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to output directory {out}: {e.strerror or e}") from None
        return self

    def abandon(self):
        """A start that failed after open() (e.g. a time budget too short): remove the directory if open() made it
        and nothing was written there since."""
        if self.writes and self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def start(self, force, step):
        """Training begins at `step`: with force, remove a previous run's files; the log keeps its records up to
        `step` (a resumed run drops the lines a crash left past its checkpoint). Returns those records."""
        if force and self.writes:
            for name in (LAST, BEST):
                for p in [self.path / name] + list(self.path.glob(f".{name}.*")):
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
            for name in RUN_FILES:
                if (self.path / name).exists():
                    (self.path / name).unlink()
        history = read_log(self.log_path, step)
        if self.writes:
            _write_text_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in history))
        return history

    def record(self, rec, history, title, plot=True):
        """Append one evaluation's record to the log and (plot=True) redraw the plot of all of them."""
        if not self.writes:
            return
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if plot:
            plot_losses(history, self.plot_path, title)

    def save(self, name, step, **checkpoint):
        """Write checkpoint `name` (last or best) atomically (checkpoint.write's arguments); SaveFailed (one line)
        when the disk says no."""
        if not self.writes:
            return
        path = self.path / name
        try:
            ckpt_io.write(path, step=step, **checkpoint)
        except OSError as e:
            kept = "the previous checkpoint there is intact" if path.exists() else "nothing was saved"
            raise SaveFailed(f"could not save the step-{step} checkpoint {path}: {e.strerror or e}; {kept}") from None

    def write_sample(self, text):
        if self.writes:
            _write_text_atomic(self.path / "sample.txt", text)

    @contextlib.contextmanager
    def scratch(self):
        """A temporary directory inside the run directory, removed afterwards (the time budget's trial save)."""
        path = self.path / f".scratch-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


def read_log(path, upto_step):
    """Records of a JSON-lines log with step <= upto_step (a torn last line from a crash is dropped)."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("step", math.inf) <= upto_step:
                records.append(rec)
    return records


def _write_text_atomic(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def plot_losses(records, path, title=""):
    """Train and validation loss against step, as a PNG (matplotlib's Agg canvas: no display, no global state)."""
    # matplotlib only when a plot is drawn: it takes a while to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["train_loss"] for r in records], label="train", marker=".")
    ax.plot(steps, [r["val_loss"] for r in records], label="val", marker=".")
    if records:
        best = min(records, key=lambda r: r["val_loss"])
        ax.axhline(best["val_loss"], color="gray", lw=0.6, ls="--")
        ax.annotate(f"best val {best['val_loss']:.4f} @ {best['step']}", (best["step"], best["val_loss"]),
                    textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/char)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
