"""`tinygrad-gpt ladder`: the lecture's rungs (tinygrad_gpt/lecture/, examples/lecture/ in the repository) trained one
after another on one corpus within one time budget, each into a run directory of its own (so `sample`, `eval` and
`compare` work on each), then a table of all of them (ladder.md, ladder.json, the terminal), every rung's validation
curve in one plot (ladder.png) and a sample from each.

Each rung trains the lecture's way: its own hyperparameters (lecture/r*.py's HP: the lecture's small settings for the
first rungs, a CPU-sized scale-up for the last), AdamW at a constant learning rate, random windows of the training
split, the loss estimated on fixed batches of both splits every tenth of its steps. The budget is shared by weight
(SHARES: the scaled-up rung gets the most); before a rung trains, a short rehearsal times its step and its evaluation
(then the model is rebuilt from the seed, so the rehearsal leaves no trace), and the rung takes as many steps as its
share allows, up to the lecture's count. What a rung leaves unused goes to the rungs after it. The same seed and
step counts give the same run.

    OUT/<rung>/     an ordinary run directory: last/, best/, log.jsonl, loss.png, sample.txt
    OUT/ladder.md   the table and the samples;  OUT/ladder.json  the same as data;  OUT/ladder.png  the curves
"""
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from . import lecture
from . import rng as _rng
from .budget import parse_duration
from .data import BatchSampler, default_prompt, fixed_batches, load_corpus
from .errors import ConfigError, TrainingDiverged
from .model import GPTConfig
from .optim import AdamW
from .rundir import BEST, LAST, RunDir, holds_run
from .sample import generate_plain
from .tensor import Tensor, no_grad

DEFAULT_OUT = "runs/ladder"
DEFAULT_TIME = "10m"
SHARES = {"bigram": 1.0, "one-head": 1.5, "multi-head": 1.5, "feed-forward": 1.5, "blocks": 1.5, "residual": 2.0,
          "layernorm": 2.0, "scaled-up": 9.0}
EVALS = 10                 # evaluations per rung (and one at step 0)
EVAL_BATCHES = 20          # fixed batches per split per evaluation
MIN_STEPS = 50             # a rung given fewer steps than this is not worth training: the budget is too short
ONE_THREAD_PARAMS = 100_000   # rungs smaller than this run their kernels on one thread (see threads())
SAMPLE_CHARS = 300
LADDER_FILES = ("ladder.md", "ladder.json", "ladder.png")


def rung_names(spec):
    """'all' or a comma-separated list of rung names -> the rungs, in ladder order."""
    if spec in (None, "", "all"):
        return list(lecture.RUNGS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in lecture.BY_NAME]
    if unknown:
        raise ConfigError(f"unknown rung {unknown[0]!r}: the rungs are {', '.join(lecture.BY_NAME)}")
    return [r for r in lecture.RUNGS if r.name in names]


