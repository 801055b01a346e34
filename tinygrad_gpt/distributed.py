"""Data-parallel training over MPI: one run on N processes (or machines), equal to one process with the whole batch.

    mpiexec -n 2 tinygrad-gpt train --batch-size 32 ...        # two ranks, each on 16 rows of every batch

Under mpiexec (detected from the variables it sets: PMI_RANK/PMI_SIZE for MPICH and Intel MPI,
OMPI_COMM_WORLD_RANK/SIZE for Open MPI, ...) or with `--ddp`, every process ("rank") runs the same training loop.
One step, for N ranks and a global batch of B rows:

  1. every rank draws the same B window starts and keeps rows [r B/N, (r+1) B/N)   (data.BatchSampler, rows=)
  2. forward and backward on those rows: the gradient of the mean loss over the rank's B/N * T positions (with
     --grad-accum A: A micro-batches of B/(N A) rows, their gradients summed in the parameters' .grad)
  3. AdamW gathers the gradients into one flat buffer and calls the step's gradient hook before clipping and the
     update; the hook calls `DataParallel.average`: ONE in-place Allreduce (SUM) of [gradients..., loss, stop
     flag], then a scale by 1/(N A). The mean of N A means over equal-sized parts is the mean over the whole
     batch, so every rank now holds the gradient one process would compute on all B rows (up to the order of the
     float32 additions)
  4. every rank takes the same AdamW step from the same gradient, so the parameters stay identical without being
     sent (checked on request: `check_sync`, a CRC32 of the parameters compared across ranks)

The loss and the Ctrl-C flag ride in the same message, so all ranks see the same loss (and stop on a NaN together)
and stop at the same step when any of them was interrupted. Rank 0 alone reads the corpus and checkpoint (and
broadcasts them) and writes the log, plot, checkpoints and sample; evaluation losses are averaged over the ranks.
An exception on one rank ends the whole job through `abort` (MPI_Abort, with the message), never a hang.

On the cuda device the buffer is a CuPy array, reduced through NCCL (`cupy.cuda.nccl`), or through a CUDA-aware
MPI, or through host memory; TINYGRAD_GPT_CUDA_ALLREDUCE=nccl|mpi|host picks one (default: nccl when it loads).

mpi4py is imported here and only when a run is data-parallel: `import tinygrad_gpt` and a plain run never need it.
"""
import os
import sys
import time
import zlib

import numpy as np

from .backend import to_host
from .errors import RunFailed, UsageError

RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
CUDA_ALLREDUCE_VAR = "TINYGRAD_GPT_CUDA_ALLREDUCE"
INSTALL_HINT = "pip install 'tinygrad_gpt[mpi]' (mpi4py and the mpich wheel), or mpi4py built against your MPI"

_active = None                             # the DataParallel of this process, once set up


ABORT_GRACE_S = 1.0                # see DataParallel.abort (0.3 s still lost the line once, under a loaded
                                   # full test run)


def launched_by_mpi(env=None):
    """(rank, size) when this process was started by mpiexec/mpirun (read from its environment), else None."""
    env = os.environ if env is None else env
    rank = next((env[k] for k in RANK_VARS if k in env), None)
    size = next((env[k] for k in SIZE_VARS if k in env), None)
    if rank is None or size is None:
        return None
    try:
        return int(rank), int(size)
    except ValueError:
        return None


def active():
    """The DataParallel this process set up, or None (a plain run)."""
    return _active


def this_rank():
    """This process's rank: from the DataParallel, else from mpiexec's environment, else None."""
    if _active is not None:
        return _active.rank
    launch = launched_by_mpi()
    return None if launch is None else launch[0]


def all_ranks(exc):
    """Mark an exception that every rank raises together (same check, same data): no abort is needed, rank 0
    reports it and every rank exits with its status."""
    exc.all_ranks = True
    return exc


def setup(ddp=None):
    """This rank's DataParallel, or a SingleProcess for a plain one-process run (nothing imported).

    ddp None: data-parallel when launched by mpiexec with more than one process; True: always (without mpiexec,
    a one-rank "singleton" MPI job); False: never."""
    global _active
    if _active is not None:
        return _active
    launch = launched_by_mpi()
    if ddp is False or (ddp is None and (launch is None or launch[1] < 2)):
        return SingleProcess()
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError) as e:
        why = "launched by mpiexec" if launch else "--ddp"
        raise all_ranks(UsageError(f"data-parallel training ({why}) needs mpi4py and an MPI runtime: "
                                   f"{INSTALL_HINT} ({type(e).__name__}: {e})")) from None
    _active = DataParallel(MPI.COMM_WORLD, MPI)
    return _active


