"""Data-parallel throughput: training tokens/s with 1 process and with N ranks under mpiexec, and the allreduce time.

    python benchmarks/ddp_bench.py                         # small and nanogpt-cpu, 1 vs 2 ranks, 2 rounds
    python benchmarks/ddp_bench.py --configs small nanogpt-cpu lecture    # and the lecture shape (~6 min more)

Each measurement is a fresh process (or mpiexec job) with ONE thread per rank in every library: protocol.thread_env(1)
sets the BLAS and OpenMP variables and NUMBA_NUM_THREADS (the engine's compiled CPU kernels, its matmuls included, run
on numba's pool, by default one thread per core). So 2 ranks use the 2 cores of this machine and 1 process uses one:
the comparison is "the same per-core engine, one core vs two through MPI". The modes alternate round by round
(1, N, 1, N, ...) so background load falls on both.

Per step (rank 0's clock; the allreduce makes every step a synchronisation point, so it is the job's step time):
    step_ms         sample the batch, forward, backward, AdamW step (including the allreduce)
    allreduce_ms    inside the step: the Allreduce of the flat gradient buffer, including waiting for the slower rank
Then, on an idle communicator (a Barrier before each call, so no waiting is counted):
    isolated_allreduce_ms   the same buffer
    lecture_allreduce_ms    a buffer of the lecture model's size (10,788,929 + 2 floats): the number for the scaling
                            model in docs/distributed.md
tokens/s = global batch B * T / median step time. Results: benchmarks/results/ddp_bench.{json,md}.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:           # run as a script from a checkout: make tinygrad_gpt importable
    sys.path.insert(0, str(REPO))
LECTURE_PARAMS = 10_788_929


# ---- one measurement (a process, or one rank of an mpiexec job) --------------------------------------------------
def worker(config, steps, warmup, out):
    import numpy as np

    from benchmarks.protocol import CONFIGS
    from tinygrad_gpt import distributed
    from tinygrad_gpt.data import BatchSampler, load_corpus
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW

    dist = distributed.setup()                                 # None without mpiexec (a plain process)
    bc = CONFIGS[config]
    model = GPT(GPTConfig(**bc.gpt_config()), seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    corpus = load_corpus(block_size=bc.block_size)             # tiny Shakespeare: V = 65, as the configs assume
    rows = dist.rows(bc.batch_size) if dist else None
    sampler = BatchSampler(corpus.train, bc.block_size, bc.batch_size, seed=[0, 2], rows=rows)
    if dist:
        dist.attach(opt)
        dist.comm.Barrier()
    step_s, comm_s, cpu_s = [], [], []
    hook_cpu = [0.0]

    def average(o):
        h0 = time.process_time()
        dist.average(loss.item(), i + 1)
        hook_cpu[0] = time.process_time() - h0                 # MPICH polls while it waits: CPU time, not work

    for i in range(warmup + steps):
        c0 = dist.allreduce_s if dist else 0.0
        t0, p0 = time.perf_counter(), time.process_time()
        x, y = sampler.sample()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step(grad_hook=average if dist else None)
        if i >= warmup:
            step_s.append(time.perf_counter() - t0)
            comm_s.append((dist.allreduce_s - c0) if dist else 0.0)
            cpu_s.append(time.process_time() - p0 - hook_cpu[0])   # this rank's compute, in CPU time
    result = {"config": config, "ranks": dist.size if dist else 1, "mode": "mpi" if dist else "plain",
              "params": model.num_parameters(), "global_batch": bc.batch_size, "block_size": bc.block_size,
              "step_ms": [s * 1e3 for s in step_s], "allreduce_ms": [s * 1e3 for s in comm_s]}
    # compute CPU time per step, the slowest rank's: what the step would take on idle cores, before communication
    per_rank = dist.comm.allgather(cpu_s) if dist else [cpu_s]
    result["compute_cpu_ms"] = [max(ts) * 1e3 for ts in zip(*per_rank, strict=True)]
    if dist and dist.size > 1:
        result["isolated_allreduce_ms"] = _isolated(dist, dist.buf, repeats=20)
        big = np.zeros(LECTURE_PARAMS + 2, np.float32)
        result["lecture_allreduce_ms"] = _isolated(dist, big, repeats=5)
    if not dist or dist.is_root:
        Path(out).write_text(json.dumps(result))


def _isolated(dist, buf, repeats):
    """Median ms of Allreduce(IN_PLACE, SUM) on buf, each call after a Barrier (no waiting for a slower rank)."""
    times = []
    for _ in range(repeats + 1):
        dist.comm.Barrier()
        t0 = time.perf_counter()
        dist._allreduce(buf)
        times.append(time.perf_counter() - t0)
    per_rank = dist.comm.allgather(times[1:])            # a collective takes as long as its slowest rank
    return [max(ts) * 1e3 for ts in zip(*per_rank, strict=True)]


# ---- the driver --------------------------------------------------------------------------------------------------
def env_one_thread():
    """A measurement's environment: the repository importable, and one thread per rank in every library (the same
    variables the benchmark's engine processes get, protocol.thread_env)."""
    from benchmarks.protocol import thread_env

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(thread_env(1))
    return env


def find_mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    import shutil
    return shutil.which("mpiexec")


def measure(config, ranks, steps, warmup, tmp):
    out = Path(tmp) / f"{config}-{ranks}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--worker", config, "--steps", str(steps), "--warmup", str(warmup),
           "--out", str(out)]
    if ranks > 1:
        cmd = [find_mpiexec(), "-n", str(ranks)] + cmd
    subprocess.run(cmd, env=env_one_thread(), check=True)
    return json.loads(out.read_text())


