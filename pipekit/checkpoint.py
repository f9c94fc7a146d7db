"""A pipeline's checkpoint file: pickled fast where it can be, written as what changed.

`dumps` pickles (C pickler, dill where it must); `write_snapshot` writes the whole
pipeline atomically and `Journal` appends fsync'd step records after it, so a
checkpoint costs what changed; `read_checkpoint` loads a snapshot and replays its
records. `find_unpicklable` names the part of a value that cannot be pickled.
"""

import contextlib
import io
import logging
import os
import pickle
import struct
import threading
import types
import zlib
from pathlib import Path

import dill

from .atomic import remove_stale_temporaries, write_bytes_atomic
from .errors import PipelineError

__all__ = ["CheckpointPickler", "dumps", "find_unpicklable", "Journal", "write_snapshot",
           "read_checkpoint", "pipeline_state", "explain_pickle_failure", "remove_stale_checkpoints",
           "CHECKPOINT_NAME"]

log = logging.getLogger("pipekit.pipeline")

#: File name of the checkpoint inside the pipeline's ``log`` path.
CHECKPOINT_NAME = "pipeline.p"

#: A temporary checkpoint older than this (s) was left by a killed process.
STALE_TEMPORARY_SECONDS = 60.0


class CheckpointPickler(pickle.Pickler):
    """The C pickler, handing to dill only what must travel by value.

    Functions and classes defined in ``__main__`` (a notebook, a script),
    lambdas and local functions cannot be pickled by reference: dill pickles
    those by value. Everything else goes through the fast C pickler, which
    makes a checkpoint some 30 times cheaper than a whole-object dill dump.
    The result loads with ``pickle.load`` and ``dill.load`` alike.
    """

    def __init__(self, file, value_cache=None):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.value_cache = {} if value_cache is None else value_cache

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)) and _needs_value(obj):
            # dill is the slow part of a checkpoint: reuse its bytes for the
            # same function object (the cache also keeps it alive, so its id
            # cannot be reused by another object).
            cached = self.value_cache.get(id(obj))
            if cached is None or cached[0] is not obj:
                cached = self.value_cache[id(obj)] = (obj, dill.dumps(obj, recurse=True))
            return dill.loads, (cached[1],)
        return NotImplemented


def _needs_value(obj):
    module = getattr(obj, "__module__", None)
    return module in (None, "__main__", "__mp_main__") or "<" in obj.__qualname__


def dumps(obj, value_cache=None):
    """Pickle ``obj`` as checkpoints do: C pickler, dill where it must.

    ``value_cache`` (a dict) keeps the dill bytes of functions pickled by
    value, for reuse by later calls given the same dict.
    """
    buffer = io.BytesIO()
    try:
        CheckpointPickler(buffer, value_cache).dump(obj)
    except Exception:  # noqa: BLE001 - dill can pickle more (locks, ...); let it try
        return dill.dumps(obj, recurse=True)
    return buffer.getvalue()


def find_unpicklable(value, depth=0):
    """Name the innermost part of ``value`` that cannot be pickled."""
    if depth < 4:
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, (list, tuple, set)):
            items = enumerate(value)
        else:
            items = getattr(value, "__dict__", {}).items() if depth else ()
        for key, item in items:
            try:
                dumps(item)
            except Exception:  # noqa: BLE001
                return f"[{key!r}] " + find_unpicklable(item, depth + 1)
    return f"{type(value).__module__}.{type(value).__qualname__} {_short_repr(value)}"


def _short_repr(value, limit=80):
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = "<unrepresentable>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- the checkpoint file: a snapshot, then step records -------------------------

#: Each record starts with this, its length and its CRC-32 (little-endian).
RECORD_MAGIC = b"PKJ2"
_HEADER = struct.Struct("<4sII")

#: Zeroed bytes written after a snapshot for the records of a run to overwrite:
#: an fdatasync of bytes already on disk flushes data only (about 0.1 ms), while
#: one that grows the file must commit the file system journal (about 4 ms).
RECORD_SPACE = 64 * 1024

#: Records written but not yet fsync'd, at most (those of the last four steps).
PENDING_RECORDS = 8

#: A journal longer than twice its snapshot (and than this) is folded into a new one.
COMPACT_BYTES = 256 * 1024


