"""tinygrad_gpt against torch and its peers: the training step, each layer alone, the BLAS floor, memory, sampling.

    python benchmarks/bench.py --quick                   # ~2 minutes: small + nanogpt-cpu, our engine and torch
    python benchmarks/bench.py                           # every config, every engine installed (an hour or more)
    python benchmarks/bench.py --configs lecture --engines tinygrad_gpt torch-fused jax
    python benchmarks/bench.py --update-readme           # and write the README's speed table

Each engine runs in its own process with the same thread settings, after a check that it computes the same losses
as tinygrad_gpt from the same weights; the engines take turns (benchmarks/runner.py). Engines: `tinygrad_gpt`
(compiled kernels on), `tinygrad_gpt-numpy` (TINYGRAD_GPT_KERNELS=0), `torch-fused`, `torch-lecture`,
`torch-compile`, `jax`, `tinygrad`, `autograd`, and with `--devices cuda` the cuda ones; an engine whose library is
missing is listed with the command that installs it. See benchmarks/README.md.
"""
import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile

if __name__ == "__main__":                    # run as a script from a checkout: make benchmarks importable
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

from benchmarks import engines, protocol, report, runner  # noqa: E402 (after the sys.path insert above)

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=list(protocol.CONFIGS), default=None,
                   help="default: all four; --quick: small nanogpt-cpu")
    p.add_argument("--engines", nargs="+", default=None, metavar="ENGINE",
                   help=f"default: every CPU engine ({' '.join(engines.CPU_ENGINES)}); --quick: "
                   f"{' '.join(engines.QUICK_ENGINES)}; or module:Class for your own engine")
    p.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu"],
                   help="cuda adds the cuda engines (where CuPy and a GPU are present)")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine's libraries [2]")
    p.add_argument("--quick", action="store_true", help="few rounds, two small configs, four engines")
    for name, what in (("rounds", "alternation rounds"), ("block", "timed steps per engine per round"),
                       ("warmup", "untimed steps before the rounds"), ("check-steps", "AdamW steps of the check"),
                       ("check-runs", "perturbed float32 reference runs of the check"),
                       ("group", "engine processes alive at once, 0: all")):
        p.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: per config)")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer times")
    p.add_argument("--no-blas", action="store_true", help="skip the BLAS floor")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampling speed")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul peak (no MFU)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=None,
                   help="fresh-process RSS probes of one step per engine (default: on, off with --quick)")
    p.add_argument("--min-sample-ms", type=float, default=None,
                   help="a layer or product call is repeated until a sample lasts this long [5; --quick 1]")
    p.add_argument("--layer-samples", type=int, default=2, help="samples per layer per round [2]")
    p.add_argument("--settle-ms", type=float, default=runner.SETTLE_S * 1e3,
                   help=f"untimed pause before each engine's turn [{runner.SETTLE_S * 1e3:.0f}]")
    p.add_argument("--sample-config", choices=list(protocol.CONFIGS), default=None,
                   help="model shape for sampling [lecture; --quick small]")
    p.add_argument("--sample-tokens", type=int, default=None, help="tokens to sample [500; --quick 100]")
    p.add_argument("--allocator", choices=list(protocol.ALLOCATORS), default="tuned",
                   help="glibc's malloc settings of every engine's process: tinygrad_gpt's own (tuned) or glibc's "
                   "defaults for all [tuned]")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for bench.json, .md, .png")
    p.add_argument("--update-readme", nargs="?", const=README, default=None, metavar="README",
                   help="write the speed table between the README's speed-table markers [README.md]")
    p.add_argument("--force", action="store_true",
                   help="publish (write --out and the README) even when the machine was busy during the run")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="measure nothing: write the tables, chart (and with --update-readme the README table) again "
                   "from a results file, e.g. after a change to report.py")
    args = p.parse_args(argv)
    args.engines_named = args.engines is not None
    args.configs = args.configs or list(protocol.QUICK_CONFIGS if args.quick else protocol.CONFIGS)
    if args.engines is None:
        args.engines = list(engines.QUICK_ENGINES if args.quick else engines.CPU_ENGINES) if "cpu" in args.devices \
            else []
        if "cuda" in args.devices:
            args.engines += list(engines.CUDA_ENGINES)
    for name in args.engines:
        try:
            engines.spec(name)
        except KeyError as e:
            p.error(str(e.args[0]))
    usable = len(protocol.engine_cpus(os.cpu_count() or 1) or []) or os.cpu_count() or 1
    if not 1 <= args.threads <= usable:
        p.error(f"--threads must be between 1 and the {usable} CPUs this process may use (each engine is pinned "
                "to that many)")
    args.rss = (not args.quick) if args.rss is None else args.rss
    args.min_sample_ms = args.min_sample_ms if args.min_sample_ms is not None else (1.0 if args.quick else 5.0)
    args.sample_config = args.sample_config or ("small" if args.quick else "lecture")
    args.sample_tokens = args.sample_tokens or (100 if args.quick else 500)
    return args


