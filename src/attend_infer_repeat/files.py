"""Atomic file writes, shared by the data cache, the scene files and the checkpoints."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import AIRError, OutputError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def atomic_write(path: str | os.PathLike, write: Callable[[object], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it and ``os.replace`` it onto ``path``.

    Readers see either the old file or the complete new one, never a partial one (also after a crash or
    SIGKILL); on any error the temporary file is removed, the old file is untouched and the exception
    propagates; a failure of the file system (read-only, a folder at ``path``, a full disk) is an
    :class:`OutputError` that names the file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; name a file instead")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise _output_error(path, e) from e
    in_writer = False
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions of a new file
        with os.fdopen(fd, "wb") as f:
            in_writer = True
            write(f)
            in_writer = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # the writer's own errors (a failed download is an OSError too) pass through as they are; the file
        # system's (a full disk while writing, a folder in the way) become one clear OutputError
        if isinstance(e, OSError) and not isinstance(e, AIRError) and (not in_writer or e.errno in _DISK_ERRNOS):
            raise _output_error(path, e) from e
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _output_error(path: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {e.strerror or e}; the previous file (if any) is unchanged; choose a "
                       "writable place or free disk space")


def ensure_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Check, before any long work, that ``path`` (a file, or with ``folder`` a folder, created if missing) can
    be written: a command must not compute for minutes and then fail to save. Raises :class:`OutputError`."""
    path = Path(path)
    where = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"cannot write into {path}: it is a file, not a folder; name a folder instead")
    if not folder and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; name a file instead")
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=where):
            pass
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OutputError(f"cannot write {'into ' if folder else ''}{path}: {e.strerror or e}; choose a writable "
                          "place") from e
    return path
