"""The command line: `tinygrad-gpt train|sample|eval|bench|import-torch ...` (also `python -m tinygrad_gpt`).

Bad input (a missing or unusable corpus, an impossible config, an output directory holding another run, an unusable
checkpoint, a prompt or corpus outside the vocabulary, an unavailable device, a malformed duration, a time budget
too short for one evaluation, a state dict import-torch cannot read or map) prints one line, "error: ...", on stderr
and exits with status 2, with no traceback and nothing written. A run that diverges or cannot save exits with 1
(its last good checkpoint intact), Ctrl-C with 130 (after saving).

Data-parallel (`mpiexec -n N tinygrad-gpt train ...`): rank 0 prints; an error every rank meets together (bad input,
divergence) is printed once and every rank exits with its status; an error on one rank alone is printed with the
rank's number and ends the whole job (MPI_Abort), so no rank waits forever for the others.
"""
import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

from . import distributed
from .backend import cuda_available
from .compare import compare
from .config import DEFAULT_PRESET, PRESETS, TrainConfig, make_config, setting_fields, setting_names
from .errors import RunFailed, UsageError
from .evaluate import SPLITS, describe, evaluate
from .import_torch import import_state_dict
from .ladder import run as run_ladder
from .lecture import RUNGS
from .model import GPT, count_parameters
from .sample import main_stream, sample
from .train import train

