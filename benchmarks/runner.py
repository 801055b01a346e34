"""The coordinator: one process per engine, the same-math check, then the engines timed in turns.

For each config:
 1. The initial weights (GPT(cfg, seed=0).state_dict(), SPEC section 2 names) and the check batches go to files.
 2. Every engine starts in its own process (benchmarks/worker.py) with the same thread settings
    (protocol.thread_env, set before any library loads, and the same CPUs).
 3. The same-math check: each reference (torch-fused, tinygrad_gpt: engines.REFERENCES) runs the check steps in
    float64 and in float32 from the weights and from perturbed copies; every engine runs them from the same weights
    on the same batches, and its losses must stay within protocol.check_tolerance of the float64 run of a reference
    from another library (torch's judges ours and the peers, ours judges torch's). An engine that fails is reported
    with its numbers and not timed.
 4. Warm-up steps, then rounds: in each round every engine in turn (the order rotating from round to round) runs a
    block of timed steps while the others wait; before each block the coordinator pauses SETTLE_S so the previous
    engine's idle thread pools (OpenBLAS spins ~0.1 s after its last call, OpenMP pools a while) are asleep.
 5. The same for each layer alone and for the BLAS floor; then memory, in the timing processes and (full runs) in
    fresh processes with a fixed malloc mmap threshold, where the resident set follows live memory.
"""
import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import engines, protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTLE_S = 0.25            # untimed pause before each engine's turn
TIMEOUT_S = 3600           # one command of one engine (a lecture-config check under load can take minutes)


def say(*parts):
    print(*parts, flush=True)


class EngineError(RuntimeError):
    pass


