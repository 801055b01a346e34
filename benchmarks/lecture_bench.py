"""The lecture's own code, timed under torch and under tinygrad_gpt.

    python benchmarks/lecture_bench.py                         # small and lecture, 5 rounds each (minutes)
    python benchmarks/lecture_bench.py --configs small --quick # a rough look in about a minute
    python benchmarks/lecture_bench.py --update-readme         # and write the table of ../README.md

`benchmarks/lecture_gpt.py` is the lecture's model as a learner writes it (one Head module per head, torch's own
layers). Engines, each in its own process with the same threads (protocol.thread_env, NUMBA_NUM_THREADS included) on
the same CPUs and the same glibc allocator settings (protocol.ALLOCATORS["tuned"], the setting tinygrad_gpt makes for
itself on first kernel use, in every process's environment), taking turns round after round as benchmarks/runner.py
does:

    tinygrad_gpt          that file with its three import lines swapped textually for
                          `import tinygrad_gpt as torch` / `import tinygrad_gpt.nn as nn` /
                          `from tinygrad_gpt.nn import functional as F` (what a user does), compiled and run as a
                          module; the lecture's optimizer line `torch.optim.AdamW(model.parameters(), lr=...)`
    torch                 the file under torch, `torch.optim.AdamW(..., fused=True)`. The ratios' denominator
    torch-default-adamw   the same, with the lecture's optimizer line (torch's default AdamW implementation)
    ENGINE~MUTATION       for testing the check: ENGINE on the source with one textual change (MUTATIONS below)

The timed thing is one iteration of the lecture's loop on a fixed batch of random token ids, model in train mode,
dropout 0.2: `logits, loss = model(xb, yb)`, `optimizer.zero_grad(set_to_none=True)`, `loss.backward()`,
`optimizer.step()` (lecture_gpt.train_step).

Before timing, the same-math check. A reference process runs the `torch` engine: it builds the model under
torch.manual_seed(1337) and writes its state dict (every engine loads it with `model.load_state_dict`), then runs the
check in float64 (the exact trajectory) and in float32 from the weights and from perturbed copies (the float32
spread; protocol.check_tolerance). Each engine then computes, from those weights, the eval-mode loss of the first
check batch (the lecture's estimate_loss: eval(), no_grad, dropout off) and the losses of the config's check_steps
AdamW steps of a dropout-0 model; all must lie within the tolerance of the exact trajectory. An engine that fails is
reported and not timed; one whose process raises is reported with the last line of its log (kept in the output
folder).

Internal: `python benchmarks/lecture_bench.py --worker ENGINE CONFIG_JSON CPUS` is one engine's process.
"""
import argparse
import dataclasses
import datetime
import gc
import json
import os
import re
import sys
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __name__ == "__main__" and ROOT not in sys.path:   # run as a script from a checkout: make benchmarks importable
    sys.path.insert(0, ROOT)

from benchmarks import protocol, runner  # noqa: E402 (after the sys.path insert above)
from benchmarks.runner import EngineError, say  # noqa: E402 (after the sys.path insert above)

SOURCE = os.path.join(HERE, "lecture_gpt.py")
README = os.path.join(ROOT, "README.md")
README_START, README_END = "<!-- lecture-code-table:start -->", "<!-- lecture-code-table:end -->"

TORCH_IMPORTS = ("import torch", "import torch.nn as nn", "from torch.nn import functional as F")
OUR_IMPORTS = ("import tinygrad_gpt as torch", "import tinygrad_gpt.nn as nn",
               "from tinygrad_gpt.nn import functional as F")

INIT_SEED = 1337          # torch.manual_seed before the reference builds the model (the lecture's seed)
DROPOUT = 0.2             # the lecture's; the timed steps train with it, the check's steps with 0
LEARNING_RATE = 3e-4      # the lecture's
BASELINE, DEFAULT_ADAMW = "torch", "torch-default-adamw"


# ---- engines and configs -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Engine:
    library: str              # "torch" or "tinygrad_gpt": the three import lines the source runs with
    fused: bool               # torch.optim.AdamW(..., fused=True) instead of the lecture's line
    what: str


