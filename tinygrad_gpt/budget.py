"""Time budgets (`tinygrad-gpt train --time 5m`): read the duration, time the run, plan max_iters to fit it.

The budget runs from the start of train(). plan_budget, called once the trainer is built and before anything is
written:
  1. rehearses steps: one untimed (the first step of a process compiles or loads the kernels), then timed ones
     (REHEARSAL_STEPS, about REHEARSAL_S in all); `rehearse` takes the trainer's state() before them and loads it
     after, so the run is bitwise the one `--max-iters` with the chosen number gives;
  2. times an evaluation (a fresh run's step-0 evaluation, which it then logs), and a trial checkpoint and plot
     written to a scratch directory and removed;
  3. plans max_iters: the most steps that, with the evaluations and checkpoints they bring (fit_steps), fit in
     what is left of the budget less BUDGET_MARGIN of it.
It returns the plan (max_iters, the timings it came from); the trainer applies it (Trainer.apply_plan), prints it,
logs it with the next evaluation and stores it in every checkpoint; `--resume` then continues the same schedule as
any run. The closing sample is not in the budget. A budget with no room for one step and its evaluation is a
ConfigError, raised before anything is written.
"""
import math
import re
import time

import numpy as np

from . import checkpoint as ckpt_io
from .data import micro_batches
from .errors import ConfigError, SaveFailed
from .rundir import LAST, plot_losses

