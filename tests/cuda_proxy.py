"""A recording stand-in for CuPy, to check the cuda path on a machine without a GPU (tests/test_cuda_namespace.py).

`RecordingXP` is an array module backed by NumPy whose arrays (`RArray`) are NOT NumPy arrays, like CuPy's: every
name the code asks of the module (`xp.exp`, `xp.random.default_rng`, `xp.add.at`), every array method or attribute
(`a.reshape`, `a.T`, `a.__iadd__`) and every NumPy function that reaches a device array through NumPy's dispatch
protocols (`np.where(a, ...)`, which CuPy serves with its own function of the same name) is recorded, then computed
by NumPy. As with CuPy:
  - ops return arrays, never NumPy scalars (a full reduction gives a 0-d array);
  - an implicit conversion to a NumPy array (`np.asarray(device_array)`) raises TypeError.
It also records, per phase of the run, what a GPU would pay for:
  - host synchronisations: reading a value back (`get`, `item`, `float(a)`, `bool(a)`, `int(a)`, printing, `tolist`,
    `asnumpy`) or an op whose output size depends on the data (`nonzero`, boolean-mask indexing, `unique`);
  - host-to-device copies: `xp.asarray/array/...` of host data (NumPy arrays, lists, Python scalars);
  - float64 arrays made from float32 work (NumPy 2 promotes Python scalars weakly, as CuPy does).

Run as a script (in a subprocess: it replaces sys.modules["cupy"], and NUMBA_ENABLE_CUDASIM=1 must be set before numba
is imported), it installs the stand-in as the cuda device, runs a training step, generation and a checkpoint round
trip on "cuda", with the custom kernels (launched in numba's CUDA simulator) and without them, and prints a JSON report.
"""
import json
import os
import sys

import numpy as np

_SYNC_METHODS = {"get", "item", "tolist", "tobytes", "__float__", "__int__", "__bool__", "__index__", "__complex__",
                 "__repr__", "__str__", "__format__"}
_SYNC_FUNCTIONS = {"asnumpy", "nonzero", "flatnonzero", "argwhere", "unique"}
_HOST_TO_DEVICE = {"asarray", "array", "asanyarray", "ascontiguousarray"}


class Recorder:
    def __init__(self):
        self.phase = "setup"
        self.names = set()        # ("xp", "random.default_rng") | ("ndarray", "reshape") | ("random.Generator", ..)
        self.events = []          # (phase, kind, what): kind in sync, h2d, float64, host_conversion

    def name(self, space, name):
        self.names.add((space, name))

    def event(self, kind, what):
        self.events.append((self.phase, kind, what))


REC = Recorder()


def _unwrap(x):
    if isinstance(x, RArray):
        return x._a
    if isinstance(x, tuple):
        return tuple(_unwrap(i) for i in x)
    if isinstance(x, list):
        return [_unwrap(i) for i in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x, what):
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        x = np.asarray(x)                                  # CuPy ops return 0-d arrays, not NumPy scalars
    if isinstance(x, np.ndarray):
        if x.dtype == np.float64:
            REC.event("float64", what)
        return RArray(x)
    if isinstance(x, tuple):
        return tuple(_wrap(i, what) for i in x)
    if isinstance(x, list):
        return [_wrap(i, what) for i in x]
    return x


def _is_host_data(x):
    return not isinstance(x, RArray) and (isinstance(x, (np.ndarray, list, tuple, int, float, bool, np.generic)))


