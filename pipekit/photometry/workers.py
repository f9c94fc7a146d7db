"""Where a dataset's frames are read and measured: in this process, or in worker processes.

A photometry step reads (decompresses) and measures every frame. astropy's tile
decompression holds the GIL (measured: two threads decompressing take longer than one),
so a thread cannot overlap reading with measuring; processes can. `ProcessPool` forks
worker processes that each read and measure their own frames, while this process hands
out the tasks, writes every file and logs what the workers log; `InlinePool` does the same
work here, one frame after the other. Both keep the frames the reference-frame choice read
(`FrameCache`), and `ProcessPool` sends a frame's measuring to the worker that holds it.

How many processes: ``photometry.processes`` in ``reduction_config.yaml``; unset, the
cores a `pipekit.manager.Manager` gives each of its pipelines, else one per CPU core this
process may use (at most `MAX_AUTO_PROCESSES`); one inside a daemonic process (a Dask
worker: it may not have children) or outside the main thread (`photometry_processes`).
"""

import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
import warnings
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

from ..errors import FrameError, PipekitError
from .reading import CACHE_BYTES
from .tasks import FrameWork, warm_up

__all__ = ["InlinePool", "ProcessPool", "RemoteError", "WorkerDied", "frame_pool",
           "photometry_processes", "MAX_AUTO_PROCESSES"]

log = logging.getLogger("pipekit.photometry")

#: At most this many worker processes when ``photometry.processes`` is not set.
MAX_AUTO_PROCESSES = 4
#: Tasks sent ahead to each worker, so it never waits for the next one.
WINDOW = 2
#: A frame whose measuring killed this many worker processes is rejected.
DEATHS_TO_REJECT = 2


class RemoteError(PipekitError):
    """An unexpected exception raised in a worker process, with its traceback there.

    Attributes
    ----------
    type_name : str
        The original exception's class name.
    remote_traceback : str
        The traceback as the worker printed it.
    """

    def __init__(self, message, type_name="Exception", remote_traceback=""):
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return RemoteError, (str(self), self.type_name, self.remote_traceback)


class WorkerDied(FrameError):
    """A frame rejected because the worker processes measuring it died: tried again on the
    next run (the cause may have been the machine's, such as its memory)."""


class InlinePool:
    """`FrameWork` in this process: the same interface as `ProcessPool`, one process.

    Parameters
    ----------
    config : pipekit.config.ReductionConfig
    """

    processes = 1

    def __init__(self, config, budget=CACHE_BYTES):
        self.work = FrameWork(config, budget)

    def holds(self, path):
        """True when ``path`` is kept in memory."""
        return Path(path) in self.work.cache

    def start(self, kind, paths):
        """Nothing here (`ProcessPool.start` sends tasks ahead of `run_ordered`)."""

    def run_ordered(self, kind, paths):
        """Yield ``(path, value, error)`` of task ``kind`` on each path, in order.

        ``error`` is the exception the task raised (``value`` is then None).
        """
        for path in paths:
            try:
                value = getattr(self.work, kind)(path)
            except Exception as exc:  # noqa: BLE001 - handed to the caller, per frame
                yield path, None, exc
            else:
                yield path, value, None

    def submit(self, kind, path, *args):
        """Start task ``kind`` on ``path`` (here: run it); `result` gives its value."""
        try:
            return True, getattr(self.work, kind)(path, *args)
        except Exception as exc:  # noqa: BLE001 - raised by `result`
            return False, exc

    submit_elsewhere = submit

    def result(self, submitted):
        """The value of a task from `submit` (its exception is raised here)."""
        ok, value = submitted
        if not ok:
            raise value
        return value

    def broadcast(self, kind, *args):
        """Run ``kind(*args)`` on every process's `FrameWork` (here: one)."""
        getattr(self.work, kind)(*args)

    def close(self, abort=False):
        self.work.cache.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(abort=exc_type is not None)


