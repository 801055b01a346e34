"""What every kernel module shares: the numba import, kernels compiled once per dtype from an explicit signature,
the launch (CuPy's current stream, no CUDA-array-interface synchronisation), launch shapes, and the block
reductions.

Row kernels use one thread block per group of rows: a block is (TX, TY) threads, TY rows side by side, TX threads
striding along each row (so a row longer than TX is read in several passes), and a grid that strides over the rows
when it has fewer blocks than there are rows. Row sums and maxima are shared-memory tree reductions over the TX
threads of a row. (Warp shuffles would save a few barriers on the GPU, but numba's CUDA simulator has no shuffles, and
every kernel here must run under the simulator, where the tests check it on the CPU.)

Under the simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported) the same launchers run with NumPy arrays:
`launch` then calls the kernel without a stream and the kernel runs as Python threads.
"""
import math
import warnings

import numba
import numpy as np
from numba import cuda

try:  # numba-cuda (the NVIDIA-maintained target) keeps its own config; numba's built-in target used numba's
    from numba.cuda.core import config as _config
except ImportError:  # pragma: no cover - older numba with the built-in cuda target
    from numba.core import config as _config

SIM = bool(_config.ENABLE_CUDASIM)

# numba warns at every launch of fewer than 128 blocks; ours are small on purpose at small sizes (one row while
# sampling), and a warning per launch would flood the output. `launch` ignores it for its own launches only.
_SMALL_GRID = r"Grid size \d+ will likely result in GPU under-utilization"

MAX_THREADS = 256        # threads per block at most; the size of each kernel's shared reduction buffer
# Launch-shape defaults, read at each launch (the simulator tests shrink them: every simulated thread is a Python
# thread, so they run with a few small blocks and let the kernels stride)
MIN_TX = 32              # threads along a row at least (one warp)
ROW_THREADS = 128        # a row kernel's block holds at least this many threads (TX * TY) when rows are short
FLAT_THREADS = 256       # threads per block of an elementwise kernel
MAX_GRID = 65535         # blocks per launch at most; kernels stride over what is left

REGISTRY = []            # every CudaKernel, for the PTX compile check (tests/test_kernels_sim.py)


class CudaKernel:
    """A kernel compiled once per dtype from an explicit signature, on first use.

    make(ft) returns the kernel's Python function for the float type `ft` (np.float32 or np.float64): constants in
    the body are `ft(...)` so that a float32 kernel never computes in float64. `signature` is a numba signature
    string with `{f}` standing for the float type, e.g. "void({f}[:, ::1], {f}[::1])".
    """

    def __init__(self, name, make, signature):
        self.name, self.make, self.signature = name, make, signature
        self._compiled = {}
        REGISTRY.append(self)

    def python_function(self, dtype):
        return self.make(np.dtype(dtype).type)

    def signature_for(self, dtype):
        return self.signature.format(f=np.dtype(dtype).name)

    def __call__(self, dtype):
        dtype = np.dtype(dtype)
        k = self._compiled.get(dtype)
        if k is None:
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"kernel {self.name}: float32 or float64 arrays only, got {dtype}")
            k = self._compiled[dtype] = cuda.jit(self.signature_for(dtype))(self.python_function(dtype))
        return k


def numba_type(ft):
    return numba.from_dtype(np.dtype(ft))


# ---- launching ---------------------------------------------------------------------------------------------------

_streams = {}
_device = [None]


def _stream():
    """numba's handle on CuPy's current stream (cached per device and stream pointer), so our kernels run on CuPy's
    current device and queue behind its work."""
    import cupy
    dev = cupy.cuda.runtime.getDevice()
    if dev != _device[0]:                    # numba launches in its own current context: follow CuPy's device
        cuda.select_device(dev)
        _device[0] = dev
    ptr = cupy.cuda.get_current_stream().ptr
    s = _streams.get((dev, ptr))
    if s is None:
        s = _streams[(dev, ptr)] = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
    return s