class RArray:
    """A device array stand-in: NumPy inside, recorded from outside."""
    __slots__ = ("_a",)
    __array_priority__ = 10000

    def __init__(self, a):
        object.__setattr__(self, "_a", a)

    def __getattr__(self, name):
        REC.name("ndarray", name)
        if name in _SYNC_METHODS:
            REC.event("sync", f"ndarray.{name}")
        value = getattr(self._a, name)
        if callable(value):
            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args), **_unwrap(kwargs)), f"ndarray.{name}")
            return method
        return _wrap(value, f"ndarray.{name}") if isinstance(value, np.ndarray) else value

    # CuPy-only methods
    def get(self, *args, **kwargs):
        REC.name("ndarray", "get")
        REC.event("sync", "ndarray.get")
        return self._a.copy()

    # NumPy dispatch protocols: CuPy serves NumPy's functions and ufuncs on its arrays with its own of the same name
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        REC.name("xp", name)
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(o) for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)), f"np.{name}")

    def __array_function__(self, func, types, args, kwargs):
        module = func.__module__.replace("numpy", "").lstrip(".")
        name = f"{module}.{func.__name__}" if module and not module.startswith("_") else func.__name__
        REC.name("xp", name)
        if func.__name__ in _SYNC_FUNCTIONS:
            REC.event("sync", f"np.{name}")
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)), f"np.{name}")

    def __array__(self, dtype=None, copy=None):
        REC.name("ndarray", "__array__")
        REC.event("host_conversion", "np.asarray(device array): CuPy raises TypeError")
        raise TypeError("Implicit conversion to a NumPy array is not allowed (as CuPy): use .get()")

    def __getitem__(self, index):
        REC.name("ndarray", "__getitem__")
        raw = _unwrap(index)
        parts = raw if isinstance(raw, tuple) else (raw,)
        if any(isinstance(p, np.ndarray) and p.dtype == bool for p in parts):
            REC.event("sync", "boolean-mask indexing (data-dependent size)")
        if any(isinstance(p, (np.ndarray, list)) for p in (index if isinstance(index, tuple) else (index,))):
            REC.event("h2d", "indexing a device array with a host index array")
        return _wrap(self._a[raw], "ndarray.__getitem__")

    def __setitem__(self, index, value):
        REC.name("ndarray", "__setitem__")
        if isinstance(value, np.ndarray):
            REC.event("h2d", "setitem from a host array")
        self._a[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        REC.name("ndarray", "__len__")
        return len(self._a)

    def __iter__(self):
        REC.name("ndarray", "__iter__")
        return iter([RArray(np.asarray(x)) for x in self._a])

    def __hash__(self):
        raise TypeError("unhashable type: 'RArray'")

    def __copy__(self):
        return RArray(self._a.copy())


def _operator(name):
    def op(self, *args):
        REC.name("ndarray", name)
        if name in _SYNC_METHODS:
            REC.event("sync", f"ndarray.{name}")
        if name.startswith("__i") and name not in ("__int__", "__index__", "__invert__", "__iter__"):
            if any(isinstance(a, np.ndarray) for a in args):
                REC.event("h2d", f"ndarray.{name} with a host array")
            getattr(self._a, name)(*_unwrap(args))         # in place on the NumPy buffer
            return self
        if any(isinstance(a, np.ndarray) for a in args):
            REC.event("h2d", f"ndarray.{name} with a host array")
        result = getattr(self._a, name)(*_unwrap(args))
        if name in _SYNC_METHODS:
            return result
        return _wrap(result, f"ndarray.{name}")
    op.__name__ = name
    return op


_BINARY = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift"]
for _n in _BINARY:
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        setattr(RArray, _form.format(_n), _operator(_form.format(_n)))
for _n in ["lt", "le", "eq", "ne", "gt", "ge", "neg", "pos", "abs", "invert", "float", "int", "bool", "index",
           "complex", "repr", "str", "format", "divmod", "rdivmod"]:
    setattr(RArray, f"__{_n}__", _operator(f"__{_n}__"))
RArray.__module__ = "cupy._recording"    # backend.device_of() takes an array whose type's module starts with cupy


class RObject:
    """A NumPy object returned by the module (a random Generator) recorded under the name of its CuPy class."""

    def __init__(self, obj, space):
        self._obj, self._space = obj, space

    def __getattr__(self, name):
        REC.name(self._space, name)
        value = getattr(self._obj, name)
        if callable(value):
            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args), **_unwrap(kwargs)), f"{self._space}.{name}")
            return method
        return value