class _PipeLogHandler(logging.Handler):
    """In a worker: hand every log record to the parent, which logs it (one log, scrubbed)."""

    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def emit(self, record):
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.conn.send(("log", record.name, record.levelno, text))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def _become_worker(conn, parent_pid):
    """Set a forked worker apart from its parent's signals, logging and lifetime."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:  # die with the parent, even when it is SIGKILLed
            import ctypes
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    from ..worker import set_up_worker_process

    set_up_worker_process()  # it lives for one step: each frame reuses the last's memory
    if os.getppid() != parent_pid:
        os._exit(0)
    manager = logging.Logger.manager
    for logger in [logging.getLogger()] + [v for v in manager.loggerDict.values()
                                           if isinstance(v, logging.Logger)]:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    logging.getLogger().addHandler(_PipeLogHandler(conn))


def _transportable(exc):
    """``exc`` with its traceback text, as a picklable exception."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    try:
        exc.remote_traceback = text
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that does not survive pickling
        return RemoteError(str(exc), type(exc).__name__, text)


def _serve(conn, config, budget, parent_pid):
    """A worker process: run the tasks the parent sends until it sends None or goes."""
    _become_worker(conn, parent_pid)
    work = FrameWork(config, budget)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        task, kind, args = message
        try:
            reply = (task, True, getattr(work, kind)(*args))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the parent
            reply = (task, False, _transportable(exc))
        held = bool(args) and isinstance(args[0], Path) and args[0] in work.cache
        try:
            conn.send(reply + (held,))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send((task, False, _transportable(exc), held))


def _exit_cause(process):
    code = process.exitcode
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _Worker:
    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.inflight = {}  # task id -> (kind, args)


