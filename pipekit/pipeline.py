"""The step engine: tagged steps, selection by tag, run, resume and checkpoints.

A :class:`Pipeline` is an ordered list of :class:`PipelineStep`. A run writes
the whole pipeline to ``<log>/pipeline.p`` when it starts and ends, and records
each step's outcome after that snapshot before and after the step (fsync'd), so
a crashed run is picked up with ``load(path).run(resume=True)``.
"""

import logging
import sys
import time
import traceback
from pathlib import Path

from .checkpoint import (CHECKPOINT_NAME, Journal, dumps,
                         explain_pickle_failure, pipeline_state, read_checkpoint,
                         remove_stale_checkpoints, write_snapshot)
from .pipeline_step import PipelineStep, utc_now
from .display import pipeline_html, pipeline_text
from .errors import PipelineError
from .runlog import LogFile, close_run_log, open_run_log
from .signals import interrupts_raise

__all__ = ["Pipeline", "PipelineStep", "PipelineError", "load", "CHECKPOINT_FORMAT", "LogFile"]

log = logging.getLogger("pipekit.pipeline")

#: Version of the checkpoint layout. Bump it when a pickled Pipeline written
#: by an older pipekit can no longer be resumed by this one. Format 2 added the
#: step records after the snapshot (format 1, a snapshot alone, still loads).
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1,)
LOG_NAME = "pipeline.log"

#: A step result that pickles to more than this many bytes earns a warning:
#: big data belongs in files, or every checkpoint gets slower.
LARGE_RESULT_BYTES = 5 * 1024 * 1024

STATUSES = ("success", "error")


