"""The command line with a failure injected into one rank of a data-parallel run: the tests' fault hook.

    mpiexec -n 2 python tests/fault_driver.py RANK:STEP:MODE train ...

The hook wraps DataParallel.average, the allreduce inside the gradient hook of every training step (its n-th call
is step n's), so that rank RANK at step STEP fails the way a real rank can:
  raise    an exception: that rank alone fails, so the job must end (MPI_Abort) with its message
  exit     the process exits without a word to MPI
  kill     the process dies by SIGKILL, as from the out-of-memory killer
  desync   after the allreduce that rank's averaged gradient is altered: its parameters drift from the others',
           which --check-sync must catch
The production code knows nothing of this: the tests install the hook here, then run the real CLI.
"""
import os
import signal
import sys

from tinygrad_gpt import distributed
from tinygrad_gpt.cli import main

MODES = ("raise", "exit", "kill", "desync")


def install(rank, step, mode):
    original = distributed.DataParallel.average
    calls = [0]

    def average(self, loss, stop=False, parts=1):
        calls[0] += 1
        hit = self.rank == rank and calls[0] == step
        if hit and mode in ("exit", "kill"):
            print(f"rank {rank}: {mode} at step {step} (tests/fault_driver.py)", file=sys.stderr, flush=True)
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        if hit and mode == "raise":
            raise RuntimeError(f"injected failure at step {step} (tests/fault_driver.py)")
        result = original(self, loss, stop, parts)
        if hit and mode == "desync":
            self.buf[0] += 1.0
        return result
    distributed.DataParallel.average = average


if __name__ == "__main__":
    rank, step, mode = sys.argv[1].split(":")
    assert mode in MODES, mode
    install(int(rank), int(step), mode)
    sys.exit(main(sys.argv[2:]))