ENGINES = {
    "tinygrad_gpt": Engine("tinygrad_gpt", False,
                           "lecture_gpt.py with its imports swapped for tinygrad_gpt's; the lecture's AdamW line"),
    "torch": Engine("torch", True, "lecture_gpt.py under torch eager; AdamW(fused=True)"),
    "torch-default-adamw": Engine("torch", False, "lecture_gpt.py under torch eager; the lecture's AdamW line "
                                  "(torch's default implementation)"),
}
DEFAULT_ENGINES = ("tinygrad_gpt", "torch", "torch-default-adamw")

# Textual changes a test engine makes to the source (ENGINE~NAME), one line each (tracebacks keep the file's line
# numbers): all but `raises` change the math the check compares; `raises` makes the engine's process fail.
MUTATIONS = {
    "head-scale-C": ("k.shape[-1]**-0.5", "C**-0.5"),          # the lecture notebooks' known bug (SPEC section 1)
    "layernorm-eps": ("nn.LayerNorm(n_embd)", "nn.LayerNorm(n_embd, eps=1e-3)"),
    "lr-x2": ("lr=learning_rate", "lr=2 * learning_rate"),
    "raises": ("B,T,C = x.shape", "B,T,C = x.shape; raise RuntimeError('a deliberately broken engine')"),
}

CONFIGS = {
    # every config and engine: protocol.WARMUP untimed steps of the timed model before the rounds
    "small": protocol.BenchConfig("small", 32, 64, 128, 4, 4, rounds=5, block=4, check_steps=3, check_runs=16),
    # ~5 s a step on 2 cores: one step per turn
    "lecture": protocol.BenchConfig("lecture", 64, 256, 384, 6, 6, rounds=5, block=1, check_steps=3, check_runs=4),
    # the smoke test's (tests/test_lecture_bench_smoke.py)
    "tiny": protocol.BenchConfig("tiny", 4, 16, 32, 2, 2, warmup=1, rounds=1, block=1, check_steps=3, check_runs=8),
}
DEFAULT_CONFIGS = ("small", "lecture")


def engine_spec(name):
    """(Engine, mutation name or None) of an engine name `BASE` or `BASE~MUTATION`."""
    base, _, mutation = name.partition("~")
    if base not in ENGINES:
        raise ValueError(f"unknown engine {base!r}; known: {', '.join(ENGINES)}")
    if mutation and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; known: {', '.join(MUTATIONS)}")
    return ENGINES[base], mutation or None


def engine_source(name):
    """The text an engine runs: lecture_gpt.py, its three import lines swapped for tinygrad_gpt's where the engine
    is tinygrad_gpt (line for line, so tracebacks' line numbers are the file's), and the engine's mutation."""
    spec, mutation = engine_spec(name)
    with open(SOURCE) as f:
        lines = f.read().split("\n")
    if tuple(lines[:3]) != TORCH_IMPORTS:
        raise ValueError(f"{SOURCE} must start with the three lines {TORCH_IMPORTS}")
    if spec.library == "tinygrad_gpt":
        lines[:3] = OUR_IMPORTS
    text = "\n".join(lines)
    if mutation:
        old, new = MUTATIONS[mutation]
        if old not in text:
            raise ValueError(f"mutation {mutation}: {old!r} is not in {SOURCE}")
        text = text.replace(old, new)
    return text


def load_source(text, name="lecture_gpt"):
    """Compile and execute the source as a module (registered in sys.modules, as an import would)."""
    module = types.ModuleType(name)
    module.__file__ = SOURCE
    sys.modules[name] = module
    exec(compile(text, SOURCE, "exec"), module.__dict__)
    return module


# ---- one engine's process ----------------------------------------------------------------------------------------


