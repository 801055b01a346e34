"""Durable writes, shared by checkpoints (checkpoint.py: a directory replaced atomically) and torch.save
(serialization.py: a file replaced atomically)."""
import os
import uuid


def write_file(path, data):
    """Write `data` to a new file and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path):
    """fsync a directory (its entries: a rename into it survives a crash); a no-op where directories cannot be opened
    (Windows, where rename is atomic anyway)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_file(path, data):
    """Replace file `path` by `data`: written to a temporary file in the same directory, fsync'ed, renamed over `path`
    (atomic), then the directory fsync'ed. A failure leaves any previous file untouched."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
