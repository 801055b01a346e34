"""Training: the loop, one step, evaluation and checkpoints, exact resume, time budgets.

    setup = prepare(...)              every check of settings, corpus, checkpoint and run directory; nothing written
    trainer = Trainer(setup, ...)     model, AdamW, the batch stream, the fixed evaluation batches; a checkpoint's
                                      state loaded on --resume
    --time: plan_budget(...)          rehearses a few steps, returns the plan; trainer.apply_plan fixes max_iters
    evaluate at step 0                the loss before training, for the curve
    while step < max_iters:
        train_step()                  grad_accum micro-batches, the gradient hook, one AdamW update
        every eval_interval steps and at the last: evaluate, log, plot, save last/ (and best/ when better)
    finish(trainer)                   closing lines and a sample from the final model

Steps count optimizer updates: "step 500" is the state after 500 updates. An evaluation runs on eval_iters fixed
batches of each split, drawn once from their own seeds, in eval mode under no_grad, so successive evaluations
compare like with like and touch neither the training batch stream nor the dropout generator. The run directory
(checkpoints, log, plot, sample) is rundir.py's; the settings and presets are config.py's.

One step (train_step): the batch's rows are split into grad_accum equal micro-batches; each one's forward and
backward adds its gradient into the parameters' .grad. AdamW gathers them into its flat buffer and calls the
step's gradient hook before clipping and updating: the hook asks the run's `dist` to average (the sum of
micro-batch means becomes their mean, the mean over the whole batch; data-parallel, over the ranks too, in the same
pass). It also checks the loss, so a NaN or infinite loss stops the run before any parameter changes. On the GPU
in one process the loss stays on the device and is read back every SYNC_EVERY steps and before any evaluation or
checkpoint.

`dist` is distributed.py's SingleProcess for a plain run, or this rank's DataParallel: the same methods, so the
loop does not ask which.

State: `Trainer.state()` is everything the rest of the run depends on (parameters, AdamW's moments and counts, the
dropout and batch generators, the step, the best loss, the time budget's plan), and `load_state()` puts it back.
A checkpoint is a state written to disk; `--resume` loads one; the time budget's rehearsal takes one before its
trial steps and loads it after. So N steps + resume for N more gives bitwise the parameters of 2N steps in one go
(on the CPU; same NumPy and BLAS thread count).

Time budget (--time 5m, budget.py): the trainer rehearses a few steps and puts back everything they changed,
times an evaluation and a checkpoint, then fixes max_iters to what fits; the cosine schedule spans it, and the run
is bitwise the one `--max-iters` with that number gives.

Data-parallel (`mpiexec -n N tinygrad-gpt train ...`, see distributed.py): batch_size is the global batch, split
into N equal parts of rows; rank 0 prepares the run (reads the corpus and checkpoint) and alone writes to the run
directory; the others get what it read, train on their rows, and take part in the averaging. The checkpoint also
holds every rank's dropout generator, so a data-parallel run resumes exactly too (with the same number of ranks).
"""
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from . import distributed
from .backend import get_device, to_host
from .budget import parse_duration, plan_budget
from .config import DEFAULT_PRESET, check_saved_settings, make_config, resume_config
from .data import BatchSampler, default_prompt, fixed_batches, load_corpus, micro_batches
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .model import GPT
from .rundir import BEST, LAST, RunDir, has_checkpoint

SYNC_EVERY = 25          # GPU: steps between reading the losses back to the host (one synchronisation)


@dataclasses.dataclass
class TrainResult:
    out: Path
    step: int
    status: str                        # "done", "stopped" (--stop-at) or "interrupted" (Ctrl-C)
    best_val_loss: float
    last_val_loss: float
    tokens_per_s: float
    elapsed_s: float
    max_iters: int
    sample: str = ""