def main(argv=None):
    args = parse(argv)
    if args.render:
        return render(args)
    log_dir = tempfile.mkdtemp(prefix="tinygrad_gpt-bench-")       # each engine process's stderr
    cpus = protocol.engine_cpus(args.threads)
    watch = protocol.LoadWatch(cpus)
    settings = runner.Settings(threads=args.threads, quick=args.quick, layers=not args.no_layers,
                               blas=not args.no_blas, rss=args.rss, min_sample_s=args.min_sample_ms / 1e3,
                               layer_samples=args.layer_samples, settle_s=args.settle_ms / 1e3,
                               rounds=args.rounds, block=args.block,
                               warmup=args.warmup, check_steps=args.check_steps, check_runs=args.check_runs,
                               group=args.group, log_dir=log_dir, allocator=args.allocator, watch=watch)
    machine = protocol.machine_info()
    start_busy = watch.sample(1.0)
    results = {"meta": {"date": datetime.datetime.now().isoformat(timespec="seconds"), "quick": args.quick,
                        "argv": sys.argv[1:] if argv is None else list(argv), "machine": machine,
                        "threads": args.threads, "cpus": cpus, "allocator": args.allocator,
                        "allocator_env": protocol.ALLOCATORS[args.allocator],
                        "loadavg_start": machine.get("loadavg"), "busy_cpus_at_start": start_busy,
                        "settle_s": settings.settle_s, "spread_factor": protocol.SPREAD_FACTOR,
                        "engines": args.engines, "hardware_peak": protocol.hardware_peak(args.threads)},
               "configs": {}}
    runner.say(f"engines: {' '.join(args.engines)}; {args.threads} threads each, CPUs {cpus}; allocator "
               f"{args.allocator}; other processes kept {start_busy if start_busy is not None else '?'} CPUs busy "
               "before the start")

    if not args.no_matmul:
        sizes, n = ((1024,), 3) if args.quick else ((1024, 1536, 2048), 7)
        small = protocol.CONFIGS["small"]
        mm = runner.one_off(engines.REFERENCE, small, settings, "matmul", lib="numpy", sizes=sizes, n=n)
        if mm:
            results["matmul"] = mm
            runner.say(f"float32 matmul rate: {mm['peak_gflops']:.0f} GFLOP/s (NumPy's BLAS)")
        if engines.TORCH_BASELINE in args.engines and not args.quick:
            results["matmul_torch"] = runner.one_off(engines.TORCH_BASELINE, small, settings, "matmul", lib="torch",
                                                     sizes=sizes, n=n)
        if any(engines.spec(n).device == "cuda" for n in args.engines):
            results["matmul_cuda"] = runner.one_off("tinygrad_gpt-cuda", small, settings, "matmul", lib="cupy",
                                                    sizes=(4096, 8192), n=5)

    for cname in args.configs:
        bc = protocol.CONFIGS[cname]
        if args.engines_named:                      # named engines run even where they are slow
            bc = dataclasses.replace(bc, slow_engines={})
        results["configs"][cname] = runner.run_config(bc, args.engines, settings)
    add_mfu(results)

    if not args.no_sampling:
        sbc = protocol.CONFIGS[args.sample_config]
        runner.say(f"sampling {args.sample_tokens} tokens, shape {args.sample_config}")
        samp = {"config": args.sample_config, "tokens": args.sample_tokens}
        ours = runner.one_off(engines.REFERENCE, sbc, settings, "sampling", tokens=args.sample_tokens)
        if ours:
            samp["tinygrad_gpt"] = ours["sampling"]
            runner.say(f"  tinygrad_gpt: KV cache {samp['tinygrad_gpt']['speedup']:.1f}x faster than recomputation")
        if "torch-lecture" in args.engines:
            t = runner.one_off("torch-lecture", sbc, settings, "sampling", tokens=args.sample_tokens)
            samp["torch"] = t["sampling"] if t else None
        results["sampling"] = samp

    results["meta"]["loadavg_end"] = protocol.machine_info().get("loadavg")
    results["meta"]["load"] = load = watch.summary()
    if load["busy"]:
        results["meta"]["busy"] = (
            f"other processes kept {load['mean_cpus']:.2f} CPUs busy on average (at most {load['max_cpus']:.2f}) "
            f"in the {load['windows']} pauses between turns, above the {protocol.BUSY_CPUS} CPUs a quiet run allows: "
            "engines whose threads wait for descheduled siblings slow by 10-50x, and even the ratios mean little")
        runner.say("warning: the machine was busy: " + results["meta"]["busy"])
    if any(c["errors"] for c in results["configs"].values()):
        runner.say(f"the engines' logs are kept in {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    out, readme = publish_targets(args, load["busy"])
    paths = report.write_outputs(results, out)
    runner.say("wrote " + ", ".join(paths.values()))
    for cname, name, r, t in report.targets(results):
        runner.say(f"{cname:12s} {name} / torch fused {r:.2f} (target <= {t:.2f})")
    if readme:
        if report.update_readme(results, readme):
            runner.say(f"updated the speed table in {readme}")
        else:
            runner.say(f"{readme} has no {report.README_START} ... {report.README_END} block: not updated")
    return 0


def render(args):
    """--render: the outputs of an earlier run, written again from its JSON (the same refusal when it was busy)."""
    with open(args.render) as f:
        results = json.load(f)
    out, readme = publish_targets(args, bool((results["meta"].get("load") or {}).get("busy")))
    paths = report.write_outputs(results, out)
    runner.say("wrote " + ", ".join(paths.values()))
    if readme and report.update_readme(results, readme):
        runner.say(f"updated the speed table in {readme}")
    return 0


def publish_targets(args, busy):
    """Where the results go: --out and the README; a busy run (protocol.LoadWatch) goes to --out/unpublished and
    leaves the README alone, unless --force."""
    if busy and not args.force:
        out = os.path.join(args.out, "unpublished")
        runner.say(f"not publishing a busy run: results go to {out}"
                   + (", the README is left as it was" if args.update_readme else "") + " (--force publishes it)")
        return out, None
    return args.out, args.update_readme


def add_mfu(results):
    """step.mfu = achieved model GFLOP/s / the hardware's float32 peak (protocol.hardware_peak, CPU engines);
    step.of_matmul_rate = the same over the float32 square-matmul rate of the device's library (NumPy's BLAS on the
    CPU, CuPy's on the GPU): how close a step comes to what the BLAS itself reaches."""
    hw = (results["meta"].get("hardware_peak") or {}).get("gflops")
    rates = {"cpu": (results.get("matmul") or {}).get("peak_gflops"),
             "cuda": (results.get("matmul_cuda") or {}).get("peak_gflops")}
    for c in results["configs"].values():
        for name, e in c["engines"].items():
            if "step" not in e:
                continue
            device = engines.spec(name).device
            if hw and device == "cpu":
                e["step"]["mfu"] = e["step"]["achieved_gflops"] / hw
            if rates.get(device):
                e["step"]["of_matmul_rate"] = e["step"]["achieved_gflops"] / rates[device]


if __name__ == "__main__":
    sys.exit(main())
