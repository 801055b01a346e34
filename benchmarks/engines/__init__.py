"""The engines the suite times, each the same GPT training step (SPEC sections 1-3, dropout 0) written the way a user
of that library would write it, and the registry that says where each lives and what it needs.

Each engine runs in its own process (benchmarks/worker.py), which imports only that engine's libraries. An engine
is a class built as `Engine(bc, state_dict, device)` from a BenchConfig and the SPEC-named float32 state dict every
engine starts from; it has:

    name                         the registry name
    versions() -> dict           library versions and settings, for the report
    load_batch(x, y)             host int64 (B, T) arrays -> the engine's own form (kept for the next steps)
    step() -> loss               one training step on the loaded batch: zero grads, forward, loss, backward, AdamW;
                                 returns the loss before the update, in the engine's own form
    sync()                       wait for queued work (engines that run asynchronously; else nothing)
    loss_float(loss) -> float

and optionally
    layer_fns(x, dout) -> {layer: fn}   forward + backward of each layer alone on (B, T, C) float32 inputs (LAYERS);
                                 fwd_bwd below makes such a fn
    has_layers                    False to leave the layers untimed although layer_fns exists (torch-compile: its
                                 layers alone would run eager); default: whether layer_fns exists
    blas                          "numpy" or "torch": the library whose matmuls the BLAS floor times in this process
    sampling(n_tokens) -> dict    tokens/s of generation from a one-token prompt (time_generate below times one way)
    device_memory(step) -> bytes  accelerator memory one call of step() needs above what is in use before it, or None
                                 where the engine runs on the CPU
    tracemalloc = True            its allocations are NumPy's, which tracemalloc sees

A user-supplied engine is named "module:Class" on the command line (the module importable from the repository
root, e.g. a file in benchmarks/): it gets the same check and timing as the built-in ones.

This module imports only the standard library: the coordinator and every engine's process import it, and an engine
process has only its own engine's libraries.
"""
import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import time

LAYERS = ("embedding", "layernorm", "attention", "mlp", "lm_head+ce", "adamw")


@dataclasses.dataclass(frozen=True)
class Spec:
    module: str                   # under benchmarks.engines, or a full module path for a user engine
    cls: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)          # set in the engine's process before it starts
    requires: tuple = ()          # importable modules it needs
    install: str = ""             # how to get them
    device: str = "cpu"
    what: str = ""                # one line for the report
    family: str = ""              # the library whose reference runs must not judge it (same_math_judge)

    @property
    def path(self):
        return self.module if "." in self.module else f"benchmarks.engines.{self.module}"


PEERS_INSTALL = 'pip install -e ".[peers]"'
ENGINES = {
    "tinygrad_gpt": Spec("ours", "TinygradGPT", requires=("tinygrad_gpt",), family="tinygrad_gpt",
                         env={"TINYGRAD_GPT_BLAS": "openblas"},
                         what="this engine as a default install runs it: compiled kernels, NumPy's OpenBLAS"),
    "tinygrad_gpt-mkl": Spec("ours", "TinygradGPT", requires=("tinygrad_gpt", "mkl"), family="tinygrad_gpt",
                             env={"TINYGRAD_GPT_BLAS": "mkl"}, install='pip install -e ".[mkl]"',
                             what="this engine with the [mkl] extra: the kernels' products on Intel MKL"),
    "tinygrad_gpt-numpy": Spec("ours", "TinygradGPT", env={"TINYGRAD_GPT_KERNELS": "0"}, requires=("tinygrad_gpt",),
                               family="tinygrad_gpt",
                               what="this engine with TINYGRAD_GPT_KERNELS=0: the plain NumPy twins"),
    "torch-fused": Spec("torch_engines", "TorchEngine", {"form": "fused"}, requires=("torch",), family="torch",
                        install='pip install -e ".[bench]"',
                        what="torch eager at its strongest: one qkv Linear, scaled_dot_product_attention "
                        "(torch_models.FusedGPT), AdamW(fused=True)"),
    "torch-default-adamw": Spec("torch_engines", "TorchEngine", {"form": "fused", "adamw": "default"},
                                requires=("torch",), family="torch", install='pip install -e ".[bench]"',
                                what="torch-fused with torch.optim.AdamW's default implementation (foreach), "
                                "what a script gets that does not ask for fused=True"),
    "torch-lecture": Spec("torch_engines", "TorchEngine", {"form": "lecture"}, requires=("torch",), family="torch",
                          install='pip install -e ".[bench]"',
                          what="torch eager, the lecture's model: one Head module per head (torch_models.LectureGPT), "
                          "AdamW(fused=True)"),
    "torch-compile": Spec("torch_engines", "TorchEngine", {"form": "fused", "compile": True}, requires=("torch",),
                          family="torch", install='pip install -e ".[bench]" (and a C++ compiler for inductor)',
                          what="torch.compile of the fused model (inductor, C++/OpenMP on the CPU); AdamW(fused=True)"),
    "jax": Spec("jax_gpt", "JaxGPT", requires=("jax",), install=PEERS_INSTALL,
                what="JAX: the whole step, AdamW included, under one jax.jit (XLA on the CPU)"),
    "tinygrad": Spec("tinygrad_peer", "TinygradPeer", env={"DEV": "CPU"}, requires=("tinygrad",),
                     install=PEERS_INSTALL + " and a clang on PATH (apt-get install clang)",
                     what="tinygrad's CPU device, the whole step under TinyJit, tinygrad.nn.optim.AdamW"),
    "autograd": Spec("autograd_gpt", "AutogradGPT", requires=("autograd",), install=PEERS_INSTALL,
                     what="HIPS autograd: NumPy code differentiated by tracing, AdamW in NumPy"),
    "tinygrad_gpt-cuda": Spec("ours", "TinygradGPT", requires=("tinygrad_gpt", "cupy"), device="cuda",
                              family="tinygrad_gpt", install='pip install -e ".[gpu]"',
                              what="this engine on CuPy (numba.cuda kernels)"),
    "torch-fused-cuda": Spec("torch_engines", "TorchEngine", {"form": "fused"}, requires=("torch",), device="cuda",
                             family="torch", what="torch eager fused on CUDA, AdamW(fused=True)"),
    "torch-lecture-cuda": Spec("torch_engines", "TorchEngine", {"form": "lecture"}, requires=("torch",),
                               device="cuda", family="torch", what="torch eager, the lecture's model, on CUDA"),
}
CPU_ENGINES = tuple(n for n, s in ENGINES.items() if s.device == "cpu")
CUDA_ENGINES = tuple(n for n, s in ENGINES.items() if s.device == "cuda")
QUICK_ENGINES = ("tinygrad_gpt", "tinygrad_gpt-mkl", "tinygrad_gpt-numpy", "torch-fused", "torch-default-adamw",
                 "torch-lecture")
