"""The process-wide setting the CPU kernels make once, on their first use (so a user's own training loop gets it
without calling anything); TINYGRAD_GPT_TUNE=0 in the environment leaves the process as it was. It is named in the
README ("Process-wide settings") and measured in docs/cpu-performance.md.

glibc keeps freed large blocks for reuse (backend.tune_host_allocator): a training step allocates and frees the same
large temporaries every step, and without this each one is a fresh mmap whose pages the kernel zero-fills on first
touch.

What is not set: thread pools. The kernels run all their work, matrix products included (kernels/cpu/blas.py), on
numba's threads, and the BLAS runs single-threaded inside them, so no second pool's idle threads spin beside them;
OpenMP's own default (idle threads spin briefly, then sleep) is what makes the hand-off between kernels cheap.
"""
from ...backend import tune_host_allocator
from .. import switched_off

_done = None                   # what configure() applied, once it ran


def configure():
    """Make the setting above once; returns {setting: applied?}."""
    global _done
    if _done is None:
        _done = {}
        if not switched_off("TINYGRAD_GPT_TUNE"):
            _done["host_allocator"] = tune_host_allocator()
    return _done
