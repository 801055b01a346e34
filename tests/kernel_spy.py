"""Which compiled CPU kernels ran: a test that compares a kernel with its NumPy twin must also show that the kernel
ran (a launcher can fall back to NumPy, kernels can be off, a twin can be called where the kernel was meant), and
which compiled version of it, serial or parallel (kernels/cpu/_jit.py), the size thresholds picked.

`spy()` replaces the `serial` and `parallel` dispatchers of every CpuKernel in tinygrad_gpt/kernels/cpu/ by
counting wrappers for the duration of a `with` block (every launcher reaches them through `k.run`, which reads them
as attributes at call time), and yields a Counter of (kernel name, "serial" or "parallel") -> calls.
"""
import collections
import contextlib
import functools
import importlib
import pkgutil


@functools.lru_cache(maxsize=None)
def kernel_objects():
    """{name: CpuKernel} of every compiled kernel of the CPU kernel modules (found once per process)."""
    import tinygrad_gpt.kernels.cpu as pkg
    from tinygrad_gpt.kernels.cpu._jit import CpuKernel
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for value in vars(mod).values():
            if isinstance(value, CpuKernel):
                found[value.__name__] = value
    return found


class Calls(collections.Counter):
    """(kernel name, variant) -> calls."""

    def ran(self, name, variant=None):
        """Calls of kernel `name` (either variant, or the one named)."""
        return sum(n for (k, v), n in self.items() if k == name and variant in (None, v))

    def names(self):
        return {k for k, _ in self}


@contextlib.contextmanager
def spy():
    calls = Calls()
    kernels = kernel_objects()
    saved = [(k, variant, getattr(k, variant)) for k in kernels.values() for variant in ("serial", "parallel")]

    def counting(name, variant, fn):
        def call(*args):
            calls[name, variant] += 1
            return fn(*args)
        return call

    for k, variant, fn in saved:
        setattr(k, variant, counting(k.__name__, variant, fn))
    try:
        yield calls
    finally:
        for k, variant, fn in saved:
            setattr(k, variant, fn)
