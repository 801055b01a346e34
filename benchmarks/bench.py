"""tinygrad_gpt against torch: training step, each layer alone, sampling, memory; ratios measured in the same run.

    python benchmarks/bench.py                       # all three configs, 2 threads (the lecture config takes minutes)
    python benchmarks/bench.py --quick               # smoke run: small and nanogpt-cpu, few repeats
    python benchmarks/bench.py --configs lecture --threads 2 --repeats 3 --update-readme

Engines: tinygrad_gpt on NumPy; torch on the CPU as the lecture writes the model (one module per head) and fused
(one qkv Linear, scaled_dot_product_attention); tinygrad_gpt on CuPy and both torch forms on CUDA where a GPU is
present (skipped with a message otherwise). All engines start from the same weights (tinygrad_gpt's init, loaded into
the torch models) and the same batch, and the run checks that their initial losses agree. NumPy's BLAS and torch are
pinned to the same thread count (threadpoolctl.threadpool_limits and torch.set_num_threads). Everything that does not
need torch (timer, configs, FLOPs, memory, writers) is in tinygrad_gpt/bench.py. See benchmarks/README.md.
"""
import os
import sys


def _pin_env_threads(argv):
    """Set the thread variables before NumPy and torch load their pools (what works without threadpoolctl)."""
    n = "2"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            n = argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n


if __name__ == "__main__":
    _pin_env_threads(sys.argv[1:])
    ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if ROOT not in sys.path:           # run as a script from a checkout: make tinygrad_gpt and benchmarks importable
        sys.path.insert(0, ROOT)

import re                                      # noqa: E402
import types                                   # noqa: E402

import numpy as np                             # noqa: E402
import torch                                   # noqa: E402

from benchmarks.torch_models import MODELS, LectureGPT   # noqa: E402
from tinygrad_gpt import GPT, GPTConfig                   # noqa: E402
from tinygrad_gpt import bench as tb                      # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_FORMS = ("fused", "lecture")


class TorchEngine:
    """A torch model (`form`: fused or lecture) with torch.optim.AdamW; the engine interface of tinygrad_gpt.bench."""

    def __init__(self, bc, form, device="cpu", sd=None, seed=0, adamw="default"):
        self.bc, self.form = bc, form
        self.device = torch.device(device)
        self.name = f"torch-{form}-{self.device.type}"
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        if sd is None:                     # the weights every engine starts from: tinygrad_gpt's init of this seed
            sd = GPT(GPTConfig(**bc.gpt_config()), seed=seed).state_dict()
        self.sd = sd
        torch.manual_seed(seed)
        self.model = MODELS[form](types.SimpleNamespace(**bc.gpt_config()))
        self.model.load_spec_state_dict(sd)
        self.model.to(self.device).train()
        kw = {} if adamw == "default" else {adamw: True}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, **kw)   # betas, eps, wd 0.01: torch defaults
        x, y = tb.make_batch(bc, seed)                                          # (B, T) int64
        self.x, self.y = torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def step(self):
        """One training step as the lecture's loop does it: zero grads, forward, loss, backward, AdamW."""
        self.opt.zero_grad(set_to_none=True)
        _, loss = self.model(self.x, self.y)
        loss.backward()
        self.opt.step()

    def loss_value(self):
        with torch.no_grad():
            return float(self.model(self.x, self.y)[1])

    def state_dict(self):
        return self.sd

    def layer_fns(self):
        """Forward + backward of each layer alone, on the same inputs as TinygradEngine.layer_fns."""
        m, bc, dev = self.model.layer_modules(), self.bc, self.device
        B, T, C = bc.batch_size, bc.block_size, bc.n_embd
        rng = np.random.default_rng(1)
        x = torch.from_numpy(rng.standard_normal((B, T, C), dtype=np.float32)).to(dev).requires_grad_()  # (B, T, C)
        dout = torch.from_numpy(rng.standard_normal((B, T, C), dtype=np.float32)).to(dev)              # (B, T, C)
        pos = torch.arange(T, device=dev)
        V = bc.vocab_size

        def fwd_bwd(forward, modules, scalar=False):
            params = [p for mod in modules for p in mod.parameters()]

            def run():
                x.grad = None
                for p in params:
                    p.grad = None
                out = forward()
                out.backward(None if scalar else dout)
            return run
        return {
            "embedding": fwd_bwd(lambda: m["tok_emb"](self.x) + m["pos_emb"](pos), [m["tok_emb"], m["pos_emb"]]),
            "layernorm": fwd_bwd(lambda: m["layernorm"](x), [m["layernorm"]]),
            "attention": fwd_bwd(lambda: m["attention"](x), [m["attention"]]),
            "mlp": fwd_bwd(lambda: m["mlp"](x), [m["mlp"]]),
            "lm_head+ce": fwd_bwd(lambda: torch.nn.functional.cross_entropy(
                m["lm_head"](x).view(B * T, V), self.y.view(B * T)), [m["lm_head"]], scalar=True),
        }

    def memory(self):
        """State bytes (parameters, gradients, two AdamW moments); on cuda also torch's allocator peak of one step."""
        n = sum(p.numel() for p in self.model.parameters())
        out = {"state_bytes": 4 * 4 * n}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            self.step()
            torch.cuda.synchronize()
            out["step_peak_bytes"] = torch.cuda.max_memory_allocated() - before
            out["method"] = "torch.cuda.max_memory_allocated during one step minus memory_allocated before it"
        return out


