"""One engine in its own process: `python -m benchmarks.worker ENGINE CONFIG INIT_FILE [CPUS]`, started by runner.py.

The coordinator sets the thread variables in this process's environment (protocol.thread_env) before it starts, so
every library loads with them; this process pins itself to CPUS (comma-separated), imports its engine's libraries,
builds the engine from the state dict in INIT_FILE (safetensors) and then answers commands, one JSON object per
line on stdin, one JSON reply per line on the protocol channel (the original stdout; everything the libraries print
goes to stderr). Commands:

    {"cmd": "build"}                              -> versions, seconds to import and build, optional parts
    {"cmd": "check", "batches": FILE, "steps": K} -> the losses of K AdamW steps on the check batches
    {"cmd": "spread", "batches": F, "steps": K, "runs": R} -> this engine's float64 losses and R perturbed float32
                                                     runs on the check batches (a reference's tolerance data)
    {"cmd": "steps", "n": n}                      -> n step times (s), each step synchronised, on the timing batch
    {"cmd": "layer", "layer": L, "n": n, "min_s": s} -> n samples (s per call) of layer L, forward + backward
    {"cmd": "blas", "n": n, "min_s": s}           -> n samples of each linear-layer product of a step (BLAS floor)
    {"cmd": "memory"}                             -> the peak memory of one step (tracemalloc, RSS, GPU) and of the
                                                     process
    {"cmd": "sampling", "tokens": n}              -> the engine's generation speed
    {"cmd": "matmul", "lib": L, "sizes": [...], "n": n} -> library L's float32 square-matmul rate
    {"cmd": "quit"}
A failing command replies {"error": "..."} with the exception's message (its traceback goes to stderr, which the
coordinator keeps in a log file); the process stays up.
"""
import gc
import json
import os
import sys
import time
import traceback


