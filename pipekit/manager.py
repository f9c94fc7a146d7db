"""Run many pipelines side by side: a process pool by default, or any executor.

Each pipeline travels to its worker as the path of its dill checkpoint (a
string any executor can carry); the worker loads, runs and checkpoints it, and
the parent reloads the checkpoint so ``Manager.pipelines`` shows every outcome.
"""

import concurrent.futures as cf
import contextlib
import html
import logging
import os
import tempfile
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from .signals import StopWorkers, exit_status
from .summary import Summary
from .worker import (CORES_ENV, pool_context, run_checkpoint, run_dask_task, run_in_context,
                     start_pool_worker, task_context, usable_cores)
from .errors import ConfigError, LockError, PipelineError, describe_os_error
from .lco import slug
from .locks import DatasetLock
from .pipeline import LogFile, Pipeline, load

__all__ = ["Manager", "Summary", "run_checkpoint"]

log = logging.getLogger("pipekit.manager")

class Manager:
    """Run many pipelines at once and report how each one went.

    Parameters
    ----------
    pipelines : iterable of Pipeline or path-like
        Pipelines, or paths of their checkpoints (a ``pipeline.p`` or the
        ``log`` folder that holds it).
    max_parallel : int
        Worker processes of the default pool. Ignored when ``executor`` is
        given (the executor or cluster decides).
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Where to run. Default: a pool of ``max_parallel`` processes forked
        from a fork server that imports pipekit and its science libraries once
        ("spawn" where there is none; both are safe with threads, Jupyter and
        macOS), recreated if a worker process dies.
    progress : bool
        Show a tqdm progress bar on stderr.
    log_dir : path-like, optional
        Where a pipeline without a ``log`` path gets one
        (``<log_dir>/<index>-<name>/``). Default: a new temporary folder,
        created only when needed. On a cluster, give a folder every worker
        can see.

    Attributes
    ----------
    pipelines : list of Pipeline
        After `run`, each reloaded from its checkpoint: every step's outcome.
    summary : Summary or None
        The last `run`'s summary.
    skipped : list of dict
        Summary rows of datasets `from_config` did not run (locked, or an
        invalid reduction config); added to every summary.
    config : pipekit.config.ManagerConfig or None
        The validated config, when built by `from_config`.

    Notes
    -----
    Workers import the step functions by module and name, so define them in
    an importable module; functions defined in a notebook or a script's
    ``__main__`` travel by value through dill. A script that uses the default
    pool must guard its entry point with ``if __name__ == "__main__":``, as
    every "spawn" process pool requires.

    Examples
    --------
    >>> mgr = Manager([pipe_a, pipe_b, pipe_c], max_parallel=2)  # doctest: +SKIP
    >>> summary = mgr.run()                                    # doctest: +SKIP
    >>> summary.failed                                         # doctest: +SKIP
    >>> from dask.distributed import Client                    # doctest: +SKIP
    >>> Manager(pipes, executor=Client("tcp://scheduler:8786")).run()  # doctest: +SKIP
    """

    #: Seconds the workers get to checkpoint and release their locks after a stop signal.
    stop_grace = 10.0

    def __init__(self, pipelines, max_parallel=4, executor=None, progress=True, log_dir=None):
        if int(max_parallel) < 1:
            raise PipelineError(f"max_parallel must be at least 1, not {max_parallel!r}")
        if executor is not None and not callable(getattr(executor, "submit", None)):
            raise PipelineError(f"executor must be a concurrent.futures.Executor or a "
                                f"dask.distributed.Client, not {type(executor).__name__}")
        self.pipelines = [p if isinstance(p, Pipeline) else load(p) for p in pipelines]
        self.max_parallel = int(max_parallel)
        self.executor = executor
        self.progress = progress
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.summary = None
        self.skipped = []
        self.config = None
        self._paths = {}
        self._stamps = {}
        self._rows = {}
        self._bar = None
        self._stop = None
        self._pool = None

    @classmethod
    def from_config(cls, path, **kwargs):
        """Build a Manager that reduces the datasets a manager config selects.

        Reads ``reduction_manager_config.yaml``, selects datasets under its
        ``data_reduction_dir`` (``dataset_selection.group``: all, date,
        recent or file, limited to ``instrument_list``), and builds one
        :func:`~pipekit.workflows.reduction_pipeline` per dataset. A dataset
        locked by a live run is skipped; one whose ``reduction_config.yaml``
        is invalid is not run; both appear in the summary with the reason.

        Parameters
        ----------
        path : str or os.PathLike
            The ``reduction_manager_config.yaml``.
        **kwargs
            Passed to `Manager`; ``max_parallel`` and ``log_dir`` default to
            the config's.

        Returns
        -------
        Manager
            With ``config`` (the validated `~pipekit.config.ManagerConfig`).

        Raises
        ------
        ConfigError
            When the manager config is missing or invalid, naming the key.

        Examples
        --------
        >>> mgr = Manager.from_config("reduction_manager_config.yaml")  # doctest: +SKIP
        >>> mgr.run()                                                   # doctest: +SKIP
        """
        from .config import load_manager_config
        from .selection import select_datasets
        from .locks import is_stale, read_lock
        from .workflows import dataset_name, reduction_pipeline

        config = load_manager_config(path)
        red_dirs = select_datasets(config.data_reduction_dir, config.dataset_selection,
                                   config.instrument_list)
        pipelines, not_run = [], []
        selection = config.dataset_selection
        if not red_dirs and getattr(selection, "group", None) == "file":
            reason = (f"the dataset list {selection.file} (dataset_selection.file) selects no "
                      f"dataset under {config.data_reduction_dir}")
            not_run.append(_row(str(selection.file), "error", reason))
            log.warning("%s", reason)
        for red_dir in red_dirs:
            name = dataset_name(red_dir)
            # One dataset that cannot be read, locked, written or configured is one
            # error row; the others run.
            try:
                holder = read_lock(red_dir)
                if holder is not None and not is_stale(holder):
                    not_run.append(_row(name, "skipped", f"locked by {holder.describe()}",
                                        red_dir))
                    log.warning("dataset %s skipped: locked by %s", red_dir, holder.describe())
                    continue
                pipelines.append(reduction_pipeline(red_dir))
            except (ConfigError, LockError, OSError, UnicodeError) as err:
                reason = one_line_reason(err, Path(red_dir) / "reduction_config.yaml")
                not_run.append(_row(name, "error", reason, red_dir))
                log.error("dataset %s not run: %s", red_dir, reason)
        log.info("manager config %s: %d datasets to reduce, %d not run", path, len(pipelines),
                 len(not_run))
        kwargs.setdefault("max_parallel", config.max_parallel)
        kwargs.setdefault("log_dir", config.log_dir)
        mgr = cls(pipelines, **kwargs)
        mgr.skipped = not_run
        mgr.config = config
        return mgr

    # -- running ----------------------------------------------------------

    def run(self, run_tags=None, ignore_tags=None, resume=False, **run_kwargs):
        """Run every pipeline; one failing stops no other.

        Parameters
        ----------
        run_tags, ignore_tags, resume, **run_kwargs
            Passed to each pipeline's :meth:`Pipeline.run`. ``resume=True``
            continues each pipeline where its checkpoint stopped (a finished
            one has nothing left to do; a failed one retries its failed step).
            ``run_steps`` are sent as step names.

        Returns
        -------
        Summary
            One row per pipeline, in the order given, then the skipped ones.
        """
        kwargs = {"resume": bool(resume), **run_kwargs}
        if kwargs.get("run_steps") is not None:
            # Steps travel by name: the worker's pipeline holds its own step objects.
            kwargs["run_steps"] = [getattr(s, "name", s) for s in kwargs["run_steps"]]
        if run_tags is not None:
            kwargs["run_tags"] = run_tags
        if ignore_tags is not None:
            kwargs["ignore_tags"] = ignore_tags
        self._rows = {}
        self._paths = {}
        t0 = time.monotonic()
        bar = tqdm(total=len(self.pipelines), desc="pipelines", unit="pipeline",
                   disable=not self.progress)
        self._bar = bar
        handler, old_level = self._open_log()
        # SIGINT/SIGTERM: passed on to the workers, which record their step
        # "interrupted", checkpoint and release their locks; a second one kills them.
        self._stop = StopWorkers(grace=self.stop_grace)
        try:
            with self._stop:
                if self.executor is None and self.pipelines:  # workers start meanwhile
                    self._pool = self._new_pool(self.max_parallel, len(self.pipelines))
                todo = self._prepare()
                bar.update(len(self.pipelines) - len(todo))
                log.info("manager: running %d pipelines (%d not run) on %s", len(todo),
                         len(self.pipelines) - len(todo) + len(self.skipped), self._where())
                if self.executor is None:
                    self._run_pool(todo, kwargs)
                elif _is_dask_client(self.executor):
                    self._run_dask(todo, kwargs)
                else:
                    self._run_executor(todo, kwargs)
            rows = [self._rows[i] for i in range(len(self.pipelines))]
            self.summary = Summary(rows + list(self.skipped))
            log.info("manager: %d pipelines in %.1f s, %d failed\n%r", len(rows),
                     time.monotonic() - t0, len(self.summary.failed), self.summary)
        except KeyboardInterrupt as exc:
            self._stop.reap()  # no worker outlives the manager
            rows = [self._rows.get(i) or self._mark_interrupted(i, exc)
                    for i in range(len(self.pipelines))]
            self.summary = Summary(rows + list(self.skipped))
            log.warning("manager: stopped by signal %d after %.1f s\n%r", exit_status(exc) - 128,
                        time.monotonic() - t0, self.summary)
            raise
        finally:
            if self._pool is not None:  # not used: nothing to run, or _prepare raised
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            bar.close()
            self._bar = None
            self._stop = None
            self._close_log(handler, old_level)
        return self.summary

    def _open_log(self):
        """Log the manager's own lines to ``<log_dir>/manager.log`` when it has a log_dir."""
        if self.log_dir is None:
            return None, None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = LogFile(self.log_dir / "manager.log", encoding="utf-8")  # one line if full
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        old_level = log.level
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)
        log.addHandler(handler)
        return handler, old_level

    @staticmethod
    def _close_log(handler, old_level):
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
            log.setLevel(old_level)

    def _prepare(self):
        """Give every pipeline a log path, checkpoint it; return the runnable indices."""
        seen = {}
        for i, pipe in enumerate(self.pipelines):
            if pipe.checkpoint_path is None:
                folder = self._manager_log_dir() / f"{i:03d}-{slug(pipe.name, default='pipeline')}"
                folder.mkdir(parents=True, exist_ok=True)
                pipe.paths["log"] = folder
            key = os.path.realpath(pipe.checkpoint_path)
            if key in seen:
                raise PipelineError(
                    f"pipelines {self.pipelines[seen[key]].name!r} and {pipe.name!r} share the "
                    f"checkpoint {pipe.checkpoint_path}; give each its own 'log' path")
            seen[key] = i
        todo = []
        for i, pipe in enumerate(self.pipelines):
            try:
                path = _write_checkpoint(pipe)
            except LockError as err:
                self._rows[i] = _row(pipe, "skipped", error=str(err))
                log.warning("pipeline %s skipped: %s", pipe.name, err)
                continue
            except OSError as err:  # a read-only dataset, a colleague's folder, a full disk
                self._rows[i] = _row(pipe, "error", error=one_line_reason(err))
                log.error("pipeline %s not run: %s", pipe.name, self._rows[i]["error"])
                continue
            if path is None:
                self._rows[i] = _row(pipe, "error", error="cannot be sent to a worker: "
                                     f"{pipe.checkpoint_error}")
                log.error("pipeline %s not run: %s", pipe.name, self._rows[i]["error"])
                continue
            self._paths[i] = str(path)
            self._stamps[i] = pipe.started
            todo.append(i)
        return todo

    def _manager_log_dir(self):
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="pipekit-manager-"))
            log.info("manager: pipelines without a log path checkpoint under %s", self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir

    def _run_pool(self, todo, kwargs):
        # A worker that dies (segfault, OOM killer, os._exit) breaks the whole
        # pool: every unfinished future raises BrokenProcessPool. Pipelines
        # that had not started go back in the queue; those that had are rerun
        # alone, each resumed in a fresh one-process pool, so the one that
        # kills its worker is the one reported and no other is blamed.
        queue = [(i, kwargs) for i in todo]
        suspects = []
        while queue or suspects:
            if queue:
                batch, queue = queue, []
                broken = self._pool_round(batch, self.max_parallel)
            else:
                batch = [suspects.pop(0)]
                broken = self._pool_round(batch, 1)
                if broken:
                    self._finish(batch[0][0], None, broken[0][2])
                    continue
            for i, kw, exc in broken:
                if self._worker_started(i):  # resumes by itself: see submitted_started
                    suspects.append((i, kw))
                else:
                    queue.append((i, kw))
            if broken:
                log.warning("manager: a worker process died; pipelines requeued: %d, to "
                            "rerun alone: %d", len(queue), len(suspects))

    def _new_pool(self, workers, n_pipelines):
        """A pool whose workers start now and import the steps' modules as they do."""
        modules = sorted({getattr(step.func, "__module__", None) or "__main__"
                          for pipe in self.pipelines for step in pipe.steps}
                         - {"__main__", "__mp_main__"})
        workers = max(1, min(workers, n_pipelines))
        pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=start_pool_worker,
                                      initargs=(modules,), mp_context=pool_context())
        for _ in range(workers):  # start every worker (a pool starts them on submit)
            pool.submit(int)
        return pool

    def _pool_round(self, batch, workers):
        """Run ``batch`` in a process pool; return [(i, kwargs, exc)] hit by a broken pool."""
        pool, self._pool = self._pool, None
        if pool is None or workers != self.max_parallel:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            pool = self._new_pool(workers, len(batch))
        broken = []
        # the pipelines share the cores: each may use its part (photometry's processes)
        context = task_context({CORES_ENV: max(1, usable_cores() // workers)})
        try:
            futures = {}
            for n, (i, kw) in enumerate(batch):
                try:
                    fut = pool.submit(run_in_context, context, self._paths[i], kw,
                                      self._stamps[i])
                    futures[fut] = (i, kw)
                except BrokenProcessPool as exc:
                    broken += [(j, k, exc) for j, k in batch[n:]]
                    break
            for fut in cf.as_completed(futures):
                i, kw = futures[fut]
                try:
                    row = fut.result()
                except BrokenProcessPool as exc:
                    broken.append((i, kw, exc))
                except Exception as exc:  # noqa: BLE001 - reported for this pipeline
                    self._finish(i, None, exc)
                else:
                    self._finish(i, row, None)
        except BaseException as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            if isinstance(exc, KeyboardInterrupt):
                self._drain(futures)
            raise
        pool.shutdown(wait=True)
        return broken

    def _drain(self, futures):
        """After a stop signal: collect the rows of workers that stop within the grace."""
        stop = self._stop
        deadline = time.monotonic() + (stop.grace if stop is not None else 0.0)
        done = set()
        try:
            while not (stop is not None and stop.forced) and time.monotonic() < deadline:
                for fut in [f for f in futures if f.done() and f not in done]:
                    done.add(fut)
                    if not fut.cancelled() and fut.exception() is None:
                        self._finish(futures[fut][0], fut.result(), None)
                if all(f.done() for f in futures):
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:  # a second signal: stop at once
            pass

    def _mark_interrupted(self, i, exc):
        """The row of pipeline ``i`` stopped by a signal; its checkpoint says so."""
        pipe = self.pipelines[i]
        path = self._paths.get(i)
        message = f"stopped by signal {exit_status(exc) - 128} before it finished"
        if path is not None:
            try:
                pipe = self.pipelines[i] = load(path)
            except PipelineError as err:
                log.error("pipeline %s: cannot reload %s: %s", pipe.name, path, err)
        if pipe.status == "running":  # its worker was killed mid-step
            if pipe.run_step_idx < len(pipe.run_steps):
                step = pipe.run_steps[pipe.run_step_idx]
                step.status, step.error = "interrupted", message
            pipe.status = "interrupted"
            with contextlib.suppress(OSError):
                pipe.checkpoint()
        return _row(pipe, "interrupted", error=message)

    def _run_executor(self, todo, kwargs):
        futures = {self.executor.submit(run_checkpoint, self._paths[i], kwargs,
                                        self._stamps[i]): i
                   for i in todo}
        self._collect_all(futures, cf.as_completed)

    def _run_dask(self, todo, kwargs):
        from distributed import as_completed

        futures = {}
        for i in todo:
            name = slug(self.pipelines[i].name, default="pipeline")
            key = f"pipekit-{name}-{uuid.uuid4().hex[:8]}"
            # pure=False: the same path must run again on the next call, not
            # come back from Dask's cache.
            fut = self.executor.submit(run_dask_task, self._paths[i], kwargs, self._stamps[i],
                                       key=key, pure=False)
            futures[fut] = i
        self._collect_all(futures, as_completed)

    def _collect_all(self, futures, as_completed):
        """Collect each future (future -> pipeline index) as it finishes.

        ``as_completed`` is the executor's own (`concurrent.futures` or
        Dask's); an interruption cancels the futures still pending.
        """
        try:
            for fut in as_completed(list(futures)):
                self._collect(futures[fut], fut)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def _collect(self, i, fut):
        try:
            row = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, BrokenProcessPool, ...
            self._finish(i, None, exc)
        else:
            self._finish(i, row, None)

    def _worker_started(self, i):
        try:
            return load(self._paths[i]).started != self._stamps[i]
        except PipelineError:
            return True

    def _finish(self, i, row, exc):
        """Reload pipeline ``i`` from its checkpoint and record its summary row."""
        path = self._paths[i]
        try:
            self.pipelines[i] = load(path)
        except PipelineError as err:
            log.error("pipeline %s: cannot reload %s: %s", self.pipelines[i].name, path, err)
        pipe = self.pipelines[i]
        if exc is None:
            row = {**row, "name": row["name"] or pipe.name}
        elif pipe.started == self._stamps[i]:
            row = _row(pipe, "error", error=f"the worker failed before the pipeline started: "
                                            f"{type(exc).__name__}: {exc}")
        elif pipe.status in ("success", "error"):
            row = _row(pipe, pipe.status, error=f"{type(exc).__name__} after the run: {exc}")
        else:
            row = self._mark_crashed(pipe, exc)
        self._rows[i] = row
        level = {"success": logging.INFO, "skipped": logging.WARNING,
                 "interrupted": logging.WARNING}.get(row["status"], logging.ERROR)
        log.log(level, "pipeline %s: %s%s", row["name"], row["status"],
                f" at step {row['failed_step']}: {row['error']}" if row["error"] else "")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(failed=sum(r["status"] == "error" for r in self._rows.values()),
                                  refresh=False)

    def _mark_crashed(self, pipe, exc):
        # The worker died mid-step: its checkpoint still says "running". Record
        # the death on that step and keep run_step_idx on it, so
        # run(resume=True) retries it; then save that for `pipekit status`.
        message = (f"the worker process died while running this pipeline "
                   f"({type(exc).__name__}: {exc})")
        step = None
        if pipe.run_step_idx < len(pipe.run_steps):
            step = pipe.run_steps[pipe.run_step_idx]
            step.status = "error"
            step.error = message
        pipe.status = "error"
        pipe.failed_step = step.name if step is not None else None
        pipe.checkpoint()
        return _row(pipe, "error", error=message)

    # -- display ----------------------------------------------------------

    def _where(self):
        if self.executor is None:
            return f"a process pool of {self.max_parallel} ({pool_context().get_start_method()})"
        return type(self.executor).__name__

    def __repr__(self):
        text = f"Manager({len(self.pipelines)} pipelines on {self._where()})"
        return text if self.summary is None else f"{text}\n{self.summary!r}"

    def _repr_html_(self):
        head = (f"<p><b>Manager</b>: {len(self.pipelines)} pipelines on "
                f"{html.escape(self._where())}</p>")
        return head + (self.summary._repr_html_() if self.summary is not None else "")


def _row(pipe, status, error=None, red_dir=None):
    """A summary row; ``pipe`` is a Pipeline, or only a name for a dataset never built."""
    row = {"name": getattr(pipe, "name", pipe), "status": status,
           "failed_step": getattr(pipe, "failed_step", None), "duration": None, "error": error,
           "checkpoint": str(pipe.checkpoint_path) if getattr(pipe, "checkpoint_path", None)
           else None, "host": None, "pid": None}
    return row if red_dir is None else {**row, "red_dir": str(red_dir)}


def one_line_reason(err, path=None):
    """The reason a dataset could not be run, in one line: the cause, then the path.

    Parameters
    ----------
    err : Exception
    path : path-like, optional
        The file being read, for errors that do not name it (a decoding error).

    Returns
    -------
    str
    """
    if isinstance(err, OSError) and err.filename is not None:
        # The cause first: the summary table cuts long cells.
        where = Path(os.fsdecode(err.filename))
        return f"{err.strerror or type(err).__name__}: {where.name} in {where.parent}"
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, UnicodeDecodeError) and path is not None:
        return f"{Path(path).name} is not UTF-8 (byte {err.start}) in {Path(path).parent}"
    text = " ".join(str(err).split())
    where, sep, cause = text.partition(": ")
    if sep and where.startswith("/") and " " not in where:  # "<file>: <cause>" (ConfigError)
        return f"{Path(where).name}: {cause} (in {Path(where).parent})"
    return text


def _write_checkpoint(pipe):
    """Checkpoint ``pipe`` for its worker; a dataset's only while holding its lock.

    Another manager may be running the same dataset right now: its
    checkpoint is that run's record, and overwriting it would lose the
    run's progress if it were then killed. Raises LockError in that case.
    """
    red_dir = getattr(pipe, "red_dir", None)
    if red_dir is None:
        return pipe.checkpoint()
    with DatasetLock(red_dir, pipeline_name=f"{pipe.name} (manager writing its checkpoint)"):
        return pipe.checkpoint()


def _is_dask_client(executor):
    if type(executor).__module__.split(".")[0] != "distributed":
        return False
    from distributed import Client
    return isinstance(executor, Client)