def check_out(out, force):
    """The output directory: refuse one that holds a ladder or another run unless force (then only the ladder's
    own files and rung directories are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    taken = [p.name for p in out.glob("*") if p.name in LADDER_FILES or (p.name in lecture.BY_NAME and holds_run(p))]
    if (taken or holds_run(out)) and not force:
        raise ConfigError(f"output directory {out} already holds a ladder or a run ({(taken or [out.name])[0]}): "
                          "pass --force to replace it, or choose another --out")
    return out


class RungRun:
    """One rung's model, optimizer, batches and run directory: rehearse, then train."""

    def __init__(self, rung, corpus, out, seed, force, data=None):
        self.rung, self.corpus, self.seed, self.data, self.force = rung, corpus, seed, data, force
        self.hp = lecture.hyperparameters(rung.name, corpus.tokenizer.vocab_size)
        corpus.check_block_size(self.hp["block_size"])
        self.rundir = RunDir(Path(out) / rung.name).open(resume=False, force=force)
        self.eval_sets = {split: fixed_batches(corpus.split(split), self.hp["block_size"], self.hp["batch_size"],
                                               EVAL_BATCHES, seed + 1 + i)
                          for i, split in enumerate(("train", "val"))}
        self.fresh()

    def fresh(self):
        """The model, optimizer and batch stream from the seed (after a rehearsal too)."""
        _rng.manual_seed(self.seed)
        self.model = lecture.build(self.rung.name, self.hp)
        self.opt = AdamW(self.model.parameters(), lr=self.hp["learning_rate"])
        self.sampler = BatchSampler(self.corpus.train, self.hp["block_size"], self.hp["batch_size"], seed=self.seed)

    def step(self):
        x, y = self.sampler.sample()                                    # (B, T) each
        _, loss = self.model(Tensor(x), Tensor(y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    @no_grad()
    def estimate(self):
        """Mean loss on the fixed batches of each split, in eval mode: [train, val]."""
        self.model.eval()
        losses = [float(np.mean([self.model(Tensor(x), Tensor(y))[1].item() for x, y in self.eval_sets[s]]))
                  for s in ("train", "val")]
        self.model.train()
        return losses

    def rehearse(self):
        """(seconds per step, seconds per evaluation with its checkpoints, seconds for the closing sample), timed on a
        few steps after two untimed ones (which compile), an evaluation, a trial save and a short sample; the model
        is rebuilt after."""
        for _ in range(2):
            self.step().item()
        t0, n = time.perf_counter(), 0
        while n < 3 or (time.perf_counter() - t0 < 0.5 and n < 50):
            self.step().item()
            n += 1
        step_s = (time.perf_counter() - t0) / n
        self.estimate()                                      # (the first evaluation compiles too)
        t0 = time.perf_counter()
        self.estimate()
        with self.rundir.scratch() as scratch:
            RunDir(scratch).save(LAST, 0, **self.checkpoint(self.meta(1, 1, 0, 0, 0)))
        eval_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        list(self.sample(10))
        sample_s = (time.perf_counter() - t0) * SAMPLE_CHARS / 10
        self.fresh()
        return step_s, eval_s, sample_s

    def sample(self, n):
        """n tokens from the rung's model after the default prompt (a newline), the lecture's sampling."""
        tok = self.corpus.tokenizer
        return generate_plain(self.model, tok.encode(default_prompt(tok))[None, :], n, self.hp["block_size"],
                              temperature=1.0, seed=self.seed)

    def train(self, steps, progress, say):
        """`steps` AdamW steps with EVALS evaluations (and one at step 0): log, plot, checkpoints, sample."""
        self.rundir.start(self.force, 0)                     # (with --force: the previous run's files removed)
        interval = max(1, math.ceil(steps / EVALS))
        history, best, start = [], math.inf, time.perf_counter()
        tokens, t_tokens = 0, 0.0
        title = f"{self.rung.name}: {self.rung.title}"
        with tqdm(total=steps, desc=f"{self.rung.name:>12}", unit="step", file=sys.stderr, dynamic_ncols=True,
                  disable=None if progress else True, leave=False) as bar:
            for step in range(steps + 1):
                if step % interval == 0 or step == steps:
                    train_loss, val_loss = self.estimate()
                    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                        raise TrainingDiverged(f"rung {self.rung.name}: the loss is {val_loss} at step {step}")
                    rec = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
                           "lr": self.hp["learning_rate"],
                           "tokens_per_s": round(tokens / t_tokens, 1) if t_tokens else None,
                           "elapsed_s": round(time.perf_counter() - start, 3), "max_iters": steps}
                    tokens, t_tokens = 0, 0.0
                    improved = val_loss < best
                    best = min(best, val_loss)
                    rec["best_val_loss"] = best
                    history.append(rec)
                    self.rundir.record(rec, history, title, plot=step == steps)
                    meta = self.meta(steps, interval, val_loss, best, rec["elapsed_s"])
                    self.rundir.save(LAST, step, **self.checkpoint(meta))
                    if improved:
                        self.rundir.save(BEST, step, **self.checkpoint(meta))
                if step == steps:
                    break
                t0 = time.perf_counter()
                loss = self.step()
                bar.set_postfix_str(f"loss {loss.item():.3f}", refresh=False)
                t_tokens += time.perf_counter() - t0
                tokens += self.hp["batch_size"] * self.hp["block_size"]
                bar.update(1)
        elapsed = time.perf_counter() - start
        text = self.corpus.tokenizer.decode(np.concatenate(list(self.sample(SAMPLE_CHARS))))
        self.rundir.write_sample(text + "\n")
        return {"rung": self.rung.name, "title": self.rung.title, "params": lecture.count_parameters(self.model),
                "steps": steps, "wall_s": round(elapsed, 1),
                "tokens_per_s": round(steps * self.hp["batch_size"] * self.hp["block_size"] / elapsed, 1),
                "train_loss": history[-1]["train_loss"], "val_loss": history[-1]["val_loss"], "best_val_loss": best,
                "theirs": self.rung.theirs, "theirs_val": self.rung.theirs_val, "hp": self.hp, "sample": text,
                "curve": [(r["step"], r["val_loss"]) for r in history]}

    def checkpoint(self, meta):
        """checkpoint.write's arguments (RunDir.save's) for this rung's model and optimizer with `meta`."""
        return {"tokenizer": self.corpus.tokenizer, "meta": meta, **ckpt_io.contents(self.model, self.opt)}

    def meta(self, steps, interval, val_loss, best, elapsed):
        """meta.json's fields for this rung's checkpoints (checkpoint.save adds the rest)."""
        hp = self.hp
        config = dataclasses.asdict(GPTConfig(**{f.name: hp[f.name] for f in dataclasses.fields(GPTConfig)
                                                 if f.name in hp}))            # the rung's sizes as a GPTConfig
        data = self.corpus.record(self.data)
        return {"model": {"kind": "lecture-rung", "rung": self.rung.name, "hp": hp}, "config": config,
                "train": {"rung": self.rung.name, "batch_size": hp["batch_size"], "block_size": hp["block_size"],
                          "lr": hp["learning_rate"], "max_iters": steps, "eval_interval": interval,
                          "eval_batches": EVAL_BATCHES, "seed": self.seed, "data": data["path"]},
                "data": data, "best_val_loss": best, "val_loss": val_loss, "elapsed_s": elapsed}


@contextlib.contextmanager
def threads(model):
    """The kernels of a small rung on one thread for the duration: its products and passes are too small to share out
    (each hand-off to the second thread costs more than it saves), and on a busy machine every parallel region waits
    for a descheduled thread (a layernorm-rung step: 17 ms on one thread, 287 ms on two, machine load 5). The large
    rungs keep every thread. The bits do not depend on the thread count (kernels/cpu/_jit.py)."""
    if lecture.count_parameters(model) >= ONE_THREAD_PARAMS:
        yield
        return
    import numba  # here, not at the top: importing tinygrad_gpt's modules loads no numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def run(out=DEFAULT_OUT, time_budget=DEFAULT_TIME, data=None, rungs=None, seed=1337, force=False, progress=True,
        say=print, max_steps=None):
    """Train the ladder; returns the rows of its table. max_steps: at most this many steps per rung (a quick look;
    the budget still bounds them). Raises ConfigError / DataError for bad input (before anything is written)."""
    seconds = parse_duration(time_budget)
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {max_steps}")
    chosen = rung_names(rungs)
    corpus = load_corpus(data)
    out = check_out(out, force)
    weights = [SHARES[r.name] for r in chosen]
    start = time.perf_counter()
    say(f"ladder: {len(chosen)} rungs on {Path(corpus.name).name} ({len(corpus.ids):,} characters) in "
        f"{time_budget} ({seconds:.0f} s); each rung in {out}/<rung>")
    rows = []
    for i, rung in enumerate(chosen):
        job = RungRun(rung, corpus, out, seed, force, data)
        with threads(job.model):
            step_s, eval_s, sample_s = job.rehearse()                 # (its first steps may compile kernels)
        left = seconds - (time.perf_counter() - start)
        share = left * weights[i] / sum(weights[i:])                   # this rung's part of what is left
        # the steps that fit, 5% short of it (steps run slower than timed now and then) and 0.5 s for the plot
        fits = int(0.95 * (share - (EVALS + 1) * eval_s - sample_s - 0.5) / step_s)
        steps = min(job.hp["max_iters"], fits, max_steps or fits)
        if os.environ.get("TINYGRAD_GPT_LADDER_DEBUG"):
            say(f"{rung.name}: share {share:.1f} s, step {step_s * 1000:.2f} ms, evaluation {eval_s:.2f} s, "
                f"sample {sample_s:.2f} s")
        if fits < min(MIN_STEPS, max_steps or MIN_STEPS):
            if not rows:
                job.rundir.abandon()
                raise ConfigError(f"a budget of {time_budget} is too short: the first rung ({rung.name}) would get "
                                  f"{max(steps, 0)} steps of {1000 * step_s:.1f} ms (at least {MIN_STEPS} needed); "
                                  "give a longer --time")
            say(f"{rung.name}: no time left for {MIN_STEPS} steps; stopping the ladder here")
            job.rundir.abandon()
            break
        say(f"{rung.name:>12}: {lecture.count_parameters(job.model):>9,} params, {steps:>5} steps of "
            f"{1000 * step_s:6.1f} ms ({rung.title})")
        with threads(job.model):
            rows.append(job.train(steps, progress, say))
        say(f"{'':>12}  val {rows[-1]['val_loss']:.4f} (best {rows[-1]['best_val_loss']:.4f}) in "
            f"{rows[-1]['wall_s']:.0f} s")
    write_outputs(out, rows, corpus, time_budget, time.perf_counter() - start)
    say(table(rows, markdown=False))
    say(f"ladder done in {time.perf_counter() - start:.0f} s: {out}/ladder.md, {out}/ladder.png; each rung's run in "
        f"{out}/<rung> (tinygrad-gpt sample --ckpt {out}/{rows[-1]['rung']})")
    return rows


