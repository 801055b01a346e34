"""Running the custom kernels under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) reliably.

Every simulated CUDA thread is a Python thread. Two things follow:
  - `syncthreads` is a barrier the simulator's manager thread polls; with CPython's default 5 ms thread switch
    interval a barrier can wait milliseconds per thread. A 1 us interval makes the tests ~6x faster.
  - `cuda.shared.array` is looked up by source line in a dict and created on first use without a lock (numba-cuda
    0.30, simulator/kernelapi.py FakeCUDAShared.array): two threads that reach the line together can each create
    their own "shared" array, and a block reduction then reads uninitialised memory. It shows up under load (seen
    as overflows and divisions by zero in 3 of 12 parallel runs). `patch()` puts the lookup under a lock.
"""
import sys
import threading

import numpy as np


def patch():
    sys.setswitchinterval(1e-6)
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    cls = kernelapi.FakeCUDAShared
    if getattr(cls, "_locked_by_tinygrad_gpt_tests", False):
        return
    original = cls.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None or not hasattr(self, "_allocations"):
            return original(self, shape, dtype, alignment)   # dynamic shared memory: no lookup to race on
        frame = sys._getframe(1)
        key = (frame.f_code.co_filename, frame.f_lineno)        # the simulator's key: the calling line
        with lock:
            res = self._allocations.get(key)
            if res is None:
                if not isinstance(dtype, np.dtype):
                    dtype = numpy_support.as_dtype(dtype) if not isinstance(dtype, type) else np.dtype(dtype)
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    cls.array = array
    cls._locked_by_tinygrad_gpt_tests = True