class WorkerProcess:
    """A worker process with an engine's thread settings (protocol.thread_env) and CPUs (passed as its last
    argument, which it pins itself to), its JSON command channel (stdin, and its stdout for replies) and its log file
    (its stderr). args: what follows the interpreter on the command line, the CPUs excepted."""

    def __init__(self, name, args, threads, log_path, extra_env=None, allocator=None):
        self.name, self.log_path = name, log_path
        env = dict(os.environ)
        env.update(protocol.thread_env(threads))
        env.update(protocol.ALLOCATORS[allocator] if allocator else {})
        env.update(extra_env or {})
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cpus = protocol.engine_cpus(threads)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, *args, ",".join(map(str, cpus)) if cpus else ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=ROOT, env=env)
        self._replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)                        # end of file: the process is gone

    def _reply(self, timeout):
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise EngineError(f"no reply within {timeout:.0f} s") from None
        if line is None:
            self.proc.wait()
            raise EngineError(f"process exited with status {self.proc.returncode}: {self.last_log_line()}")
        out = json.loads(line)
        if "error" in out:
            raise EngineError(out["error"])
        return out

    def call(self, cmd, timeout=TIMEOUT_S, **kw):
        try:
            self.proc.stdin.write(json.dumps(dict(kw, cmd=cmd)) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.proc.wait()
            raise EngineError(f"process exited with status {self.proc.returncode}: {self.last_log_line()}") from None
        return self._reply(timeout)

    def last_log_line(self):
        self._log.flush()
        try:
            with open(self.log_path) as f:
                lines = [line.strip() for line in f if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else "(no output)"

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class EngineProcess(WorkerProcess):
    """A registered engine's process (benchmarks/worker.py)."""

    def __init__(self, name, bc, init_file, settings, extra_env=None):
        log_path = os.path.join(settings.log_dir, f"{bc.name}.{name.replace(':', '_')}.{time.time_ns()}.log")
        super().__init__(name, ["-m", "benchmarks.worker", name, bc.name, init_file], settings.threads, log_path,
                         dict(engines.spec(name).env, **(extra_env or {})), allocator=settings.allocator)
        self.info = None

    def ready(self, timeout=TIMEOUT_S):
        """Wait until the engine is built, then ask for its versions."""
        self._reply(timeout)
        self.info = self.call("build")
        return self.info


@dataclasses.dataclass
class Settings:
    threads: int = 2
    quick: bool = False
    layers: bool = True
    blas: bool = True
    rss: bool = False              # fresh-process RSS probes (full runs)
    settle_s: float = SETTLE_S     # untimed pause before each engine's turn
    min_sample_s: float = 0.005    # a layer or product call shorter than this is repeated within one sample
    layer_samples: int = 2         # samples per layer per round
    rounds: int = None             # overrides of the configs' schedules
    block: int = None
    warmup: int = None
    check_steps: int = None
    check_runs: int = None
    group: int = None
    log_dir: str = None
    allocator: str = "tuned"       # protocol.ALLOCATORS: the same glibc settings for every engine
    watch: protocol.LoadWatch = None   # the load of everything else, sampled before each turn (take_turns)

    def schedule(self, bc):
        bc = protocol.quick_schedule(bc) if self.quick else bc
        over = {k: getattr(self, k) for k in ("rounds", "block", "warmup", "check_steps", "check_runs", "group")
                if getattr(self, k) is not None}
        return dataclasses.replace(bc, **over)


def write_inputs(bc, folder):
    """The initial weights (safetensors) and the check batches (npz) every engine reads."""
    from safetensors.numpy import save_file

    from tinygrad_gpt import GPT, GPTConfig
    sd = {k: v.numpy() for k, v in GPT(GPTConfig(**bc.gpt_config()), seed=protocol.INIT_SEED).state_dict().items()}
    init = os.path.join(folder, f"{bc.name}.init.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, init)
    xs, ys = zip(*(protocol.make_batch(bc, protocol.CHECK_SEED + i) for i in range(bc.check_steps)), strict=True)
    batches = os.path.join(folder, f"{bc.name}.check.npz")
    np.savez(batches, x=np.stack(xs), y=np.stack(ys))                    # (K, B, T) each
    return init, batches, sum(v.size for v in sd.values())


def start(names, bc, init, settings):
    """Start every engine's process (they import and build concurrently), then wait for each. Returns
    ({name: EngineProcess}, {name: what is missing to run it}, {name: how building it failed})."""
    procs, skipped, errors = {}, {}, {}
    for name in names:
        why = engines.missing(name)
        if why:
            skipped[name] = why
            say(f"  skip {name}: {why}")
            continue
        procs[name] = EngineProcess(name, bc, init, settings)
    for name in list(procs):
        try:
            procs[name].ready()
        except EngineError as e:
            errors[name] = f"build: {e}"
            say(f"  {name} could not be built: {e}")
            procs.pop(name).close()
    return procs, skipped, errors


WATCH_S = 0.1             # the last part of each settle pause: the load of everything else is measured there


def take_turns(procs, rounds, settle_s, call, watch=None):
    """rounds x (each engine in turn, rotating order): call(name, proc) -> samples; the others wait. Returns
    ({name: [samples]}, {name: error}); an engine that fails drops out of the remaining rounds. Before each turn an
    untimed pause of settle_s; with a protocol.LoadWatch, its last WATCH_S (no engine runs then: the last one's idle
    threads are asleep by then) measure the load of everything else on the machine."""
    samples, errors = {n: [] for n in procs}, {}
    names = list(procs)
    for r in range(rounds):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name in errors:
                continue
            if watch is not None and settle_s >= 2 * WATCH_S:
                time.sleep(settle_s - WATCH_S)
                watch.sample(WATCH_S)
            else:
                time.sleep(settle_s)
            try:
                samples[name] += call(name, procs[name])
            except EngineError as e:
                errors[name] = str(e)
                say(f"  {name} failed: {e}")
    return samples, errors


def reference_trajectory(bc, init, batches, settings, family):
    """One reference family's data for the same-math check (engines.REFERENCES): its engine's float32 losses on the
    check batches (from the weights and from perturbed copies), its float64 ones, and the tolerance they give
    (protocol.check_tolerance). In a process of its own, closed afterwards: the float64 run doubles a step's memory,
    and a process keeps much of its peak (on lecture, 5.5 GB where a float32 step's process holds 3)."""
    name = engines.REFERENCES[family]
    ref = EngineProcess(name, bc, init, settings)
    try:
        ref.ready()
        run32 = ref.call("check", batches=batches, steps=bc.check_steps)
        spread = ref.call("spread", batches=batches, steps=bc.check_steps, runs=bc.check_runs)
    finally:
        ref.close()
    runs32 = [run32["losses"]] + spread["runs"]
    tol = protocol.check_tolerance(runs32, spread["exact"], bc.tokens)
    return {"engine": name, "exact": spread["exact"], "runs32": runs32, "tol": tol.tolist(),
            "spread_factor": protocol.SPREAD_FACTOR}


def references(bc, names, init, batches, settings):
    """The reference families the engines' judges need ({family: reference_trajectory}); where a judge's library is
    not installed, the other family's runs stand in and its verdicts say so (not independent)."""
    wanted = {engines.same_math_judge(n) for n in names}
    out = {}
    for family in sorted(wanted):
        if engines.missing(engines.REFERENCES[family]) is None:
            out[family] = reference_trajectory(bc, init, batches, settings, family)
    return out


def judge(name, refs):
    """(family, reference data, independent?) that judges engine `name`."""
    family = engines.same_math_judge(name)
    if family in refs:
        return family, refs[family], True
    other = next(iter(refs))
    return other, refs[other], False


def plan_groups(names, size):
    """Split the engines into groups that alternate together (size 0: one group of all). tinygrad_gpt and the
    ratios' denominator, torch-fused, are in every group, so each group measures its engines against them; the
    others keep their order in names, `size` minus the anchors at a time. Only the first group times the layers
    (_run_group), so an engine with per-layer functions that lands in a later group has none in the report (with
    the registry's order and lecture's group of 3: tinygrad_gpt-numpy in the first group, torch-lecture in the
    second)."""
    anchors = [n for n in (engines.REFERENCE, engines.TORCH_BASELINE) if n in names]
    rest = [n for n in names if n not in anchors]
    if not size or len(names) <= size:
        return [names]
    step = max(1, size - len(anchors))
    return [anchors + rest[i:i + step] for i in range(0, len(rest), step)] or [anchors]


def run_config(bc, names, settings):
    """Everything for one config; returns its results dict. With bc.group set (the lecture config), at most that
    many engine processes are alive at once: the engines alternate in groups (plan_groups)."""
    bc = settings.schedule(bc)
    res = {"config": dataclasses.asdict(bc), "shape": bc.describe(), "engines": {}, "skipped": {},
           "failed_check": {}, "errors": {}}
    runnable = []
    for name in names:
        why = engines.missing(name) or bc.slow_engines.get(name)
        if why:
            res["skipped"][name] = why
            say(f"  skip {name}: {why}")
        else:
            runnable.append(name)
    groups = plan_groups(runnable, bc.group)
    res["groups"] = groups
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        init, batches, n_params = write_inputs(bc, tmp)
        res["flops"] = protocol.model_flops(bc, n_params)
        say(f"config {bc.name}: {bc.describe()} (check {bc.check_steps} steps, warm-up {bc.warmup}, "
            f"{bc.rounds} rounds x {bc.block} steps" + (f", {len(groups)} groups" if len(groups) > 1 else "") + ")")
        refs = res["references"] = references(bc, runnable, init, batches, settings)
        for family, ref in refs.items():
            tol = np.asarray(ref["tol"])
            say(f"  reference {family} ({ref['engine']}): float64 losses {_fmt_losses(ref['exact'])}; float32 "
                f"spread over {len(ref['runs32'])} runs {np.abs(np.subtract(ref['runs32'], ref['exact'])).max():.1e}; "
                f"tolerance {tol[0]:.1e} (step 1), {tol[1:].max() if len(tol) > 1 else tol[0]:.1e} (after)")
        for i, group in enumerate(groups):
            group = [n for n in group if n not in res["failed_check"] and n not in res["errors"]]
            if len(groups) > 1:
                say(f"  group {i + 1}: {' '.join(group)}")
            procs, _, errors = start(group, bc, init, settings)
            res["errors"].update(errors)
            try:
                _run_group(bc, procs, res, batches, settings, samples, first=i == 0)
            finally:
                for p in procs.values():
                    p.close()
        for name, got in samples.items():
            if name in res["engines"] and got:
                d = protocol.summarize(got)
                d["tokens_per_s"] = bc.tokens / (d["median_ms"] / 1e3)
                d["achieved_gflops"] = res["flops"]["total"] / (d["median_ms"] / 1e3) / 1e9
                res["engines"][name]["step"] = d
                res["engines"][name]["step_samples_ms"] = [t * 1e3 for t in got]
        if settings.rss:
            for name in [n for n in res["engines"] if engines.spec(n).device == "cpu"]:
                say(f"  RSS probe {name} (fresh process)")
                res["engines"][name]["rss_probe"] = rss_probe(name, bc, init, settings)
    return res


def _check(procs, res, refs, batches, bc):
    """The same-math check of every engine of procs not checked before, against the reference family that judges it
    (engines.same_math_judge); those that fail leave procs."""
    for name in list(procs):
        if name in res["engines"]:                 # checked in an earlier group
            continue
        p = procs[name]
        try:
            got = p.call("check", batches=batches, steps=bc.check_steps)
        except EngineError as e:
            res["errors"][name] = f"check: {e}"
            say(f"  {name}: check failed to run: {e}")
            procs.pop(name).close()
            continue
        family, ref, independent = judge(name, refs)
        verdict = protocol.check_trajectory(got["losses"], ref["exact"], np.asarray(ref["tol"]))
        verdict.update(first_step_s=got["first_step_s"], judged_by=family, independent=independent)
        entry = {"versions": p.info["versions"], "build": {k: p.info[k] for k in ("import_s", "build_s")},
                 "check": verdict, "what": engines.spec(name).what}
        if not verdict["passed"]:
            res["failed_check"][name] = entry
            why = (f"|loss - exact| {verdict['diff_at_worst']:.2e} > {verdict['tol_at_worst']:.2e} at step "
                   f"{verdict['worst_step']}" if "why" not in verdict else verdict["why"])
            say(f"  {name}: FAILED the same-math check: {why} (losses {_fmt_losses(verdict['losses'])}): not timed")
            procs.pop(name).close()
            continue
        res["engines"][name] = entry
        say(f"  {name}: same math (max |loss - exact| {verdict['max_abs_diff']:.1e}); first step "
            f"{verdict['first_step_s']:.2f} s")


def _run_group(bc, procs, res, batches, settings, samples, first):
    """Check, warm up and time one group of engine processes; the first group also times the layers and the BLAS
    floor. Step samples accumulate in `samples` (an engine in several groups pools them)."""
    _check(procs, res, res["references"], batches, bc)

    _, errors = take_turns(procs, 1, 0.0, lambda n, p: p.call("steps", n=bc.warmup)["samples"])
    got, errors2 = take_turns({n: p for n, p in procs.items() if n not in errors}, bc.rounds, settings.settle_s,
                              lambda n, p: p.call("steps", n=bc.block)["samples"], settings.watch)
    errors.update(errors2)
    for name, why in errors.items():
        res["errors"][name] = f"timing: {why}"
        res["engines"].pop(name, None)
        samples.pop(name, None)
        procs.pop(name).close()
    for name, s in got.items():
        if name in procs:
            samples.setdefault(name, []).extend(s)
            d = protocol.summarize(s)
            say(f"  {name:20s} step {d['median_ms']:10.2f} ms  (IQR {d['q1_ms']:.2f}-{d['q3_ms']:.2f}, n={d['n']})")

    if first and settings.layers:
        with_layers = {n: p for n, p in procs.items() if p.info.get("layers")}
        for layer in engines.LAYERS:
            got, errs = take_turns(with_layers, bc.rounds, settings.settle_s, lambda n, p, layer=layer: p.call(
                "layer", layer=layer, n=settings.layer_samples, min_s=settings.min_sample_s)["samples"],
                settings.watch)
            for name, s in got.items():
                if s and name not in errs:
                    res["engines"][name].setdefault("layers", {})[layer] = protocol.summarize(s)
            say(f"  layer {layer:11s} " + "  ".join(f"{n} {protocol.summarize(s)['median_ms']:.3f} ms"
                                                    for n, s in got.items() if s))
    if first and settings.blas:
        res["blas_floor"] = blas_floor(procs, bc, settings)
    for name, p in procs.items():
        if "memory" not in res["engines"][name]:
            try:
                res["engines"][name]["memory"] = p.call("memory")
            except EngineError as e:
                res["engines"][name]["memory"] = {"error": str(e)}


def blas_floor(procs, bc, settings, rounds=None):
    """The linear layers' matmuls alone in each BLAS present (one process per library), taking turns."""
    by_lib = {}
    for name, p in procs.items():
        lib = p.info.get("blas")
        if lib and lib not in by_lib:
            by_lib[lib] = name
    chosen = {by_lib[lib]: procs[by_lib[lib]] for lib in by_lib}
    got = {name: None for name in chosen}

    def call(name, p):
        out = p.call("blas", n=1, min_s=settings.min_sample_s)
        if got[name] is None:
            got[name] = out
        else:
            for acc, new in zip(got[name]["products"], out["products"], strict=True):
                acc["samples"] += new["samples"]
        return []
    _, errors = take_turns(chosen, rounds or bc.rounds, settings.settle_s, call, settings.watch)
    out = {}
    for name, r in got.items():
        if r is not None and name not in errors:
            lib = procs[name].info["blas"]
            out[lib] = dict(protocol.blas_floor(r), process=name)
            say(f"  BLAS floor ({lib}, linear layers alone): {out[lib]['per_step_ms']:.2f} ms per step")
    return out


def blas_floor_only(bc, names, threads, rounds, log_dir=None):
    """matmul_shapes.py's command line: the BLAS floor of each named engine's library, alone."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(threads=threads, log_dir=log_dir or tmp)
        init, _, _ = write_inputs(dataclasses.replace(bc, check_steps=1), tmp)
        procs, _, _ = start(names, bc, init, settings)
        try:
            floors = blas_floor(procs, bc, settings, rounds)
            return {lib: {"floor": f, "versions": procs[f["process"]].info["versions"]} for lib, f in floors.items()}
        finally:
            for p in procs.values():
                p.close()


def rss_probe(name, bc, init, settings):
    """One step's resident-memory peak in a fresh process with MALLOC_MMAP_THRESHOLD_=65536 (large buffers are
    mapped and unmapped, so the resident set follows live memory), after warm-up steps (TinyJit captures on the
    second call)."""
    # TINYGRAD_GPT_TUNE=0: tinygrad_gpt's own allocator setting (kernels/cpu/setup.py) would keep freed blocks in
    # the heap, which is what this probe's fixed threshold undoes; the step's live memory is the same either way
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "TINYGRAD_GPT_TUNE": "0"}
    p = EngineProcess(name, bc, init, settings, env)
    try:
        p.ready()
        p.call("steps", n=2)
        return p.call("memory")
    except EngineError as e:
        return {"error": str(e)}
    finally:
        p.close()


def one_off(name, bc, settings, cmd, **kw):
    """Start one engine's process, run one command, close it; None (with a message) if it cannot run."""
    why = engines.missing(name)
    if why:
        say(f"  skip {name}: {why}")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        init, _, _ = write_inputs(dataclasses.replace(bc, check_steps=1), tmp)
        p = EngineProcess(name, bc, init, settings)
        try:
            p.ready()
            return dict(p.call(cmd, **kw), versions=p.info["versions"])
        except EngineError as e:
            say(f"  {name} {cmd}: {e}")
            return None
        finally:
            p.close()


def _fmt_losses(losses):
    return "[" + ", ".join(f"{x:.6f}" for x in losses) + "]"