class SingleProcess:
    """A plain run, with DataParallel's interface: the training loop calls the same methods either way. One rank
    holds the whole batch; averaging only turns the sum of grad_accum micro-batch means into their mean."""
    rank, size, is_root, data_parallel = 0, 1, True, False

    def __init__(self):
        self.groups = []

    def rows(self, batch_size):
        return None                        # every row of the batch

    def on_root(self, fn):
        return fn()

    def bind_device(self, device):
        pass

    def attach(self, opt):
        self.groups = opt.groups           # each group keeps its own flat gradient buffer

    def average(self, loss, stop=False, parts=1):
        """The gradient hook's body: scale the sum of `parts` micro-batch means (the gradients in the groups' flat
        buffers, and `loss`) to their mean. Returns (mean loss, stop), the loss as it is (on the GPU: on the device,
        not read back)."""
        if parts > 1:
            for grp in self.groups:
                grp.grad *= 1.0 / parts
            loss = loss * (1.0 / parts)
        return loss, stop

    def mean(self, values):
        return list(values)

    def gather(self, obj):
        return [obj]

    def check_sync(self, opt, step):
        pass


class DataParallel:
    """One rank of a data-parallel run: the communicator, the flat gradient buffer, and the collectives the
    training loop needs (all of them called by every rank at the same points)."""

    data_parallel = True

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.buf, self.n = None, 0           # [gradients (n)..., loss, stop flag]
        self.xp = np
        self.transport = "mpi"               # "mpi" (host arrays), or on cuda "nccl", "cuda-mpi", "host"
        self._nccl = None
        self.allreduce_s, self.allreduces = 0.0, 0

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"DataParallel(rank {self.rank} of {self.size}, {self.transport})"

    # ---- before training -------------------------------------------------------------------------------------
    def rows(self, batch_size):
        """This rank's rows of a global batch: slice(r B/N, (r+1) B/N). B must be a multiple of N (checked by
        the caller, which knows how to word it)."""
        n = batch_size // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def on_root(self, fn):
        """fn() on rank 0 only; every rank returns its (pickled, broadcast) result. An exception there is raised on
        every rank (the same exception, marked all_ranks), so no rank is left waiting."""
        if not self.is_root:
            result, error = self.comm.bcast(None, root=0)
            if error is not None:
                raise error
            return result
        result = error = None
        try:
            result = fn()
        except BaseException as e:         # noqa: B036 - every rank must hear of it, whatever it is
            error = all_ranks(e)
        try:
            self.comm.bcast((result, error), root=0)
        except Exception as e:             # it did not pickle (nothing was sent): its text still travels
            self.comm.bcast((None, all_ranks(RuntimeError(f"rank 0: {error or e}"))), root=0)
            if error is None:
                raise all_ranks(e) from None
        if error is not None:
            raise error
        return result

    def bind_device(self, device):
        """Before the model is built. On cuda: this rank's GPU (its rank among the ranks of its host, modulo the
        host's GPUs) and the transport for the gradient allreduce."""
        if device != "cuda":
            return
        import cupy  # on the cuda device only (backend.py's rule: a plain import loads no CuPy)
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        local_rank, local_size = local.Get_rank(), local.Get_size()
        local.Free()
        gpus = cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(local_rank % gpus).use()
        self.xp = cupy
        choice = os.environ.get(CUDA_ALLREDUCE_VAR, "auto")
        if choice not in ("auto", "nccl", "mpi", "host"):
            raise all_ranks(UsageError(f"{CUDA_ALLREDUCE_VAR} must be auto, nccl, mpi or host, got {choice!r}"))
        shared_gpu = self.comm.allreduce(int(local_size > gpus), op=self.MPI.MAX)   # NCCL: one rank per GPU
        if choice == "nccl" and shared_gpu:
            raise all_ranks(UsageError(f"{CUDA_ALLREDUCE_VAR}=nccl needs one GPU per rank, but a host runs "
                                       "more ranks than it has GPUs (use host, or fewer ranks)"))
        if choice == "auto" and shared_gpu:
            self.transport = "host"
        elif choice in ("auto", "nccl"):
            uid = None
            if self.is_root:               # rank 0 makes the NCCL id; every rank learns whether that worked
                try:
                    from cupy.cuda import nccl  # (cuda only, as above)
                    uid = nccl.get_unique_id()
                except Exception as e:     # noqa: BLE001 - no NCCL in this CuPy: fall back (or report)
                    uid = f"{type(e).__name__}: {e}"
            uid = self.comm.bcast(uid, root=0)
            if isinstance(uid, str):
                if choice == "nccl":
                    raise all_ranks(UsageError(f"{CUDA_ALLREDUCE_VAR}=nccl, but NCCL is unavailable: {uid}"))
                self.transport = "host"
            else:
                from cupy.cuda import nccl  # (cuda only)
                self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)   # collective; a failure aborts
                self.transport = "nccl"
        else:
            self.transport = {"mpi": "cuda-mpi", "host": "host"}[choice]

    def attach(self, opt):
        """Give the optimizer's parameter groups one shared flat gradient buffer (their grp.grad become views of it),
        with two more slots for the loss and the stop flag; then make every rank's parameters rank 0's (one
        broadcast: identical starting points even if hosts' NumPy builds drew different initial weights)."""
        xp, dtype = opt.groups[0].params[0].xp, opt.groups[0].flat.dtype
        if any(g.flat.dtype != dtype for g in opt.groups):
            raise ValueError("data-parallel training needs every parameter group in one dtype")
        self.xp = xp
        self.n = sum(g.flat.size for g in opt.groups)
        self.buf = xp.zeros(self.n + 2, dtype=dtype)                       # (n + 2,)
        offset = 0
        for g in opt.groups:
            g.grad = self.buf[offset:offset + g.flat.size]
            offset += g.flat.size
        for g in opt.groups:
            self._bcast(g.flat)

    # ---- every step ------------------------------------------------------------------------------------------
    def average(self, loss, stop=False, parts=1):
        """The gradient hook's body: after AdamW gathered this rank's gradients into the buffer (the sum of `parts`
        micro-batch means), sum the buffer over the ranks in place, with this rank's loss (the same sum) and stop
        flag, and scale by 1 / (ranks * parts): every rank then holds the mean over the whole batch.
        Returns (mean loss, whether any rank stops)."""
        buf, n = self.buf, self.n
        buf[n] = loss
        buf[n + 1] = 1.0 if stop else 0.0
        if self.size > 1:
            t0 = time.perf_counter()
            self._allreduce(buf)
            self.allreduce_s += time.perf_counter() - t0
            self.allreduces += 1
        if self.size * parts > 1:
            buf *= 1.0 / (self.size * parts)                                 # the sum of N x parts means -> their mean
        return float(buf[n]), bool(buf[n + 1] > 0)                          # (reading back waits for the GPU)

    def mean(self, values):
        """The mean over the ranks of a few host floats (evaluation losses), in float64."""
        a = np.array(values, dtype=np.float64)
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM)
            a /= self.size
        return a.tolist()

    def gather(self, obj):
        """Every rank's obj, as a list on rank 0 (None elsewhere)."""
        return self.comm.gather(obj, root=0)

    def check_sync(self, opt, step):
        """Raise (on every rank) unless all ranks hold bitwise the same parameters: a CRC32 of each group's flat
        buffer, compared across ranks. Costs a pass over the parameters and a tiny allgather."""
        crc = 0
        for g in opt.groups:
            crc = zlib.crc32(np.ascontiguousarray(to_host(g.flat)).view(np.uint8), crc)
        crcs = self.comm.allgather(crc)
        if len(set(crcs)) > 1:
            differ = [r for r, c in enumerate(crcs) if c != crcs[0]]
            raise all_ranks(RunFailed(f"after step {step} the parameters differ between ranks (rank 0 vs "
                                      f"rank(s) {', '.join(map(str, differ))}): the ranks are out of sync"))

    def abort(self, message, code=1):
        """End the whole job: print the message (this rank's stderr reaches mpiexec's) and MPI_Abort."""
        try:
            print(message, file=sys.stderr, flush=True)
            # MPI_Abort tears the job down at once, and mpiexec can lose what it had not yet forwarded from this
            # rank's stderr (seen: a traceback cut mid-line, the error line missing): give it a moment to read
            time.sleep(ABORT_GRACE_S)
        finally:
            self.comm.Abort(code)

    # ---- transports ------------------------------------------------------------------------------------------
    def _allreduce(self, buf):
        MPI = self.MPI
        if self.transport == "mpi":                                         # NumPy buffer
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        elif self.transport == "nccl":
            from cupy.cuda import nccl  # (the nccl transport: cuda only)
            stream = self.xp.cuda.get_current_stream()
            self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(nccl, buf.dtype), nccl.NCCL_SUM,
                                 stream.ptr)
        elif self.transport == "cuda-mpi":                                  # MPI reads device memory itself
            self.xp.cuda.get_current_stream().synchronize()
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        else:                                                               # "host": through host memory
            host = self.xp.asnumpy(buf)
            self.comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
            buf.set(host)

    def _bcast(self, a):
        if self.size == 1:
            return
        if self.xp is np or self.transport == "cuda-mpi":
            if self.xp is not np:
                self.xp.cuda.get_current_stream().synchronize()
            self.comm.Bcast(a, root=0)
        elif self.transport == "nccl":
            from cupy.cuda import nccl  # (the nccl transport: cuda only)
            self._nccl.bcast(a.data.ptr, a.size, _nccl_dtype(nccl, a.dtype), 0,
                             self.xp.cuda.get_current_stream().ptr)
        else:
            host = self.xp.asnumpy(a)
            self.comm.Bcast(host, root=0)
            a.set(host)


def _nccl_dtype(nccl, dtype):
    return {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[np.dtype(dtype)]
