"""Writing files atomically: a reader sees the old file or the complete new one, never half.

Used for model files, checkpoints, plots and downloads alike.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl  # a lock tells a live save's temporary file from a dead one's
except ImportError:  # Windows: stale temporary files are then left alone
    fcntl = None

__all__ = ["atomic_write", "check_writable"]

# Temporary files of a save are ".mf-<tag>-<random>.tmp", <tag> a hash of the
# target's name: short, so a 255-byte name still saves, and recognisable, so
# the next save to the same place can remove what a killed one left.
_TEMPORARY_PREFIX = ".mf-"


def _temporary_prefix(path: Path) -> str:
    tag = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]
    return f"{_TEMPORARY_PREFIX}{tag}-"


@contextmanager
def atomic_write(path):
    """Open a binary file whose content replaces ``path`` only once it is complete.

    Writes go to a temporary file in the same folder (so the final rename
    stays on one file system, where it is atomic), which is flushed to disk and
    then renamed over ``path``. If the ``with`` block raises, or is
    interrupted, the temporary file is removed and ``path`` is left as it was.
    Temporary files that a killed earlier save to ``path`` left behind are
    removed first; those of a save still running are not.
    """
    path = Path(path)
    prefix = _temporary_prefix(path)
    _remove_stale_temporaries(path.parent, prefix)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            if fcntl is not None:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)  # held until the file is renamed
            yield file
            file.flush()
            os.fsync(file.fileno())
            os.chmod(temporary, 0o644)  # mkstemp makes files private; ours are ordinary data
            os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Delete ``prefix*.tmp`` files in ``folder`` that no running save holds locked."""
    if fcntl is None:
        return
    for candidate in folder.glob(f"{prefix}*.tmp"):
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone already, a symlink, or not ours to read
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(fd), os.stat(candidate, follow_symlinks=False)):
                os.unlink(candidate)
        except OSError:  # locked by a save in progress, or renamed meanwhile
            pass
        finally:
            os.close(fd)


def check_writable(path, what: str = "file") -> Path:
    """Make sure ``path`` can be written, before spending time on what goes in it.

    Creates and removes a temporary file in ``path``'s folder: the very
    operation :func:`atomic_write` will need.

    Raises
    ------
    OSError
        With a message naming ``what`` and the problem (no such folder,
        a directory in the way, no permission).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write the {what} to {path}: it is a directory")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write the {what} to {path}: the folder {folder} "
                                "does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path), suffix=".probe")
    except OSError as exc:
        raise type(exc)(f"cannot write the {what} to {path}: "
                        f"{exc.strerror or exc} in {folder}") from None
    os.close(fd)
    os.unlink(probe)
    return path
