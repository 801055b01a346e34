"""Training: the loop, one step, evaluation and checkpoints, exact resume, time budgets.

    setup = prepare(...)              every check of settings, corpus, checkpoint and run directory; nothing written
    trainer = Trainer(setup)          model, AdamW, the batch stream, the fixed evaluation batches
    --time: fit_to_budget(...)        rehearses a few steps, then fixes max_iters (budget.py)
    evaluate at step 0                the loss before training, for the curve
    while step < max_iters:
        train_step()                  grad_accum micro-batches, the gradient hook, one AdamW update
        every eval_interval steps and at the last: evaluate, log, plot, save last/ (and best/ when better)
    finish()                          a sample from the final model

Steps count optimizer updates: "step 500" is the state after 500 updates. An evaluation runs on eval_iters fixed
batches of each split, drawn once from their own seeds, in eval mode under no_grad, so successive evaluations
compare like with like and touch neither the training batch stream nor the dropout generator. The run directory
(checkpoints, log, plot, sample) is rundir.py's; the settings and presets are config.py's.

One step (train_step): the batch's rows are split into grad_accum equal micro-batches; each one's forward and
backward adds its gradient into the parameters' .grad. AdamW gathers them into its flat buffer and calls the
step's gradient hook before clipping and updating: the hook turns the sum of micro-batch means into their mean
(equal parts: the mean over the whole batch) and, data-parallel, averages over the ranks in the same pass. It
also checks the loss, so a NaN or infinite loss stops the run before any parameter changes. On the GPU the loss
stays on the device and is read back every SYNC_EVERY steps and before any evaluation or checkpoint.

Exact resume: a checkpoint holds the parameters, AdamW's moments and step, the dropout generator's state
(model.rng) and the batch sampler's state, so N steps + resume for N more gives bitwise the parameters of 2N
steps in one go (on the CPU; same NumPy and BLAS thread count).

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

from . import checkpoint as ckpt_io
from . import distributed
from .backend import get_device, to_host
from .budget import fit_to_budget, parse_duration
from .config import DEFAULT_PRESET, ConfigError, check_saved_settings, make_config, resume_config
from .data import BatchSampler, default_prompt, fixed_batches, load_corpus
from .model import GPT
from .rundir import BEST, LAST, RunDir, has_checkpoint

SYNC_EVERY = 25          # GPU: steps between reading the losses back to the host (one synchronisation)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


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

    preset: "small", "lecture" or "cpu" (default); overrides: any TrainConfig field (max_iters=200, out="runs/x").
    resume: continue the run in `out` from its last checkpoint (settings come from it; overrides may change the
    training settings, e.g. max_iters, but not the model's shape). force: start over in an `out` that holds a run.
    stop_at: stop after this step (saving a checkpoint) without changing the schedule, to resume later.
    time_budget: "90s", "5m", "1h30m" or seconds: fix max_iters so that the run ends within it (not with max_iters;
    with resume, the budget is for the steps still to come).
    ddp: data-parallel over MPI: None (default) when launched by mpiexec with several processes, True always,
    False never. check_sync: data-parallel only, every this many steps verify that all ranks hold bitwise the
    same parameters (a debugging aid; 0: never).
    Raises ConfigError, DataError, CheckpointError, DeviceError (bad input: nothing written); TrainingDiverged,
    SaveFailed.
    """
    t_start = time.perf_counter()                                    # a time budget runs from here
    from tqdm.auto import tqdm
    say = say or tqdm.write
    overrides = {k: v for k, v in overrides.items() if v is not None}
    budget_s = None
    if time_budget is not None:
        budget_s = parse_duration(time_budget)
        if "max_iters" in overrides:
            raise ConfigError("--time and --max-iters contradict each other: a time budget chooses max_iters")
    dist = distributed.setup(ddp)                  # None: a plain run (mpi4py is never imported)
    if dist is None:
        setup = prepare(preset, resume, force, stop_at, overrides, budget=budget_s is not None)
    else:
        if not dist.is_root:                       # rank 0 alone talks to the user and writes files
            progress, say = False, _silent
        setup = dist.on_root(lambda: prepare(preset, resume, force, stop_at, overrides,
                                             budget=budget_s is not None, ranks=dist.size))
        setup.rundir.writes = dist.is_root
    tc = setup.tc
    trainer = Trainer(setup, say, dist)
    step0_losses = None
    if budget_s is not None:
        try:
            step0_losses = fit_to_budget(trainer, budget_s, t_start, str(time_budget))
        except ConfigError:
            setup.rundir.abandon()                 # nothing was written: leave no empty directory either
            raise
    trainer.start(force)
    end_step = tc.max_iters if stop_at is None else min(stop_at, tc.max_iters)
    status = "stopped" if end_step < tc.max_iters else "done"
    bar = tqdm(total=tc.max_iters, initial=trainer.step, unit="step", dynamic_ncols=True, smoothing=0.05,
               disable=None if progress else True, leave=True)
    try:
        with _Interrupt() as interrupt:
            trainer.interrupt = interrupt
            if setup.ckpt is None:
                trainer.evaluate(losses=step0_losses)               # the loss before training, for the curve
            while trainer.step < end_step:
                # data-parallel: the ranks agree on stopping through the step's allreduce (trainer.stop_agreed)
                if interrupt.requested if dist is None else trainer.stop_agreed:
                    status = "interrupted"
                    if trainer.saved_step != trainer.step:
                        trainer.save(LAST)
                    break
                trainer.train_step()
                if dist is not None and check_sync and trainer.step % check_sync == 0:
                    dist.check_sync(trainer.opt, trainer.step)
                if trainer.ema_loss is not None:                    # GPU: known after the first read-back
                    bar.set_postfix_str(f"loss {trainer.ema_loss:.4f}, {trainer.tokens_per_s():,.0f} tok/s",
                                        refresh=False)
                bar.update()
                if trainer.step % tc.eval_interval == 0 or trainer.step == end_step:
                    trainer.evaluate(save=True)
    finally:
        bar.close()
    return trainer.finish(status)


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
    corpus = load_corpus(tc.data, block_size=tc.block_size, tokenizer=ckpt.tokenizer if ckpt else None)
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
    through its RunDir. dist: this rank's distributed.DataParallel, or None."""

    def __init__(self, setup, say, dist=None):
        tc, corpus, ckpt = setup.tc, setup.corpus, setup.ckpt
        self.tc, self.rundir, self.out, self.corpus, self.say, self.dist = tc, setup.rundir, setup.rundir.path, \
            corpus, say, dist
        if dist is not None:
            dist.bind_device(tc.device)
        self.model = GPT(tc.model_config(corpus.tokenizer.vocab_size), seed=tc.seed, device=tc.device)
        if dist is not None and dist.rank > 0:            # each rank its own dropout masks (rank 0: a plain run's)
            self.model.rng = np.random.default_rng([tc.seed, 1, dist.rank])
        self.names = [n for n, _ in self.model.named_parameters()]    # the optimizer's parameter order
        rng_note = None
        if ckpt:
            try:
                self.model.load_state_dict(ckpt.model_state)
            except ValueError as e:
                raise ckpt_io.CheckpointError(f"checkpoint {ckpt.path} does not fit the model: {e}") from None
            rng_note = self._restore_dropout_rng(ckpt)
        self.opt = tc.optimizer(self.model.parameters())
        if ckpt:
            try:
                self.opt.load_state_dict(ckpt.optimizer_state(self.names))
            except ValueError as e:
                raise ckpt_io.CheckpointError(f"checkpoint {ckpt.path}: optimizer state does not fit: {e}") from None
        rows = None
        if dist is not None:
            dist.attach(self.opt)                         # one flat gradient buffer; rank 0's parameters everywhere
            rows = dist.rows(tc.batch_size)               # this rank's rows of every (global) batch
        xp = self.model.device.xp                         # batches are built on the model's device
        self.sampler = BatchSampler(corpus.train, tc.block_size, tc.batch_size, seed=[tc.seed, 2], rows=rows, xp=xp)
        if ckpt:
            self.sampler.state = ckpt.meta["rng"]["batch"]
        self.eval_sets = {split: fixed_batches(corpus.split(split), tc.block_size, tc.batch_size, tc.eval_iters,
                                               seed=[tc.seed, 3 + i], rows=rows, xp=xp)
                          for i, split in enumerate(("train", "val"))}
        self.interrupt, self.stop_agreed = None, False    # train() sets interrupt; stop_agreed: data-parallel

        self.step = ckpt.step if ckpt else 0
        self.saved_step = self.step if ckpt else None
        best = ckpt.meta.get("best_val_loss") if ckpt else None
        self.best_val = math.inf if best is None else best
        self.last_val, self.ema_loss, self.value = None, None, None
        self.pending = []                                 # GPU: (step, loss on the device) not yet read back
        self.budget = ckpt.meta.get("budget") if ckpt else None   # the time budget's plan, if the run has one
        self.unlogged_budget = None                       # a plan made by this session, for the next log record
        self.budget_t0 = None                             # when this session's budget started (its plan's clock)
        self.elapsed0 = float(ckpt.meta.get("elapsed_s", 0.0)) if ckpt else 0.0
        self.t_start = time.perf_counter()
        self._reset_counters()
        self.history = []

        self.data_info = corpus.record(tc.data)
        if ckpt and ckpt.meta.get("data", {}).get("sha256") not in (None, corpus.sha256):
            say(f"note: {corpus.name} differs from the corpus this run started on")
        n_params = self.model.num_parameters()
        shape = f"B={tc.batch_size} T={tc.block_size} C={tc.n_embd} H={tc.n_head} L={tc.n_layer}"
        self.title = f"{self.data_info['name']}  |  preset {tc.preset}: {shape}, {n_params:,} params"
        warmup = f" (warmup {tc.warmup_iters})" if tc.warmup_iters else ""
        say(f"{'resuming' if ckpt else 'training'} preset '{tc.preset}' on {self.data_info['name']} "
            f"({len(corpus.ids):,} chars, vocab {corpus.tokenizer.vocab_size}; train {len(corpus.train):,} / "
            f"val {len(corpus.val):,}) | {n_params:,} parameters | {shape} dropout={tc.dropout} | "
            f"lr {tc.lr:g} {tc.lr_schedule}{warmup} | {self.model.device} | out {self.out}")
        if tc.grad_accum > 1:
            say(f"gradient accumulation: {tc.grad_accum} micro-batches of {self.micro_rows()} rows per step")
        if dist is not None:
            say(f"data-parallel: {dist.size} ranks x {tc.batch_size // dist.size} rows of each batch of "
                f"{tc.batch_size}; gradients averaged by one allreduce ({dist.transport}) of "
                f"{dist.n + 2:,} floats per step")
        say(f"evaluation: every {tc.eval_interval} steps, {tc.eval_iters} fixed batches of {tc.batch_size} per "
            f"split" + (f" | from step {self.step}" if ckpt else ""))
        if rng_note:
            say(rng_note)

    def _restore_dropout_rng(self, ckpt):
        """The dropout generator's state from the checkpoint: rank 0's is "model" (a plain run's), rank r's is
        "model_ranks"[r] (data-parallel checkpoints). A rank the checkpoint has no state for (more ranks than the
        run had) starts a new stream from (seed, rank, step): reproducible, but not the uninterrupted run.
        Returns a note for the user when the number of dropout streams changes (and dropout is on), else None."""
        rng = ckpt.meta["rng"]
        rank, size = (self.dist.rank, self.dist.size) if self.dist is not None else (0, 1)
        states = rng.get("model_ranks") or [rng["model"]]
        if rank < len(states):
            self.model.rng.bit_generator.state = states[rank]
        else:
            self.model.rng = np.random.default_rng([self.tc.seed, 1, rank, ckpt.step])
        if self.tc.dropout > 0 and len(states) != size:
            return (f"note: the checkpoint holds the dropout streams of {len(states)} rank(s), this run has {size}: "
                    "the run goes on reproducibly, but not exactly as the interrupted one would have")
        return None

    def start(self, force):
        """The run directory is made ready (a previous run's files removed with force; the log rewound to step)."""
        self.history = self.rundir.start(force, self.step)

    def _reset_counters(self):
        self.interval_tokens, self.interval_time, self.session_tokens, self.session_time = 0, 0.0, 0, 0.0

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.t_start

    def tokens_per_s(self):
        return self.session_tokens / self.session_time if self.session_time else 0.0

    def micro_rows(self):
        """Rows of a micro-batch: this rank's rows of the batch, split into grad_accum equal parts."""
        ranks = self.dist.size if self.dist is not None else 1
        return self.tc.batch_size // ranks // self.tc.grad_accum

    def _micro_batches(self, x, y):
        """(x, y) of shape (b, T) -> grad_accum pairs of (b / grad_accum, T): contiguous row views."""
        m = self.micro_rows()
        return [(x[i:i + m], y[i:i + m]) for i in range(0, x.shape[0], m)]

    # ---- one step ----------------------------------------------------------------------------------------------
    def train_step(self):
        """One optimizer update; returns its mean loss (None on the GPU in one process, where losses are read back
        later)."""
        t0 = time.perf_counter()
        self.opt.set_lr(self.tc.lr_at(self.step))
        x, y = self.sampler.sample()                                  # (b, T), (b, T): this rank's rows
        self.opt.zero_grad()
        loss_sum = None
        for xm, ym in self._micro_batches(x, y):                      # (b / grad_accum, T) each
            _, loss = self.model(xm, ym)
            loss.backward()                                           # adds this micro-batch's gradient to .grad
            loss_sum = loss.data if loss_sum is None else loss_sum + loss.data
        self.value = None
        self.opt.step(grad_hook=lambda opt: self._average(opt, loss_sum))
        self.step += 1
        dt, tokens = time.perf_counter() - t0, self.tc.batch_size * self.tc.block_size
        self.interval_tokens += tokens
        self.interval_time += dt
        self.session_tokens += tokens
        self.session_time += dt
        if self.value is not None:
            self._track(self.value)
        elif len(self.pending) >= SYNC_EVERY:
            self.sync_losses()
        return self.value

    def _average(self, opt, loss_sum):
        """The step's gradient hook: AdamW has gathered the summed micro-batch gradients into its flat buffers and
        calls this before clipping and updating. Scale the sum of grad_accum means to their mean (data-parallel:
        also sum over the ranks, in one allreduce with the loss and the Ctrl-C flag); then check the loss. Raising
        here leaves the parameters and the optimizer's state untouched."""
        parts = self.tc.grad_accum
        if self.dist is not None:
            stop = self.interrupt is not None and self.interrupt.requested
            value, self.stop_agreed = self.dist.average(loss_sum, stop, parts=parts)   # means over ranks and parts
        else:
            if parts > 1:
                for grp in opt.groups:
                    grp.grad *= 1.0 / parts
                loss_sum = loss_sum * (1.0 / parts)
            if self.model.device.xp is not np:        # GPU: no synchronisation inside a step (see sync_losses)
                self.pending.append((self.step + 1, loss_sum))
                return
            value = float(loss_sum)
        if not math.isfinite(value):                  # data-parallel: every rank has the same mean and stops here
            raise distributed.all_ranks(TrainingDiverged(self._diverged(value, self.step + 1, "training")))
        self.value = value

    def _track(self, value):
        self.ema_loss = value if self.ema_loss is None else 0.9 * self.ema_loss + 0.1 * value

    def sync_losses(self):
        """GPU: read back the losses of the steps since the last read (one synchronisation); a NaN or infinite one
        raises TrainingDiverged naming its step (nothing has been saved since it)."""
        if not self.pending:
            return
        xp = self.model.device.xp
        values = to_host(xp.stack([v for _, v in self.pending])).tolist()
        steps = [s for s, _ in self.pending]
        self.pending = []
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise TrainingDiverged(self._diverged(value, step, "training"))
            self._track(value)

    def synchronize(self):
        """Wait for the device (a no-op on the CPU): before reading a clock that times GPU work."""
        xp = self.model.device.xp
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()

    # ---- evaluation and checkpoints ----------------------------------------------------------------------------
    def estimate_losses(self):
        """Mean loss on each split's fixed batches (in micro-batches, as the training step), in eval mode, building
        no graph; data-parallel, averaged over the ranks. Returns [train, val]."""
        model = self.model
        with model.evaluating():
            losses = [float(np.mean([model(xm, ym)[1].item() for x, y in self.eval_sets[split]
                                     for xm, ym in self._micro_batches(x, y)]))
                      for split in ("train", "val")]
        if self.dist is not None:
            losses = self.dist.mean(losses)                           # each rank evaluated its rows of each batch
        return losses

    def warm_up_evaluation(self):
        """One evaluation forward pass, discarded: the first in eval mode may compile or load kernels of its own."""
        x, y = self.eval_sets["val"][0]
        xm, ym = self._micro_batches(x, y)[0]
        with self.model.evaluating():
            self.model(xm, ym)

    def evaluate(self, save=False, losses=None):
        """Losses on the fixed batches (or `losses`, measured already) -> log line, plot, and (save=True) last/ and,
        if better, best/."""
        self.sync_losses()
        losses = self.estimate_losses() if losses is None else losses
        rec = {"step": self.step, "train_loss": losses[0], "val_loss": losses[1],
               "lr": self.tc.lr_at(max(self.step - 1, 0)),               # the rate of the update that led here
               "tokens_per_s": round(self.interval_tokens / self.interval_time, 1) if self.interval_time else None,
               "elapsed_s": round(self.elapsed(), 3), "max_iters": self.tc.max_iters}
        if self.unlogged_budget is not None:
            rec["budget"], self.unlogged_budget = self.unlogged_budget, None
        if not (math.isfinite(rec["val_loss"]) and math.isfinite(rec["train_loss"])):
            raise distributed.all_ranks(TrainingDiverged(self._diverged(rec["val_loss"], self.step, "evaluation")))
        self.interval_tokens, self.interval_time = 0, 0.0
        improved = save and rec["val_loss"] < self.best_val
        if save:
            self.last_val = rec["val_loss"]
            self.best_val = min(self.best_val, self.last_val)
            rec["best_val_loss"] = self.best_val
            self.save(LAST)
            if improved:
                self.save(BEST)
        self.history.append(rec)
        self.rundir.record(rec, self.history, self.title)
        width = len(str(self.tc.max_iters))
        tps = f" | {rec['tokens_per_s']:,.0f} tok/s" if rec["tokens_per_s"] else ""
        self.say(f"step {rec['step']:>{width}}/{self.tc.max_iters} | train {rec['train_loss']:.4f} | "
                 f"val {rec['val_loss']:.4f} | lr {rec['lr']:.2e}{tps} | {rec['elapsed_s']:.0f} s"
                 + (" | best, saved" if improved else ""))
        return rec

    def checkpoint_meta(self, rng):
        """meta.json's training fields (checkpoint.save adds the model's), with the RNG states `rng`."""
        meta = {"best_val_loss": None if self.best_val == math.inf else self.best_val, "val_loss": self.last_val,
                "rng": rng, "train": {**dataclasses.asdict(self.tc), "data": self.data_info["path"]},
                "data": self.data_info, "elapsed_s": self.elapsed()}
        if self.budget is not None:
            meta["budget"] = self.budget
        if self.dist is not None:
            meta["data_parallel"] = {"ranks": self.dist.size, "rows_per_rank": self.tc.batch_size // self.dist.size}
        return meta

    def rng_state(self, collective=True):
        """The generator states a checkpoint keeps: dropout's and the batch sampler's, and data-parallel every rank's
        dropout state (gathered: a collective, every rank calls it). collective=False, on one rank only: this rank's
        state stands in for every rank's (the time budget's trial save, which needs the size, not the values)."""
        rng = {"model": self.model.rng.bit_generator.state, "batch": self.sampler.state}
        if self.dist is not None:
            rng["model_ranks"] = (self.dist.gather(rng["model"]) if collective
                                  else [rng["model"]] * self.dist.size)
        return rng

    def save(self, name):
        self.sync_losses()                                # never save past a diverged step
        rng = self.rng_state()
        self.rundir.save(name, self.model, self.corpus.tokenizer, self.step, self.opt, self.names,
                         self.checkpoint_meta(rng))
        self.saved_step = self.step

    def _diverged(self, value, step, where):
        kept = (f"the last good checkpoint, {self.out / LAST} (step {self.saved_step}), is untouched"
                if self.saved_step is not None else "no checkpoint was saved")
        return f"{where} loss is {value} at step {step}: stopped; {kept}; try a lower --lr or --grad-clip 1.0"

    def finish(self, status):
        """The closing lines, and a sample from the final model (not after Ctrl-C: the user wants out)."""
        out, say = self.out, self.say
        result = TrainResult(out, self.step, status, self.best_val, self.last_val, self.tokens_per_s(),
                             self.elapsed(), self.tc.max_iters)
        if not self.rundir.writes:
            return result
        if status == "interrupted":
            say(f"interrupted at step {self.step}: saved {out / LAST}; continue with: "
                f"tinygrad-gpt train --out {out} --resume")
            return result
        say(f"{'stopped' if status == 'stopped' else 'finished'} at step {self.step}: best val loss "
            f"{self.best_val:.4f}, {result.tokens_per_s:,.0f} tok/s, {result.elapsed_s:.0f} s | checkpoints in {out}")
        if self.budget_t0 is not None:
            b, took = self.budget, time.perf_counter() - self.budget_t0
            slower = " (the steps ran slower than timed)" if took > b["seconds"] else ""
            say(f"time budget {b['time']}: the last checkpoint was written at {took:.1f} s, planned "
                f"{b['planned_end_s']:.1f} s{slower}")
        if self.tc.sample_chars:
            tok = self.corpus.tokenizer
            ids = self.model.generate(tok.encode(default_prompt(tok))[None, :], self.tc.sample_chars,
                                      seed=self.tc.seed)              # (1, 1 + sample_chars)
            result.sample = tok.decode(ids[0])
            self.rundir.write_sample(result.sample)
            say(f"--- sample from the final model ({self.tc.sample_chars} chars, temperature 1.0) ---")
            say(result.sample.strip("\n"))
            say(f"--- more: tinygrad-gpt sample --ckpt {out}")
        return result

    # ---- rehearsal (time budgets) ------------------------------------------------------------------------------
    def rehearse(self, steps):
        """Run `steps` training steps and then put back everything they changed (parameters, AdamW's moments and
        counts, the batch stream, the step, the loss and speed counters): afterwards the run is as if they never
        happened. Dropout masks come from a throwaway generator meanwhile, so the model's own is not advanced."""
        opt = self.opt
        saved = ([(g.flat.copy(), g.exp_avg.copy(), g.exp_avg_sq.copy(), list(g.steps)) for g in opt.groups],
                 opt.t, self.sampler.state, self.step)
        xp, p = self.model.device.xp, np.float32(self.model.config.dropout)
        throwaway = xp.random.default_rng(0)
        self.model.set_mask_source(lambda shape: throwaway.random(shape, dtype=np.float32) >= p)
        try:
            for _ in range(steps):
                self.train_step()
            self.synchronize()
        finally:
            self.model.set_mask_source(None)
            groups, opt.t, self.sampler.state, self.step = saved
            for g, (flat, m, v, counts) in zip(opt.groups, groups):
                g.flat[...], g.exp_avg[...], g.exp_avg_sq[...], g.steps = flat, m, v, counts
            self.pending, self.ema_loss, self.value = [], None, None
            self._reset_counters()


# ---- Ctrl-C ------------------------------------------------------------------------------------------------------
class _Interrupt:
    """First Ctrl-C: set a flag the loop checks between steps (so the checkpoint is a consistent step).
    Second Ctrl-C: the usual KeyboardInterrupt."""

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