class RUfunc:
    def __init__(self, ufunc, name):
        self._u, self._name = ufunc, name

    def __call__(self, *args, **kwargs):
        if "out" in kwargs and isinstance(kwargs["out"], RArray):
            kwargs["out"] = kwargs["out"]._a
        return _wrap(self._u(*_unwrap(args), **_unwrap(kwargs)), self._name)

    def __getattr__(self, attr):
        REC.name("xp", f"{self._name}.{attr}")
        value = getattr(self._u, attr)
        if callable(value):
            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args), **_unwrap(kwargs)), f"{self._name}.{attr}")
            return method
        return value


_RETURNED_OBJECTS = {np.random.Generator: "random.Generator"}


class RecordingXP:
    """The array module: NumPy's names, recorded; `prefix` for submodules (random., linalg.)."""

    def __init__(self, module=np, prefix=""):
        self._m, self._prefix = module, prefix
        self.__name__ = "cupy" if not prefix else "cupy." + prefix.rstrip(".")

    def __getattr__(self, name):
        full = self._prefix + name
        REC.name("xp", full)
        if full == "ndarray":
            return RArray
        if full == "asnumpy":
            def asnumpy(a, *args, **kwargs):
                REC.event("sync", "asnumpy")
                return np.array(_unwrap(a))
            return asnumpy
        if full == "get_array_module":
            return lambda *args: self
        value = getattr(self._m, name)
        if isinstance(value, type(np)):
            return RecordingXP(value, full + ".")
        if isinstance(value, np.ufunc):
            return RUfunc(value, full)
        if isinstance(value, type) and issubclass(value, np.generic):
            return value                                   # dtypes: xp.float32
        if callable(value):
            def function(*args, **kwargs):
                if name in _HOST_TO_DEVICE and args and _is_host_data(args[0]):
                    REC.event("h2d", f"{full}({type(args[0]).__name__} {np.shape(args[0])})")
                if name in _SYNC_FUNCTIONS:
                    REC.event("sync", full)
                if "out" in kwargs and isinstance(kwargs["out"], RArray):
                    kwargs["out"] = kwargs["out"]._a
                result = value(*_unwrap(args), **_unwrap(kwargs))
                space = _RETURNED_OBJECTS.get(type(result))
                if space is not None:
                    return RObject(result, space)
                return _wrap(result, full)
            function.__name__ = name
            return function
        return value


# ---- the scenario ------------------------------------------------------------------------------------------------

