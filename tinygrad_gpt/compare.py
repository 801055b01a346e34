"""`tinygrad-gpt compare RUN_DIR...`: the tuning table the lecture's notebooks make by hand.

    runs = [read_run(path) for path in paths]    log.jsonl and the checkpoint's meta.json, each checked
    rows = build_rows(runs)                      per run: what changed against the first run (the baseline), steps,
                                                 wall time, tokens/s, final and best losses, the change in best val
    render_table(rows) | render_markdown(rows) | as_json(rows)
    plot_val_curves(runs, rows, path)            every run's validation curve on one set of axes

What a row reads (a run that lacks something shows "-"):
    changes      the model (a ladder rung's name from meta.json `model`, else "gpt"), its config (`config`) and the
                 training settings (`train`, less `out` and `data`: where it wrote and the corpus path, which is
                 compared by content instead): the fields both runs have whose values differ, "n_layer 4 -> 6"
    ranks        data-parallel ranks (meta.json `data_parallel`), 1 for a one-process run
    step         the last logged step, of max_iters (the last record's, else meta.json's `train.max_iters`)
    time         the last record's elapsed_s: training, evaluations and checkpoints, resumed sessions added up
    tokens/s     over the whole run: the logged intervals' rates weighted by their steps, sum(steps) /
                 sum(steps / rate), which is the tokens trained over the time spent training (evaluations left out)
    train, val   the last record's losses
    best val     the last record's best_val_loss (the lowest val loss of the saved evaluations, as `train` tracks it),
                 else the lowest val_loss logged
    change       100 * (best val - baseline's best val) / baseline's best val: negative is better
A run without a log is read from its checkpoint (step, elapsed_s, val_loss, best_val_loss). Runs whose corpora differ
(meta.json `data.sha256`) are still compared, their rows flagged: their losses are measured on other text.
Bad input (no such directory, not a run, a corrupt log or checkpoint meta.json) is a UsageError or CheckpointError,
one line each.
"""
import dataclasses
import json
import math
import os
from pathlib import Path

from . import checkpoint as ckpt_io
from .errors import CheckpointError, UsageError

PLOT_FORMATS = ("png", "svg", "pdf")
# the run's own directory, the corpus path (compared by its sha256), a ladder rung's name (the setting `model`)
IGNORED_SETTINGS = ("out", "data", "rung")
MISSING = "-"


@dataclasses.dataclass
class Run:
    path: Path
    name: str                                  # the path as the user wrote it
    records: list                              # log.jsonl, one dict per evaluation (empty without a log)
    meta: dict                                 # the last (else best) checkpoint's meta.json ({} without one)


# ---- reading a run -----------------------------------------------------------------------------------------------
def read_run(path):
    """The run directory `path`: its log and its checkpoint's meta.json, checked. UsageError or CheckpointError."""
    path = Path(path)
    name = os.path.normpath(str(path))
    if not path.exists():
        raise UsageError(f"run directory not found: {name}")
    if not path.is_dir():
        raise UsageError(f"{name} is not a run directory (it is a file)")
    log_path = path / "log.jsonl"
    meta_dir = _checkpoint_dir(path)
    if not log_path.exists() and meta_dir is None:
        raise UsageError(f"{name} is not a run directory (no log.jsonl, no {ckpt_io.LAST}/ or {ckpt_io.BEST}/ "
                         f"checkpoint){_hint(path)}")
    records = read_records(log_path) if log_path.exists() else []
    meta = _read_meta(meta_dir) if meta_dir is not None else {}
    return Run(path, name, records, meta)


def _checkpoint_dir(path):
    """The checkpoint whose meta.json describes the run: last/ (the latest settings), else best/; an interrupted save's
    complete copy set aside counts. None when there is neither."""
    for name in (ckpt_io.LAST, ckpt_io.BEST):
        sub = path / name
        if sub.exists():
            return sub
        olds, _ = ckpt_io._asides(sub)
        if olds:
            return olds[0]
    return None


def _hint(path):
    """Where the user probably meant: a checkpoint inside a run, or a directory of runs (a ladder's)."""
    if (path / ckpt_io.META_FILE).is_file():
        return f": it is a checkpoint; pass the run directory that holds it ({os.path.normpath(str(path.parent))})"
    inside = sorted(p for p in path.iterdir() if p.is_dir() and (p / "log.jsonl").is_file())
    if inside:
        shown = " ".join(os.path.normpath(str(p)) for p in inside[:3]) + (" ..." if len(inside) > 3 else "")
        return f"; it holds runs: {shown} (pass them, e.g. {os.path.join(os.path.normpath(str(path)), '*', '')})"
    return ""