class Journal:
    """A run's checkpoint file open for step records: a snapshot, then fsync'd records.

    The file starts with the whole pipeline pickled (what ``dill.load`` reads)
    and goes on with records, each the pipeline's own state and the step that
    changed, written over zeroed space. A record torn by a crash fails its CRC
    and ends the replay there: the checkpoint is then the state of the record
    before, never a corrupt one. `Pipeline.run` keeps one open while it runs;
    `open` follows every snapshot it writes.

    A record is in the file (a kill cannot lose it) as soon as `append`
    returns, and a thread beside the run fsyncs it (one fsync covers every
    record written before it): on this project's shared machines an fsync
    waits 3-10 ms for the disk, longer than the rest of a step's bookkeeping.
    At most `PENDING_RECORDS` records wait for their fsync (`append` waits
    for the older ones), and `close` waits for all, so when a run returns its
    checkpoint is on disk. A power cut during a run loses at most the records
    of its last few steps, which then run again on resume; a step's own
    outputs are written and fsync'd before it returns.
    """

    def __init__(self):
        self.fd = None
        self.broken = False  # a record could not be pickled: snapshots only, as before
        self._cond = threading.Condition()
        self._syncer = None
        self._error = None

    def open(self, path, base_size, pipe):
        """Start appending after the snapshot of ``pipe`` (``base_size`` bytes) at ``path``."""
        self.close()
        self.path = Path(path)
        self.fd = os.open(path, os.O_RDWR)
        self.end = self.base_size = base_size
        self.size = os.fstat(self.fd).st_size
        self.index = {id(step): i for i, step in enumerate(pipe.steps)}
        self.shape = (len(pipe.steps), id(pipe.run_steps), len(pipe.run_steps))
        self.written = self.synced = 0
        self._closing = False
        self._syncer = threading.Thread(target=self._sync, name="pipekit-checkpoint-fsync",
                                        daemon=True)
        self._syncer.start()

    def fits(self, pipe, step):
        """Whether a record can say what changed (the steps are those of the snapshot)."""
        return (self.fd is not None and not self.broken
                and self.shape == (len(pipe.steps), id(pipe.run_steps), len(pipe.run_steps))
                and (step is None or id(step) in self.index))

    def append(self, payload):
        """Write one record (fsync'd beside the run); False when a new snapshot is due."""
        record = _HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        used = self.end - self.base_size
        self._wait(self.written - PENDING_RECORDS + 1)  # the newest few may wait for disk
        with _naming(self.path):
            if self.end + len(record) > self.size:
                if used > max(COMPACT_BYTES, 2 * self.base_size):
                    return False
                grow = max(RECORD_SPACE, used, len(record))
                _pwrite(self.fd, bytes(grow), self.size)  # grows the file: once in a while
                self.size += grow
            _pwrite(self.fd, record, self.end)
        self.end += len(record)
        with self._cond:
            self.written += 1
            self._cond.notify_all()
        return True

    def close(self):
        """Wait until every record is on disk, and close the file."""
        if self.fd is None:
            return
        try:
            self._wait(self.written)
        finally:
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._syncer.join()
            os.close(self.fd)
            self.fd = None

    def _wait(self, count):
        with self._cond:
            while self.synced < count and self._error is None:
                self._cond.wait()
            if self._error is not None:
                error, self._error = self._error, None
                raise OSError(error.errno, error.strerror, str(self.path))

    def _sync(self):
        while True:
            with self._cond:
                while self.synced == self.written and not self._closing:
                    self._cond.wait()
                if self.synced == self.written or self._error is not None:
                    return
                target = self.written
            try:
                os.fdatasync(self.fd)
            except OSError as err:  # raised in the run by the next append or close
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self.synced = target
                self._cond.notify_all()


def _pwrite(fd, data, offset):
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def write_snapshot(path, blob, records=False):
    """Write ``blob`` (a pickled pipeline) atomically, and zeroed space for records."""
    with _naming(path):
        return write_bytes_atomic(path, blob + bytes(RECORD_SPACE) if records else blob)


@contextlib.contextmanager
def _naming(path):
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        # A full disk: the error must name the file (one line: path and cause).
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def read_checkpoint(path):
    """Unpickle a checkpoint's snapshot and replay its records.

    Parameters
    ----------
    path : path-like
        A checkpoint, or the folder that holds one (``pipeline.p``).

    Returns
    -------
    tuple
        The checkpoint's path, and what its snapshot holds (a Pipeline) with
        every intact record applied.

    Raises
    ------
    PipelineError
        Naming the file: it is missing, unreadable, or of a format this
        pipekit cannot resume.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise PipelineError(f"no checkpoint at {path}")
    try:
        data = path.read_bytes()
        buffer = io.BytesIO(data)
        obj = dill.load(buffer)
        for state, steps in _records(data, buffer.tell()):
            _apply(obj, state, steps)
    except PipelineError as err:
        raise PipelineError(f"cannot load {path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - anything unpickling can raise
        raise PipelineError(f"cannot load {path}: not a readable pipekit checkpoint "
                            f"({type(err).__name__}: {err})") from err
    return path, obj


def _records(data, offset):
    while offset + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start:start + length]
        if magic != RECORD_MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            return  # zeroed space, or a record torn by a crash: the replay ends here
        yield dill.loads(payload)
        offset = start + length


def _apply(pipe, state, steps):
    pipe.__setstate__(state)
    for i, step_state in steps.items():
        pipe.steps[i].__dict__.update(step_state)


def pipeline_state(pipe):
    """The pipeline's own state for a record: all but its steps."""
    state = pipe.__getstate__()
    del state["steps"], state["run_steps"]
    return state


def explain_pickle_failure(pipe, err):
    """Why ``pipe`` cannot be pickled, naming the step and the object, in one line."""
    for step in pipe.steps:
        for label, value in (("result", step.result), ("arguments", step.func_kwargs),
                             ("function", step.func)):
            try:
                dumps(value)
            except Exception as inner:  # noqa: BLE001
                culprit = find_unpicklable(value)
                return (f"step {step.name!r} {label} holds an object that cannot be "
                        f"pickled: {culprit} ({type(inner).__name__}: {inner})")
    return f"the pipeline cannot be pickled ({type(err).__name__}: {err})"


def remove_stale_checkpoints(folder):
    """Remove temporary checkpoints left in ``folder`` by a process killed mid-write."""
    for path in remove_stale_temporaries(folder, STALE_TEMPORARY_SECONDS,
                                         name=CHECKPOINT_NAME + ".*"):
        log.info("removed %s, left by a run killed while writing its checkpoint", path)