def device_arg(a):
    """A CuPy array as a numba device array without synchronising on its stream (CUDA array interface v3 would
    otherwise make every launch wait for the GPU); other arguments unchanged."""
    if hasattr(a, "__cuda_array_interface__"):
        d = cuda.as_cuda_array(a, sync=False)
        if not d.is_c_contiguous():
            # CuPy calls an array with a zero stride on a length-1 axis contiguous, numba does not; every kernel
            # signature asks for C order, and such arrays are only ever inputs here, so a copy is safe
            d = cuda.as_cuda_array(a.copy(), sync=False)
        return d
    return a


def host_arg(a):
    """Under the simulator kernels take NumPy arrays (the namespace test swaps this to unwrap its proxy arrays)."""
    return a


def launch(kernel, dtype, grid, block, *args):
    """Run `kernel` compiled for `dtype` on `args`: on CuPy's current stream, or in the simulator. numba's warning
    about small grids is ignored here, for this launch only (warnings.catch_warnings: the process's filters are left
    as they were)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SMALL_GRID)
        if SIM:
            kernel(dtype)[grid, block](*[host_arg(a) for a in args])
        else:
            stream = _stream()               # first: selects numba's device before anything is compiled or wrapped
            kernel(dtype)[grid, block, stream](*[device_arg(a) for a in args])


def array_module(a):
    """NumPy for NumPy arrays (the simulator), CuPy otherwise."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy


# ---- launch shapes -----------------------------------------------------------------------------------------------

def _pow2_at_least(n):
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def row_config(n_rows, row_len, tx=None, ty=None, grid=None, max_grid=None):
    """(grid, (TX, TY)) for a row kernel: TX a power of two with about 4 elements per thread (MIN_TX to 256), TY rows
    per block so a block has at least ROW_THREADS threads, grid blocks (striding when rows outnumber grid * TY).
    tx/ty/grid override the choice (the simulator tests use small blocks to cover rows longer than a block)."""
    max_grid = MAX_GRID if max_grid is None else min(max_grid, MAX_GRID)
    if tx is None:
        tx = min(MAX_THREADS, max(MIN_TX, _pow2_at_least(math.ceil(row_len / 4))))
    if ty is None:
        ty = max(1, ROW_THREADS // tx)
    if tx & (tx - 1) or tx * ty > MAX_THREADS:
        raise ValueError(f"row kernel block ({tx}, {ty}): TX must be a power of two and TX * TY <= {MAX_THREADS}")
    if grid is None:
        grid = max(1, min(max_grid, math.ceil(n_rows / ty)))
    return grid, (tx, ty)


def flat_config(n, threads=None, grid=None):
    """(grid, threads) for an elementwise kernel over n items that strides over the grid."""
    threads = threads or FLAT_THREADS
    if grid is None:
        grid = max(1, min(MAX_GRID, math.ceil(n / threads)))
    return grid, threads


# ---- block reductions over the TX threads of one row ---------------------------------------------------------------
# `buf` is the kernel's shared array of MAX_THREADS floats; thread (tx, ty) uses slot ty * TX + tx. Every thread of the
# block must call these (they synchronise the block), with the same number of calls.

@cuda.jit(device=True)
def row_sum(buf, value):
    tx = cuda.threadIdx.x
    base = cuda.threadIdx.y * cuda.blockDim.x
    buf[base + tx] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tx < step:
            buf[base + tx] += buf[base + tx + step]
        cuda.syncthreads()
        step //= 2
    total = buf[base]
    cuda.syncthreads()  # everyone has read the total before the buffer is used again
    return total


@cuda.jit(device=True)
def row_max(buf, value):
    tx = cuda.threadIdx.x
    base = cuda.threadIdx.y * cuda.blockDim.x
    buf[base + tx] = value
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tx < step:
            other = buf[base + tx + step]
            if other > buf[base + tx]:
                buf[base + tx] = other
        cuda.syncthreads()
        step //= 2
    best = buf[base]
    cuda.syncthreads()
    return best