REHEARSAL_S = 1.0        # the timed rehearsal steps add up to about this ...
REHEARSAL_STEPS = 3, 50  # ... with at least and at most this many steps
BUDGET_MARGIN = 0.05     # the share of the remaining budget left unplanned, for steps slower than measured

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text):
    """A wall-clock budget in seconds from "90s", "5m", "1h", "1h30m" (hours, minutes, seconds in that order, each
    optional, whole numbers); a number is taken as seconds. Raises ConfigError for anything else or zero."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = _DURATION.fullmatch(str(text).strip().lower())
        if not str(text).strip() or match is None or not any(match.groups()):
            raise ConfigError(f"--time: cannot read {text!r} as a duration: write it like 90s, 5m, 1h or 1h30m")
        h, m, s = (int(g or 0) for g in match.groups())
        seconds = float(3600 * h + 60 * m + s)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time must be a positive duration, got {text!r}")
    return seconds


def evaluations_between(start, end, eval_interval):
    """How many evaluations a run makes at steps in (start, end]: every multiple of eval_interval, and the last
    step (which is one of them or one more)."""
    if end <= start:
        return 0
    return end // eval_interval - start // eval_interval + (1 if end % eval_interval else 0)


def fit_steps(seconds, start, step_s, eval_s, eval_interval):
    """The largest number of steps n such that steps start+1 .. start+n, taking step_s each, and the evaluations
    they bring (evaluations_between(start, start + n), taking eval_s each, checkpoints included) last at most
    `seconds`; 0 when not even one step and its evaluation fit. The cost grows with n, so a bisection finds it."""
    def cost(n):
        return n * step_s + evaluations_between(start, start + n, eval_interval) * eval_s
    if cost(1) > seconds:
        return 0
    lo, hi = 1, max(1, int(seconds / step_s)) + 1         # cost(lo) fits; cost(hi) > n * step_s >= seconds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return lo


def plan_budget(trainer, budget_s, t_start, label):
    """--time: the plan that ends training, evaluations and checkpoints within budget_s seconds of t_start (see the
    module docstring), and the step-0 losses of a fresh run (measured here, to time an evaluation; None for a
    resumed one). Raises ConfigError when not even one step and its evaluation fit."""
    dist, tc, clock = trainer.dist, trainer.tc, time.perf_counter

    def timed_rehearsal(steps):
        t0 = clock()
        rehearse(trainer, steps)
        return (clock() - t0) / steps

    rehearse(trainer, 1)                              # untimed: the first step compiles or loads the kernels
    low, high = REHEARSAL_STEPS
    first = timed_rehearsal(low)
    more = dist.on_root(lambda: min(high, max(low, math.ceil(REHEARSAL_S / first))) - low)   # the ranks agree
    step_s = first if more == 0 else (first * low + timed_rehearsal(more) * more) / (low + more)
    warm_up_evaluation(trainer)
    t0 = clock()
    losses = trainer.estimate_losses()                # a fresh run's step-0 evaluation; timed either way
    losses_s = clock() - t0

    def plan():
        save_s, plot_s = _trial_save(trainer)
        eval_s = losses_s + plot_s + 2 * save_s       # an evaluation writes last/ and, when it improves, best/
        spent = clock() - t_start
        left = (budget_s - spent) * (1 - BUDGET_MARGIN)
        n = fit_steps(left, trainer.step, step_s, eval_s, tc.eval_interval)
        if n == 0:
            need = spent + (step_s + eval_s) / (1 - BUDGET_MARGIN)
            raise ConfigError(
                f"--time {label} is too short: start-up and timing took {spent:.1f} s, and one step "
                f"({step_s * 1e3:.1f} ms) with one evaluation and its checkpoints ({eval_s:.2f} s) needs at least "
                f"{need:.1f} s in all (with the {BUDGET_MARGIN:.0%} margin); give a longer --time")
        end = trainer.step + n
        evals = evaluations_between(trainer.step, end, tc.eval_interval)
        return {"time": label, "seconds": budget_s, "from_step": trainer.step, "max_iters": end,
                "step_s": round(step_s, 6), "eval_s": round(eval_s, 4), "evaluations": evals,
                "startup_s": round(spent, 3), "planned_end_s": round(spent + n * step_s + evals * eval_s, 3)}
    budget = dist.on_root(plan)                       # data-parallel: rank 0 decides, every rank gets the plan
    trainer.say(f"time budget {label}: max_iters {budget['max_iters']:,} ({budget['max_iters'] - trainer.step:,} "
                f"steps of {step_s * 1e3:.1f} ms, {budget['evaluations']} evaluation"
                f"{'s' if budget['evaluations'] != 1 else ''} with checkpoints of "
                f"{budget['eval_s']:.2f} s; {budget['startup_s']:.1f} s of start-up and timing; planned end at "
                f"{budget['planned_end_s']:.0f} s of {budget_s:.0f} s)")
    return budget, (losses if trainer.step == 0 else None)


def rehearse(trainer, steps):
    """Run `steps` training steps, then load the state from before them: afterwards the run is as if they never
    happened (the loss and speed counters start over too). Dropout masks come from a throwaway generator
    meanwhile, so the model's own (and on the GPU the device generator it seeds) is not touched."""
    saved = trainer.state(collective=False)           # every rank takes (and puts back) its own dropout stream
    model = trainer.model
    throwaway, p = model.device.xp.random.default_rng(0), np.float32(model.config.dropout)
    model.set_mask_source(lambda shape: throwaway.random(shape, dtype=np.float32) >= p)
    try:
        for _ in range(steps):
            trainer.train_step()
        trainer.sync_losses()                         # waits for the device: the steps are done when timed
    finally:
        model.set_mask_source(None)
        trainer.load_state(saved)
        trainer.pending, trainer.ema_loss, trainer.value = [], None, None
        trainer.speed.reset()


def warm_up_evaluation(trainer):
    """One evaluation forward pass, discarded: the first in eval mode may compile or load kernels of its own."""
    x, y = trainer.eval_sets["val"][0]
    xm, ym = micro_batches(x, y, trainer.tc.grad_accum)[0]
    with trainer.model.evaluating():
        trainer.model(xm, ym)


def _trial_save(trainer):
    """Time one checkpoint and one plot, written to a scratch directory and removed. Returns (save_s, plot_s)."""
    clock = time.perf_counter
    records = [{"step": 0, "train_loss": 1.0, "val_loss": 1.0}]
    try:
        with trainer.rundir.scratch() as tmp:
            plot_losses(records, tmp / "loss.png", trainer.title)    # untimed: the first plot imports matplotlib
            t0 = clock()
            ckpt_io.write(tmp / LAST, **trainer.checkpoint(collective=False))       # on rank 0 only
            t1 = clock()
            plot_losses(records, tmp / "loss.png", trainer.title)
            return t1 - t0, clock() - t1
    except OSError as e:
        raise SaveFailed(f"could not write a trial checkpoint in {trainer.out}: {e.strerror or e}; "
                         "nothing was saved") from None