def _protocol_channel():
    """Keep the real stdout for replies and send fd 1 to stderr, so a library's print cannot corrupt a reply."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _proc_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_step_peak(step):
    """Resident-memory high-water mark of one step above the resident set before it (Linux: the mark is reset
    through /proc/self/clear_refs). Meaningful in a process started with MALLOC_MMAP_THRESHOLD_ fixed, where large
    buffers go back to the OS when freed, so the resident set follows live memory."""
    gc.collect()
    before = _proc_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    step()
    peak = _proc_kb("VmHWM")
    return None if before is None or peak is None else max(0, peak - before) * 1024


def tracemalloc_peak(step):
    """Peak bytes of the NumPy allocations one step makes above those that exist when it starts (an upper bound:
    frees of older arrays are not credited). Allocations NumPy does not report (other libraries') are not seen."""
    import tracemalloc
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


class Worker:
    def __init__(self, engine_name, config_name, init_file):
        t0 = time.perf_counter()
        import numpy as np
        from safetensors.numpy import load_file

        from benchmarks import engines, protocol
        self.np, self.protocol = np, protocol
        self.spec = spec = engines.spec(engine_name)
        module = __import__(spec.path, fromlist=[spec.cls])
        t_import = time.perf_counter() - t0
        self.bc = protocol.CONFIGS[config_name]
        self.state = load_file(init_file)
        self.engine_class = getattr(module, spec.cls)
        self.engine = self.engine_class(self.bc, self.state, device=spec.device, **spec.kwargs)
        self.engine.load_batch(*protocol.make_batch(self.bc, protocol.TIMING_SEED))
        self.built = {"import_s": t_import, "build_s": time.perf_counter() - t0 - t_import}
        self.layers = None

    def timed_step(self):
        t0 = time.perf_counter()
        self.engine.step()
        self.engine.sync()
        return time.perf_counter() - t0

    def build(self):
        e = self.engine
        return dict(self.built, versions=e.versions(), blas=getattr(e, "blas", None),
                    layers=getattr(e, "has_layers", hasattr(e, "layer_fns")))

    def check(self, batches, steps):
        """K steps from the initial weights, which the timing then goes on from. The engine is the one __init__
        built: the coordinator (runner.py) sends check, if at all, before any other command that steps it."""
        data = self.np.load(batches)
        losses, times = [], []
        for i in range(steps):
            self.engine.load_batch(data["x"][i], data["y"][i])
            t0 = time.perf_counter()
            loss = self.engine.step()
            losses.append(self.engine.loss_float(loss))
            times.append(time.perf_counter() - t0)
        self.engine.load_batch(*self.protocol.make_batch(self.bc, self.protocol.TIMING_SEED))
        return {"losses": losses, "first_step_s": times[0], "step_s": times}

    def spread(self, batches, steps, runs):
        """What the same-math check compares with when this engine is a reference (engines.REFERENCES,
        protocol.check_tolerance): its float64 losses on the check batches, and its float32 losses from `runs`
        perturbed copies of the weights (protocol.perturbed); fresh engines of its class, built as it was."""
        data = self.np.load(batches)

        def losses(state, dtype):
            engine = self.engine_class(self.bc, state, device=self.spec.device, dtype=dtype, **self.spec.kwargs)
            out = []
            for i in range(steps):
                engine.load_batch(data["x"][i], data["y"][i])
                out.append(engine.loss_float(engine.step()))
            return out
        exact = losses(self.state, "float64")
        perturbed = [losses(self.protocol.perturbed(self.state, seed), "float32") for seed in range(1, runs + 1)]
        gc.collect()
        return {"exact": exact, "runs": perturbed}

    def steps(self, n):
        return {"samples": [self.timed_step() for _ in range(n)]}

    def layer(self, layer, n, min_s):
        """n samples of one layer's forward + backward; a call shorter than min_s is repeated `inner` times per
        sample (inner calibrated on a warm-up call, protocol.calls_per_sample) and the sample is the mean per call."""
        if self.layers is None:
            if not hasattr(self.engine, "layer_fns"):
                raise ValueError(f"{self.engine.name} has no per-layer functions")
            rng = self.np.random.default_rng(1)
            shape = (self.bc.batch_size, self.bc.block_size, self.bc.n_embd)
            x = rng.standard_normal(shape, dtype=self.np.float32)          # (B, T, C)
            dout = rng.standard_normal(shape, dtype=self.np.float32)       # (B, T, C)
            self.layers = self.engine.layer_fns(x, dout)
        fn = self.layers[layer]
        inner = self.protocol.calls_per_sample(fn, min_s, self.engine.sync)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            self.engine.sync()
            samples.append((time.perf_counter() - t0) / inner)
        return {"samples": samples, "inner": inner}

    def blas(self, n, min_s):
        from benchmarks import matmul_shapes
        return matmul_shapes.time_products(self.bc, self.engine.blas, n, min_s)

    def memory(self):
        out = {}
        if getattr(self.engine, "tracemalloc", False):
            out["tracemalloc_step_bytes"] = tracemalloc_peak(self.timed_step)
        if hasattr(self.engine, "device_memory"):
            out["device_step_bytes"] = self.engine.device_memory(self.timed_step)
        if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
            out["rss_step_bytes"] = rss_step_peak(self.timed_step)
        peak = _proc_kb("VmHWM")
        out["process_peak_rss_bytes"] = None if peak is None else peak * 1024
        return out

    def sampling(self, tokens):
        fn = getattr(self.engine, "sampling", None)
        return {"sampling": fn(tokens) if fn else None}

    def matmul(self, lib, sizes, n):
        from benchmarks import matmul_shapes
        return matmul_shapes.square_rate(lib, sizes, n)


def _error(e):
    """A failure as the coordinator reads it: the traceback to the log, its last line as the reply."""
    traceback.print_exc()
    sys.stderr.flush()
    return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500]}


def serve(build, cpus, ready=lambda worker: {}):
    """A worker process's life: pinned to `cpus` ("0,1", or "" for any), build() the worker, reply {"ready": True,
    **ready(worker)} (or {"error": ...} and return 1 when the engine cannot run here), then answer one JSON command
    per line of stdin ({"cmd": method name, **arguments}) with one JSON reply per line, until "quit". Replies go to
    the real stdout; fd 1 goes to stderr, the log, so a library's print cannot corrupt a reply."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [int(c) for c in cpus.split(",")])
    reply = _protocol_channel()
    try:
        worker = build()
        reply.write(json.dumps({"ready": True, **ready(worker)}) + "\n")
    except Exception as e:                     # the engine cannot run here: one line to the coordinator
        reply.write(json.dumps(_error(e)) + "\n")
        return 1
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            out = getattr(worker, cmd)(**msg)
        except Exception as e:
            out = _error(e)
        reply.write(json.dumps(out) + "\n")
    return 0


def main(argv):
    engine_name, config_name, init_file, cpus = argv[0], argv[1], argv[2], argv[3] if len(argv) > 3 else ""
    return serve(lambda: Worker(engine_name, config_name, init_file), cpus)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
