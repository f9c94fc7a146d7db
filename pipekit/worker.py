"""What every Manager worker runs: load a pipeline's checkpoint, run it, summarise it.

`run_checkpoint` is re-exported by `pipekit.manager`. The default pool's workers
start from a fork server that has imported `PRELOAD` once (`pool_context`), get
the manager's working folder, environment and ``sys.path`` with every task
(`run_in_context`), and import their steps' modules when they start (`warm_up`).
"""

import contextlib
import gc
import importlib
import logging
import multiprocessing
import os
import socket
import sys
import time

from .errors import LockError, PipelineError
from .pipeline import load
from .signals import exit_status

__all__ = ["run_checkpoint", "run_dask_task", "run_in_context", "task_context",
           "pool_context", "warm_up", "PRELOAD", "resume_only", "last_line", "usable_cores",
           "reuse_freed_memory", "old_objects_out_of_gc", "start_pool_worker",
           "set_up_worker_process", "CORES_ENV"]

log = logging.getLogger("pipekit.manager")

# Not empty once this worker process has been stopped by a signal.
_STOPPING = []

_NOT_GIVEN = object()

#: What pipekit's reduction steps import on first use (photometry, light-curve plot).
_FIRST_USE_IMPORTS = {"pipekit.steps": ("astropy.table", "astropy.time", "astropy.coordinates",
                                        "photutils.detection", "scipy.ndimage", "scipy.spatial",
                                        "matplotlib.figure", "matplotlib.backends.backend_agg")}

#: Cores each pipeline of a Manager may use (the default pool sets it in its workers to
#: the cores over ``max_parallel``; photometry starts that many processes per dataset).
CORES_ENV = "PIPEKIT_CORES_PER_PIPELINE"

#: Imported once by the fork server the default pool's workers start from.
PRELOAD = ("pipekit.worker", "pipekit.steps", *_FIRST_USE_IMPORTS["pipekit.steps"])


