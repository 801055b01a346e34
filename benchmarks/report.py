"""The results as files: bench.json (everything), bench.md (the tables), bench.png (step times), and the speed table
in the top-level README.md (between its `<!-- speed-table:start -->` and `<!-- speed-table:end -->` markers).
"""
import json
import os
import re

import numpy as np

from benchmarks import engines

# Targets of issue 20 (benchmark tables, never timed tests): tinygrad_gpt / torch at its strongest (torch-fused:
# fused AdamW, the same allocator settings), per config.
TARGETS = {"small": 0.9, "nanogpt-cpu": 0.9, "mid": 0.9, "lecture": 0.95}
README_START, README_END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"


def ms(v):
    return "" if v is None else f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def mib(n):
    return "" if n is None else f"{n / 2 ** 20:,.1f} MiB"


def threads(meta):
    return f"{meta['threads']} thread" + ("s" if meta["threads"] != 1 else "")


def engine_order(results):
    """Every engine seen in the run, in the registry's order (user engines last)."""
    seen = {n for c in results["configs"].values()
            for part in ("engines", "failed_check", "skipped", "errors") for n in c.get(part, {})}
    return [n for n in engines.ENGINES if n in seen] + sorted(seen - set(engines.ENGINES))


def ratio(c, name, base=engines.TORCH_BASELINE):
    """Median step time over the base engine's (torch at its strongest by default) on the same device, or None."""
    base = base + ("-cuda" if engines.spec(name).device == "cuda" and base == engines.TORCH_BASELINE else "")
    e, b = c["engines"].get(name, {}).get("step"), c["engines"].get(base, {}).get("step")
    return e["median_ms"] / b["median_ms"] if e and b else None


def load_line(meta):
    load = meta.get("load") or {}
    if not load.get("windows"):
        return f"load average at start {meta.get('loadavg_start')}"
    return (f"other processes' load: {meta.get('busy_cpus_at_start', 0) or 0:.2f} CPUs busy before the start, "
            f"{load['mean_cpus']:.2f} on average (at most {load['max_cpus']:.2f}) in the {load['windows']} pauses "
            f"between turns; load average {meta.get('loadavg_start')} at start")


def versions_line(results):
    """Library versions, one entry per library, from the engines that ran."""
    got = {}
    for c in results["configs"].values():
        for part in ("engines", "failed_check"):
            for e in c.get(part, {}).values():
                for k, v in e.get("versions", {}).items():
                    if k in ("tinygrad_gpt", "numpy", "torch", "jax", "jaxlib", "tinygrad", "autograd"):
                        got.setdefault(k, v)
    return ", ".join(f"{k} {v}" for k, v in got.items())