# ---- the run -----------------------------------------------------------------------------------------------------
def train(preset=None, resume=False, force=False, stop_at=None, time_budget=None, progress=True, say=None, ddp=None,
          check_sync=0, **overrides):
    """Train a GPT; see the module docstring. Returns a TrainResult.

    preset: "small", "lecture" or "cpu" (default); overrides: any setting (max_iters=200, out="runs/x", n_layer=6).
    resume: continue the run in `out` from its last checkpoint (settings come from it; overrides may change the
    training settings, e.g. max_iters, but not the model's shape). force: start over in an `out` that holds a run.
    stop_at: stop after this step (saving a checkpoint) without changing the schedule, to resume later.
    time_budget: "90s", "5m", "1h30m" or seconds: fix max_iters so that the run ends within it (not with max_iters;
    with resume, the budget is for the steps still to come).
    ddp: data-parallel over MPI: None (default) when launched by mpiexec with several processes, True always,
    False never. check_sync: data-parallel only, every this many steps verify that all ranks hold bitwise the
    same parameters (a debugging aid; 0: never).
    Raises UsageError (bad input, nothing written: ConfigError, DataError, CheckpointError, ...) or RunFailed
    (TrainingDiverged, SaveFailed).
    """
    t_start = time.perf_counter()                                    # a time budget runs from here
    say = say or tqdm.write
    overrides = {k: v for k, v in overrides.items() if v is not None}
    budget_s = None if time_budget is None else parse_duration(time_budget)
    if budget_s is not None and "max_iters" in overrides:
        raise ConfigError("--time and --max-iters contradict each other: a time budget chooses max_iters")
    dist = distributed.setup(ddp)                  # a plain run: SingleProcess (mpi4py is never imported)
    if not dist.is_root:                           # rank 0 alone talks to the user and writes files
        progress, say = False, _silent
    setup = dist.on_root(lambda: prepare(preset, resume, force, stop_at, overrides, budget=budget_s is not None,
                                         ranks=dist.size))
    setup.rundir.writes = dist.is_root
    trainer = Trainer(setup, say, dist)
    step0_losses = None
    if budget_s is not None:
        try:
            plan, step0_losses = plan_budget(trainer, budget_s, t_start, str(time_budget))
        except ConfigError:
            setup.rundir.abandon()                 # nothing was written: leave no empty directory either
            raise
        trainer.apply_plan(plan, t_start)
    trainer.history = setup.rundir.start(force, trainer.step)   # --force: the old run's files go; the log rewinds
    end_step = trainer.tc.max_iters if stop_at is None else min(stop_at, trainer.tc.max_iters)
    status = run_steps(trainer, end_step, progress, check_sync, fresh=setup.ckpt is None, step0_losses=step0_losses)
    return finish(trainer, status)


def run_steps(trainer, end_step, progress, check_sync=0, fresh=True, step0_losses=None):
    """The loop: steps up to end_step, evaluating (and saving) every eval_interval steps and at the end. Returns
    "done", "stopped" (end_step before max_iters) or "interrupted" (Ctrl-C: the last step saved)."""
    tc = trainer.tc
    bar = tqdm(total=tc.max_iters, initial=trainer.step, unit="step", dynamic_ncols=True, smoothing=0.05,
               disable=None if progress else True, leave=True)
    try:
        with _Interrupt() as interrupt:
            trainer.interrupt = interrupt
            if fresh:
                trainer.evaluate(losses=step0_losses)                 # the loss before training, for the curve
            while trainer.step < end_step:
                if trainer.stop_agreed:                               # Ctrl-C, agreed by every rank in a step
                    if trainer.saved_step != trainer.step:
                        trainer.save(LAST)
                    return "interrupted"
                trainer.train_step()
                if check_sync and trainer.step % check_sync == 0:
                    trainer.dist.check_sync(trainer.opt, trainer.step)
                if trainer.ema_loss is not None:                      # GPU: known after the first read-back
                    bar.set_postfix_str(f"loss {trainer.ema_loss:.4f}, {trainer.speed.session():,.0f} tok/s",
                                        refresh=False)
                bar.update()
                if trainer.step % tc.eval_interval == 0 or trainer.step == end_step:
                    trainer.evaluate(save=True)
    finally:
        bar.close()
    return "stopped" if end_step < tc.max_iters else "done"


