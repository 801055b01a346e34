"""A pytest plugin that runs the gpu-marked tests on a machine without a GPU: the cuda device becomes the recording
CuPy stand-in of tests/cuda_proxy.py (NumPy underneath) and the custom kernels run in numba's CUDA simulator with
small launch shapes. It checks the tests' own logic and the kernel path of the whole model against torch; it says
nothing about real GPU speed or about CuPy's own numerics.

    PYTHONPATH=tests python -m pytest -p gpu_dryrun tests/test_gpu.py -m gpu -k "not synchronize"   (~5 min)

(test_gpu.py's test_training_step_does_not_synchronize needs real CuPy and is left out.) tests/test_kernels_sim.py
runs two of these tests this way in CI.
"""
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"          # before numba is imported
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cuda_proxy  # noqa: E402 (after the simulator switch and the sys.path insert above)
import sim_support  # noqa: E402 (as cuda_proxy)

sim_support.patch()
sys.modules["cupy"] = cuda_proxy.RecordingXP()

import tinygrad_gpt.backend as backend  # noqa: E402 (once "cupy" is the recording stand-in)
from tinygrad_gpt.kernels.cuda import _common  # noqa: E402 (as backend)

backend._cuda = backend.Device("cuda", sys.modules["cupy"])
_common.host_arg = lambda a: a._a if isinstance(a, cuda_proxy.RArray) else a
_common.MIN_TX, _common.ROW_THREADS, _common.FLAT_THREADS, _common.MAX_GRID = 4, 8, 32, 2