def run(kernels_on):
    """Train, generate and checkpoint on the recording cuda device; returns nothing (REC holds the records)."""
    import tinygrad_gpt.backend as backend
    from tinygrad_gpt import GPT, AdamW, GPTConfig, kernels
    from tinygrad_gpt.tensor import Tensor

    kernels.set_enabled(kernels_on, "cuda")
    if kernels_on:
        assert kernels.enabled("cuda")
        common = kernels._module("cuda", "_common")
        assert common.SIM, "the kernels run in numba's CUDA simulator here"
        common.host_arg = lambda a: a._a if isinstance(a, RArray) else a   # the simulator takes NumPy arrays
        # a few small blocks that stride: every simulated thread is a Python thread
        common.MIN_TX, common.ROW_THREADS, common.FLAT_THREADS, common.MAX_GRID = 4, 8, 32, 2
        launch = common.launch

        def recording_launch(kernel, *args):
            REC.event("launch", kernel.name)
            return launch(kernel, *args)
        common.launch = recording_launch
        for name in ("layernorm", "attention", "cross_entropy", "adamw", "dropout_mask"):
            kernels._module("cuda", name).launch = recording_launch
    xp = sys.modules["cupy"]
    backend._cuda = backend.Device("cuda", xp)

    for activation, dropout in (("relu", 0.1), ("gelu", 0.0)):
        REC.phase = "init"
        cfg = GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2, dropout=dropout,
                        activation=activation)
        model = GPT(cfg, seed=0, device="cuda")
        params = model.parameters()
        opt = AdamW([{"params": [p for p in params if p.ndim >= 2]},
                     {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=1e-3)
        REC.phase = "batches"                               # the trainer's sampler gathers batches on the device
        from tinygrad_gpt.data import BatchSampler
        sampler = BatchSampler(np.arange(200) % cfg.vocab_size, cfg.block_size, 2, seed=0, xp=xp)
        idx, tgt = sampler.sample()                         # (2, T) each, device arrays
        assert not isinstance(idx, np.ndarray) and idx.shape == (2, cfg.block_size)
        np.testing.assert_array_equal(np.asarray(idx._a[:, 1:]), np.asarray(tgt._a[:, :-1]))

        for step in (1, 2):                                 # step 2 is the steady state
            REC.phase = f"step{step}"
            model.train()
            opt.zero_grad()
            _, loss = model(idx, tgt)
            loss.backward()
            opt.step()
        REC.phase = "log"
        float(loss.data)                                    # reading the loss back when logging: one sync

        REC.phase = "eval"
        model.eval()
        from tinygrad_gpt.tensor import no_grad
        with no_grad():
            model(idx, tgt)

        REC.phase = "generate"
        model.generate(np.zeros((1, 1), dtype=np.int64), 10, temperature=1.0, top_k=5, seed=0)
        model.generate(np.zeros((1, 1), dtype=np.int64), 3, temperature=0.0, seed=0, use_cache=False)

        REC.phase = "checkpoint"
        sd = model.state_dict()
        osd = opt.state_dict()
        model.load_state_dict(sd)
        opt.load_state_dict(osd)

        REC.phase = "clip"                                  # optional gradient clipping
        _, loss = model(idx, tgt)
        loss.backward()
        opt.clip_grad_norm(1.0)

        REC.phase = "move"
        cpu_model = GPT(cfg, seed=0)
        cpu_model.to("cuda")
        Tensor(np.ones((2, 2), np.float32), device="cuda").to("cpu").numpy()

    lecture_code(xp)


def lecture_code(xp):
    """A learner's lecture-style model (tests/lecture_code/models.py, its imports swapped) on "cuda": the front end's
    layers, the recognised attention chain (each variant), SDPA, dropout masks, AdamW, generation."""
    import types

    import tinygrad_gpt as torch
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "lecture_code", "models.py")).read()
    for theirs, ours in (("import torch\n", "import tinygrad_gpt as torch\n"),
                         ("import torch.nn as nn\n", "import tinygrad_gpt.nn as nn\n"),
                         ("from torch.nn import functional as F\n", "from tinygrad_gpt.nn import functional as F\n")):
        text = text.replace(theirs, ours)
    mod = types.ModuleType("lecture_models")
    exec(compile(text, "models.py", "exec"), mod.__dict__)
    hp = dict(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=1, dropout=0.1)
    idx = torch.tensor(np.arange(16).reshape(2, 8) % 11).to("cuda")
    for variant in ("head", "peek", "sdpa"):
        REC.phase = f"lecture-{variant}"
        torch.manual_seed(0)
        model = mod.GPTLanguageModel(hp, variant).to("cuda")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            _, loss = model(idx, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        model.generate(torch.zeros((1, 1), dtype=torch.long, device="cuda"), 3)


def _stub_cupyx():
    """cupyx.scipy.special.erf (the exact GELU's on cuda), recorded in the "cupyx" space and computed by math.erf."""
    import math
    import types
    special = types.ModuleType("cupyx.scipy.special")
    per_element = np.vectorize(math.erf, otypes=[np.float64])

    def erf(x):
        REC.name("cupyx", "scipy.special.erf")
        a = _unwrap(x)
        return _wrap(per_element(a).astype(a.dtype), "scipy.special.erf")
    special.erf = erf
    scipy = types.ModuleType("cupyx.scipy")
    scipy.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy
    sys.modules.update({"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special})


def main(modes):
    if "kernels" in modes:
        import sim_support
        sim_support.patch()      # simulator: faster barriers, thread-safe shared arrays
    sys.modules["cupy"] = RecordingXP()
    _stub_cupyx()
    out = {}
    for kernels_on in [m == "kernels" for m in modes]:
        REC.names, REC.events = set(), []
        run(kernels_on)
        out["kernels" if kernels_on else "cupy"] = {"names": sorted(REC.names), "events": REC.events}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:] or ["cupy", "kernels"])