class ProcessPool:
    """Worker processes that read and measure frames; this process hands out the tasks.

    A frame is measured by the worker that kept it from the reference choice; others go to
    whichever worker is free, `WINDOW` tasks ahead. A worker that dies (a crash in a
    decompression library, the out-of-memory killer) is replaced and its frames are given
    to another; a frame in flight at `DEATHS_TO_REJECT` deaths is rejected with the cause.

    Parameters
    ----------
    config : pipekit.config.ReductionConfig
    processes : int
        Worker processes (at least 2; use `InlinePool` for one).
    budget : int, optional
        Bytes of pixels each worker keeps (default: `CACHE_BYTES` each for two workers,
        twice that shared by more).
    star_search : bool
        Ready the reference frame's star search before forking (`warm_up`); False when
        only frames are to be measured.
    """

    def __init__(self, config, processes, budget=None, star_search=True):
        self.config = config
        self.processes = int(processes)
        self.budget = budget or 2 * CACHE_BYTES // max(self.processes, 2)
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        self._ctx = multiprocessing.get_context(method)
        if method == "fork":
            warm_up(star_search)
        self._ids = itertools.count()
        self._workers = []
        self._replay = []     # broadcasts, sent again to a replacement worker
        self._holder = {}     # path -> the worker keeping that frame
        self._done = {}       # task id -> (ok, value)
        self._abandoned = set()
        self._started = {}     # (kind, path) -> task sent by `start`
        self._retry = deque()  # (task id, kind, args) of a dead worker, to send again
        self._deaths = {}      # path -> deaths it was in flight at
        self._starts = 0
        try:
            for _ in range(self.processes):
                self._start()
        except BaseException:
            self.close(abort=True)
            raise

    def _start(self):
        if self._starts >= 3 * self.processes:
            raise PipekitError(f"photometry worker processes keep dying ({self._starts} "
                               "started); see the log for the frames they were measuring")
        self._starts += 1
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, name="pipekit-photometry", daemon=True,
                                    args=(child_end, self.config, self.budget, os.getpid()))
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a process with threads (the lock's
            # heartbeat, the checkpoint's fsync thread); the worker only runs numpy/astropy
            # code and talks over its pipe, never taking a lock those threads hold.
            warnings.filterwarnings("ignore", message=r".*fork\(\)", category=DeprecationWarning)
            process.start()
        child_end.close()
        worker = _Worker(process, parent_end)
        self._workers.append(worker)
        for kind, args in self._replay:
            self._abandoned.add(self._send(worker, kind, args))
        return worker

    def _send(self, worker, kind, args, task=None):
        task = next(self._ids) if task is None else task
        worker.inflight[task] = (kind, args)
        try:
            worker.conn.send((task, kind, args))
        except OSError:  # it died since we last heard from it: its tasks go elsewhere
            self._bury(worker)
        return task

    def _send_retries(self):
        while self._retry and self._workers:
            task, kind, args = self._retry.popleft()
            self._send(min(self._workers, key=lambda w: len(w.inflight)), kind, args, task)

    def holds(self, path):
        """True when a worker keeps ``path`` in memory."""
        return Path(path) in self._holder

    def _pump(self):
        """Wait for the next messages from the workers; log, store replies, bury the dead."""
        self._send_retries()
        ready = wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers])
        for worker in list(self._workers):
            if worker.conn not in ready and worker.process.sentinel not in ready:
                continue
            try:
                while worker.conn.poll():
                    self._receive(worker, worker.conn.recv())
            except (EOFError, OSError):
                pass
            if not worker.process.is_alive():
                self._bury(worker)

    def _receive(self, worker, message):
        if message[0] == "log":
            _, name, level, text = message
            logging.getLogger(name).log(level, "%s", text)
            return
        task, ok, value, held = message
        kind, args = worker.inflight.pop(task)
        if args and isinstance(args[0], Path):
            if held:
                self._holder[args[0]] = worker
            elif self._holder.get(args[0]) is worker:
                del self._holder[args[0]]
        if task in self._abandoned:
            self._abandoned.discard(task)
        else:
            self._done[task] = (ok, value)

    def _bury(self, worker):
        """A worker died: give its frames to others, reject a frame that killed twice."""
        if worker not in self._workers:
            return
        worker.process.join(1.0)
        cause = _exit_cause(worker.process)
        self._workers.remove(worker)
        worker.conn.close()
        for path in [p for p, w in self._holder.items() if w is worker]:
            del self._holder[path]
        # a worker runs its tasks in the order sent: the first in flight is the one it died
        # on; the others had not started and go to another worker unblamed
        for n, (task, (kind, args)) in enumerate(worker.inflight.items()):
            if task in self._abandoned:
                self._abandoned.discard(task)
                continue
            path = args[0] if args and isinstance(args[0], Path) else None
            if path is None:  # a broadcast: the replacement gets it replayed
                self._done[task] = (True, None)
                continue
            if n > 0:
                self._retry.append((task, kind, args))
                continue
            deaths = self._deaths[path] = self._deaths.get(path, 0) + 1
            log.warning("%s: the worker process measuring it died (%s)%s", path.name, cause,
                        "" if deaths >= DEATHS_TO_REJECT else "; trying it again")
            if deaths >= DEATHS_TO_REJECT:
                self._done[task] = (False, WorkerDied(
                    f"{path}: the process measuring this frame died {deaths} times ({cause}); "
                    "the frame may be corrupt in a way that crashes its decompression"))
            else:
                self._retry.append((task, kind, args))
        self._start()

    def _dispatch(self, queues, shared, kind, sent):
        """Fill every worker's window: retried tasks, then its own frames, then any."""
        self._send_retries()
        for worker in list(self._workers):
            while worker in self._workers and len(worker.inflight) < WINDOW:
                own = queues.get(id(worker))
                if own:
                    i = own.popleft()
                elif shared:
                    i = shared.popleft()
                else:
                    break
                sent[i] = self._send(worker, kind, (sent["paths"][i],))

    def start(self, kind, paths):
        """Send task ``kind`` on ``paths`` now, before knowing in which order (or whether)
        `run_ordered` asks for them: it takes their results; the ones it does not ask for
        are dropped when it ends."""
        for path in map(Path, paths):
            if (kind, path) not in self._started:
                self._started[kind, path] = self.submit(kind, path)

    def run_ordered(self, kind, paths):
        """Yield ``(path, value, error)`` of task ``kind`` on each path, in the order given.

        Tasks run in the workers as they become free; a frame a worker keeps goes to it.
        Closing the generator early abandons the tasks still running (their frames stay
        kept where they were read).
        """
        paths = [Path(p) for p in paths]
        queues, shared = {}, deque()
        sent = {"paths": paths}
        for i, path in enumerate(paths):
            holder = self._holder.get(path)
            if (kind, path) in self._started:
                sent[i] = self._started.pop((kind, path))
            elif holder is not None:
                queues.setdefault(id(holder), deque()).append(i)
            else:
                shared.append(i)
        nxt = 0
        try:
            while nxt < len(paths):
                for key in [k for k in queues if k not in {id(w) for w in self._workers}]:
                    shared.extendleft(reversed(queues.pop(key)))  # a dead worker's frames
                self._dispatch(queues, shared, kind, sent)
                task = sent.get(nxt)
                if task is not None and task in self._done:
                    ok, value = self._done.pop(task)
                    nxt += 1
                    yield (paths[nxt - 1], value, None) if ok else (paths[nxt - 1], None, value)
                else:
                    self._pump()
        finally:
            unasked = [t for (k, _), t in self._started.items() if k == kind]
            self._started = {key: t for key, t in self._started.items() if key[0] != kind}
            for task in [sent.get(i) for i in range(nxt, len(paths))] + unasked:
                if task is not None and self._done.pop(task, None) is None:
                    self._abandoned.add(task)

    def _wait_for(self, tasks):
        while not all(t in self._done for t in tasks):
            self._pump()
        return [self._done.pop(t) for t in tasks]

    def submit(self, kind, path, *args):
        """Start task ``kind`` on ``path`` in the worker keeping it (else the least busy);
        `result` waits for its value."""
        path = Path(path)
        worker = self._holder.get(path) or min(self._workers, key=lambda w: len(w.inflight))
        return self._send(worker, kind, (path,) + args)

    def submit_elsewhere(self, kind, path, *args):
        """Like `submit`, in a worker other than the one keeping ``path`` (when there is
        one)."""
        path = Path(path)
        others = [w for w in self._workers if w is not self._holder.get(path)] or self._workers
        return self._send(min(others, key=lambda w: len(w.inflight)), kind, (path,) + args)

    def result(self, task):
        """The value of a task from `submit` (its exception is raised here)."""
        [(ok, value)] = self._wait_for([task])
        if not ok:
            raise value
        return value

    def broadcast(self, kind, *args):
        """Run ``kind(*args)`` in every worker (and in any worker started later)."""
        self._replay.append((kind, args))
        for ok, value in self._wait_for([self._send(w, kind, args) for w in self._workers]):
            if not ok:
                raise value

    def close(self, abort=False):
        """Stop the workers: ask them to finish (or, with ``abort``, kill them at once)."""
        for worker in self._workers:
            if not abort:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._workers:
            if not abort:
                worker.process.join(5.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5.0)
            worker.conn.close()
        self._workers = []
        self._holder.clear()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(abort=exc_type is not None)


