"""Atomic file writes: every file pipekit produces goes through here.

A file is written to a temporary name in the same folder, flushed, fsynced and
renamed over the final name, so a crash at any instant leaves either the old
complete file or the new complete file, never a half-written one (Luigi's
``LocalTarget`` habit).
"""

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic", "fsync_dir",
           "remove_stale_temporaries", "write_text_new", "link_or_copy_new", "AtomicFile",
           "TMP_PREFIX"]

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


def write_text_new(path, text, encoding="utf-8"):
    """Create ``path`` holding ``text``, atomically, never replacing an existing file.

    The text is written and fsynced under a temporary name, then hard-linked to
    ``path``: unlike a rename, a link refuses to replace a file, so two writers
    racing for one name leave exactly one complete file. Where the filesystem
    has no hard links, an exclusive create (``O_EXCL``) takes the name and the
    text is copied in.

    Parameters
    ----------
    path : str or os.PathLike
        The new file. Its folder must exist.
    text : str
    encoding : str

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileExistsError
        When ``path`` exists already (it is left untouched).
    """
    data = text.encode(encoding)
    return _publish_new(path, lambda fh: fh.write(data))


def link_or_copy_new(src, dest):
    """Put a copy of file ``src`` at ``dest`` without ever replacing an existing ``dest``.

    A hard link where the filesystem allows it (instant, no bytes copied); else the
    bytes are copied under a temporary name, fsynced and linked (or, with no links
    at all, exclusively created), so ``dest`` is never seen half-written.

    Raises
    ------
    FileExistsError
        When ``dest`` exists already.
    FileNotFoundError
        When ``src`` does not exist.
    """
    src, dest = Path(src), Path(dest)
    try:
        os.link(src, dest)
        return dest
    except (FileExistsError, FileNotFoundError):
        raise
    except OSError:
        if dest.exists():
            raise FileExistsError(dest) from None

    def copy(out):
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    return _publish_new(dest, copy)


def _publish_new(path, fill):
    """Create ``path`` from what ``fill(file)`` writes, never replacing an existing file.

    Written and fsynced under a temporary name, then hard-linked into place (a link,
    unlike a rename, refuses to replace). With no hard links at all the name is
    claimed exclusively and filled: not atomic for readers, but never replaces.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            _create_exclusive(path, Path(tmp).read_bytes())
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _create_exclusive(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())




class AtomicFile:
    """A file streamed to a temporary name, renamed over its final name on :meth:`commit`.

    The streaming form of :func:`atomic_write`, for a writer that checks what it
    wrote (a length, an md5) before the file may count as done, or that commits
    later, in another thread: a download lands, is verified, and is made durable
    and renamed while the next one streams. Until :meth:`commit`, nothing exists
    under the final name; :meth:`discard` (or leaving a ``with`` block without
    committing) removes the temporary. Temporary names start with `TMP_PREFIX`,
    so :func:`remove_stale_temporaries` cleans up after a killed writer.

    ``path`` is the final name (a :class:`pathlib.Path`), ``tmp`` the temporary
    file (None once committed or discarded) and ``size`` the bytes written.

    Parameters
    ----------
    path : str or os.PathLike
        The final file name. Its folder must exist.
    digest : str, optional
        A :mod:`hashlib` algorithm (``"md5"``) fed with every byte written:
        see :attr:`hexdigest`.

    Examples
    --------
    >>> with AtomicFile("frame.fits.fz", digest="md5") as out:  # doctest: +SKIP
    ...     for chunk in chunks:
    ...         out.write(chunk)
    ...     out.close()
    ...     if out.hexdigest != expected:
    ...         raise ValueError("md5 mismatch")      # the temporary is removed
    ...     out.commit()                              # fsync, rename, fsync the folder
    """

    def __init__(self, path, digest=None):
        import hashlib

        self.path = Path(path)
        self.size = 0
        self._digest = hashlib.new(digest) if digest else None
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + self.path.name + ".", dir=self.path.parent)
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, _FILE_MODE)
            self._fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.discard()
            raise

    def __repr__(self):
        state = "committed" if self.tmp is None else f"pending in {self.tmp.name}"
        return f"AtomicFile({str(self.path)!r}, {state})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.discard()

    @property
    def hexdigest(self):
        """The hex digest of the bytes written, or None without ``digest``."""
        return None if self._digest is None else self._digest.hexdigest()

    def write(self, data):
        """Write ``data`` (bytes) to the temporary file."""
        self._fh.write(data)
        self.size += len(data)
        if self._digest is not None:
            self._digest.update(data)

    def close(self):
        """Close the temporary file (it stays pending: commit or discard it)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            fh.close()

    def commit(self):
        """Make the file durable (fsync), rename it over ``path``, fsync the folder.

        Returns
        -------
        pathlib.Path
            ``path``. Committing twice is harmless; on failure the temporary is
            removed and ``path`` is untouched.
        """
        if self.tmp is None:
            return self.path
        try:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self.close()
            else:  # closed by the writer, possibly in another thread
                fd = os.open(self.tmp, os.O_RDWR)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self.tmp = None
        fsync_dir(self.path.parent)
        return self.path

    def discard(self):
        """Remove the temporary file; nothing appears under ``path``. Harmless when done."""
        with contextlib.suppress(OSError):
            self.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            self.tmp = None
