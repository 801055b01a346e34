"""Training runs: presets, the loop, evaluation, logs, plots, checkpoints, exact resume.

A run lives in one output directory:
    last/        the latest checkpoint (saved at every evaluation, at the end, and on Ctrl-C)
    best/        the checkpoint with the lowest validation loss so far
    log.jsonl    one JSON object per evaluation: step, train_loss, val_loss, lr, tokens_per_s, elapsed_s
    loss.png     the loss curves, redrawn at every evaluation
    sample.txt   a sample from the final model

Steps count optimizer updates: "step 500" is the state after 500 updates. Evaluation runs every eval_interval
steps (and at step 0 and at the end) on eval_iters fixed batches of each split, drawn once from their own seeds,
in eval mode under no_grad: 2 * eval_iters forward passes, and the same batches every time, so successive
evaluations compare like with like. It touches neither the training batch stream nor the dropout generator.

Exact resume: a checkpoint holds the parameters, AdamW's moments and step, the dropout generator's state
(model.rng) and the batch sampler's state, so N steps + resume for N more gives bitwise the parameters of 2N
steps in one go (on the CPU; same NumPy and BLAS thread count).

Data-parallel (`mpiexec -n N tinygrad-gpt train ...`, see distributed.py): batch_size is the global batch, split
into N equal parts of rows; rank 0 prepares the run (reads the corpus and checkpoint) and alone writes to the run
directory; the others get what it read, train on their rows, and take part in the averaging. The checkpoint also
holds every rank's dropout generator, so a data-parallel run resumes exactly too (with the same number of ranks).
"""
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt_io
from . import distributed
from .backend import get_device, to_host
from .data import BatchSampler, CharTokenizer, Corpus, default_prompt, fixed_batches, load_corpus
from .model import GPT, GPTConfig
from .optim import AdamW
from .tensor import no_grad

# ---- presets -----------------------------------------------------------------------------------------------------
# A preset fixes the model and the optimisation; any field can be overridden (CLI: --n-layer 6, --lr 6e-4, ...).
PRESETS = {
    # the lecture notebooks' small baseline (0.21M parameters): val 1.82 after 5000 steps in the lecture
    "small": dict(batch_size=16, block_size=32, n_embd=64, n_head=4, n_layer=4, dropout=0.0,
                  lr=1e-3, lr_schedule="constant", warmup_iters=0, max_iters=5000, eval_interval=500,
                  grad_clip=0.0),
    # the lecture's GPU run (10.8M parameters)
    "lecture": dict(batch_size=64, block_size=256, n_embd=384, n_head=6, n_layer=6, dropout=0.2,
                    lr=3e-4, lr_schedule="constant", warmup_iters=0, max_iters=5000, eval_interval=500,
                    grad_clip=0.0),
    # the default: the best validation loss reachable in about 5 minutes on a 2-core CPU. Measured on the 2-core
    # dev machine: 66 ms per step, 3500 steps plus 15 evaluations in about 4.5 minutes, val loss about 1.6
    # (benchmarks/results/cpu-run). nanoGPT's CPU recipe shape (C=128, H=4, L=4, T=64) with B=16: past ~2000 steps
    # this model still improves, so the budget goes to steps rather than width.
    "cpu": dict(batch_size=16, block_size=64, n_embd=128, n_head=4, n_layer=4, dropout=0.0,
                lr=1e-3, lr_schedule="cosine", warmup_iters=100, min_lr=1e-4, max_iters=3500, eval_interval=250,
                grad_clip=1.0),
}
DEFAULT_PRESET = "cpu"
ARCH_FIELDS = ("block_size", "n_embd", "n_head", "n_layer", "bias", "activation")   # fixed once a run exists
SCHEDULES = ("constant", "cosine")
RUN_FILES = ("log.jsonl", "loss.png", "sample.txt")
SYNC_EVERY = 25          # GPU: steps between reading the losses back to the host (one synchronisation)