class Worker:
    """One engine: the source run as a module, a model per command, the timing model after the check.
    bc: the config (protocol.BenchConfig) whose shape the model takes."""

    def __init__(self, engine, bc):
        self.name, self.bc = engine, bc
        self.spec, _ = engine_spec(engine)
        t0 = time.perf_counter()
        self.mod = load_source(engine_source(engine))
        self.torch = self.mod.torch                     # torch, or tinygrad_gpt under that name
        self.import_s = time.perf_counter() - t0
        self.model = self.optimizer = self.xb = self.yb = None

    def hp(self, dropout):
        bc = self.bc
        return self.mod.Hyperparameters(vocab_size=bc.vocab_size, batch_size=bc.batch_size, block_size=bc.block_size,
                                        n_embd=bc.n_embd, n_head=bc.n_head, n_layer=bc.n_layer, dropout=dropout,
                                        learning_rate=LEARNING_RATE)

    def build_model(self, dropout, state=None):
        model = self.mod.GPTLanguageModel(self.hp(dropout))
        if state is not None:
            model.load_state_dict({k: self.torch.tensor(v) for k, v in state.items()})
        return model

    def make_optimizer(self, model):
        return self.mod.make_optimizer(model, LEARNING_RATE, fused=self.spec.fused)

    def batch(self, x, y):
        """int64 (B, T) arrays -> the engine's tensors, as a user's get_batch hands them over."""
        return self.torch.tensor(x), self.torch.tensor(y)

    def versions(self):
        import numpy
        out = {"library": self.spec.library, "version": getattr(self.torch, "__version__", None),
               "numpy": numpy.__version__, "optimizer": "AdamW(fused=True)" if self.spec.fused else "AdamW()",
               "allocator": {k: os.environ.get(k) for k in protocol.ALLOCATORS["tuned"]}, "import_s": self.import_s}
        if self.spec.library == "tinygrad_gpt":
            import numba
            out["numba"] = numba.__version__
        else:
            out["torch_threads"] = self.torch.get_num_threads()
        return out

    def init(self, path):
        """The initial weights every engine loads: the model built under manual_seed(INIT_SEED), dropout as timed."""
        self.torch.manual_seed(INIT_SEED)
        model = self.build_model(DROPOUT)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        np.savez(path, **state)
        params = [k for k, _ in model.named_parameters()]
        return {"n_params": int(sum(state[k].size for k in params)), "parameters": params}

    def trajectory(self, state, batches, steps, float64=False):
        """Losses of `steps` AdamW steps of a dropout-0 model from `state`, on the check batches."""
        model = self.build_model(0.0, state)
        if float64:
            model.double()
        model.train()
        optimizer = self.make_optimizer(model)
        losses = []
        for i in range(steps):
            xb, yb = self.batch(batches["x"][i], batches["y"][i])
            losses.append(self.mod.train_step(model, optimizer, xb, yb).item())
        return losses

    def check(self, init, batches, steps):
        """The same-math check's numbers from the shared weights; then the timing model, from the same weights."""
        state, data = dict(np.load(init)), np.load(batches)
        model = self.build_model(DROPOUT, state)
        eval_loss = self.mod.evaluate_loss(model, *self.batch(data["x"][0], data["y"][0]))
        del model
        t0 = time.perf_counter()
        losses = self.trajectory(state, data, steps)
        check_s = time.perf_counter() - t0
        gc.collect()
        self.torch.manual_seed(INIT_SEED)               # the timed steps' dropout masks
        self.model = self.build_model(DROPOUT, state)
        self.model.train()
        self.optimizer = self.make_optimizer(self.model)
        self.xb, self.yb = self.batch(*protocol.make_batch(self.bc, protocol.TIMING_SEED))
        return {"eval_loss": eval_loss, "losses": losses, "check_s": check_s}

    def spread(self, init, batches, steps, runs, parameters):
        """The reference's trajectories: float64 (exact), float32 from the weights and from `runs` copies with every
        parameter scaled by 1 +- 2^-20 (protocol.perturbed; the buffers stay as they are)."""
        state, data = dict(np.load(init)), np.load(batches)
        exact = self.trajectory(state, data, steps, float64=True)
        runs32 = [self.trajectory(state, data, steps)]
        params = {k: state[k] for k in parameters}
        for seed in range(1, runs + 1):
            runs32.append(self.trajectory(dict(state, **protocol.perturbed(params, seed)), data, steps))
            gc.collect()
        return {"exact": exact, "runs32": runs32}

    def steps(self, n):
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.mod.train_step(self.model, self.optimizer, self.xb, self.yb)
            samples.append(time.perf_counter() - t0)
        return {"samples": samples}


