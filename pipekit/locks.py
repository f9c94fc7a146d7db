"""Dataset locks: one pipeline at a time per dataset folder.

``<red_dir>/dataset.lock`` is created atomically (``O_CREAT | O_EXCL``) and
holds JSON naming its holder. The holder renews a lease while it holds the
lock: a heartbeat thread touches the file's modification time every fifth of
the lease. A lock is stale, and is taken over with a warning naming its old
holder, when its process is gone on this host, or — from any host — when its
lease has not been renewed for ``lease`` seconds (``$PIPEKIT_LOCK_LEASE``,
default 300): its holder was killed, or its node died. Any other lock raises
`LockError`.
"""

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from .errors import LockError

__all__ = ["DatasetLock", "LockInfo", "LOCK_NAME", "lock_path", "read_lock", "is_locked",
           "is_stale", "break_lock", "lease_seconds", "LEASE_ENV", "DEFAULT_LEASE"]

log = logging.getLogger("pipekit.locks")

#: The lock file's name inside a dataset folder.
LOCK_NAME = "dataset.lock"

#: Seconds an empty or unreadable lock file counts as "being written" by a
#: racing process before it is judged abandoned (its writer died between
#: creating the file and writing it).
PARTIAL_GRACE = 60.0

#: Environment variable giving the lease in seconds.
LEASE_ENV = "PIPEKIT_LOCK_LEASE"

#: Seconds a lock stays valid without a heartbeat, unless ``$PIPEKIT_LOCK_LEASE`` says
#: otherwise. Its holder renews it every fifth of that.
DEFAULT_LEASE = 300.0


def lease_seconds():
    """The lease of a lock in seconds: ``$PIPEKIT_LOCK_LEASE``, else `DEFAULT_LEASE`.

    Returns
    -------
    float

    Raises
    ------
    LockError
        When ``$PIPEKIT_LOCK_LEASE`` is not a positive number.
    """
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise LockError(f"${LEASE_ENV} = {text!r}: expected a positive number of seconds")
    return value


@dataclasses.dataclass
class LockInfo:
    """What a lock file says about its holder.

    Attributes
    ----------
    path : pathlib.Path
        The lock file.
    host, pid, pipeline, since : str, int, str, str
        Holder's host name, process id, pipeline name and the UTC time
        (ISO 8601) it took the lock. ``None`` when the file is incomplete.
    token : str
        A random id unique to this acquisition, so a holder never removes
        a lock that is not its own.
    pid_start, boot_id : str
        The holder's process start time (clock ticks since boot) and the
        machine's boot id, where the OS tells them (Linux); they catch a
        pid reused by another process, or a reboot.
    complete : bool
        False when the file is empty or not valid JSON (a racing writer,
        or one that died while writing).
    mtime : float
        The file's modification time (seconds since the epoch).
    """

    path: Path
    host: str = None
    pid: int = None
    pipeline: str = None
    since: str = None
    token: str = None
    pid_start: str = None
    boot_id: str = None
    complete: bool = True
    mtime: float = None

    def describe(self):
        """One line naming the holder, for messages."""
        if not self.complete:
            return f"an unfinished lock file (written {_age(self.mtime)} ago)"
        name = f"pipeline {self.pipeline!r}" if self.pipeline else "a process"
        return (f"{name} (pid {self.pid} on host {self.host}, since {self.since}, "
                f"last heartbeat {_age(self.mtime)} ago)")


def lock_path(red_dir):
    """The lock file of dataset folder ``red_dir``."""
    return Path(red_dir) / LOCK_NAME


def read_lock(red_dir):
    """Read the lock of a dataset folder.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.

    Returns
    -------
    LockInfo or None
        The holder, or None when the dataset has no lock file. An empty or
        unparseable file gives a `LockInfo` with ``complete=False``.
    """
    info, _ = _read(lock_path(red_dir))
    return info