REFERENCE = "tinygrad_gpt"       # our engine (the targets' numerator, in every group)
TARGETED = (REFERENCE, "tinygrad_gpt-mkl")   # the engines the report holds to the targets: default install, [mkl]
TORCH_BASELINE = "torch-fused"   # the ratios' denominator: torch at its strongest
DEFAULT_ADAMW = "torch-default-adamw"   # the second column: torch as a script that does not ask for fused AdamW
# The same-math check's references: a family's engine whose float64 run and perturbed float32 runs make the
# tolerance (runner.reference_trajectory). No engine is judged by its own library's runs.
REFERENCES = {"torch": "torch-fused", "tinygrad_gpt": "tinygrad_gpt"}


def family(name):
    return spec(name).family or name


def same_math_judge(name):
    """The reference family that judges an engine: torch's runs judge every engine but torch's own, which ours judge
    (an engine is never judged by runs of its own library, so a wrong variant of ours cannot pass by construction:
    tests/test_bench_smoke.py)."""
    return "tinygrad_gpt" if family(name) == "torch" else "torch"


def spec(name):
    """The Spec of a registry name or of a user engine "module:Class"."""
    if name in ENGINES:
        return ENGINES[name]
    if ":" in name:
        module, cls = name.split(":", 1)
        return Spec(module, cls, what=f"user engine {name}")
    raise KeyError(f"unknown engine {name!r} (known: {', '.join(ENGINES)}; or module:Class)")


def missing(name):
    """Why this engine cannot run here (a missing package or tool), or None. Only looks, imports nothing."""
    s = spec(name)
    for mod in s.requires:
        if importlib.util.find_spec(mod) is None and not _distribution(mod):
            return f"{mod} is not installed ({s.install or 'see benchmarks/README.md'})"
    if name == "tinygrad":
        cc = os.environ.get("CC", "clang")
        if shutil.which(cc) is None:
            return f"tinygrad's CPU device compiles its kernels with {cc}, not found on PATH (apt-get install clang)"
    if name == "torch-compile" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        return "torch.compile's CPU code generator needs a C++ compiler on PATH (apt-get install g++)"
    return None


def _distribution(name):
    """Whether a distribution of that name is installed (the mkl wheel has libraries and no Python module)."""
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# ---- helpers for the engines' optional parts ---------------------------------------------------------------------


def fwd_bwd(x, dout, forward, params, scalar=False):
    """One layer's timed call for layer_fns: clear the gradients of the input x and of params (each call starts as
    the first did, nothing accumulates), run forward() and back-propagate dout (B, T, C) from its output; scalar:
    the output is a loss, back-propagated from 1. x, params and the output are tensors of the engine's library with
    a writable .grad and .backward(gradient or None) (tinygrad_gpt's Tensor, torch.Tensor)."""
    params = list(params)                  # a generator (torch's Module.parameters()) would be spent after one call

    def run():
        x.grad = None
        for p in params:
            p.grad = None
        out = forward()
        out.backward(None if scalar else dout)
    return run


def time_generate(generate, n_tokens, sync):
    """Generation speed for sampling(): generate(n) makes n tokens. One short call warms up (first-use compilation,
    caches), then one call of n_tokens is timed; sync() waits for queued device work (a no-op on the CPU) before
    the clock starts and before it stops, so the timed call's work is counted and the warm-up's is not."""
    generate(4)
    sync()
    t0 = time.perf_counter()
    generate(n_tokens)
    sync()
    seconds = time.perf_counter() - t0
    return {"tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds}