class Pipeline:
    """An ordered list of tagged steps that can be run, selected and resumed.

    Parameters
    ----------
    paths : dict of str to path-like, optional
        Named folders. ``"log"`` holds the checkpoint ``pipeline.p`` and the
        log ``pipeline.log``; without it nothing is written.
    name : str, optional
        A name for logs and summaries.
    create_paths : {True, False, "prompt"}
        Create missing folders, refuse them (``PipelineError``), or ask on a
        terminal (with no terminal, ``PipelineError`` instead of hanging).
        Default True.
    build_paths : {True, False, "prompt"}, optional
        astromatic_wrapper's name for ``create_paths``, accepted as its alias;
        giving both with different values is a ``TypeError``.
    **kwargs
        Any other keyword becomes an attribute of the pipeline, as in
        astromatic_wrapper (``Pipeline(paths, build_paths=True, field="M84")`` gives
        ``pipe.field``); such attributes are pickled with the checkpoint and are
        back after `load`. A keyword that would shadow one of the pipeline's own
        attributes or methods (``run``, ``steps``, ``status``...) is a ``TypeError``
        naming it.

    Examples
    --------
    >>> pipe = Pipeline(paths={"log": "logs"}, name="ogle-0034")  # doctest: +SKIP
    >>> pipe.add_step(measure, tags=["photometry"], red_dir="...")  # doctest: +SKIP
    >>> pipe.run(["photometry"])  # doctest: +SKIP
    >>> load("logs/pipeline.p").run(resume=True)  # doctest: +SKIP
    """

    #: Seconds before the first retry of a step that raised; doubles each time.
    retry_backoff = 1.0
    #: Longest wait between two retries, in seconds.
    retry_backoff_max = 60.0

    def __init__(self, paths=None, name=None, create_paths=None, build_paths=None, **kwargs):
        if build_paths is not None:
            if create_paths is not None and create_paths != build_paths:
                raise TypeError(f"Pipeline: create_paths={create_paths!r} and its alias "
                                f"build_paths={build_paths!r} disagree; give one of them")
            create_paths = build_paths
        if create_paths is None:
            create_paths = True
        self.name = name or "pipeline"
        self.paths = {key: Path(value) for key, value in (paths or {}).items()}
        self.steps = []
        self.run_steps = []
        self.run_step_idx = 0
        self.status = "not run"
        self.failed_step = None
        self.started = None
        self.finished = None
        self.checkpoint_error = None
        self._warned = set()
        self._value_cache = {}
        self._journal = None
        self._snapshot_size = 0
        #: Names of the attributes set from extra keyword arguments.
        self.extra_attributes = []
        for key in kwargs:
            if key.startswith("_") or hasattr(self, key):
                raise TypeError(f"Pipeline: keyword {key!r} would shadow the pipeline's own "
                                f"attribute or method {key!r}; choose another name")
        self.extra_attributes = sorted(kwargs)
        self.__dict__.update(kwargs)
        self._prepare_paths(create_paths)

    # -- building ---------------------------------------------------------

    def _prepare_paths(self, create_paths):
        missing = [p for p in self.paths.values() if not p.is_dir()]
        if not missing:
            return
        listing = ", ".join(str(p) for p in missing)
        if create_paths == "prompt":
            if not (sys.stdin and sys.stdin.isatty()):
                raise PipelineError(
                    f"pipeline {self.name!r}: folders {listing} do not exist and there is no "
                    "terminal to ask; pass create_paths=True to create them")
            answer = input(f"Create missing folders {listing}? [y/n] ").strip().lower()
            if answer not in ("y", "yes"):
                raise PipelineError(f"pipeline {self.name!r}: folders {listing} not created")
        elif not create_paths:
            raise PipelineError(
                f"pipeline {self.name!r}: folders {listing} do not exist; create them or "
                "pass create_paths=True")
        for path in missing:
            path.mkdir(parents=True, exist_ok=True)

    def add_step(self, func, tags=None, name=None, ignore_errors=False,
                 ignore_exceptions=False, retries=0, **func_kwargs):
        """Append a step and return it.

        Parameters are those of :class:`PipelineStep`. Without ``name`` the
        function's name is used, suffixed ``_2``, ``_3``... when repeated.

        Returns
        -------
        PipelineStep
        """
        taken = {s.name for s in self.steps}
        if name is not None and name in taken:
            raise PipelineError(f"pipeline {self.name!r} already has a step named {name!r}")
        step = PipelineStep(func, tags=tags, name=name, ignore_errors=ignore_errors,
                            ignore_exceptions=ignore_exceptions, retries=retries,
                            **func_kwargs)
        if name is None:
            base, n = step.name, 1
            while step.name in taken:
                n += 1
                step.name = f"{base}_{n}"
        self.steps.append(step)
        return step

    def step(self, name):
        """Return the step called ``name`` (``PipelineError`` if none)."""
        for s in self.steps:
            if s.name == name:
                return s
        raise PipelineError(f"pipeline {self.name!r} has no step named {name!r}; "
                            f"its steps are {[s.name for s in self.steps]}")

    def select(self, run_tags=None, ignore_tags=None, run_steps=None):
        """The steps a run would execute, in order.

        ``run_tags`` keeps steps with any of those tags (all steps when None);
        ``run_steps`` is an explicit list of steps or step names instead;
        ``ignore_tags`` then drops steps with any of those tags and takes
        precedence. A single string is one tag.
        """
        if run_tags is not None and run_steps is not None:
            raise PipelineError("give run_tags or run_steps, not both")
        run_tags = [run_tags] if isinstance(run_tags, str) else run_tags
        ignore_tags = set([ignore_tags] if isinstance(ignore_tags, str) else ignore_tags or [])
        if run_steps is not None:
            chosen = [self.step(s) if isinstance(s, str) else self._own(s) for s in run_steps]
        elif run_tags is not None:
            wanted = set(run_tags)
            chosen = [s for s in self.steps if wanted.intersection(s.tags)]
        else:
            chosen = list(self.steps)
        return [s for s in chosen if not ignore_tags.intersection(s.tags)]

    def _own(self, step):
        if not any(step is s for s in self.steps):
            raise PipelineError(f"step {step.name!r} does not belong to pipeline {self.name!r}")
        return step

    # -- running ----------------------------------------------------------

    def run(self, run_tags=None, ignore_tags=None, run_steps=None, resume=False,
            start_idx=None, ignore_errors=None, ignore_exceptions=None):
        """Run the selected steps in order.

        Parameters
        ----------
        run_tags : list of str or str, optional
            Run only steps with any of these tags.
        ignore_tags : list of str or str, optional
            Skip steps with any of these tags (wins over ``run_tags``).
        run_steps : list of PipelineStep or str, optional
            An explicit list of steps (or names) to run instead of tags.
        resume : bool
            Keep the previous run's selection and go on from
            ``run_step_idx`` (or ``start_idx``). With no previous run, start
            fresh.
        start_idx : int, optional
            Index into the selection to start at.
        ignore_errors, ignore_exceptions : bool, optional
            Override every step's flag for this run only.

        Returns
        -------
        Pipeline
            ``self``, so ``load(p).run(resume=True).status`` reads well.

        Raises
        ------
        PipelineError
            A step returned status ``"error"`` or raised, and its flags did
            not say to go on. The checkpoint then has ``run_step_idx`` on the
            failed step, so ``run(resume=True)`` retries it.
        KeyboardInterrupt
            Ctrl-C, or SIGTERM as `pipekit.signals.Terminated` (while the run
            is in the main thread, SIGTERM is handled like SIGINT; the previous
            handler is restored after). The running step is recorded
            ``"interrupted"`` and the checkpoint written, so
            ``run(resume=True)`` retries it.
        """
        if resume and self.run_steps:
            idx = self.run_step_idx if start_idx is None else start_idx
        else:
            self.run_steps = self.select(run_tags, ignore_tags, run_steps)
            idx = start_idx or 0
        if not 0 <= idx <= len(self.run_steps):
            raise PipelineError(f"start_idx {idx} is outside the {len(self.run_steps)} "
                                f"selected steps of pipeline {self.name!r}")
        for step in self.run_steps[idx:]:
            step.reset()
        # Functions pickled by value are dilled once per run; a new run picks
        # up functions (and the globals they use) redefined since.
        self._value_cache = {}
        self.run_step_idx = idx
        self.status = "running"
        self.failed_step = None
        self.started, self.finished = utc_now(), None
        handler = self._open_log()
        try:
            with interrupts_raise():  # SIGTERM (Slurm, kill) stops a run as Ctrl-C does
                self._journal = Journal() if self.checkpoint_path is not None else None
                try:
                    self.checkpoint()
                    self._run_selected(idx, resume, ignore_errors, ignore_exceptions)
                except BaseException:
                    self._end_journal(failing=True)
                    raise
                self._end_journal()
        finally:
            close_run_log(handler)
        return self

    def _run_selected(self, idx, resume, ignore_errors, ignore_exceptions):
        try:
            log.info("pipeline %s: running %d of %d steps from index %d%s", self.name,
                     len(self.run_steps) - idx, len(self.steps), idx,
                     " (resumed)" if resume else "")
            while self.run_step_idx < len(self.run_steps):
                step = self.run_steps[self.run_step_idx]
                self._run_step(step, ignore_errors, ignore_exceptions)
                self.run_step_idx += 1
            self.status = "success" if self.failed_step is None else "error"
            self.finished = utc_now()
            self._save()
            log.info("pipeline %s: finished, status %s", self.name, self.status)
        except KeyboardInterrupt as exc:
            # Between steps (or while checkpointing): the run stops where it is.
            if self.status == "running":
                self.status = "interrupted"
                self._save()
            log.warning("pipeline %s: interrupted (%s) at step index %d; resume with "
                        "run(resume=True) or `pipekit resume %s`", self.name,
                        exc or type(exc).__name__, self.run_step_idx,
                        self.checkpoint_path or "CHECKPOINT")
            raise

    def _run_step(self, step, ignore_errors, ignore_exceptions):
        ignore_errors = step.ignore_errors if ignore_errors is None else ignore_errors
        ignore_exceptions = (step.ignore_exceptions if ignore_exceptions is None
                             else ignore_exceptions)
        step.reset()
        step.status = "running"
        step.started = utc_now()
        size_before = self._save(step)
        t0 = time.monotonic()
        try:
            result, exc = step.call_with_retries(self, self.retry_backoff,
                                                 self.retry_backoff_max)
        except BaseException:
            # KeyboardInterrupt or SystemExit: record it, keep the step to resume.
            self._finish_step(step, "interrupted", None, t0)
            step.error = traceback.format_exc()
            self.status = "interrupted"
            self._save(step)
            raise
        if exc is not None:
            self._finish_step(step, "error", None, t0)
            message = (f"step {step.name!r} of pipeline {self.name!r} raised "
                       f"{type(exc).__name__}: {exc}")
            if ignore_exceptions:
                log.error("%s (ignored, the run goes on)\n%s", message, step.error)
                self.failed_step = self.failed_step or step.name
                self._save(step)
                return
            self._fail(step)
            raise PipelineError(message) from exc
        status = result.get("status") if isinstance(result, dict) else None
        status = status if status in STATUSES else "unknown"
        self._finish_step(step, status, result, t0)
        if status == "error":
            step.error = str(result.get("message") or result.get("error") or result)
            message = (f"step {step.name!r} of pipeline {self.name!r} returned status "
                       f"'error': {step.error}")
            if not ignore_errors:
                self._fail(step)
                raise PipelineError(message)
            log.error("%s (ignored, the run goes on)", message)
            self.failed_step = self.failed_step or step.name
        self._check_size(step, self._save(step) - size_before)

    def _finish_step(self, step, status, result, t0):
        step.status = status
        step.result = result
        step.finished = utc_now()
        step.duration = time.monotonic() - t0
        level = logging.INFO if status in ("success", "unknown") else logging.ERROR
        log.log(level, "step %s [%s]: %s in %.3f s (%d attempt%s)", step.name,
                ",".join(step.tags), status, step.duration, step.attempts,
                "" if step.attempts == 1 else "s")

    def _fail(self, step):
        self.status = "error"
        self.failed_step = step.name
        self.finished = utc_now()
        self._save(step)

    def _check_size(self, step, size):
        # ``size``: how much the step's outcome grew its record (no extra pickling).
        if size > LARGE_RESULT_BYTES and ("size", step.name) not in self._warned:
            self._warned.add(("size", step.name))
            log.warning("step %s returned a result of %.1f MB; every checkpoint carries it. "
                        "Write big data to files and return their paths.",
                        step.name, size / 1e6)

    # -- checkpoints and logs ---------------------------------------------

    @property
    def checkpoint_path(self):
        """``<log>/pipeline.p``, or None when the pipeline has no log path."""
        folder = self.paths.get("log")
        return folder / CHECKPOINT_NAME if folder is not None else None

    def checkpoint(self, path=None):
        """Write the whole pipeline to its checkpoint atomically; return the path.

        The pipeline is pickled in memory first, so an object that cannot be
        pickled leaves the previous checkpoint untouched; the offending step
        and object are named once in a warning and the run goes on. During a
        run, the steps' records follow this snapshot in the same file.
        """
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            return None
        try:
            blob = dumps(self, self._value_cache)
        except Exception as err:  # noqa: BLE001 - any pickling failure
            self.checkpoint_error = explain_pickle_failure(self, err)
            if self.checkpoint_error not in self._warned:
                self._warned.add(self.checkpoint_error)
                log.warning("checkpoint %s not updated: %s", path, self.checkpoint_error)
            return None
        self.checkpoint_error = None
        journal = self._journal if path == self.checkpoint_path else None
        write_snapshot(path, blob, records=journal is not None)
        if journal is not None:
            journal.open(path, len(blob), self)
        self._snapshot_size = len(blob)
        return path

    def _save(self, step=None):
        """Record what changed (``step``, the pipeline's state); return the bytes written.

        During a run, one record after the run's snapshot, whatever the number of
        steps; otherwise, or with steps added or removed meanwhile, a snapshot.
        """
        journal = self._journal
        if journal is None or not journal.fits(self, step):
            return self._snapshot_size if self.checkpoint() is not None else 0
        self.checkpoint_error = None
        try:
            changed = {} if step is None else {journal.index[id(step)]: step.__dict__.copy()}
            payload = dumps((pipeline_state(self), changed), self._value_cache)
        except Exception:  # noqa: BLE001 - the snapshot names the culprit and keeps the last
            journal.broken = True  # good checkpoint, as every later one will
            self.checkpoint()
            return 0
        if not journal.append(payload):  # the records outgrew the snapshot: fold them in
            self.checkpoint()
        return len(payload)

    def _end_journal(self, failing=False):
        """After a run: fold its records into one snapshot (what ``dill.load`` reads)."""
        journal, self._journal = self._journal, None
        if journal is None:
            return
        try:
            if journal.fd is not None:
                self.checkpoint()
        except OSError as err:
            if not failing:
                raise
            # The records hold the outcome; this must not hide what ended the run.
            log.warning("checkpoint %s not compacted: %s", self.checkpoint_path, err)
        finally:
            journal.close()

    def _open_log(self):
        folder = self.paths.get("log")
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_checkpoints(folder)
            return open_run_log(folder / LOG_NAME)

    # -- pickling -----------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_warned"] = set()
        state["_value_cache"] = {}
        state["_journal"] = None
        state["_checkpoint_format"] = CHECKPOINT_FORMAT
        return state

    def __setstate__(self, state):
        version = state.pop("_checkpoint_format", None)
        if version != CHECKPOINT_FORMAT and version not in READABLE_FORMATS:
            raise PipelineError(
                f"this checkpoint has format {version!r} but this pipekit reads format "
                f"{CHECKPOINT_FORMAT}; resume it with the pipekit version that wrote it")
        state.setdefault("extra_attributes", [])  # a checkpoint of an earlier pipekit
        state.setdefault("_snapshot_size", state.pop("_checkpoint_size", 0))  # format 1
        state.setdefault("_journal", None)
        self.__dict__.update(state)

    def _loaded_from(self, path):
        """Called by `load` with the checkpoint's path; subclasses that own a folder
        check that the checkpoint still lives in it (see `DatasetPipeline`)."""

    @classmethod
    def load(cls, path):
        """Load a pipeline from its checkpoint (see :func:`load`)."""
        return load(path)

    # -- display ----------------------------------------------------------

    def __repr__(self):
        return pipeline_text(self)

    def _repr_html_(self):
        return pipeline_html(self)


def load(path):
    """Load a pipeline from a checkpoint written by :meth:`Pipeline.checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``pipeline.p`` file, or the ``log`` folder that holds one.

    Returns
    -------
    Pipeline

    Raises
    ------
    PipelineError
        The file is missing, not a pipekit checkpoint, or of a format this
        pipekit cannot resume.
    """
    path, pipe = read_checkpoint(path)
    if not isinstance(pipe, Pipeline):
        raise PipelineError(f"{path} holds a {type(pipe).__name__}, not a pipekit Pipeline")
    pipe._loaded_from(path)
    return pipe