def summary(ms):
    ms = sorted(ms)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "q1": q[0], "q3": q[2], "min": ms[0], "max": ms[-1], "n": len(ms)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["small", "nanogpt-cpu"])
    p.add_argument("--ranks", type=int, default=2, help="the data-parallel run's ranks [2]")
    p.add_argument("--steps", type=int, help="timed steps per run [the benchmark's samples per engine: small 30, "
                   "nanogpt-cpu 20, mid 10, lecture 9]")
    p.add_argument("--warmup", type=int, help="untimed steps first [the config's: 5, 3, 2, 1]")
    p.add_argument("--rounds", type=int, default=2, help="alternations of 1-process and N-rank runs [2]")
    p.add_argument("--out", default=str(HERE / "results"), help="results directory (worker: its JSON file)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps, args.warmup, args.out)
    import tempfile

    from benchmarks.protocol import CONFIGS
    load0 = os.getloadavg()
    results = {"machine": {"cpu_count": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load0]},
               "settings": vars(args), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            runs = {1: [], args.ranks: []}
            steps = args.steps or CONFIGS[config].rounds * CONFIGS[config].block
            warmup = CONFIGS[config].warmup if args.warmup is None else args.warmup
            for r in range(args.rounds):
                for ranks in (1, args.ranks):
                    res = measure(config, ranks, steps, warmup, tmp)
                    runs[ranks].append(res)
                    print(f"{config} round {r + 1}: {ranks} rank(s) step {statistics.median(res['step_ms']):.1f} ms",
                          flush=True)
            entry = {"params": runs[1][0]["params"], "global_batch": runs[1][0]["global_batch"],
                     "block_size": runs[1][0]["block_size"]}
            tokens = entry["global_batch"] * entry["block_size"]
            for ranks, rs in runs.items():
                steps = [s for r in rs for s in r["step_ms"]]
                cpu = [s for r in rs for s in r["compute_cpu_ms"]]
                e = {"step_ms": summary(steps), "tokens_per_s": tokens / (statistics.median(steps) / 1e3),
                     "per_round_step_ms": [statistics.median(r["step_ms"]) for r in rs],
                     "compute_cpu_ms": summary(cpu)}
                comm = 0.0
                if ranks > 1:
                    e["allreduce_in_step_ms"] = summary([s for r in rs for s in r["allreduce_ms"]])
                    e["isolated_allreduce_ms"] = summary([s for r in rs for s in r["isolated_allreduce_ms"]])
                    e["lecture_allreduce_ms"] = summary([s for r in rs for s in r["lecture_allreduce_ms"]])
                    comm = e["isolated_allreduce_ms"]["median"]
                # idle-machine model: the slowest rank's compute (CPU time) plus an uncontended allreduce
                e["model_tokens_per_s"] = tokens / ((statistics.median(cpu) + comm) / 1e3)
                entry[f"{ranks}_ranks"] = e
            many, one = entry[f"{args.ranks}_ranks"], entry["1_ranks"]
            entry["speedup"] = many["tokens_per_s"] / one["tokens_per_s"]
            entry["model_speedup"] = many["model_tokens_per_s"] / one["model_tokens_per_s"]
            results["configs"][config] = entry
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddp_bench.json").write_text(json.dumps(results, indent=1) + "\n")
    md = markdown(results, args.ranks)
    (out / "ddp_bench.md").write_text(md)
    print(md)


def markdown(results, n):
    m = results["machine"]
    lines = [f"Data-parallel benchmark: 1 process vs {n} ranks (mpiexec), one thread per rank, "
             f"{m['cpu_count']} CPUs; load average at start {m['loadavg_at_start'][0]}, at end "
             f"{m['loadavg_at_end'][0]} (a shared machine: absolute times are noisy, compare within a row).", "",
             f"| config | params | B x T | 1 process: step ms (IQR) | tokens/s | {n} ranks: step ms (IQR) | tokens/s "
             f"| speedup | allreduce in step, ms | allreduce isolated, ms | lecture-size allreduce, ms "
             f"| compute CPU ms/step: 1 / {n} ranks | idle-machine model speedup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in results["configs"].items():
        one, many = e["1_ranks"], e[f"{n}_ranks"]
        lines.append(
            f"| {name} | {e['params']:,} | {e['global_batch']} x {e['block_size']} "
            f"| {one['step_ms']['median']:.1f} ({one['step_ms']['q1']:.1f}-{one['step_ms']['q3']:.1f}) "
            f"| {one['tokens_per_s']:,.0f} "
            f"| {many['step_ms']['median']:.1f} ({many['step_ms']['q1']:.1f}-{many['step_ms']['q3']:.1f}) "
            f"| {many['tokens_per_s']:,.0f} | {e['speedup']:.2f}x "
            f"| {many['allreduce_in_step_ms']['median']:.3f} | {many['isolated_allreduce_ms']['median']:.3f} "
            f"| {many['lecture_allreduce_ms']['median']:.1f} "
            f"| {one['compute_cpu_ms']['median']:.1f} / {many['compute_cpu_ms']['median']:.1f} "
            f"| {e['model_speedup']:.2f}x |")
    lines += ["", "step ms: wall clock per training step on rank 0, median (quartiles) over all rounds. allreduce in "
              "step: inside the step, including the wait for the slower rank. isolated: after a Barrier, the same "
              "buffer. compute CPU ms: per step, the slowest rank's CPU time outside the allreduce (load does not "
              "inflate it); the model speedup is (compute_1) / (compute_N + isolated allreduce): what an idle "
              "machine would show."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