class ConfigError(ValueError):
    """Impossible settings or an unusable output directory; the message is one line meant for the user."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


class SaveFailed(RuntimeError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


@dataclasses.dataclass
class TrainConfig:
    preset: str = DEFAULT_PRESET
    data: str = None                   # corpus file; None: the packaged tiny Shakespeare
    out: str = None                    # run directory; None: runs/<preset>
    device: str = "cpu"
    seed: int = 1337
    # model
    batch_size: int = 16
    block_size: int = 64
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 4
    dropout: float = 0.0
    bias: bool = True
    activation: str = "relu"
    # optimisation
    lr: float = 1e-3
    min_lr: float = None               # cosine floor; None: lr / 10
    lr_schedule: str = "constant"      # "constant" or "cosine" (both after a linear warmup of warmup_iters)
    warmup_iters: int = 0
    max_iters: int = 1000
    weight_decay: float = 0.01         # on every parameter, as the lecture's torch.optim.AdamW defaults
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 0.0             # global gradient-norm clip; 0 disables
    # evaluation and output
    eval_interval: int = 100
    eval_iters: int = 20               # batches per split per evaluation
    sample_chars: int = 500            # characters sampled at the end of the run; 0: none

    def model_config(self, vocab_size):
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_embd=self.n_embd,
                         n_head=self.n_head, n_layer=self.n_layer, dropout=self.dropout, bias=self.bias,
                         activation=self.activation)

    def validate(self):
        """Raise ConfigError naming the first impossible setting."""
        def need(ok, msg):
            if not ok:
                raise ConfigError(msg)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        for name in ("batch_size", "max_iters", "eval_interval", "eval_iters"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        for name in ("seed", "warmup_iters", "sample_chars"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 0, f"{name} must be a non-negative integer, got {v!r}")
        need(_finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(self.min_lr is None or (_finite(self.min_lr) and 0 <= self.min_lr <= self.lr),
             f"min_lr must be in [0, lr = {self.lr}], got {self.min_lr!r}")
        need(self.lr_schedule in SCHEDULES,
             f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            need(_finite(v) and 0 <= v < 1, f"{name} must be in [0, 1), got {v!r}")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        try:
            self.model_config(vocab_size=1).validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self

    def lr_at(self, step):
        """Learning rate for the update that takes the model from `step` to step + 1."""
        if step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters               # linear warmup
        if self.lr_schedule == "constant":
            return self.lr
        floor = self.lr / 10 if self.min_lr is None else self.min_lr
        span = max(1, self.max_iters - self.warmup_iters)
        progress = min(1.0, (step - self.warmup_iters) / span)
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * progress))   # cosine from lr to floor


def make_config(preset=None, **overrides):
    """A TrainConfig from a preset (default "cpu") with fields overridden; validated."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return _build_config({**PRESETS[preset], **overrides, "preset": preset})


def _build_config(fields):
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    tc = TrainConfig(**fields)
    if tc.out is None:
        tc.out = str(Path("runs") / tc.preset)
    return tc.validate()


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ---- the run directory -------------------------------------------------------------------------------------------
def holds_run(out):
    """True when `out` holds (part of) a training run: checkpoints, a log, a plot or a sample."""
    out = Path(out)
    if not out.is_dir():
        return False
    if any((out / n).exists() for n in (ckpt_io.LAST, ckpt_io.BEST) + RUN_FILES):
        return True
    return any(out.glob(f".{ckpt_io.LAST}.*")) or any(out.glob(f".{ckpt_io.BEST}.*"))


def _clear_run(out):
    """--force: remove a previous run's files (and only those) from `out`."""
    for name in (ckpt_io.LAST, ckpt_io.BEST):
        for p in [out / name] + list(out.glob(f".{name}.*")):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).unlink()


def _read_log(path, upto_step):
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