def _silent(*args, **kwargs):
    pass


@dataclasses.dataclass
class Setup:
    """What prepare() read and checked: settings, run directory, corpus, and the checkpoint to resume (or None)."""
    tc: object
    rundir: RunDir
    corpus: object
    ckpt: object


def prepare(preset, resume, force, stop_at, overrides, budget=False, ranks=1):
    """Every check of the settings, device, corpus and output directory, before anything is written (the output
    directory is created if need be, and checked writable). budget: max_iters will come from a time budget.
    ranks: the number of data-parallel ranks, which must divide the batch size."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: resume the run, or start it over")
    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"stop_at must be a positive step, got {stop_at}")
    ckpt = None
    if resume:
        out = Path(overrides.get("out") or Path("runs") / (preset or DEFAULT_PRESET))
        if not has_checkpoint(out):
            raise ConfigError(f"--resume: no run to resume in {out} (no {LAST}/ checkpoint there)")
        ckpt = ckpt_io.load(out / LAST)
        ckpt.check_resumable()
        check_saved_settings(ckpt)
        tc = resume_config(ckpt.meta["train"], preset, overrides, out)
    else:
        tc = make_config(preset, **overrides)
        out = Path(tc.out)
    tc.check_batch_split(ranks)
    get_device(tc.device)
    corpus = load_corpus(tc.data, block_size=tc.model.block_size, tokenizer=ckpt.tokenizer if ckpt else None)
    try:
        tc.model_config(corpus.tokenizer.vocab_size).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if ckpt and ckpt.step >= tc.max_iters and not budget:
        raise ConfigError(f"the run in {out} is already at step {ckpt.step} (max_iters {tc.max_iters}); "
                          "pass a larger --max-iters (or a --time) to train on")
    if ckpt and stop_at is not None and stop_at <= ckpt.step:
        raise ConfigError(f"--stop-at {stop_at} is not after the step of the run in {out} ({ckpt.step})")
    return Setup(tc, RunDir(out).open(resume, force), corpus, ckpt)


# ---- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    """The state of one training session: model, optimizer, batch stream, step, losses, timing. What it writes goes
    through its RunDir; dist is distributed.SingleProcess or this rank's DataParallel."""

    def __init__(self, setup, say, dist):
        tc, corpus, ckpt = setup.tc, setup.corpus, setup.ckpt
        self.tc, self.rundir, self.out, self.corpus, self.say, self.dist = tc, setup.rundir, setup.rundir.path, \
            corpus, say, dist
        dist.bind_device(tc.device)
        self.model = GPT(tc.model_config(corpus.tokenizer.vocab_size), seed=tc.seed, device=tc.device)
        if dist.rank > 0:                                 # each rank its own dropout masks (rank 0: a plain run's)
            self.model.rng = np.random.default_rng([tc.seed, 1, dist.rank])
        self.names = [n for n, _ in self.model.named_parameters()]    # the optimizer's parameter order
        self.opt = tc.optimizer(self.model.parameters())
        dist.attach(self.opt)                             # data-parallel: one flat buffer, rank 0's parameters
        self.sampler, self.eval_sets = batches(tc, corpus, dist.rows(tc.batch_size), self.model.device.xp)
        self.step, self.saved_step, self.best_val, self.last_val = 0, None, math.inf, None
        self.budget, self.unlogged_budget, self.budget_t0 = None, None, None   # the time budget's plan (budget.py)
        self.speed, self.ema_loss, self.value, self.pending = Speed(), None, None, []   # pending: GPU losses unread
        self.interrupt, self.stop_agreed = None, False    # run_steps sets interrupt; the gradient hook stop_agreed
        self.data_info, self.history = corpus.record(tc.data), []     # history: the log's records
        rng_note = self.load_state(checkpoint_state(ckpt, self.names), ckpt) if ckpt else None
        announce(self, ckpt, rng_note)

    # ---- the state of the run ----------------------------------------------------------------------------------
    def state(self, collective=True):
        """Everything the rest of the run depends on, as host copies (module docstring). Data-parallel, every rank's
        dropout stream is gathered (a collective); collective=False: this rank's stands in for each."""
        rng = {"model": self.model.rng.bit_generator.state, "batch": self.sampler.state}
        if self.dist.data_parallel:
            rng["model_ranks"] = self.dist.gather(rng["model"]) if collective else [rng["model"]] * self.dist.size
        return {"model": {k: v.numpy().copy() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(), "rng": rng, "step": self.step,
                "best_val_loss": None if self.best_val == math.inf else self.best_val, "budget": self.budget}

    def load_state(self, state, ckpt=None):
        """Put back a state(); from a checkpoint (`ckpt`), also the saved step and how long the run took. Returns a
        note for the user when this run has another number of dropout streams than the state (dropout on)."""
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {ckpt.path if ckpt else '?'} does not fit the model or its "
                                  f"optimizer: {e}") from None
        self.sampler.state = state["rng"]["batch"]
        self.step, self.budget = state["step"], state["budget"]
        self.best_val = math.inf if state["best_val_loss"] is None else state["best_val_loss"]
        if ckpt is not None:
            self.saved_step, self.speed.elapsed0 = self.step, float(ckpt.meta.get("elapsed_s", 0.0))
        self.model.rng, note = dropout_rng(state["rng"], self.dist, self.tc.seed, self.step,
                                           self.tc.model.dropout > 0)
        return note

    def apply_plan(self, plan, t_start):
        """A time budget's plan (budget.plan_budget): max_iters from now on, logged and kept in checkpoints."""
        self.tc.max_iters = plan["max_iters"]
        self.budget, self.unlogged_budget, self.budget_t0 = plan, plan, t_start

    # ---- one step ----------------------------------------------------------------------------------------------
    def train_step(self):
        """One optimizer update; returns its mean loss (None on the GPU in one process: read back later)."""
        t0 = time.perf_counter()
        self.opt.set_lr(self.tc.lr_at(self.step))
        x, y = self.sampler.sample()                                  # (b, T), (b, T): this rank's rows
        self.opt.zero_grad()
        loss_sum = None
        for xm, ym in micro_batches(x, y, self.tc.grad_accum):        # (b / grad_accum, T) each
            _, loss = self.model(xm, ym)
            loss.backward()                                           # adds this micro-batch's gradient to .grad
            loss_sum = loss.data if loss_sum is None else loss_sum + loss.data
        self.value = None
        self.opt.step(grad_hook=lambda opt: self._average(loss_sum))
        self.step += 1
        self.speed.add(self.tc.batch_size * self.tc.model.block_size, time.perf_counter() - t0)
        if len(self.pending) >= SYNC_EVERY:
            self.sync_losses()
        return self.value

    def _average(self, loss_sum):
        """The step's gradient hook, before clipping and the update: the gradients' (and loss's) mean over the
        micro-batches and ranks, with the Ctrl-C flag agreed. The loss is checked at once, unless it stays on the GPU
        (one process): raising here leaves the parameters and AdamW's state untouched."""
        stop = self.interrupt is not None and self.interrupt.requested
        loss, self.stop_agreed = self.dist.average(loss_sum, stop, parts=self.tc.grad_accum)
        self.pending.append((self.step + 1, loss))
        if self.model.device.xp is np or self.dist.data_parallel:
            self.sync_losses()                        # sets self.value

    def sync_losses(self):
        """Read back the losses of the steps since the last read (on the GPU, one synchronisation); a NaN or infinite
        one raises TrainingDiverged naming its step (nothing has been saved since it)."""
        if not self.pending:
            return
        steps, values = zip(*self.pending, strict=True)
        if not isinstance(values[0], float) and self.model.device.xp is not np:
            values = to_host(self.model.device.xp.stack(values)).tolist()
        self.pending = []
        for step, value in zip(steps, values, strict=True):
            value = float(value)
            if not math.isfinite(value):    # data-parallel: every rank has the same mean and stops here
                raise distributed.all_ranks(TrainingDiverged(diverged(self, value, step, "training")))
            self.value = value
            self.ema_loss = value if self.ema_loss is None else 0.9 * self.ema_loss + 0.1 * value

    # ---- evaluation and checkpoints ----------------------------------------------------------------------------
    def estimate_losses(self):
        """Mean loss on each split's fixed batches (in micro-batches, as the training step), in eval mode, building
        no graph; data-parallel, averaged over the ranks. Returns [train, val]."""
        with self.model.evaluating():
            losses = [float(np.mean([self.model(xm, ym)[1].item() for x, y in self.eval_sets[split]
                                     for xm, ym in micro_batches(x, y, self.tc.grad_accum)]))
                      for split in ("train", "val")]
        return self.dist.mean(losses)                     # each rank evaluated its rows of each batch

    def evaluate(self, save=False, losses=None):
        """Losses on the fixed batches (or `losses`, measured already) -> log line, plot, and (save=True) last/ and,
        if better, best/."""
        self.sync_losses()
        losses = self.estimate_losses() if losses is None else losses
        rec = {"step": self.step, "train_loss": losses[0], "val_loss": losses[1],
               "lr": self.tc.lr_at(max(self.step - 1, 0)),               # the rate of the update that led here
               "tokens_per_s": self.speed.interval(), "elapsed_s": round(self.speed.elapsed(), 3),
               "max_iters": self.tc.max_iters}
        if self.unlogged_budget is not None:
            rec["budget"], self.unlogged_budget = self.unlogged_budget, None
        if not (math.isfinite(rec["val_loss"]) and math.isfinite(rec["train_loss"])):
            message = diverged(self, rec["val_loss"], self.step, "evaluation")
            raise distributed.all_ranks(TrainingDiverged(message))
        improved = save and rec["val_loss"] < self.best_val
        if save:
            self.last_val, self.best_val = rec["val_loss"], min(self.best_val, rec["val_loss"])
            rec["best_val_loss"] = self.best_val
            self.save(*((LAST, BEST) if improved else (LAST,)))
        self.history.append(rec)
        self.rundir.record(rec, self.history, self.title)
        log_line(self, rec, improved)
        return rec

    def checkpoint(self, collective=True):
        """checkpoint.write's arguments for the state now (checkpoint_args; `collective` as state()'s)."""
        return checkpoint_args(self, self.state(collective))

    def save(self, *names):
        """Checkpoints `names` (last, best) from one state(); every rank takes part (the dropout streams are
        gathered), rank 0 writes."""
        self.sync_losses()                                # never save past a diverged step
        checkpoint = self.checkpoint()
        for name in names:
            self.rundir.save(name, **checkpoint)
        self.saved_step = self.step