def table(rows, markdown=True):
    """The ladder's table: rung, parameters, steps, wall time, tok/s, train and val loss, the change in val loss from
    the rung before, and the lecture's figure where it records one."""
    head = ["rung", "params", "steps", "wall", "tok/s", "train", "val", "change", "the lecture's"]
    lines = []
    prev = None
    for r in rows:
        change = "" if prev is None else f"{r['val_loss'] - prev:+.3f}"
        prev = r["val_loss"]
        lines.append([f"{r['rung']} ({r['title']})", f"{r['params']:,}", f"{r['steps']:,}", f"{r['wall_s']:.0f} s",
                      f"{r['tokens_per_s']:,.0f}", f"{r['train_loss']:.3f}", f"{r['val_loss']:.3f}", change,
                      r["theirs"] or ""])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * 7 + ["---"]) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in (0, 8) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return "\n".join([fmt(head)] + [fmt(line) for line in lines])


def write_outputs(out, rows, corpus, time_budget, elapsed):
    out = Path(out)
    drops = {i: rows[i]["val_loss"] - rows[i - 1]["val_loss"] for i in range(1, len(rows))}
    best = min(drops, key=drops.get, default=None)
    small = min((i for i in drops if rows[i]["rung"] != "scaled-up"), key=drops.get, default=None)
    md = [f"# The lecture's ladder on {Path(corpus.name).name}", "",
          f"`tinygrad-gpt ladder --time {time_budget}`: {len(rows)} rungs in {elapsed:.0f} s "
          f"({time.strftime('%Y-%m-%d')}). Loss in nats per character on fixed batches of each split; "
          "\"the lecture's\" is the figure the lecture records, under its own settings, not ours.", "",
          table(rows), ""]
    if best is not None:
        line = (f"The rung that helped most: **{rows[best]['rung']}** ({rows[best]['title']}), "
                f"{drops[best]:+.3f} in validation loss")
        if small is not None and small != best:
            line += (f"; of the changes at the small size, **{rows[small]['rung']}** ({rows[small]['title']}), "
                     f"{drops[small]:+.3f}")
        md += [line + ".", ""]
    md += ["![validation loss of every rung](ladder.png)", "", "## Samples", ""]
    for r in rows:
        md += [f"### {r['rung']} (val {r['val_loss']:.3f})", "", "```", r["sample"].strip("\n"), "```", ""]
    (out / "ladder.md").write_text("\n".join(md), encoding="utf-8")
    (out / "ladder.json").write_text(json.dumps({"time": time_budget, "elapsed_s": round(elapsed, 1),
                                                 "corpus": Path(corpus.name).name, "rows": rows}, indent=1) + "\n",
                                     encoding="utf-8")
    plot_curves(rows, out / "ladder.png")


def plot_curves(rows, path):
    """Every rung's validation loss against its step, one plot (matplotlib's Agg canvas)."""
    # matplotlib only when a plot is drawn: it takes a while to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in rows:
        steps, vals = zip(*r["curve"], strict=True)
        ax.plot(steps, vals, marker=".", label=f"{r['rung']} ({r['val_loss']:.2f})")
    for r, style in zip([r for r in rows if r["theirs_val"] is not None], (":", "--"), strict=False):  # two at most
        ax.axhline(r["theirs_val"], color="gray", lw=0.8, ls=style,
                   label=f"the lecture's {r['rung']}: {r['theirs_val']}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("the lecture's ladder: validation loss of each rung", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)