def worker_main(engine, config_json, cpus):
    """Answer the coordinator (benchmarks/worker.serve: one JSON command per line, one JSON reply per line, a
    failing command's traceback to the log); the ready reply carries the engine's versions."""
    from benchmarks.worker import serve
    return serve(lambda: Worker(engine, protocol.BenchConfig(**json.loads(config_json))), cpus,
                 ready=lambda worker: {"versions": worker.versions()})


# ---- the coordinator ---------------------------------------------------------------------------------------------


class LectureProcess(runner.WorkerProcess):
    """One engine's process: this file with --worker (runner.WorkerProcess: threads, CPUs, command channel, log)."""

    def __init__(self, name, bc, threads, log_path):
        super().__init__(name, [os.path.abspath(__file__), "--worker", name, json.dumps(dataclasses.asdict(bc))],
                         threads, log_path, allocator="tuned")
        self.versions = None

    def ready(self, timeout=runner.TIMEOUT_S):
        self.versions = self._reply(timeout)["versions"]
        return self.versions


def take_steps(procs, rounds, settle_s, n):
    """rounds x (each engine in turn, the order rotating from round to round): n timed steps each while the others
    wait (runner.take_turns)."""
    return runner.take_turns(procs, rounds, settle_s, lambda name, p: p.call("steps", n=n)["samples"])


def verdict(got, exact, tol):
    """The check of one engine: its eval-mode loss against the exact first loss (step 1's tolerance: forward
    rounding only), and its trajectory against the exact one (protocol.check_trajectory)."""
    v = protocol.check_trajectory(got["losses"], exact, tol)
    ev = float(got["eval_loss"])
    v["eval_loss"], v["eval_diff"] = ev, abs(ev - exact[0])
    eval_ok = bool(np.isfinite(ev) and v["eval_diff"] <= tol[0])
    v["eval_passed"] = eval_ok
    if not eval_ok and v["passed"]:
        v.update(passed=False, worst_step=0, diff_at_worst=v["eval_diff"], tol_at_worst=float(tol[0]))
    v["passed"] = bool(v["passed"] and eval_ok)
    return v


def _why(v):
    if "why" in v:
        return v["why"]
    where = "the eval-mode loss" if v["worst_step"] == 0 else f"step {v['worst_step']}"
    return f"|loss - exact| {v['diff_at_worst']:.2e} > {v['tol_at_worst']:.2e} at {where}"


def _fmt(losses):
    return "[" + ", ".join(f"{x:.6f}" for x in losses) + "]"