def photometry_processes(config, n_frames):
    """How many processes read and measure ``n_frames`` frames (1: this one alone).

    ``photometry.processes`` when set; else ``PIPEKIT_CORES_PER_PIPELINE`` when set (a
    Manager's default pool sets it in its workers to the cores over ``max_parallel``);
    else one per CPU core this process may use, at most `MAX_AUTO_PROCESSES`. Never more
    than the frames; 1 inside a daemonic process (a Dask worker), which may not start
    processes of its own, and, unless set, outside the main thread (pipelines run by an
    executor of threads).
    """
    from ..worker import CORES_ENV, usable_cores

    wanted = config.photometry.processes
    if multiprocessing.current_process().daemon:
        if wanted and wanted > 1:
            log.info("photometry.processes = %d: measuring in this worker process alone (a "
                     "daemonic process may not start processes)", wanted)
        return 1
    if not wanted:
        try:
            wanted = int(os.environ.get(CORES_ENV, "0"))
        except ValueError:
            log.warning("%s=%r is not a number of cores; ignored", CORES_ENV,
                        os.environ.get(CORES_ENV))
            wanted = 0
    if not wanted:
        if threading.current_thread() is not threading.main_thread():
            return 1  # pipelines run in threads (an executor of threads): one core each
        wanted = min(usable_cores(), MAX_AUTO_PROCESSES)
    return max(1, min(int(wanted), n_frames))


def frame_pool(config, n_frames, star_search=True):
    """An `InlinePool` or a `ProcessPool` for ``n_frames`` frames of work (a context manager).

    Parameters
    ----------
    config : pipekit.config.ReductionConfig
    n_frames : int
        Frames to read or measure (the pool has at most that many processes).
    star_search : bool
        Whether the reference frame is to be chosen (its star search readied before the
        workers start), or only frames measured.
    """
    n = photometry_processes(config, n_frames)
    if n <= 1:
        return InlinePool(config)
    return ProcessPool(config, n, star_search=star_search)