def pool_context():
    """The start method of the Manager's default pool: "forkserver" where there is one.

    The fork server is a fresh single-threaded process (safe with threads and
    Jupyter, as "spawn" is) that imports `PRELOAD` once; every worker is a fork
    of it, so it starts in milliseconds with numpy, astropy and photutils
    already imported, and later runs of the same Python process start theirs
    the same way. Where there is no fork server (Windows), "spawn".

    Returns
    -------
    multiprocessing.context.BaseContext
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))  # no effect once the server runs
    return context


def task_context(environ_defaults=None):
    """The manager's working folder, environment and ``sys.path``, for `run_in_context`.

    Parameters
    ----------
    environ_defaults : dict, optional
        Variables set in the task's environment where the manager's does not set them
        (`CORES_ENV`).
    """
    environ = dict(os.environ)
    for key, value in (environ_defaults or {}).items():
        environ.setdefault(key, str(value))
    return os.getcwd(), environ, list(sys.path)


#: glibc's mallopt parameters, and the size up to which freed memory is kept for reuse.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 256 << 20
_KEEPING_FREED = []


def reuse_freed_memory():
    """Let this process's malloc reuse the memory of freed arrays (glibc only).

    glibc maps every allocation above its mmap threshold afresh and returns it to the
    system when freed, so each frame's arrays are page-faulted in again. Its threshold
    adapts up to 32 MB (a 4096² frame's arrays are 64-128 MB), and stops adapting at
    128 kB when any ``MALLOC_*_`` variable is set, as Dask's nanny sets
    ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers: measured, a reduction of 20 frames of
    512² took 20 % longer there, and measuring 4096² frames 8 % longer in photometry
    workers. Arrays up to 256 MB then come from the heap, and up to 256 MB of freed memory
    is kept for the next frame (in a thread other than the main one, as Dask runs tasks,
    glibc's per-thread heaps stop at 64 MB: larger arrays are still mapped afresh). Called
    in processes that do pipekit's work: photometry workers, the Manager's pool workers,
    Dask tasks; never in the user's own process.

    Returns
    -------
    bool
        Whether the setting is in force (False where malloc is not glibc's).
    """
    if _KEEPING_FREED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        trim = libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)
        # older glibc refuses a threshold above half its 64 MB thread heaps: 32 MB then
        mmap = libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES) or \
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        ok = bool(trim) and bool(mmap)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    if ok:
        _KEEPING_FREED.append(True)
    return ok


@contextlib.contextmanager
def old_objects_out_of_gc():
    """Keep the objects that exist now out of the garbage collector's passes for the
    duration of the block (`gc.freeze`), then give them back (`gc.unfreeze`).

    A full collection walks every object of the process: with astropy, photutils and
    matplotlib imported, 50-70 ms, at moments nobody chooses (measured: in about every
    other photometry step, in the step's process and in each worker: much of the
    run-to-run spread of a short step). Objects made inside the block are collected as
    usual; worker processes forked inside it inherit the frozen objects and keep them
    frozen. When objects are frozen already (an enclosing block, another thread's), the
    block leaves them to whoever froze them.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def usable_cores():
    """CPU cores this process may run on (Slurm's and taskset's binding counted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_in_context(context, path, run_kwargs=None, submitted_started=_NOT_GIVEN):
    """`run_checkpoint`, in the manager's working folder, environment and ``sys.path``.

    A worker forked from the fork server has the server's, from when it started;
    a variable set (a token), a folder changed to or a path added in the manager
    since then must hold in the worker as it would in a spawned one.
    """
    cwd, environ, sys_path = context
    if os.getcwd() != cwd:
        os.chdir(cwd)
    if os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)
    sys.path[:] = sys_path
    return run_checkpoint(path, run_kwargs, submitted_started)


def warm_up(modules=()):
    """Import the modules a worker's pipelines need, once, when the worker starts.

    The pool's initializer: a spawned worker starts empty, and importing the step
    functions' modules (numpy, astropy, photutils...) takes seconds. Done here,
    it overlaps the manager writing the pipelines' checkpoints instead of
    delaying the first pipeline. A module that fails to import is left for the
    pipeline's own import to report.

    Parameters
    ----------
    modules : iterable of str
        Module names, e.g. ``["pipekit.steps"]``.
    """
    for name in modules:
        for module in (name, *_FIRST_USE_IMPORTS.get(name, ())):
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - the pipeline's import says it properly
                log.debug("worker warm-up: cannot import %s: %s", module, err)


def start_pool_worker(modules=()):
    """The initializer of the Manager's pool workers: `warm_up`, then
    `set_up_worker_process` (a pool worker lives for one Manager run)."""
    warm_up(modules)
    set_up_worker_process()


def set_up_worker_process():
    """Settings for a process that does pipekit's work and nothing else (a Manager pool
    worker, a photometry worker; never call it in yours): malloc reuses freed memory
    (`reuse_freed_memory`) and the objects it holds now (its imports, or what it inherited
    from the process that forked it) stay out of the garbage collector's passes
    (`gc.freeze`, for good)."""
    reuse_freed_memory()
    gc.freeze()


def run_dask_task(path, run_kwargs=None, submitted_started=_NOT_GIVEN):
    """`run_checkpoint` on a Dask worker, whose malloc is first set to reuse freed memory
    (`reuse_freed_memory`: Dask's nanny sets it to return every freed array at once) when
    the worker is a process of its own, started by a nanny (not a worker in threads of
    the user's process)."""
    if _dask_worker_has_nanny():
        reuse_freed_memory()
    return run_checkpoint(path, run_kwargs, submitted_started)


def _dask_worker_has_nanny():
    try:
        from distributed import get_worker

        return bool(getattr(get_worker(), "nanny", None))
    except (ImportError, ValueError):   # not in a Dask task
        return False


def run_checkpoint(path, run_kwargs=None, submitted_started=_NOT_GIVEN):
    """Load a pipeline from its checkpoint, run it, and summarise the outcome.

    This is the function every worker runs (a pool process, a thread, a Dask
    worker). The pipeline checkpoints itself as it goes, so the checkpoint,
    not the returned dict, is the full record.

    Parameters
    ----------
    path : str
        The pipeline's checkpoint (``<log>/pipeline.p``).
    run_kwargs : dict, optional
        Keyword arguments for :meth:`Pipeline.run` (``run_tags``,
        ``ignore_tags``, ``resume``, ...).
    submitted_started : str or None, optional
        The pipeline's ``started`` time when the task was submitted. If the
        checkpoint's differs, an earlier attempt of this same task already
        began the run (a worker that died and was retried, as Dask does), so
        this attempt resumes where that one stopped instead of starting over.

    Returns
    -------
    dict
        ``name``, ``status``, ``failed_step``, ``duration`` (s), ``error`` (one
        line or None), ``checkpoint``, ``host``, ``pid``.

    Examples
    --------
    >>> run_checkpoint("logs/pipeline.p", {"resume": True})  # doctest: +SKIP
    {'name': 'ogle-0034', 'status': 'success', ...}
    """
    t0 = time.monotonic()
    row = {"name": None, "status": "error", "failed_step": None, "duration": None,
           "error": None, "checkpoint": str(path), "host": socket.gethostname(),
           "pid": os.getpid()}
    if _STOPPING:
        # This worker was stopped by a signal: it starts nothing more (the pool
        # may have queued one more task before the manager cancelled the rest).
        row.update(status="interrupted", error="not started: the manager was stopping")
        return row
    try:
        pipe = load(path)
    except PipelineError as err:
        row["error"] = str(err)
        return row
    row["name"] = pipe.name
    run_kwargs = dict(run_kwargs or {})
    if submitted_started is not _NOT_GIVEN and pipe.started != submitted_started:
        log.warning("pipeline %s: an earlier attempt of this task began at %s; resuming it",
                    pipe.name, pipe.started)
        run_kwargs = {**resume_only(run_kwargs), "resume": True}
    status = None
    try:
        pipe.run(**run_kwargs)
    except PipelineError as err:
        row["error"] = str(err)
    except LockError as err:  # another live run holds the dataset: not a failure
        row["error"] = str(err)
        status = "skipped"
    except KeyboardInterrupt as exc:  # SIGINT/SIGTERM passed on by the manager
        _STOPPING.append(exit_status(exc))
        row["error"] = f"stopped by signal {exit_status(exc) - 128}; the next run resumes it"
        status = "interrupted"
    except Exception as err:  # noqa: BLE001 - reported in the summary, never lost
        row["error"] = f"{type(err).__name__}: {err}"
        status = "error"
    if status is None:
        status = pipe.status if pipe.status in ("success", "error") else "error"
    row.update(status=status, failed_step=None if status == "skipped" else pipe.failed_step,
               duration=round(time.monotonic() - t0, 3))
    if row["status"] == "error" and row["error"] is None and pipe.failed_step:
        # ignore_exceptions/ignore_errors let the run finish; name the first failure
        row["error"] = last_line(pipe.step(pipe.failed_step).error)
    if pipe.checkpoint_error:
        note = f"checkpoint not updated: {pipe.checkpoint_error}"
        row["error"] = f"{row['error']}; {note}" if row["error"] else note
    return row




def resume_only(kwargs):
    # A resumed run keeps its previous selection: tags would only be ignored.
    return {k: v for k, v in kwargs.items() if k not in ("run_tags", "ignore_tags", "run_steps",
                                                         "start_idx")}


def last_line(text):
    lines = [line for line in str(text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None