def run_config(bc, names, threads, work):
    """The check and the timing of one config; returns its results dict."""
    res = {"config": dataclasses.asdict(bc), "shape": bc.describe(), "dropout": DROPOUT,
           "learning_rate": LEARNING_RATE, "engines": {}, "failed_check": {}, "errors": {},
           "loadavg_start": protocol.machine_info().get("loadavg")}
    say(f"config {bc.name}: {bc.describe()}, dropout {DROPOUT} (check {bc.check_steps} steps with dropout 0, "
        f"{bc.check_runs} perturbed reference runs; warm-up {bc.warmup}, {bc.rounds} rounds x {bc.block} steps)")
    init, batches = os.path.join(work, f"{bc.name}.init.npz"), os.path.join(work, f"{bc.name}.check.npz")
    xs, ys = zip(*(protocol.make_batch(bc, protocol.CHECK_SEED + i) for i in range(bc.check_steps)), strict=True)
    np.savez(batches, x=np.stack(xs), y=np.stack(ys))                        # (K, B, T) each

    def log(name):
        return os.path.join(work, f"{bc.name}.{name}.log")

    # the reference: the initial weights, the exact trajectory and the float32 spread, in a process closed after
    # (the float64 run doubles a step's memory)
    ref = LectureProcess(BASELINE, bc, threads, log("reference"))
    try:
        ref.ready()
        made = ref.call("init", path=init)
        spread = ref.call("spread", init=init, batches=batches, steps=bc.check_steps, runs=bc.check_runs,
                          parameters=made["parameters"])
    except EngineError as e:
        res["errors"]["reference"] = str(e)
        say(f"  the reference ({BASELINE}) failed: {e} (log {ref.log_path}); nothing checked or timed")
        return res
    finally:
        ref.close()
    res["n_params"] = made["n_params"]
    tol = protocol.check_tolerance(spread["runs32"], spread["exact"], bc.tokens)
    res["reference"] = {"engine": BASELINE, "init_seed": INIT_SEED, "exact": spread["exact"],
                        "runs32": spread["runs32"], "tol": tol.tolist(), "spread_factor": protocol.SPREAD_FACTOR}
    spread_max = float(np.abs(np.subtract(spread["runs32"], spread["exact"])).max())
    say(f"  reference ({BASELINE}, {made['n_params']:,} parameters): float64 losses {_fmt(spread['exact'])}; float32 "
        f"spread over {len(spread['runs32'])} runs {spread_max:.1e}; tolerance {tol[0]:.1e} (step 1 and the eval "
        f"loss), {tol[1:].max() if len(tol) > 1 else tol[0]:.1e} (after)")

    procs = {name: LectureProcess(name, bc, threads, log(name)) for name in names}    # they import concurrently
    for name in list(procs):
        p = procs[name]
        try:
            p.ready()
            got = p.call("check", init=init, batches=batches, steps=bc.check_steps)
        except EngineError as e:
            res["errors"][name] = str(e)
            say(f"  {name}: FAILED to run: {e} (traceback in {p.log_path})")
            procs.pop(name).close()
            continue
        v = verdict(got, spread["exact"], tol)
        v["check_s"] = got["check_s"]
        entry = {"versions": p.versions, "what": ENGINES[name.partition("~")[0]].what, "check": v}
        if not v["passed"]:
            res["failed_check"][name] = entry
            say(f"  {name}: FAILED the same-math check: {_why(v)} (eval loss {v['eval_loss']:.6f}, losses "
                f"{_fmt(v['losses'])}): not timed")
            procs.pop(name).close()
            continue
        res["engines"][name] = entry
        say(f"  {name}: same math (max |loss - exact| {max(v['max_abs_diff'], v['eval_diff']):.1e}); check steps "
            f"{v['check_s']:.2f} s")

    try:
        _, errors = take_steps(procs, 1, 0.0, bc.warmup)
        got, errors2 = take_steps({n: p for n, p in procs.items() if n not in errors}, bc.rounds, runner.SETTLE_S,
                                  bc.block)
    finally:
        for p in procs.values():
            p.close()
    for name, why in {**errors, **errors2}.items():
        res["errors"][name] = f"timing: {why}"
        res["engines"].pop(name, None)
        got.pop(name, None)
    for name, s in got.items():
        if s:
            d = protocol.summarize(s)
            d["tokens_per_s"] = bc.tokens / (d["median_ms"] / 1e3)
            res["engines"][name]["step"] = d
            res["engines"][name]["step_samples_ms"] = [t * 1e3 for t in s]
    for name, e in res["engines"].items():
        if "step" in e:
            e["ratio_to_torch"] = ratio(res, name, BASELINE)
            e["ratio_to_default_adamw"] = ratio(res, name, DEFAULT_ADAMW)
            d = e["step"]
            say(f"  {name:22s} {d['median_ms']:10.2f} ms/step (IQR {d['q1_ms']:.2f}-{d['q3_ms']:.2f}, n={d['n']})"
                + (f"  {e['ratio_to_torch']:.2f}x torch" if e["ratio_to_torch"] else ""))
    res["loadavg_end"] = protocol.machine_info().get("loadavg")
    return res


def ratio(res, name, base):
    e, b = res["engines"].get(name, {}).get("step"), res["engines"].get(base, {}).get("step")
    return e["median_ms"] / b["median_ms"] if e and b else None


# ---- the report --------------------------------------------------------------------------------------------------


def _ms(v):
    return "" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def _cell(text):
    """Text inside a markdown table cell (a | would end the cell)."""
    return text.replace("|", "\\|")


def _x(r):
    return "" if r is None else f"{r:.2f}x"