# ---- evaluation and sampling -------------------------------------------------------------------------------------
def evaluate(model, batches):
    """Mean loss over fixed batches, in eval mode, building no graph."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            losses = [model(x, y)[1].item() for x, y in batches]
    finally:
        model.train(was_training)
    return float(np.mean(losses))


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


@dataclasses.dataclass
class TrainResult:
    out: Path
    step: int
    status: str                        # "done", "stopped" (--stop-at) or "interrupted" (Ctrl-C)
    best_val_loss: float
    last_val_loss: float
    tokens_per_s: float
    elapsed_s: float
    sample: str = ""


# ---- the run -----------------------------------------------------------------------------------------------------
def train(preset=None, resume=False, force=False, stop_at=None, progress=True, say=None, ddp=None, check_sync=0,
          **overrides):
    """Train a GPT; see the module docstring. Returns a TrainResult.

    preset: "small", "lecture" or "cpu" (default); overrides: any TrainConfig field (max_iters=200, out="runs/x").
    resume: continue the run in `out` from its last checkpoint (settings come from it; overrides may change the
    training settings, e.g. max_iters, but not the model's shape). force: start over in an `out` that holds a run.
    stop_at: stop after this step (saving a checkpoint) without changing the schedule, to resume later.
    ddp: data-parallel over MPI: None (default) when launched by mpiexec with several processes, True always,
    False never. check_sync: data-parallel only, every this many steps verify that all ranks hold bitwise the
    same parameters (a debugging aid; 0: never).
    Raises ConfigError, DataError, CheckpointError, DeviceError (bad input: nothing written); TrainingDiverged,
    SaveFailed.
    """
    from tqdm.auto import tqdm
    say = say or tqdm.write
    overrides = {k: v for k, v in overrides.items() if v is not None}
    dist = distributed.setup(ddp)                  # None: a plain run (mpi4py is never imported)
    if dist is None:
        tc, out, corpus, ckpt = _prepare(preset, resume, force, stop_at, overrides)
    else:
        if not dist.is_root:                       # rank 0 alone talks to the user
            progress, say = False, _silent
        tc, out, corpus, ckpt = _unpack(dist.on_root(
            lambda: _pack(*_prepare(preset, resume, force, stop_at, overrides, world_size=dist.size))))
    run = Run(tc, out, corpus, ckpt, say, dist=dist)
    end_step = tc.max_iters if stop_at is None else min(stop_at, tc.max_iters)
    status = "stopped" if end_step < tc.max_iters else "done"
    bar = tqdm(total=tc.max_iters, initial=run.step, unit="step", dynamic_ncols=True, smoothing=0.05,
               disable=None if progress else True, leave=True)
    try:
        with _Interrupt() as interrupt:
            run.interrupt = interrupt
            if ckpt is None:
                run.evaluate()                                       # the loss before training, for the curve
            while run.step < end_step:
                # data-parallel: the ranks agree on stopping through the step's allreduce (run.stop_agreed)
                if interrupt.requested if dist is None else run.stop_agreed:
                    status = "interrupted"
                    if run.saved_step != run.step:
                        run.save(ckpt_io.LAST)
                    break
                run.train_step()
                if dist is not None and check_sync and run.step % check_sync == 0:
                    dist.check_sync(run.opt, run.step)
                if run.ema_loss is not None:                      # GPU: known after the first read-back
                    bar.set_postfix_str(f"loss {run.ema_loss:.4f}, {run.tokens_per_s():,.0f} tok/s", refresh=False)
                bar.update()
                if run.step % tc.eval_interval == 0 or run.step == end_step:
                    run.evaluate(save=True)
    finally:
        bar.close()
    return run.finish(status)


def _silent(*args, **kwargs):
    pass


def _pack(tc, out, corpus, ckpt):
    """What rank 0 read, for the other ranks (the corpus as its text: they rebuild the ids themselves)."""
    return tc, out, (corpus.text, corpus.name, corpus.tokenizer.chars), ckpt


def _unpack(packed):
    tc, out, (text, name, chars), ckpt = packed
    return tc, out, Corpus(text, tokenizer=CharTokenizer(chars), name=name), ckpt


def _prepare(preset, resume, force, stop_at, overrides, world_size=1):
    """Every check of the settings, device, corpus and output directory, before anything is written; then the
    output directory is made ready. Returns (TrainConfig, out, Corpus, Checkpoint or None).
    world_size: the number of data-parallel ranks, which must divide the batch size."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other: resume the run, or start it over")
    if stop_at is not None and stop_at < 1:
        raise ConfigError(f"stop_at must be a positive step, got {stop_at}")
    ckpt = None
    if resume:
        out = Path(overrides.get("out") or Path("runs") / (preset or DEFAULT_PRESET))
        if not ((out / ckpt_io.LAST).exists() or any(out.glob(f".{ckpt_io.LAST}.old-*"))):
            raise ConfigError(f"--resume: no run to resume in {out} (no {ckpt_io.LAST}/ checkpoint there)")
        ckpt = ckpt_io.load(out / ckpt_io.LAST)
        if ckpt.optim_state is None or "rng" not in ckpt.meta or "train" not in ckpt.meta:
            raise ckpt_io.CheckpointError(f"checkpoint {ckpt.path} lacks the optimizer or RNG state needed to resume")
        tc = _resume_config(ckpt, preset, overrides, out)
    else:
        tc = make_config(preset, **overrides)
        out = Path(tc.out)
    if tc.batch_size % world_size:
        raise ConfigError(f"batch_size {tc.batch_size} does not split evenly over {world_size} data-parallel ranks: "
                          f"use a multiple of {world_size} (the global batch is divided into equal parts)")
    get_device(tc.device)
    corpus = load_corpus(tc.data, block_size=tc.block_size, tokenizer=ckpt.tokenizer if ckpt else None)
    try:
        tc.model_config(corpus.tokenizer.vocab_size).validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if ckpt and ckpt.step >= tc.max_iters:
        raise ConfigError(f"the run in {out} is already at step {ckpt.step} (max_iters {tc.max_iters}); "
                          "pass a larger --max-iters to train on")
    if ckpt and stop_at is not None and stop_at <= ckpt.step:
        raise ConfigError(f"--stop-at {stop_at} is not after the step of the run in {out} ({ckpt.step})")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    if not resume and holds_run(out) and not force:
        raise ConfigError(f"output directory {out} already holds a run: pass --resume to continue it, "
                          "--force to start over (deleting it), or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out}: {e.strerror or e}") from None
    if force:
        _clear_run(out)
    return tc, out, corpus, ckpt