def torch_info(threads, adamw):
    blas = next((line.strip() for line in torch.__config__.show().splitlines() if "BLAS_INFO" in line), "")
    return {"version": torch.__version__, "num_threads": torch.get_num_threads(), "set_num_threads": threads,
            "interop_threads": torch.get_num_interop_threads(), "build": blas, "adamw": adamw,
            "cuda": torch.cuda.is_available()}


def torch_matmul(sizes, quick):
    """torch's own float32 matmul rate on the CPU (for information; the MFU denominator stays NumPy's)."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        t = tb.time_interleaved({"mm": lambda: torch.mm(a, b, out=c)}, 1 if quick else 2, 3 if quick else 7)["mm"]
        flops = 2 * n ** 3
        out[str(n)] = dict(t.to_dict(), gflops=flops / t.median / 1e9, gflops_best=flops / min(t.samples) / 1e9)
    return {"torch": {"sizes": out, "peak_gflops": max(d["gflops_best"] for d in out.values())}}


def torch_sampling(bc, n_tokens):
    """The lecture's generate (no cache; the context slides over the last block_size tokens), batch 1."""
    torch.manual_seed(0)
    model = LectureGPT(types.SimpleNamespace(**bc.gpt_config())).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    out = {"torch lecture generate (no cache)": tb.sampling_rate(lambda n: model.generate(prompt, n), n_tokens)}
    for name, d in out.items():
        tb.say(f"  {name}: {d['tokens_per_s']:.1f} tok/s")
    return out


def factories(args):
    """{engine name: fn(bc, state_dict) -> engine}, tinygrad_gpt first (its weights seed the torch models)."""
    out = {}
    devices = ["cpu"]
    if "cuda" in args.devices:
        devices.append("cuda")
    for dev in devices:
        if dev == "cpu" or tb.cuda_available():
            out[f"tinygrad_gpt-{dev}"] = (lambda d: lambda bc, sd: tb.TinygradEngine(bc, device=d))(dev)
        else:
            tb.say("skip tinygrad_gpt-cuda: no CuPy or no CUDA GPU here")
        if dev == "cpu" or torch.cuda.is_available():
            for form in TORCH_FORMS:
                out[f"torch-{form}-{dev}"] = (lambda f, d: lambda bc, sd: TorchEngine(bc, f, d, sd,
                                                                                     adamw=args.torch_adamw))(form, dev)
        else:
            tb.say("skip torch-*-cuda: torch sees no CUDA GPU here (or is a CPU build)")
    if args.engines:
        unknown = set(args.engines) - set(out)
        if unknown:
            tb.say(f"not available here, ignored: {', '.join(sorted(unknown))}")
        out = {k: v for k, v in out.items() if k in args.engines}
    return out


def update_readme(md, path=os.path.join(HERE, "README.md")):
    """Replace the block between the results markers of benchmarks/README.md with this run's table and chart."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    with open(path) as f:
        text = f.read()
    if start not in text or end not in text:
        tb.say(f"{path} has no {start} ... {end} block: not updated")
        return
    body = md.replace("](bench.png)", "](results/bench.png)")
    body = re.sub(r"^# ", "### ", body, count=1, flags=re.M)
    text = text[:text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    with open(path, "w") as f:
        f.write(text)
    tb.say(f"updated {path}")


def main(argv=None):
    p = tb.base_parser(__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=("cpu", "cuda"),
                   help="cuda engines run only where a GPU is present")
    p.add_argument("--engines", nargs="+", default=None,
                   help="subset of engines, e.g. tinygrad_gpt-cpu torch-fused-cpu (default: all available)")
    p.add_argument("--torch-adamw", choices=("default", "foreach", "fused"), default="default",
                   help="torch.optim.AdamW implementation (default: torch's choice, the lecture's setting)")
    p.add_argument("--update-readme", action="store_true", help="copy the table and chart into benchmarks/README.md")
    args = tb.resolve(p.parse_args(argv))
    torch.set_num_threads(args.threads)

    if args.memory_probe:                  # a fresh process measuring one engine's resident memory (see run_suite)
        form, dev = args.memory_probe.split("-")[1:3]
        tb.memory_probe_main(args.memory_probe, tb.CONFIGS[args.configs[0]], args.threads,
                             lambda bc: TorchEngine(bc, form, dev, adamw=args.torch_adamw))
        return 0

    def rss_cmd(engine, cname):
        common = ["--memory-probe", engine, "--configs", cname, "--threads", str(args.threads)]
        if engine.startswith("tinygrad_gpt"):
            return [sys.executable, "-m", "tinygrad_gpt.bench"] + common
        return [sys.executable, os.path.abspath(__file__)] + common + ["--torch-adamw", args.torch_adamw]

    results = tb.run_suite(args, factories(args), extra_meta={"torch": torch_info(args.threads, args.torch_adamw)},
                           sampling_extra=torch_sampling, rss_cmd=rss_cmd, matmul_extra=torch_matmul)
    for cname, c in results["configs"].items():
        d = c.get("initial_loss_max_abs_diff")
        if d is not None and d > 1e-4:
            tb.say(f"WARNING {cname}: the engines' initial losses differ by {d:.2e}: they may not compute the same "
                   f"model ({c['initial_loss']})")
        for pair, r in c["ratios"].items():
            tb.say(f"{cname:12s} {pair:40s} step ratio {r['step']:.2f}")
    paths = tb.write_outputs(results, args.out)
    tb.say("wrote " + ", ".join(paths.values()))
    if args.update_readme:
        with open(paths["md"]) as f:
            update_readme(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