def table(results):
    """The markdown table: one row per config and engine, timed or not."""
    rows = ["| config | engine | median ms / step | spread (IQR, n) | / torch fused AdamW | / torch default AdamW |",
            "|---|---|---:|---:|---:|---:|"]
    for cname, c in results["configs"].items():
        shape = f"{cname} ({c['shape']})"
        for name, e in c["engines"].items():
            d = e.get("step")
            if d is None:
                continue
            rows.append(f"| {shape} | {name} | {_ms(d['median_ms'])} | {_ms(d['q1_ms'])}-{_ms(d['q3_ms'])} "
                        f"({d['n']}) | {_x(e.get('ratio_to_torch'))} | {_x(e.get('ratio_to_default_adamw'))} |")
        for name, e in c["failed_check"].items():
            rows.append(f"| {shape} | {name} | failed the same-math check: {_cell(_why(e['check']))} | | | |")
        for name, why in c["errors"].items():
            rows.append(f"| {shape} | {name} | failed: {_cell(why)} | | | |")
    return "\n".join(rows)


def caption(results):
    m = results["meta"]
    versions = sorted({f"{e['versions']['library']} {e['versions']['version']}" for c in results["configs"].values()
                       for e in c["engines"].values()})
    return (f"Median ms per iteration of the lecture's training loop (forward, loss, zero_grad, backward, AdamW step; "
            f"dropout {DROPOUT}, train mode) of `benchmarks/lecture_gpt.py`, run as it is by torch and with its three "
            f"import lines swapped by tinygrad_gpt; ratios to torch measured in the same run; {m['threads']} threads "
            f"per engine, each in its own process, the engines taking turns ({m['date']}, load average "
            f"{m['loadavg_start']} at start, {m['loadavg_end']} at end; {', '.join(versions)}).")