def is_stale(info, grace=PARTIAL_GRACE, lease=None):
    """Whether a lock can be taken over: its holder is certainly gone.

    A lock is stale when its lease has expired — its file not touched by the
    holder's heartbeat for ``lease`` seconds, judged from any host — or when
    it was taken on this host and its process no longer exists (or the pid
    now belongs to another process, or the machine has rebooted since), or
    when the file has stayed incomplete for more than ``grace`` seconds.

    Parameters
    ----------
    info : LockInfo
        As returned by `read_lock`.
    grace : float
        Seconds an incomplete file is given to be finished by its writer.
    lease : float, optional
        Seconds without a heartbeat after which any lock is stale; default
        `lease_seconds` (``$PIPEKIT_LOCK_LEASE`` or 300).

    Returns
    -------
    bool
    """
    if not info.complete:
        return info.mtime is not None and time.time() - info.mtime > grace
    lease = lease_seconds() if lease is None else lease
    if info.mtime is not None and time.time() - info.mtime > lease:
        return True
    if info.host != socket.gethostname():
        return False
    boot_id = _boot_id()
    if info.boot_id and boot_id and info.boot_id != boot_id:
        return True
    if not isinstance(info.pid, int) or not _pid_alive(info.pid):
        return True
    start = _pid_start(info.pid)
    return bool(info.pid_start and start and info.pid_start != start)


def is_locked(red_dir):
    """Whether a dataset folder is locked by a live holder.

    A stale lock (see `is_stale`) counts as unlocked: the next run takes it over.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.

    Returns
    -------
    bool
    """
    info = read_lock(red_dir)
    return info is not None and not is_stale(info)


def break_lock(red_dir):
    """Remove a dataset's lock whoever holds it, and return what it said.

    For a lock left by a process on another host that is known to be gone
    (a cluster node that crashed): pipekit cannot check that itself.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder.

    Returns
    -------
    LockInfo or None
        The removed lock, or None when there was none.
    """
    path = lock_path(red_dir)
    info = read_lock(red_dir)
    if info is None:
        return None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.warning("removed the lock of %s held by %s", red_dir, info.describe())
    return info


