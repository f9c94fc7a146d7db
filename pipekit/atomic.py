"""Atomic file writes: every file pipekit produces goes through here.

A file is written to a temporary name in the same folder, flushed, fsynced and
renamed over the final name, so a crash at any instant leaves either the old
complete file or the new complete file, never a half-written one (Luigi's
``LocalTarget`` habit).
"""

import contextlib
import os
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic", "fsync_dir",
           "remove_stale_temporaries", "TMP_PREFIX"]

#: Temporary files start with this, so cleanup and ``glob`` can skip them.
TMP_PREFIX = ".pipekit-tmp-"


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; outputs should get the usual 0666 & ~umask.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Open a temporary file that replaces ``path`` only when the block succeeds.

    Parameters
    ----------
    path : str or os.PathLike
        The final file name. Its folder must exist.
    mode : {"wb", "w"}
        Binary or text mode.
    encoding : str, optional
        Text encoding for ``mode="w"`` (default UTF-8).

    Yields
    ------
    file
        The open temporary file. If the block raises, the temporary file is
        removed and ``path`` is untouched.

    Examples
    --------
    >>> with atomic_write("out.txt", "w") as fh:  # doctest: +SKIP
    ...     fh.write("done")
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        if mode == "w":
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="")
        else:
            fh = os.fdopen(fd, "wb")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(folder):
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_stale_temporaries(folder, older_than, name="*"):
    """Remove temporary files of killed writers: older than ``older_than`` seconds.

    Parameters
    ----------
    folder : str or os.PathLike
    older_than : float
        Age in seconds; younger ones may belong to a writer still at work.
    name : str
        Glob for the final name the temporaries were meant for (default any).

    Returns
    -------
    list of Path
        The files removed.
    """
    cutoff = time.time() - older_than
    removed = []
    for path in Path(folder).glob(TMP_PREFIX + name):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError:
            pass
    return removed


def write_bytes_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` atomically. Returns the path."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write ``text`` to ``path`` atomically. Returns the path."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)