def write_outputs(results, out):
    os.makedirs(out, exist_ok=True)
    paths = {"json": os.path.join(out, "lecture_code.json"), "md": os.path.join(out, "lecture_code.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    lines = ["# The lecture's own code: torch and tinygrad_gpt", "", caption(results), ""]
    if results["meta"].get("busy"):
        lines += [f"**Warning: {results['meta']['busy']}**", ""]
    lines += [table(results), "", "## The same-math check", "",
              ("Every engine loads the reference's initial weights (torch, manual_seed(1337)), computes the eval-mode "
              "loss of the first check batch and the losses of the check's AdamW steps with dropout 0; all must lie "
              "within the tolerance of torch's float64 trajectory of the same source (protocol.check_tolerance: "
              f"{protocol.SPREAD_FACTOR} x the float32 spread of torch's runs from the weights and from copies "
              "scaled by 1 +- 2^-20, plus sqrt(B*T) u |loss| for the order of the mean's sum)."), "",
              "| config | engine | eval loss - exact | max \\|loss - exact\\| | tolerance (step 1 / after) | verdict |",
              "|---|---|---:|---:|---:|---|"]
    for cname, c in results["configs"].items():
        ref = c.get("reference")
        if not ref:
            continue
        tol = ref["tol"]
        tols = f"{tol[0]:.1e} / {max(tol[1:]) if len(tol) > 1 else tol[0]:.1e}"
        for name, e in list(c["engines"].items()) + list(c["failed_check"].items()):
            v = e["check"]
            lines.append(f"| {cname} | {name} | {v['eval_loss'] - ref['exact'][0]:+.1e} | "
                         f"{v.get('max_abs_diff', float('nan')):.1e} | {tols} | "
                         f"{'same math' if v['passed'] else 'FAILED: ' + _cell(_why(v))} |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    return paths


def update_readme(results, path):
    """Replace the table between the README's markers; False (README untouched) when they are missing."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return False
    if README_START not in text or README_END not in text:
        return False
    body = table(results) + "\n\n" + caption(results)
    text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                  lambda _: README_START + "\n" + body + "\n" + README_END, text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)
    return True


# ---- the command line --------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                   help=f"default: {' '.join(DEFAULT_CONFIGS)}; --quick: small")
    p.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES), metavar="ENGINE",
                   help=f"{' '.join(ENGINES)}, or ENGINE~MUTATION ({' '.join(MUTATIONS)}) to test the check")
    p.add_argument("--rounds", type=int, help="rounds of turns (default per config: small 5, lecture 5)")
    p.add_argument("--block", type=int, help="timed steps per turn (default per config: small 4, lecture 1)")
    p.add_argument("--warmup", type=int, help="untimed steps per engine before the rounds (small 3, lecture 1)")
    p.add_argument("--check-steps", type=int, help="AdamW steps of the same-math check (3)")
    p.add_argument("--check-runs", type=int, help="perturbed float32 reference runs (small 16, lecture 4)")
    p.add_argument("--quick", action="store_true", help="small only, warm-up 1, 3 rounds of at most 2 steps")
    p.add_argument("--threads", type=int, default=2, help="threads of every library in every engine process")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="folder of lecture_code.{json,md} (default benchmarks/results)")
    p.add_argument("--keep", action="store_true", help="keep the inputs and every log under OUT/lecture_code_work")
    p.add_argument("--update-readme", nargs="?", const=README, default=None, metavar="README",
                   help="write the table between the lecture-code markers of README (default ../README.md)")
    args = p.parse_args(argv)
    for name in args.engines:
        try:
            engine_spec(name)
        except ValueError as e:
            p.error(str(e))
    if args.configs is None:
        args.configs = ["small"] if args.quick else list(DEFAULT_CONFIGS)
    return args


def schedule(bc, args):
    if args.quick:
        bc = dataclasses.replace(bc, warmup=1, rounds=3, block=min(bc.block, 2), check_runs=min(bc.check_runs, 8))
    over = {k: getattr(args, k) for k in ("rounds", "block", "warmup", "check_steps", "check_runs")
            if getattr(args, k) is not None}
    return dataclasses.replace(bc, **over)


def main(argv=None):
    args = parse(argv)
    work = os.path.join(args.out, "lecture_code_work")       # the shared inputs and each process's log
    os.makedirs(work, exist_ok=True)
    machine = protocol.machine_info()
    results = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
                        "argv": sys.argv[1:] if argv is None else list(argv), "machine": machine,
                        "threads": args.threads, "cpus": protocol.engine_cpus(args.threads),
                        "loadavg_start": machine.get("loadavg"), "settle_s": runner.SETTLE_S, "engines": args.engines,
                        "source": os.path.relpath(SOURCE, ROOT), "init_seed": INIT_SEED,
                        "learning_rate": LEARNING_RATE, "dropout": DROPOUT},
               "configs": {}}
    load, cores = (machine.get("loadavg") or [0])[0], machine.get("usable_cpus") or machine["cpu_count"] or 1
    if load > 0.5 * cores:
        results["meta"]["busy"] = (f"the machine was busy at the start (load average {load} on {cores} cores): "
                                   "times and ratios are noisy")
        say("warning: " + results["meta"]["busy"])
    say(f"engines: {' '.join(args.engines)}; {args.threads} threads each, CPUs {results['meta']['cpus']}")
    for cname in args.configs:
        results["configs"][cname] = run_config(schedule(CONFIGS[cname], args), args.engines, args.threads, work)
    results["meta"]["loadavg_end"] = protocol.machine_info().get("loadavg")

    failed = {f"{c}.{n}" for c, r in results["configs"].items() for n in r["errors"]}
    if not args.keep:                 # keep only the logs of processes that failed
        for f in os.listdir(work):
            if not (f.endswith(".log") and f[:-4] in failed):
                os.remove(os.path.join(work, f))
        if not os.listdir(work):
            os.rmdir(work)
    if failed:
        say(f"the failed engines' logs are in {work}")
    paths = write_outputs(results, args.out)
    say("\n" + table(results) + "\n")
    say("wrote " + ", ".join(paths.values()))
    if args.update_readme:
        if update_readme(results, args.update_readme):
            say(f"updated the lecture-code table in {args.update_readme}")
        else:
            say(f"{args.update_readme} has no {README_START} ... {README_END} block: not updated")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker_main(*sys.argv[2:5]))
    sys.exit(main())