class Run:
    """The state of one training session: model, optimizer, batch stream, step, losses, timing; and what it writes
    to the run directory (log, plot, checkpoints). dist: this rank's distributed.DataParallel, or None."""

    def __init__(self, tc, out, corpus, ckpt, say, dist=None):
        self.tc, self.out, self.corpus, self.say, self.dist = tc, out, corpus, say, dist
        self.writes = dist is None or dist.is_root        # rank 0 alone writes the log, plot, checkpoints, sample
        if dist is not None:
            dist.bind_device(tc.device)
        self.model = GPT(tc.model_config(corpus.tokenizer.vocab_size), seed=tc.seed, device=tc.device)
        if dist is not None and dist.rank > 0:            # each rank its own dropout masks (rank 0: a plain run's)
            self.model.rng = np.random.default_rng([tc.seed, 1, dist.rank])
        self.names = [n for n, _ in self.model.named_parameters()]    # the optimizer's parameter order
        if ckpt:
            try:
                self.model.load_state_dict(ckpt.model_state)
            except ValueError as e:
                raise ckpt_io.CheckpointError(f"checkpoint {ckpt.path} does not fit the model: {e}") from None
            rng_note = self._restore_dropout_rng(ckpt)
        self.opt = AdamW(self.model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2),
                         weight_decay=tc.weight_decay, max_grad_norm=tc.grad_clip or None)
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
        self.last_val, self.ema_loss = None, None
        self.pending = []                                 # GPU: (step, loss on the device) not yet read back
        self.elapsed0, self.t_start = float(ckpt.meta.get("elapsed_s", 0.0)) if ckpt else 0.0, time.perf_counter()
        self.interval_tokens, self.interval_time, self.session_tokens, self.session_time = 0, 0.0, 0, 0.0

        self.log_path, self.plot_path = out / "log.jsonl", out / "loss.png"
        self.history = _read_log(self.log_path, self.step) if ckpt and self.writes else []   # drop lines past it
        if self.writes:
            _write_text_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in self.history))
        self.data_info = {"path": str(Path(tc.data).resolve()) if tc.data else None, "name": Path(corpus.name).name,
                          "chars": len(corpus.ids), "sha256": corpus.sha256}
        if ckpt and ckpt.meta.get("data", {}).get("sha256") not in (None, corpus.sha256):
            say(f"note: {corpus.name} differs from the corpus this run started on")
        n_params = self.model.num_parameters()
        shape = f"B={tc.batch_size} T={tc.block_size} C={tc.n_embd} H={tc.n_head} L={tc.n_layer}"
        self.title = f"{self.data_info['name']}  |  preset {tc.preset}: {shape}, {n_params:,} params"
        warmup = f" (warmup {tc.warmup_iters})" if tc.warmup_iters else ""
        say(f"{'resuming' if ckpt else 'training'} preset '{tc.preset}' on {self.data_info['name']} "
            f"({len(corpus.ids):,} chars, vocab {corpus.tokenizer.vocab_size}; train {len(corpus.train):,} / "
            f"val {len(corpus.val):,}) | {n_params:,} parameters | {shape} dropout={tc.dropout} | "
            f"lr {tc.lr:g} {tc.lr_schedule}{warmup} | {self.model.device} | out {out}")
        if dist is not None:
            say(f"data-parallel: {dist.size} ranks x {tc.batch_size // dist.size} rows of each batch of "
                f"{tc.batch_size}; gradients averaged by one allreduce ({dist.transport}) of "
                f"{dist.n + 2:,} floats per step")
        say(f"evaluation: every {tc.eval_interval} steps, {tc.eval_iters} fixed batches of {tc.batch_size} per "
            f"split" + (f" | from step {self.step}" if ckpt else ""))
        if ckpt and rng_note:
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

    def elapsed(self):
        return self.elapsed0 + time.perf_counter() - self.t_start

    def tokens_per_s(self):
        return self.session_tokens / self.session_time if self.session_time else 0.0

    def train_step(self):
        """One optimizer update. A NaN or infinite loss raises TrainingDiverged before any parameter changes (on the
        GPU: at the next read-back of the losses, before any evaluation or checkpoint; see sync_losses)."""
        t0 = time.perf_counter()
        self.opt.set_lr(self.tc.lr_at(self.step))
        x, y = self.sampler.sample()                                  # (B, T), (B, T); data-parallel (B / N, T)
        _, loss = self.model(x, y)
        value = None
        if self.dist is not None:
            value = loss.item()
            self.opt.zero_grad()
            loss.backward()

            def average(opt):                 # between gathering the gradients and clipping/updating
                nonlocal value
                stop = self.interrupt is not None and self.interrupt.requested
                value, self.stop_agreed = self.dist.average(value, self.step + 1, stop)   # mean over the ranks
                if not math.isfinite(value):  # every rank sees the same mean: all stop here, parameters untouched
                    raise distributed.all_ranks(TrainingDiverged(self._diverged(value, self.step + 1, "training")))
            self.opt.step(grad_hook=average)
        elif self.model.device.xp is not np:
            # GPU: no host synchronisation inside a step; the losses are read back every SYNC_EVERY steps and before
            # any evaluation or checkpoint (sync_losses), which is also where a NaN is caught, naming its step
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.pending.append((self.step + 1, loss.data))
        else:
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(self._diverged(value, self.step + 1, "training"))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.step += 1
        dt, tokens = time.perf_counter() - t0, self.tc.batch_size * self.tc.block_size
        self.interval_tokens += tokens
        self.interval_time += dt
        self.session_tokens += tokens
        self.session_time += dt
        if value is None:
            if len(self.pending) >= SYNC_EVERY:
                self.sync_losses()
        else:
            self._track(value)
        return value

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

    def evaluate(self, save=False):
        """Losses on the fixed batches -> log line, plot, and (save=True) last/ and, if better, best/."""
        self.sync_losses()
        losses = [evaluate(self.model, self.eval_sets[split]) for split in ("train", "val")]
        if self.dist is not None:
            losses = self.dist.mean(losses)                           # each rank evaluated its rows of each batch
        rec = {"step": self.step, "train_loss": losses[0], "val_loss": losses[1],
               "lr": self.tc.lr_at(max(self.step - 1, 0)),               # the rate of the update that led here
               "tokens_per_s": round(self.interval_tokens / self.interval_time, 1) if self.interval_time else None,
               "elapsed_s": round(self.elapsed(), 3)}
        if not (math.isfinite(rec["val_loss"]) and math.isfinite(rec["train_loss"])):
            raise distributed.all_ranks(TrainingDiverged(self._diverged(rec["val_loss"], self.step, "evaluation")))
        self.interval_tokens, self.interval_time = 0, 0.0
        improved = save and rec["val_loss"] < self.best_val
        if save:
            self.last_val = rec["val_loss"]
            self.best_val = min(self.best_val, self.last_val)
            rec["best_val_loss"] = self.best_val
            self.save(ckpt_io.LAST)
            if improved:
                self.save(ckpt_io.BEST)
        self.history.append(rec)
        if not self.writes:
            return rec
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        plot_losses(self.history, self.plot_path, self.title)
        width = len(str(self.tc.max_iters))
        tps = f" | {rec['tokens_per_s']:,.0f} tok/s" if rec["tokens_per_s"] else ""
        self.say(f"step {rec['step']:>{width}}/{self.tc.max_iters} | train {rec['train_loss']:.4f} | "
                 f"val {rec['val_loss']:.4f} | lr {rec['lr']:.2e}{tps} | {rec['elapsed_s']:.0f} s"
                 + (" | best, saved" if improved else ""))
        return rec

    def save(self, name):
        self.sync_losses()                                # never save past a diverged step
        rng = {"model": self.model.rng.bit_generator.state, "batch": self.sampler.state}
        if self.dist is not None:             # every rank's dropout generator (a collective: all ranks save)
            states = self.dist.gather(rng["model"])
            if not self.writes:
                self.saved_step = self.step
                return
            rng["model_ranks"] = states
        meta = {"best_val_loss": None if self.best_val == math.inf else self.best_val, "val_loss": self.last_val,
                "rng": rng, "train": {**dataclasses.asdict(self.tc), "data": self.data_info["path"]},
                "data": self.data_info, "elapsed_s": self.elapsed()}
        if self.dist is not None:
            meta["data_parallel"] = {"ranks": self.dist.size, "rows_per_rank": self.tc.batch_size // self.dist.size}
        try:
            ckpt_io.save(self.out / name, self.model, self.corpus.tokenizer, self.step, optimizer=self.opt,
                         optimizer_names=self.names, meta=meta)
        except OSError as e:
            kept = "the previous checkpoint there is intact" if (self.out / name).exists() else "nothing was saved"
            raise SaveFailed(f"could not save the step-{self.step} checkpoint {self.out / name}: "
                             f"{e.strerror or e}; {kept}") from None
        self.saved_step = self.step

    def _diverged(self, value, step, where):
        kept = (f"the last good checkpoint, {self.out / ckpt_io.LAST} (step {self.saved_step}), is untouched"
                if self.saved_step is not None else "no checkpoint was saved")
        return f"{where} loss is {value} at step {step}: stopped; {kept}; try a lower --lr or --grad-clip 1.0"

    def finish(self, status):
        """The closing lines, and a sample from the final model (not after Ctrl-C: the user wants out)."""
        out, say = self.out, self.say
        result = TrainResult(out, self.step, status, self.best_val, self.last_val, self.tokens_per_s(),
                             self.elapsed())
        if not self.writes:
            return result
        if status == "interrupted":
            say(f"interrupted at step {self.step}: saved {out / ckpt_io.LAST}; continue with: "
                f"tinygrad-gpt train --out {out} --resume")
            return result
        say(f"{'stopped' if status == 'stopped' else 'finished'} at step {self.step}: best val loss "
            f"{self.best_val:.4f}, {result.tokens_per_s:,.0f} tok/s, {result.elapsed_s:.0f} s | checkpoints in {out}")
        if self.tc.sample_chars:
            tok = self.corpus.tokenizer
            ids = self.model.generate(tok.encode(default_prompt(tok))[None, :], self.tc.sample_chars,
                                      seed=self.tc.seed)              # (1, 1 + sample_chars)
            result.sample = tok.decode(ids[0])
            _write_text_atomic(out / "sample.txt", result.sample)
            say(f"--- sample from the final model ({self.tc.sample_chars} chars, temperature 1.0) ---")
            say(result.sample.strip("\n"))
            say(f"--- more: tinygrad-gpt sample --ckpt {out}")
        return result


def _resume_config(ckpt, preset, overrides, out):
    saved = dict(ckpt.meta["train"])
    if preset is not None and preset != saved.get("preset"):
        raise ConfigError(f"the run in {out} uses preset {saved.get('preset')!r}, not {preset!r}: "
                          "drop --preset to resume it")
    changed = [f"{k} (run: {saved.get(k)!r}, asked: {overrides[k]!r})" for k in ARCH_FIELDS + ("seed",)
               if k in overrides and overrides[k] != saved.get(k)]
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming the run in {out}")
    fields = {**saved, **overrides, "out": str(out)}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return _build_config({k: v for k, v in fields.items() if k in known})