def _is_number(v):
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# a log record's fields: the required ones and the optional ones this reads, each with its test and what it must be
_RECORD_FIELDS = {
    "step": (True, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "train_loss": (True, _is_number, "a finite number"),
    "val_loss": (True, _is_number, "a finite number"),
    "elapsed_s": (True, lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "tokens_per_s": (False, lambda v: v is None or (_is_number(v) and v >= 0), "a number >= 0 or null"),
    "max_iters": (False, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "best_val_loss": (False, lambda v: v is None or _is_number(v), "a finite number or null"),
}


def read_records(log_path):
    """log.jsonl's records, each a JSON object with the fields above (blank lines skipped). UsageError naming the
    file and line of the first one that is not."""
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError) as e:
        raise UsageError(f"cannot read {log_path}: {getattr(e, 'strerror', None) or e}") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{log_path} line {i}"
        try:
            rec = json.loads(line)
        except ValueError:
            raise UsageError(f"{where} is not JSON (a corrupt log)") from None
        if not isinstance(rec, dict):
            raise UsageError(f"{where} is not a JSON object (a corrupt log)")
        for key, (required, ok, what) in _RECORD_FIELDS.items():
            if key not in rec:
                if required:
                    raise UsageError(f"{where} lacks the field {key!r} (a corrupt log)")
            elif not ok(rec[key]):
                raise UsageError(f"{where}: {key} must be {what}, got {rec[key]!r} (a corrupt log)")
        records.append(rec)
    return records


# the meta.json fields a row reads, each with its test (the checkpoint's checksum has already vouched for the rest)
_META_FIELDS = {
    "step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "train": (lambda v: isinstance(v, dict), "an object"),
    "model": (lambda v: isinstance(v, (dict, str)), "an object or a name"),
    "data": (lambda v: isinstance(v, dict) and isinstance(v.get("sha256"), str), "an object with a sha256"),
    "data_parallel": (lambda v: isinstance(v, dict) and _is_int(v.get("ranks")) and v["ranks"] >= 1,
                      "an object with ranks >= 1"),
    "elapsed_s": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "val_loss": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "best_val_loss": (lambda v: v is None or _is_number(v), "a finite number or null"),
}


def _read_meta(ckpt_dir):
    """meta.json of checkpoint `ckpt_dir`, read as `load` reads it (format, version, checksum: CheckpointError),
    then the fields a row uses checked. The tensors are not read: a row needs none of them."""
    meta = ckpt_io._read_meta(ckpt_dir)
    for key, (ok, what) in _META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise CheckpointError(f"checkpoint {ckpt_dir}: {ckpt_io.META_FILE} field {key} must be {what}")
    return meta


# ---- the rows ----------------------------------------------------------------------------------------------------
def settings(run):
    """The run's model and training settings as one flat {name: value}: `model` (a ladder rung's name, "gpt" for the
    GPT), the model config, then the training settings the config does not already hold (nested objects as dotted
    names). A rung's hyperparameters are left out: its config holds the sizes and `train` the rest."""
    meta = run.meta
    spec = meta.get("model")
    flat = {"model": spec.get("rung", spec.get("kind")) if isinstance(spec, dict) else spec or "gpt"}

    def add(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else k, v)
        elif prefix not in flat:
            flat[prefix] = value
    add("", meta.get("config", {}))
    add("", {k: v for k, v in meta.get("train", {}).items() if k not in IGNORED_SETTINGS})
    return flat


def config_changes(base, run):
    """{name: (baseline's value, this run's)} for each setting both runs have and that differs; None when either run
    has no checkpoint, whose meta.json holds the settings."""
    if not base.meta or not run.meta:
        return None
    a, b = settings(base), settings(run)
    return {k: (a[k], b[k]) for k in a if k in b and not _same(a[k], b[k])}


def _same(x, y):
    return (type(x) is type(y) and x == y) or (_is_number(x) and _is_number(y) and x == y)   # 1 and 1.0 are alike


def _corpus(run):
    data = run.meta.get("data")
    return {"name": data.get("name"), "sha256": data["sha256"]} if data else None


def _throughput(records):
    """Tokens/s over the whole run: each logged rate covers the steps since the previous record, so the run's rate is
    sum(steps) / sum(steps / rate). None when no record logs one."""
    steps = time = 0.0
    for prev, rec in zip(records, records[1:], strict=False):   # consecutive pairs
        d = rec["step"] - prev["step"]
        if rec.get("tokens_per_s") and d > 0:
            steps, time = steps + d, time + d / rec["tokens_per_s"]
    return steps / time if time else None


def summary(run):
    """The run's own numbers: from its last log record (best val: as `train` logged it, else the lowest val logged),
    or, without a log, from its checkpoint's meta.json; None for what it lacks."""
    recs, meta = run.records, run.meta
    if recs:
        last = recs[-1]
        best = last.get("best_val_loss")
        numbers = {"step": last["step"], "max_iters": last.get("max_iters"), "elapsed_s": last["elapsed_s"],
                   "tokens_per_s": _throughput(recs), "train_loss": last["train_loss"], "val_loss": last["val_loss"],
                   "best_val_loss": min(r["val_loss"] for r in recs) if best is None else best}
    else:
        numbers = {"step": meta.get("step"), "max_iters": None, "elapsed_s": meta.get("elapsed_s"),
                   "tokens_per_s": None, "train_loss": None, "val_loss": meta.get("val_loss"),
                   "best_val_loss": meta.get("best_val_loss")}
    if numbers["max_iters"] is None:
        numbers["max_iters"] = meta.get("train", {}).get("max_iters")
    return numbers


def build_rows(runs):
    """One dict per run, the baseline (runs[0]) first: its settings changed against the baseline's, its numbers as
    logged (unrounded), the change in best val loss in percent, its corpus and whether it is another one than the
    baseline's; None where the run lacks something."""
    base, base_corpus = runs[0], _corpus(runs[0])
    base_best = summary(base)["best_val_loss"]
    rows = []
    for i, run in enumerate(runs):
        numbers, corpus, changes = summary(run), _corpus(run), config_changes(base, run)
        best = numbers["best_val_loss"]
        rows.append({
            "run": run.name,
            "baseline": i == 0,
            "changes": None if changes is None else {k: list(v) for k, v in changes.items()},
            "model": run.meta.get("model"),
            "ranks": run.meta["data_parallel"]["ranks"] if "data_parallel" in run.meta else 1 if run.meta else None,
            **numbers,
            "best_val_change_pct": 100.0 * (best - base_best) / base_best if best is not None and base_best else None,
            "corpus": corpus,
            "other_corpus": bool(corpus and base_corpus and corpus["sha256"] != base_corpus["sha256"]),
            "evaluations": len(run.records),
        })
    return rows


# ---- rendering ---------------------------------------------------------------------------------------------------
def _value(v):
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def describe_changes(row):
    if row["baseline"]:
        return "baseline"
    if row["changes"] is None:
        return MISSING
    return ", ".join(f"{k} {_value(a)} -> {_value(b)}" for k, (a, b) in row["changes"].items()) or "same settings"


def _duration(s):
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _cells(row, with_ranks):
    """The row's table cells, as text; MISSING for what the run lacks."""
    def fmt(v, spec, suffix=""):
        return MISSING if v is None else format(v, spec) + suffix
    step = MISSING if row["step"] is None else f"{row['step']}/{fmt(row['max_iters'], 'd')}"
    cells = [row["run"] + (" *" if row["other_corpus"] else "")]
    cells += [fmt(row["ranks"], "d")] if with_ranks else []
    cells += [step, MISSING if row["elapsed_s"] is None else _duration(row["elapsed_s"]),
              fmt(row["tokens_per_s"], ",.0f"), fmt(row["train_loss"], ".4f"), fmt(row["val_loss"], ".4f"),
              fmt(row["best_val_loss"], ".4f"),
              "base" if row["baseline"] else fmt(row["best_val_change_pct"], "+.2f", "%"), describe_changes(row)]
    return cells


def _columns(rows):
    with_ranks = any((r["ranks"] or 1) > 1 for r in rows)
    head = ["run"] + (["ranks"] if with_ranks else []) + ["step", "time", "tokens/s", "train", "val", "best val",
                                                            "change", "changes from the baseline"]
    return head, [_cells(r, with_ranks) for r in rows]


def corpus_note(rows):
    """The footnote for rows trained on another corpus than the baseline's, or None."""
    others = [r for r in rows if r["other_corpus"]]
    if not others:
        return None
    base = rows[0]["corpus"]["name"]
    names = sorted({r["corpus"]["name"] for r in others})
    return (f"* trained on another corpus ({', '.join(names)}) than the baseline ({base}): its losses are measured on "
            "other text")


def render_table(rows):
    """Aligned columns for the terminal: text to the left, numbers to the right; the corpus footnote below."""
    head, body = _columns(rows)
    widths = [max(len(line[j]) for line in [head] + body) for j in range(len(head))]
    left = {0, len(head) - 1}

    def line(cells):
        padded = (c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()
    lines = [line(head)] + [line(cells) for cells in body]
    note = corpus_note(rows)
    return "\n".join(lines + ([f"\n{note}"] if note else []))


def render_markdown(rows, plot=None):
    """The table as GitHub markdown (numbers right-aligned), the corpus footnote, and the plot's image if given (a path
    relative to the markdown file)."""
    head, body = _columns(rows)
    align = ["---" if j in (0, len(head) - 1) else "---:" for j in range(len(head))]
    lines = ["| " + " | ".join(cells) + " |" for cells in [head, align] + [[c.replace("|", "\\|") for c in b]
                                                                         for b in body]]
    note = corpus_note(rows)
    if note:
        lines += ["", "\\" + note]
    if plot:
        lines += ["", f"![validation loss of each run]({plot})"]
    return "\n".join(lines) + "\n"


def as_json(rows, **extra):
    """One JSON object: the rows (numbers unrounded), whether the corpora differ, and the files written."""
    return json.dumps({"baseline": rows[0]["run"], "runs": rows,
                       "corpora_differ": any(r["other_corpus"] for r in rows), **extra})


# ---- the plot ----------------------------------------------------------------------------------------------------
def plot_format(path):
    """The image format `path` names by its suffix. UsageError unless one matplotlib writes here."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        endings = ", ".join("." + f for f in PLOT_FORMATS)
        raise UsageError(f"--plot {path}: the file name must end in one of {endings} (--plot alone writes "
                         "compare.png; put it after the run directories)")
    return fmt


def plot_val_curves(runs, rows, path):
    """Every run's validation loss against step on one set of axes, labelled by run (a run on another corpus dashed
    and starred), as the image `path` (matplotlib's Agg canvas, as rundir.plot_losses)."""
    # matplotlib only when a plot is drawn: it takes a while to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fmt = plot_format(path)
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for run, row in zip(runs, rows, strict=True):
        if run.records:
            ax.plot([r["step"] for r in run.records], [r["val_loss"] for r in run.records], marker=".",
                    ls="--" if row["other_corpus"] else "-", label=run.name + (" *" if row["other_corpus"] else ""))
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("validation loss" + (" (* another corpus)" if any(r["other_corpus"] for r in rows) else ""),
                 fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format=fmt)


# ---- the command -------------------------------------------------------------------------------------------------
def _check_output(path, flag):
    """UsageError unless `path` can be a file to write: not a directory, in a directory that exists."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory, not a file name")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"{flag} {path}: the directory {path.parent} does not exist")


def compare(paths, json_out=False, markdown=None, plot=None, say=print):
    """Read the runs, then print the table (or, json_out, one JSON object) with `say`, writing the markdown and the
    plot where asked (the table then says where they went). Returns the rows. Bad input (UsageError,
    CheckpointError) is found before anything is written."""
    runs = [read_run(p) for p in paths]
    if plot is not None:
        plot_format(plot)
        _check_output(plot, "--plot")
    if markdown is not None:
        _check_output(markdown, "--markdown")
    rows = build_rows(runs)
    written = {}
    try:
        if plot is not None:
            plot_val_curves(runs, rows, Path(plot))
            written["plot"] = str(Path(plot).resolve())
        if markdown is not None:
            image = os.path.relpath(Path(plot).resolve(), Path(markdown).resolve().parent) if plot else None
            Path(markdown).write_text(render_markdown(rows, image), encoding="utf-8")
            written["markdown"] = str(Path(markdown).resolve())
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or ''}: {e.strerror or e}") from None
    if json_out:
        say(as_json(rows, **written))
    else:
        say(render_table(rows))
        for what, where in written.items():
            say(f"{what} written to {where}")
    return rows