class DatasetLock:
    """Exclusive hold on one dataset folder, across processes and hosts.

    Parameters
    ----------
    red_dir : str or os.PathLike
        The dataset folder; it must exist.
    pipeline_name : str, optional
        Written into the lock so others can see who holds it.
    grace : float
        Seconds an incomplete lock file is given before it counts as stale.
    lease : float, optional
        Seconds a lock stays valid without a heartbeat (default `lease_seconds`).
        While held, a daemon thread touches the lock file every ``lease / 5``.
    name : str
        The lock file's name in the folder (`LOCK_NAME`; the download pipeline
        uses its own).

    Examples
    --------
    >>> with DatasetLock(red_dir, "ogle-0034"):  # doctest: +SKIP
    ...     reduce(red_dir)

    or, when the hold spans more than one block::

        lock = DatasetLock(red_dir, pipe.name)
        lock.acquire()                 # LockError when someone else holds it
        try:
            pipe.run()
        finally:
            lock.release()
    """

    def __init__(self, red_dir, pipeline_name=None, grace=PARTIAL_GRACE, lease=None,
                 name=LOCK_NAME):
        self.red_dir = Path(red_dir)
        self.pipeline_name = pipeline_name
        self.grace = grace
        self.lease = lease_seconds() if lease is None else float(lease)
        self.name = name
        self._token = None
        self._heartbeat = None

    @property
    def path(self):
        """The lock file."""
        return self.red_dir / self.name

    @property
    def held(self):
        """Whether this object holds the lock."""
        return self._token is not None

    def acquire(self):
        """Take the lock, taking over a stale one.

        Returns
        -------
        DatasetLock
            self.

        Raises
        ------
        LockError
            When a live process holds it (the message names it), when this
            object already holds it, or when the folder does not exist.
        """
        if self.held:
            raise LockError(f"{self.path} is already held by this DatasetLock")
        if not self.red_dir.is_dir():
            raise LockError(f"cannot lock dataset {self.red_dir}: the folder does not exist")
        token = uuid.uuid4().hex
        content = json.dumps({
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pipeline": self.pipeline_name,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "token": token,
            "pid_start": _pid_start(os.getpid()),
            "boot_id": _boot_id(),
        }, indent=1).encode()
        # Few rounds are ever needed: each one either creates the file, or
        # removes a stale one (then retries), or finds a live holder.
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info, raw = _read(self.path)
                if info is None:
                    continue  # released between our open and our read
                if not is_stale(info, self.grace, lease=self.lease):
                    what = "dataset" if self.name == LOCK_NAME else "folder"
                    raise LockError(
                        f"{what} {self.red_dir} is locked by {info.describe()}; lock file "
                        f"{self.path}. If that process is gone (e.g. its host crashed), "
                        f"remove the file or call pipekit.locks.break_lock().") from None
                self._take_over(info, raw)
                continue
            try:
                os.write(fd, content)
                os.fsync(fd)
            except BaseException as err:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                if isinstance(err, OSError) and err.filename is None:  # a full disk: name it
                    raise OSError(err.errno, err.strerror or str(err), str(self.path)) from None
                raise
            os.close(fd)
            self._token = token
            self._start_heartbeat(token)
            log.debug("locked %s for %s", self.red_dir, self.pipeline_name)
            return self
        raise LockError(f"could not lock dataset {self.red_dir}: its lock file {self.path} "
                        "keeps changing")

    def _take_over(self, info, raw):
        # Several processes may judge the same lock stale at once. Under a
        # short OS lock on the folder, each checks that the file is still the
        # one it judged (same bytes) before removing it, so a fresh lock
        # taken by a faster racer is never removed; then all of them race
        # again through O_EXCL, where exactly one wins.
        with _folder_mutex(self.red_dir):
            current, current_raw = _read(self.path)
            if (current is None or current_raw != raw
                    or not is_stale(current, self.grace, lease=self.lease)):
                return
            os.unlink(self.path)
        log.warning("took over the stale lock of %s left by %s (lease %.0f s)", self.red_dir,
                    info.describe(), self.lease)

    def release(self):
        """Give the lock back. Safe to call when not held.

        Removes the lock file only if it is still this holder's own (a lock
        broken by hand and retaken by someone else is left alone, with a
        warning).
        """
        if not self.held:
            return
        token, self._token = self._token, None
        self._stop_heartbeat()
        info, _ = _read(self.path)
        if info is None or info.token != token:
            log.warning("lock of dataset %s was removed or replaced while held by pid %d; "
                        "leaving it as it is", self.red_dir, os.getpid())
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        log.debug("unlocked %s", self.red_dir)

    def _start_heartbeat(self, token):
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(token, stop), daemon=True,
                                  name=f"pipekit-lock-heartbeat {self.red_dir}")
        self._heartbeat = (thread, stop)
        thread.start()

    def _stop_heartbeat(self):
        if self._heartbeat is not None:
            thread, stop = self._heartbeat
            self._heartbeat = None
            stop.set()
            if thread is not threading.current_thread():
                thread.join(5.0)

    def _beat(self, token, stop):
        # Renew the lease: touch the file while it is still this holder's own.
        interval = max(0.05, self.lease / 5.0)
        while not stop.wait(interval):
            info, _ = _read(self.path)
            if info is None or info.token != token:
                log.warning("lock %s was removed or taken over while held by pid %d (%s)",
                            self.path, os.getpid(), self.pipeline_name)
                return
            try:
                os.utime(self.path)
            except OSError as err:
                log.warning("cannot renew the lease of lock %s: %s", self.path, err)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __getstate__(self):
        # A copy (pickle, checkpoint) never believes it holds the lock.
        state = self.__dict__.copy()
        state["_token"] = None
        state["_heartbeat"] = None
        return state

    def __repr__(self):
        state = "held" if self.held else "not held"
        return f"<DatasetLock {str(self.red_dir)!r} ({state})>"


def _read(path):
    """(LockInfo or None, raw bytes or None)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
            mtime = os.fstat(fh.fileno()).st_mtime
    except FileNotFoundError:
        return None, None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        return LockInfo(path=Path(path), complete=False, mtime=mtime), raw
    pid = data.get("pid")
    return LockInfo(path=Path(path), host=data.get("host"),
                    pid=pid if isinstance(pid, int) else None,
                    pipeline=data.get("pipeline"), since=data.get("since"),
                    token=data.get("token"), pid_start=data.get("pid_start"),
                    boot_id=data.get("boot_id"), complete=True, mtime=mtime), raw


def _pid_alive(pid):
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


def _pid_start(pid):
    # Field 22 of /proc/<pid>/stat; the command name (field 2) may hold spaces
    # and parentheses, so split after its closing parenthesis.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


@contextlib.contextmanager
def _folder_mutex(folder):
    """A blocking OS lock on the folder, released by the kernel if we die."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the byte comparison still guards
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock on folders
            pass
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _age(mtime):
    if mtime is None:
        return "an unknown time"
    return f"{max(0.0, time.time() - mtime):.0f} s"