EXIT_INTERRUPTED = 130                     # Ctrl-C; the other statuses are errors.py's


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line ("error: ..." plus where to find help), not the usage dump."""

    def error(self, message):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def build_parser():
    p = _Parser(prog="tinygrad-gpt", description="Train and sample the char-level GPT of \"Let's build GPT\" "
                "on a NumPy autograd engine (no torch).")
    sub = p.add_subparsers(dest="command", metavar="{train,sample,eval,bench,import-torch,ladder,compare}",
                           parser_class=_Parser)
    sub.required = True

    preset_lines = "\n".join(f"  {name:8} " + " ".join(f"{k}={v}" for k, v in cfg.items())
                             for name, cfg in PRESETS.items())
    t = sub.add_parser("train", help="train a GPT on a text corpus",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a GPT. With no arguments: the 'cpu' preset on the packaged tiny "
                       "Shakespeare, written to runs/cpu.\nFlags override the preset's fields.",
                       epilog=f"presets:\n{preset_lines}\n\nexamples:\n  tinygrad-gpt train\n"
                       "  tinygrad-gpt train --preset small --out runs/small\n"
                       "  tinygrad-gpt train --data data/hugo_contemplations.txt --out runs/hugo --max-iters 500\n"
                       "  tinygrad-gpt train --out runs/cpu --resume --max-iters 2000\n"
                       "  tinygrad-gpt train --time 5m --out runs/5m        # max_iters fitted to 5 minutes\n"
                       "  tinygrad-gpt train --preset lecture --grad-accum 4  # 4 micro-batches of 16 rows per step\n"
                       "  mpiexec -n 2 tinygrad-gpt train --batch-size 32    # data-parallel, 16 rows per rank")
    groups = _add_settings(t)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="start over in an --out that holds a run (deletes it)")
    t.add_argument("--stop-at", type=_int, metavar="STEP",
                   help="stop (saving a checkpoint) after this step, keeping the schedule; continue with --resume")
    groups["optimisation"].add_argument(
        "--time", metavar="DURATION", dest="time_budget",
        help="train for this wall-clock time (90s, 5m, 1h, 1h30m): max_iters is fitted to it from the first steps' "
        "timing and stored, so --resume continues the same schedule; not with --max-iters")
    groups["evaluation"].add_argument("--no-progress", action="store_true",
                                      help="no progress bar (evaluation lines only)")
    d = t.add_argument_group("data-parallel (automatic under mpiexec with several processes; needs mpi4py)")
    d.add_argument("--ddp", action="store_true",
                   help="run data-parallel even when not detected from the MPI environment")
    d.add_argument("--check-sync", type=_int, default=0, metavar="K",
                   help="every K steps verify that all ranks hold bitwise the same parameters (debugging) [off]")

    b = sub.add_parser("bench", help="time the training step of a preset's model (ms per step, tokens/s)",
                       description="Time the training step (forward, backward, AdamW) of a preset's model on random "
                       "tokens, as `train` runs it. The full benchmark suite, against torch and other engines, is "
                       "benchmarks/bench.py in the repository.",
                       epilog="example: tinygrad-gpt bench --preset small --steps 50")
    b.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET, help=f"[{DEFAULT_PRESET}]")
    b.add_argument("--device", nargs="+", choices=["cpu", "cuda"], help="[cpu, and cuda where a GPU is present]")
    b.add_argument("--steps", type=_int, default=20, help="timed steps [20]")
    b.add_argument("--warmup", type=_int, default=3, help="untimed steps first [3]")
    b.add_argument("--json", action="store_true", help="one JSON object per device instead of the table")
    s = sub.add_parser("sample", help="generate text from a checkpoint, streamed as it comes",
                       description="Generate text from a checkpoint, streamed character by character.",
                       epilog='example: tinygrad-gpt sample --ckpt runs/cpu --prompt "ROMEO:" -n 500 '
                       '--temperature 0.8 --top-k 40 --seed 1')
    s.add_argument("--ckpt", default="runs/cpu", metavar="DIR",
                   help="a run directory (uses its best checkpoint) or a checkpoint directory [runs/cpu]")
    s.add_argument("--prompt", default="", help="text to continue (default: a newline, not printed)")
    s.add_argument("-n", "--num-chars", type=_int, default=500, help="characters to generate [500]")
    s.add_argument("--temperature", type=float, default=1.0, help="sharpness of the sampling; 0: greedy [1.0]")
    s.add_argument("--top-k", type=_int, default=None, help="sample among the k likeliest characters [all]")
    s.add_argument("--seed", type=_int, default=None, help="seed of the sampling [a fresh one each time]")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="[cpu]")
    s.add_argument("--no-cache", action="store_true",
                   help="recompute the whole context for each character instead of using the key/value cache")
    s.add_argument("--window", choices=["slide", "shift"], default="slide",
                   help="past block_size: 'slide' reads the last block_size characters (the lecture's rule; the "
                   "cache then rebuilds each step), 'shift' drops the oldest quarter once the context is full "
                   "(the cache keeps paying off) [slide]")
    v = sub.add_parser("eval", help="a checkpoint's loss on every full block of a corpus split",
                       description="The mean cross-entropy of a checkpoint on every full block of a corpus split "
                       "(not a sample), in nats and bits per character and as perplexity.",
                       epilog="examples:\n  tinygrad-gpt eval --ckpt runs/cpu\n"
                       "  tinygrad-gpt eval --ckpt runs/cpu/last --split train --json\n"
                       "  tinygrad-gpt eval --ckpt runs/hugo --data other.txt --split all",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--ckpt", default="runs/cpu", metavar="DIR",
                   help="a run directory (uses its best checkpoint) or a checkpoint directory [runs/cpu]")
    v.add_argument("--data", metavar="FILE", help="UTF-8 corpus [the one the checkpoint was trained on]")
    v.add_argument("--split", choices=SPLITS, default="val",
                   help="val or train (the training run's 90%%/10%% rule) or all of the text [val]")
    v.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    v.add_argument("--batch-size", type=_int, default=32, help="blocks per forward pass [32]")
    v.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="[cpu]")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("import-torch", help="turn a state dict trained with torch into a checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Import the state dict of a GPT trained with torch (a torch.save file, read "
                       "without torch and\nwithout running its pickle, or a safetensors file) into a checkpoint "
                       "directory that\n`sample` and `eval` read. Two namings are recognised: the lecture's gpt.py "
                       "(token_embedding_table,\nblocks.{i}.sa.heads.{j}.query/key/value, ffwd.net.0/2, ln1/ln2, "
                       "ln_f, lm_head), whose heads are\nfused into one qkv weight, and tinygrad_gpt's own "
                       "(reference/model.py). The sizes come from the\nshapes; the vocabulary is the sorted set of "
                       "the corpus' characters, as in the lecture.",
                       epilog="attention scale:\n"
                       "  head  the model scaled q @ k.T by head_size**-0.5 (the lecture's final gpt.py; ours)\n"
                       "  embd  it scaled by n_embd**-0.5 (the lecture notebooks' C**-0.5): the query weights are\n"
                       "        multiplied by sqrt(head_size / n_embd) on import, so our head-size-scaled model\n"
                       "        computes the same attention\n\n"
                       "examples:\n  tinygrad-gpt import-torch model.pt --out runs/lecture\n"
                       "  tinygrad-gpt sample --ckpt runs/lecture --prompt \"ROMEO:\"\n"
                       "  tinygrad-gpt import-torch bigram.pt --out runs/nb --attention-scale embd --data input.txt")
    i.add_argument("state_dict", metavar="STATE_DICT", help="torch.save file or safetensors file of the state dict")
    i.add_argument("--out", required=True, metavar="DIR", help="the checkpoint directory to write (new or empty)")
    i.add_argument("--data", metavar="FILE",
                   help="the corpus the model was trained on, for its vocabulary (default: the packaged tiny "
                   "Shakespeare)")
    i.add_argument("--attention-scale", choices=["head", "embd"], default="head",
                   help="what the model scaled attention by, see below [head]")
    i.add_argument("--n-head", type=_int, metavar="N", help="heads per block: needed for tinygrad_gpt's names, "
                   "whose fused qkv weight does not show it (the lecture's names do)")
    i.add_argument("--activation", choices=["relu", "gelu"], default="relu",
                   help="the MLP activation of the model (the lecture's is relu) [relu]")
    i.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    _ladder_parser(sub)
    _compare_parser(sub)
    return p


def _add_settings(parser):
    """One flag per training setting (config.setting_fields: TrainConfig's fields and the model's), --block-size
    for block_size, its help from the field's metadata. Unset, a flag leaves the preset's value; the help shows the
    default of a setting no preset sets. Returns the argument groups {name: group}."""
    presets_set = {k for cfg in PRESETS.values() for k in cfg}
    groups = {None: parser,
              "model": parser.add_argument_group("model and batch (preset values unless given)"),
              "optimisation": parser.add_argument_group("optimisation (preset values unless given)"),
              "evaluation": parser.add_argument_group("evaluation and output")}
    for name, f in setting_fields():
        meta, kw = f.metadata, {"default": None}
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {int: _int, float: float, str: str}[f.type]
        kw.update({k: list(v) if k == "choices" else v for k, v in meta.items() if k in ("choices", "metavar")})
        shown = "" if name in presets_set or f.default is None else f" [{f.default}]"
        kw["help"] = meta["help"].replace("%", "%%") + shown
        group = meta.get("group", None if name in TrainConfig.__dataclass_fields__ else "model")
        groups[group].add_argument("--" + name.replace("_", "-"), **kw)
    return groups


def _ladder_parser(sub):
    d = sub.add_parser("ladder", help="train the lecture's rungs, bigram to scaled-up GPT, and compare them",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train every rung of the lecture (tinygrad_gpt/lecture/, examples/lecture/ in the "
                       "repository) on one\ncorpus within one time budget, each with its own hyperparameters, into "
                       "run directories\nOUT/<rung> (sample, eval and compare read them); then OUT/ladder.md (the "
                       "table and a sample\nof each rung), OUT/ladder.json and OUT/ladder.png (every rung's "
                       "validation curve).\n\nrungs: " + ", ".join(r.name for r in RUNGS),
                       epilog="examples:\n  tinygrad-gpt ladder                       # 10 minutes, tiny Shakespeare, "
                       "runs/ladder\n  tinygrad-gpt ladder --time 2m --rungs bigram,one-head,layernorm\n"
                       "  tinygrad-gpt sample --ckpt runs/ladder/layernorm -n 200")
    d.add_argument("--time", default="10m", metavar="DURATION", help="the whole ladder's budget: 90s, 5m, 1h [10m]")
    d.add_argument("--data", metavar="FILE", help="UTF-8 corpus [the packaged tiny Shakespeare]")
    d.add_argument("--out", default="runs/ladder", metavar="DIR", help="[runs/ladder]")
    d.add_argument("--rungs", default="all", metavar="LIST", help="comma-separated rung names, or all [all]")
    d.add_argument("--seed", type=_int, default=1337, help="seeds every rung's weights, batches and dropout [1337]")
    d.add_argument("--force", action="store_true", help="replace a ladder already in --out")
    d.add_argument("--max-steps", type=_int, metavar="N", help="at most N steps per rung (a quick look)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")


def _ladder(args):
    run_ladder(args.out, args.time, data=args.data, rungs=args.rungs, seed=args.seed, force=args.force,
        progress=not args.no_progress, max_steps=args.max_steps)
    return 0


def _compare_parser(sub):
    c = sub.add_parser("compare", help="compare runs: what changed, steps, time, tokens/s, losses (a tuning table)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Compare training runs (of train, data-parallel train, or ladder rungs): for each, "
                       "the settings that differ\nfrom the first run's (the baseline), its steps, wall time, tokens/s, "
                       "final train and val loss,\nbest val loss and that loss's change against the baseline's in "
                       "percent. Runs on another corpus\nthan the baseline's are flagged with a *.",
                       epilog="examples:\n  tinygrad-gpt compare runs/cpu runs/deeper runs/wider\n"
                       "  tinygrad-gpt compare runs/ladder/*/ --markdown ladder.md --plot    # every rung of a ladder\n"
                       "  tinygrad-gpt compare runs/a runs/b --json")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; the first is the baseline")
    c.add_argument("--json", action="store_true", help="print one JSON object (numbers unrounded) instead of the table")
    c.add_argument("--markdown", metavar="FILE", help="also write the table as markdown to FILE")
    c.add_argument("--plot", nargs="?", const="compare.png", metavar="FILE",
                   help="also draw every run's validation curve into FILE (.png, .svg, .pdf) [compare.png]")


def _compare(args):
    compare(args.runs, json_out=args.json, markdown=args.markdown, plot=args.plot)
    return 0


def _import_torch(args):
    out, cfg, scheme = import_state_dict(args.state_dict, args.out, data=args.data,
                                         attention_scale=args.attention_scale, n_head=args.n_head,
                                         activation=args.activation, force=args.force)
    print(f"imported {args.state_dict} ({'the lecture' if scheme == 'lecture' else 'tinygrad_gpt'}'s names, "
          f"{count_parameters(cfg):,} parameters: n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"block_size={cfg.block_size} vocab_size={cfg.vocab_size}) into {out}\n"
          f"try: tinygrad-gpt sample --ckpt {out}")
    return 0


def _train(args):
    overrides = {k: getattr(args, k) for k in setting_names() if k != "preset" and getattr(args, k) is not None}
    if args.check_sync < 0:
        raise UsageError(f"--check-sync must be >= 0, got {args.check_sync}")
    result = train(preset=args.preset, resume=args.resume, force=args.force, stop_at=args.stop_at,
                   time_budget=args.time_budget, progress=not args.no_progress, ddp=True if args.ddp else None,
                   check_sync=args.check_sync, **overrides)
    return EXIT_INTERRUPTED if result.status == "interrupted" else 0


def _sample(args):
    sample(args.ckpt, prompt=args.prompt, num_chars=args.num_chars, temperature=args.temperature,
           top_k=args.top_k, seed=args.seed, device=args.device, use_cache=not args.no_cache, stream=main_stream(),
           window=args.window)
    return 0


def _eval(args):
    result = evaluate(args.ckpt, data=args.data, split=args.split, batch_size=args.batch_size, device=args.device,
                      progress=not args.no_progress, note=lambda text: print(text, file=sys.stderr))
    print(json.dumps(result) if args.json else describe(result))
    return 0


def _bench(args):
    """Median time of `steps` training steps after `warmup` ones, per device, on a batch of random tokens."""


    if args.steps < 1 or args.warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    tc = make_config(args.preset)
    cfg = tc.model_config(vocab_size=65)
    data = np.random.default_rng(0).integers(0, cfg.vocab_size, (tc.batch_size, cfg.block_size + 1))
    x, y = data[:, :-1], data[:, 1:]                               # (B, T) each
    for device in args.device or (["cpu", "cuda"] if cuda_available() else ["cpu"]):
        model = GPT(cfg, device=device)
        opt = tc.optimizer(model.parameters())                     # the preset's AdamW, clipping included
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()                                            # waits for a GPU's queued work
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        q1, med, q3 = np.percentile(np.array(times) * 1e3, [25, 50, 75])
        row = {"device": device, "preset": args.preset, "batch_size": tc.batch_size,
               "block_size": cfg.block_size, "step_ms": med, "iqr_ms": [q1, q3],
               "tokens_per_s": tc.batch_size * cfg.block_size / med * 1e3, "steps": args.steps}
        print(json.dumps(row) if args.json else
              f"{args.preset} on {device}: {med:.2f} ms per step (IQR {q1:.2f}-{q3:.2f}, {args.steps} steps), "
              f"{row['tokens_per_s']:,.0f} tokens/s")
    return 0


def _error(message, code, exc=None):
    """Print the one-line error and return the exit status. Data-parallel: an error of this rank alone (not
    marked all_ranks) ends the whole job; one that every rank met is printed by rank 0 only."""
    text = " ".join(str(message).split())
    dist = distributed.active()
    if dist is not None and dist.size > 1 and not getattr(exc if exc is not None else message, "all_ranks", False):
        dist.abort(f"error: rank {dist.rank} of {dist.size}: {text} (ending the job)", code)
    if distributed.this_rank() not in (None, 0):
        return code
    print(f"error: {text}", file=sys.stderr)
    return code


def main(argv=None):
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        return {"train": _train, "sample": _sample, "eval": _eval, "bench": _bench,
                "import-torch": _import_torch, "ladder": _ladder,
                "compare": _compare}[args.command](args)
    except SystemExit as e:                # --help
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:                # bad input, nothing written: 2
        return _error(e, e.exit_status)
    except RunFailed as e:                 # a run that diverged or could not save, its last checkpoint intact: 1
        return _error(e, e.exit_status)
    except BrokenPipeError:                # `tinygrad-gpt sample | head`: the reader left; not an error
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED)
    except OSError as e:                   # e.g. the disk filled up while saving
        return _error(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}", RunFailed.exit_status, e)
    except Exception as e:                 # a bug. Data-parallel, the job must not hang on it: traceback, abort
        if distributed.active() is None:
            raise
        if not getattr(e, "all_ranks", False):
            traceback.print_exc()          # this rank alone: where it failed, then the job ends
        return _error(e, RunFailed.exit_status)


if __name__ == "__main__":
    sys.exit(main())