def dropout_rng(rng, dist, seed, step, dropout_on):
    """This rank's dropout generator from a state's "rng": rank 0's stream is "model" (a plain run's), rank r's
    "model_ranks"[r]. A rank the state has no stream for (more ranks than the run had) starts one from (seed, 1,
    rank, step): reproducible, not exact. Returns (generator, a note for the user when the number of streams
    changed and dropout is on, else None)."""
    streams = rng.get("model_ranks") or [rng["model"]]
    if dist.rank < len(streams):
        gen = np.random.default_rng()
        gen.bit_generator.state = streams[dist.rank]
    else:
        gen = np.random.default_rng([seed, 1, dist.rank, step])
    note = None
    if dropout_on and len(streams) != dist.size:
        note = (f"note: the checkpoint holds the dropout streams of {len(streams)} rank(s), this run has "
                f"{dist.size}: the run goes on reproducibly, but not exactly as the interrupted one would have")
    return gen, note


def checkpoint_args(trainer, state):
    """checkpoint.write's arguments (RunDir.save's) for a trainer's `state`: its arrays, meta.json's fields."""
    tc, dist = trainer.tc, trainer.dist
    meta = {"best_val_loss": state["best_val_loss"], "val_loss": trainer.last_val, "rng": state["rng"],
            "train": {**tc.flat(), "data": trainer.data_info["path"]}, "data": trainer.data_info,
            "elapsed_s": trainer.speed.elapsed()}
    if state["budget"] is not None:
        meta["budget"] = state["budget"]
    if dist.data_parallel:
        meta["data_parallel"] = {"ranks": dist.size, "rows_per_rank": tc.batch_size // dist.size}
    return {"config": trainer.model.config, "tokenizer": trainer.corpus.tokenizer, "step": state["step"],
            "model_state": state["model"], "optimizer_state": state["optimizer"],
            "optimizer_names": trainer.names, "meta": meta}


def diverged(trainer, value, step, where):
    """TrainingDiverged's message: where, the step, and what is kept."""
    kept = (f"the last good checkpoint, {trainer.out / LAST} (step {trainer.saved_step}), is untouched"
            if trainer.saved_step is not None else "no checkpoint was saved")
    return f"{where} loss is {value} at step {step}: stopped; {kept}; try a lower --lr or --grad-clip 1.0"


def batches(tc, corpus, rows, xp):
    """The training batch stream and each split's fixed evaluation batches: this rank's `rows` (None: all) of each
    batch, on the device of `xp`."""
    T, B = tc.model.block_size, tc.batch_size
    sampler = BatchSampler(corpus.train, T, B, seed=[tc.seed, 2], rows=rows, xp=xp)
    eval_sets = {split: fixed_batches(corpus.split(split), T, B, tc.eval_iters, seed=[tc.seed, 3 + i], rows=rows,
                                      xp=xp) for i, split in enumerate(("train", "val"))}
    return sampler, eval_sets


def checkpoint_state(ckpt, names):
    """A Trainer.state() from a checkpoint: the optimizer's in the order of `names`."""
    meta = ckpt.meta
    return {"model": ckpt.model_state, "optimizer": ckpt.optimizer_state(names), "rng": meta["rng"],
            "step": ckpt.step, "best_val_loss": meta.get("best_val_loss"), "budget": meta.get("budget")}


class Speed:
    """Tokens and seconds of training steps, since the last evaluation (interval) and in this session; and the
    run's wall-clock time (elapsed0: a resumed run's time before this session)."""

    def __init__(self):
        self.elapsed0, self.t_start = 0.0, time.perf_counter()
        self.reset()

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.t_start

    def reset(self):
        self.tokens, self.seconds, self.session_tokens, self.session_seconds = 0, 0.0, 0, 0.0

    def add(self, tokens, seconds):
        self.tokens += tokens
        self.seconds += seconds
        self.session_tokens += tokens
        self.session_seconds += seconds

    def interval(self):
        """Tokens per second since the last call (rounded), None when no step ran; starts a new interval."""
        rate = round(self.tokens / self.seconds, 1) if self.seconds else None
        self.tokens, self.seconds = 0, 0.0
        return rate

    def session(self):
        return self.session_tokens / self.session_seconds if self.session_seconds else 0.0


# ---- what the user reads -----------------------------------------------------------------------------------------
def announce(trainer, ckpt, rng_note=None):
    """The lines that open a run: corpus, model, settings; the notes a resumed run needs."""
    tc, corpus, say, dist = trainer.tc, trainer.corpus, trainer.say, trainer.dist
    name, m = trainer.data_info["name"], tc.model
    if ckpt and ckpt.meta.get("data", {}).get("sha256") not in (None, corpus.sha256):
        say(f"note: {corpus.name} differs from the corpus this run started on")
    n_params = trainer.model.num_parameters()
    shape = f"B={tc.batch_size} T={m.block_size} C={m.n_embd} H={m.n_head} L={m.n_layer}"
    trainer.title = f"{name}  |  preset {tc.preset}: {shape}, {n_params:,} params"
    warmup = f" (warmup {tc.warmup_iters})" if tc.warmup_iters else ""
    say(f"{'resuming' if ckpt else 'training'} preset '{tc.preset}' on {name} ({len(corpus.ids):,} chars, vocab "
        f"{corpus.tokenizer.vocab_size}; train {len(corpus.train):,} / val {len(corpus.val):,}) | {n_params:,} "
        f"parameters | {shape} dropout={m.dropout} | lr {tc.lr:g} {tc.lr_schedule}{warmup} | "
        f"{trainer.model.device} | out {trainer.out}")
    if tc.grad_accum > 1:
        say(f"gradient accumulation: {tc.grad_accum} micro-batches of {tc.batch_size // dist.size // tc.grad_accum} "
            "rows per step")
    if dist.data_parallel:
        say(f"data-parallel: {dist.size} ranks x {tc.batch_size // dist.size} rows of each batch of "
            f"{tc.batch_size}; gradients averaged by one allreduce ({dist.transport}) of {dist.n + 2:,} floats "
            "per step")
    say(f"evaluation: every {tc.eval_interval} steps, {tc.eval_iters} fixed batches of {tc.batch_size} per split"
        + (f" | from step {trainer.step}" if ckpt else ""))
    if rng_note:
        say(rng_note)


def log_line(trainer, rec, improved):
    width = len(str(trainer.tc.max_iters))
    tps = f" | {rec['tokens_per_s']:,.0f} tok/s" if rec["tokens_per_s"] else ""
    trainer.say(f"step {rec['step']:>{width}}/{trainer.tc.max_iters} | train {rec['train_loss']:.4f} | "
                f"val {rec['val_loss']:.4f} | lr {rec['lr']:.2e}{tps} | {rec['elapsed_s']:.0f} s"
                + (" | best, saved" if improved else ""))


def finish(trainer, status):
    """The closing lines, and a sample from the final model (not after Ctrl-C: the user wants out)."""
    out, say, tc = trainer.out, trainer.say, trainer.tc
    result = TrainResult(out, trainer.step, status, trainer.best_val, trainer.last_val, trainer.speed.session(),
                         trainer.speed.elapsed(), tc.max_iters)
    if not trainer.rundir.writes:
        return result
    if status == "interrupted":
        say(f"interrupted at step {trainer.step}: saved {out / LAST}; continue with: "
            f"tinygrad-gpt train --out {out} --resume")
        return result
    say(f"{'stopped' if status == 'stopped' else 'finished'} at step {trainer.step}: best val loss "
        f"{trainer.best_val:.4f}, {result.tokens_per_s:,.0f} tok/s, {result.elapsed_s:.0f} s | checkpoints in {out}")
    if trainer.budget_t0 is not None:
        b, took = trainer.budget, time.perf_counter() - trainer.budget_t0
        slower = " (the steps ran slower than timed)" if took > b["seconds"] else ""
        say(f"time budget {b['time']}: the last checkpoint was written at {took:.1f} s, planned "
            f"{b['planned_end_s']:.1f} s{slower}")
    if tc.sample_chars:
        tok = trainer.corpus.tokenizer
        ids = trainer.model.generate(tok.encode(default_prompt(tok))[None, :], tc.sample_chars,
                                     seed=tc.seed)                     # (1, 1 + sample_chars)
        result.sample = tok.decode(ids[0])
        trainer.rundir.write_sample(result.sample)
        say(f"--- sample from the final model ({tc.sample_chars} chars, temperature 1.0) ---")
        say(result.sample.strip("\n"))
        say(f"--- more: tinygrad-gpt sample --ckpt {out}")
    return result


# ---- Ctrl-C ------------------------------------------------------------------------------------------------------
class _Interrupt:
    """First Ctrl-C: set a flag the step's gradient hook reads (the loop stops after that step, so the checkpoint is
    a consistent step; data-parallel, when any rank was interrupted). Second Ctrl-C: the usual KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._prev = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