def markdown(results):
    meta = results["meta"]
    m = meta["machine"]
    L = [f"# tinygrad_gpt benchmarks ({'quick run' if meta['quick'] else 'full run'})", "",
         f"{meta['date']} · {m['cpu']} · {m.get('usable_cpus', '?')} usable cores · {load_line(meta)} · "
         f"{threads(meta)} per engine · allocator {meta.get('allocator', 'tuned')} for every engine · "
         f"{versions_line(results)}", ""]
    if meta.get("busy"):
        L += [f"**Warning: {meta['busy']}**", ""]
    if meta.get("note"):
        L += [meta["note"], ""]
    L += ["Protocol: each engine in its own process (thread variables set before its libraries load, the same "
          f"{meta['threads']} CPUs); the same-math check first; warm-up steps; then rounds in which every engine in "
          "turn runs a block of timed steps while the others wait (an untimed pause before each turn lets the last "
          "engine's idle thread pools fall asleep), the order rotating from round to round. Median and interquartile "
          "range (q1-q3) of the per-step times; ratios are to torch eager fused measured in the same run.", ""]
    hw = meta.get("hardware_peak")
    if hw:
        L += [f"Hardware float32 peak (the MFU denominator): **{hw['gflops']:.0f} GFLOP/s** = {hw['cores']} cores x "
              f"{hw['fp32_lanes']} lanes x {hw['fma_units']} FMA units x 2 x {hw['ghz']:.2f} GHz "
              "(protocol.hardware_peak).", ""]
    mm = results.get("matmul")
    if mm:
        L += [f"float32 matmul rate (the `/ BLAS` denominator): **{mm['peak_gflops']:.0f} GFLOP/s** (NumPy, n="
              f"{mm['best_size']}, fastest of the samples)" +
              (f"; torch's own: {results['matmul_torch']['peak_gflops']:.0f} GFLOP/s" if results.get("matmul_torch")
               else "") + ".", ""]

    L += ["## Training step (forward, backward, AdamW)", "",
          "| config | engine | median ms | IQR ms | tokens/s | GFLOP/s | MFU | / BLAS | / torch fused | "
          "/ torch default AdamW | first step s | process peak RSS | step memory |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cname, c in results["configs"].items():
        for name in engine_order(results):
            e = c["engines"].get(name)
            if not e or "step" not in e:
                continue
            s, mem = e["step"], e.get("memory", {})
            r, rd = ratio(c, name), ratio(c, name, engines.DEFAULT_ADAMW)
            step_mem = []
            if mem.get("tracemalloc_step_bytes") is not None:
                step_mem.append(mib(mem["tracemalloc_step_bytes"]) + " (tm)")
            rss = e.get("rss_probe", {})
            if rss.get("rss_step_bytes") is not None:
                step_mem.append(mib(rss["rss_step_bytes"]) + " (rss)")
            if mem.get("device_step_bytes") is not None:
                step_mem.append(mib(mem["device_step_bytes"]) + " (gpu)")
            L.append(f"| {cname} | {name} | {ms(s['median_ms'])} | {ms(s['q1_ms'])}-{ms(s['q3_ms'])} | "
                     f"{s['tokens_per_s']:,.0f} | {s['achieved_gflops']:.1f} | "
                     f"{'' if s.get('mfu') is None else format(s['mfu'], '.0%')} | "
                     f"{'' if s.get('of_matmul_rate') is None else format(s['of_matmul_rate'], '.0%')} | "
                     f"{'' if r is None else format(r, '.2f')} | {'' if rd is None else format(rd, '.2f')} | "
                     f"{e['check']['first_step_s']:.1f} | "
                     f"{mib(mem.get('process_peak_rss_bytes'))} | {' / '.join(step_mem)} |")
    L += ["", "MFU: model FLOPs per second (protocol.model_flops) over the hardware's float32 peak; / BLAS: over the "
          "float32 square-matmul rate of NumPy's BLAS on the same threads. / torch fused: the ratio to torch at its "
          "strongest (fused AdamW, the same allocator settings); / torch default AdamW: to the same model with "
          "torch.optim.AdamW's default implementation. "
          "first step: the check's first step (compilation for torch.compile, JAX and tinygrad). Memory: process "
          "peak RSS = the timing process's high-water mark (libraries included); (tm) = tracemalloc peak of one "
          "step's NumPy allocations above those before it; (rss) = one step's resident-set high-water mark above the "
          "resident set before it, in a fresh process with MALLOC_MMAP_THRESHOLD_=65536 (full runs); (gpu) = the CuPy "
          "pool's or torch.cuda's peak of one step above what was in use before it.", ""]

    L += ["## Same-math check", "",
          "From the same initial weights (tinygrad_gpt's `state_dict()`) and the same batches, each engine's loss "
          "over the check's AdamW steps, against the float64 run of a reference from another library: torch's "
          "(torch-fused) judges tinygrad_gpt and the peers, tinygrad_gpt's judges torch's engines, so no engine "
          f"passes by its own runs. Tolerance: {results['meta']['spread_factor']}x the float32 spread of the "
          "reference's runs (from the weights and from copies with every weight scaled by 1 +- 2^-20) plus "
          "sqrt(B*T) u |loss| (benchmarks/protocol.py, `check_tolerance`; benchmarks/README.md).", "",
          "| config | engine | judged by | max abs difference | tolerance (step 1 / later) | verdict |",
          "|---|---|---|---:|---:|---|"]
    for cname, c in results["configs"].items():
        for name in engine_order(results):
            e = c["engines"].get(name) or c["failed_check"].get(name)
            if e:
                ch = e["check"]
                tol = c.get("references", {}).get(ch.get("judged_by"), {}).get("tol")
                tol_txt = "" if not tol else f"{tol[0]:.1e} / {max(tol[1:] or tol):.1e}"
                verdict = "same math" if ch["passed"] else (
                    f"**failed** at step {ch.get('worst_step')}: {ch.get('diff_at_worst', float('nan')):.1e} > "
                    f"{ch.get('tol_at_worst', float('nan')):.1e} (not timed)")
                judge = ch.get("judged_by", "") + ("" if ch.get("independent", True) else " (its own library: the "
                                                   "other reference is not installed)")
                L.append(f"| {cname} | {name} | {judge} | {ch.get('max_abs_diff', float('nan')):.1e} | {tol_txt} | "
                         f"{verdict} |")
    L.append("")
    notes = [f"{cname}/{n}: {why}" for cname, c in results["configs"].items()
             for part in ("skipped", "errors") for n, why in c.get(part, {}).items()]
    if notes:
        L += ["Not run: " + "; ".join(notes), ""]

    floors = [(cname, c) for cname, c in results["configs"].items() if c.get("blas_floor")]
    if floors:
        L += ["## The BLAS floor (the linear layers' matmuls alone)", "",
              "| config | library | floor ms per step | its engine's step ms | floor / step |",
              "|---|---|---:|---:|---:|"]
        for cname, c in floors:
            for lib, f in c["blas_floor"].items():
                step = c["engines"].get(f["process"], {}).get("step", {}).get("median_ms")
                L.append(f"| {cname} | {lib} ({f['process']}'s process) | {ms(f['per_step_ms'])} | {ms(step)} | "
                         f"{'' if not step else format(f['per_step_ms'] / step, '.0%')} |")
        L += ["", "Every linear layer's three products (y = x W^T, dx = g W, dW = g^T x) at N = B*T rows, timed "
              "alone (benchmarks/matmul_shapes.py): what any engine on that BLAS pays before its first elementwise "
              "operation.", ""]

    layered = [(cname, c) for cname, c in results["configs"].items()
               if any("layers" in e for e in c["engines"].values())]
    if layered:
        names = [n for n in engine_order(results) if any("layers" in c["engines"].get(n, {}) for _, c in layered)]
        L += ["## Each layer alone, forward + backward (median ms)", "",
              "| config | layer | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
        for cname, c in layered:
            for layer in engines.LAYERS:
                cells = [ms(c["engines"].get(n, {}).get("layers", {}).get(layer, {}).get("median_ms")) for n in names]
                L.append(f"| {cname} | {layer} | " + " | ".join(cells) + " |")
        L += ["", "Layers of block 0 on the config's (B, T, C) float32 activations with a random upstream gradient: "
              "embedding = token + position lookup; attention = the whole sublayer (qkv, causal softmax attention, "
              "output projection); mlp = fc, ReLU, proj; lm_head+ce = final projection and mean cross-entropy; "
              "adamw = one optimizer update of every parameter. tinygrad_gpt-numpy is the plain NumPy twin of each "
              "kernel (TINYGRAD_GPT_KERNELS=0).", ""]

    samp = results.get("sampling")
    if samp:
        L += [f"## Sampling ({samp['tokens']} new tokens, batch 1, one-token prompt, shape {samp['config']})", "",
              "| engine | tokens/s | seconds |", "|---|---:|---:|"]
        ours = samp.get("tinygrad_gpt")
        if ours:
            for key, what in (("kv_cache", "KV cache, window shift"), ("no_cache", "full recomputation, window shift"),
                              ("kv_cache_slide", "KV cache, window slide"),
                              ("no_cache_slide", "full recomputation, window slide")):
                L.append(f"| tinygrad_gpt, {what} | {ours[key]['tokens_per_s']:.1f} | {ours[key]['seconds']:.2f} |")
        for what, d in (samp.get("torch") or {}).items():
            L.append(f"| torch, {what} | {d['tokens_per_s']:.1f} | {d['seconds']:.2f} |")
        if ours:
            L += ["", f"KV-cache speedup: **{ours['speedup']:.1f}x** with window 'shift' (the oldest quarter dropped "
                  f"once the context is full), {ours['speedup_slide']:.1f}x with 'slide' (the lecture's rule).", ""]

    rows = targets(results)
    if rows:
        L += ["## Targets (issue 20)", "", "| config | engine | / torch fused | target | met |",
              "|---|---|---:|---:|:---:|"]
        L += [f"| {c} | {n} | {r:.2f} | <= {t:.2f} | {'yes' if r <= t else '**no**'} |" for c, n, r, t in rows]
        L.append("")
    return "\n".join(L)


def targets(results):
    """(config, engine, its ratio to torch at its strongest, the target) for our engines that ran."""
    return [(cname, name, ratio(c, name), TARGETS[cname]) for cname, c in results["configs"].items()
            for name in engines.TARGETED if cname in TARGETS and ratio(c, name) is not None]


LIBRARIES = ("tinygrad_gpt", "torch", "jax", "tinygrad", "autograd")


def library_version(results, name):
    """'library version' of an engine, from the first config that ran it."""
    for c in results["configs"].values():
        e = c["engines"].get(name) or c["failed_check"].get(name)
        if e:
            v = e.get("versions", {})
            return next((f"{lib} {v[lib]}" for lib in LIBRARIES if lib in v), "")
    return ""


def speed_table(results):
    """The README's table: median ms per step of every engine per config, with the ratio to torch fused."""
    configs = list(results["configs"].items())
    names = [n for n in engine_order(results) if any(n in c["engines"] or n in c["failed_check"] for _, c in configs)]
    L = ["| engine | version | " + " | ".join(f"{cn} ({c['shape'].split(' V=')[0]})" for cn, c in configs) + " |",
         "|---|---|" + "---:|" * len(configs)]
    for name in names:
        cells = []
        for _, c in configs:
            e = c["engines"].get(name, {}).get("step")
            if e:
                r, rd = ratio(c, name), ratio(c, name, engines.DEFAULT_ADAMW)
                cells.append(f"{ms(e['median_ms'])}" + ("" if r is None else f" ({r:.2f}x" + (
                    "" if rd is None else f" / {rd:.2f}x") + ")"))
            elif name in c["failed_check"]:
                cells.append("failed check")
            else:
                cells.append("")
        L.append(f"| {name} | {library_version(results, name)} | " + " | ".join(cells) + " |")
    for lib in ("numpy", "torch"):
        floors = [c.get("blas_floor", {}).get(lib) for _, c in configs]
        if any(floors):
            L.append(f"| *BLAS floor: {lib}'s linear-layer matmuls alone* | | " +
                     " | ".join(ms(f["per_step_ms"]) if f else "" for f in floors) + " |")
    meta = results["meta"]
    L += ["", f"Median ms per training step (forward, backward, AdamW); in parentheses the ratio to torch at its "
          "strongest (`torch-fused`: eager, SDPA, `AdamW(fused=True)`) and to the same torch with AdamW's default "
          f"implementation (`torch-default-adamw`), both measured in the same run; {threads(meta)} per engine, each "
          f"engine in its own process, every process on the same allocator settings ({meta.get('allocator', 'tuned')}"
          f"), the engines taking turns. One command: `python benchmarks/bench.py --update-readme` "
          f"({'quick run' if meta['quick'] else 'full run'} of {meta['date'][:16].replace('T', ' ')}; "
          f"{load_line(meta)}; numpy {meta['machine']['numpy']})."]
    L += not_run(configs)
    if meta.get("note"):
        L.append(meta["note"])
    if meta.get("busy"):
        L.append(f"**Measured on a busy machine: {meta['busy']}**")
    return "\n".join(L)


def not_run(configs):
    """One line per engine left out of some configs, with its configs and why."""
    why = {}
    for cname, c in configs:
        for name, reason in c.get("skipped", {}).items():
            why.setdefault((name, reason), []).append(cname)
    if not why:
        return []
    return ["Not run: " + "; ".join(f"{name} ({', '.join(cs)}: {reason})" for (name, reason), cs in why.items())
            + "."]


def chart(results, path):
    """PNG: median step time per engine, one panel per config (log scale: the engines span orders of magnitude)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    configs = [(n, c) for n, c in results["configs"].items() if any("step" in e for e in c["engines"].values())]
    if not configs:
        return None
    fig, axes = plt.subplots(1, len(configs), figsize=(max(6.5, 4.4 * len(configs)), 4.4), squeeze=False)
    for ax, (cname, c) in zip(axes[0], configs, strict=True):
        names = [n for n in engine_order(results) if "step" in c["engines"].get(n, {})]
        med = np.array([c["engines"][n]["step"]["median_ms"] for n in names])
        lo = med - [c["engines"][n]["step"]["q1_ms"] for n in names]
        hi = np.array([c["engines"][n]["step"]["q3_ms"] for n in names]) - med
        colors = ["#d62728" if n.startswith("tinygrad_gpt") else "#1f77b4" if n.startswith("torch") else "#2ca02c"
                  for n in names]
        ax.bar(range(len(names)), med, yerr=[lo, hi], color=colors, capsize=3)
        for i, v in enumerate(med):
            ax.text(i, v, ms(v), ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{cname}\n{c['shape']}", fontsize=9)
        ax.set_ylabel("ms per training step (median, log scale)")
    fig.suptitle(f"Training step, {threads(results['meta'])}, one process per engine (lower is better)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_outputs(results, out_dir, stem="bench"):
    """results -> out_dir/{stem}.json, .md, .png; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
    md = markdown(results)
    if chart(results, paths["png"]):
        md += f"\n![training step times]({stem}.png)\n"
    else:
        paths.pop("png")
    with open(paths["md"], "w") as f:
        f.write(md)
    return paths


def update_readme(results, path):
    """Replace the speed table between the README's markers; False (README untouched) when they are missing."""
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        return False
    body = speed_table(results)
    text = re.sub(re.escape(README_START) + ".*?" + re.escape(README_END),
                  lambda _: README_START + "\n" + body + "\n" + README_END, text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)
    return True
