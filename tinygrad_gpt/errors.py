"""tinygrad_gpt's errors, in one place.

What the command line needs to know is the category; cli.py prints the one-line message and exits with the status:

    UsageError    the user's mistake: impossible settings, a missing, empty or unusable corpus or checkpoint, an
                  output directory holding another run, a prompt outside the vocabulary, an unavailable device.
                  Raised before anything is written. Exit status 2.
    RunFailed     a run that started and then failed: the loss diverged, a checkpoint could not be written. The last
                  good checkpoint is intact. Exit status 1.

A subclass exists where code catches that kind apart from the rest of its category (ConfigError: a time budget
too short removes the empty run directory; CheckpointError: checkpoint.save turns one into a ValueError;
DeviceError: cuda_available), or where a user of the Python API would tell it apart (DataError from load_corpus;
TrainingDiverged and SaveFailed from train()). Every message is one line meant for the user.

The torch-shaped front end (SPEC section 8) raises what torch would, so a handler written for torch's exception
catches ours: TensorError (torch's RuntimeError, NumPy's ValueError), ModuleError, SerializationError and
UnsafeFileError (ValueErrors), DeviceError (a RuntimeError, and a UsageError: `--device cuda` on a machine without
one is the user's mistake), UnsupportedError for a torch name this engine does not provide.
"""


class Error(Exception):
    """Every error of tinygrad_gpt's own making; `exit_status` is what the command line exits with."""
    exit_status = 1


class UsageError(Error, ValueError):
    """Bad input from the user (settings, files, prompts, devices): exit status 2, nothing written."""
    exit_status = 2


class RunFailed(Error, RuntimeError):
    """A started run that failed (divergence, a failed save), its last good checkpoint intact: exit status 1."""
    exit_status = 1


class ConfigError(UsageError):
    """Impossible settings or an unusable output directory."""


class DataError(UsageError):
    """A corpus or text that cannot be used: missing, empty, binary, or outside the vocabulary."""


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated, corrupt, foreign or too new."""


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite; the message names the step."""


class SaveFailed(RunFailed):
    """A checkpoint could not be written (e.g. a full disk); the previous one is intact."""


# ---- the torch-shaped front end ----------------------------------------------------------------------------------
class TensorError(RuntimeError, ValueError):
    """An argument that does not fit the tensor: shapes that do not broadcast, a reshape to another size, a repeated
    axis, a split size of 0, the mean of an integer tensor. torch raises RuntimeError where this is raised and NumPy
    ValueError: this is both, so a handler written for either catches it."""


class ModuleError(TensorError):
    """A state dict that does not fit a module, an assignment a Module refuses."""


class SerializationError(ValueError):
    """A file `load` cannot read as saved tensors (corrupt, truncated, of an unsupported kind); one line."""


class UnsafeFileError(SerializationError):
    """A file whose loading would run code: a pickle asking for a global outside serialization.ALLOWED_GLOBALS, or
    a plain pickle; refused before anything is unpickled."""


class DeviceError(UsageError, RuntimeError):
    """A device was asked for that this machine cannot provide, or two devices were mixed. A RuntimeError as
    torch's; a UsageError for the command line (exit status 2)."""


SUPPORTED_LIST = "the README's section 'Run your lecture code without torch' lists the supported names"


class UnsupportedError(AttributeError, NotImplementedError):
    """A torch name this engine does not provide."""

    def __init__(self, qualified_name, hint=""):
        self.qualified_name = qualified_name
        super().__init__(f"{qualified_name} is not supported by tinygrad_gpt{(': ' + hint) if hint else ''} "
                         f"({SUPPORTED_LIST})")


def unsupported_getattr(namespace):
    """A module-level __getattr__ (PEP 562) for a torch namespace ("torch", "torch.nn", ...): dunder and private
    names stay ordinary AttributeErrors (Python's and tools' probing), public ones raise UnsupportedError."""
    def __getattr__(name):
        if name.startswith("_"):
            raise AttributeError(f"module {namespace!r} has no attribute {name!r}")
        raise UnsupportedError(f"{namespace}.{name}")
    return __getattr__
