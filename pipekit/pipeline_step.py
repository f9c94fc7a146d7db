"""One step of a pipeline: a function, its arguments, and the outcome of its last run.

Re-exported by `pipekit.pipeline` (and `pipekit`), where it is used.
"""

import copy
import datetime as _dt
import inspect
import logging
import time
import traceback

from .errors import PipelineError
from .secrets import scrub_value

__all__ = ["PipelineStep", "utc_now"]

log = logging.getLogger("pipekit.pipeline")


def utc_now():
    """Now, as an ISO 8601 UTC timestamp with milliseconds (steps' ``started``, ``finished``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class PipelineStep:
    """One step of a :class:`Pipeline`: a function, its arguments and its outcome.

    Parameters
    ----------
    func : callable
        The step's work. It should return a dict with ``"status"``
        (``"success"`` or ``"error"``). A function that declares a parameter
        ``pipeline`` or ``step`` receives the running pipeline or this step.
    tags : list of str or str, optional
        Tags used to select steps; a single string is one tag.
    name : str, optional
        Unique name within the pipeline (default: the function's name,
        suffixed when repeated).
    ignore_errors : bool
        A returned status ``"error"`` does not stop the run.
    ignore_exceptions : bool
        An exception is logged, the step's status becomes ``"error"`` and the
        run goes on.
    retries : int
        Re-run a step that raised up to this many more times, with backoff.
    **func_kwargs
        Keyword arguments for ``func``; deep-copied for every call.

    Attributes
    ----------
    status : str
        ``"not run"``, ``"running"``, ``"success"``, ``"error"``,
        ``"unknown"`` (the function returned no status dict) or
        ``"interrupted"``.
    result : object
        What the function returned.
    error : str or None
        The traceback text of the last exception, or the error message.
    started, finished : str or None
        ISO timestamps (UTC).
    duration : float or None
        Seconds.
    attempts : int
        Number of calls in the last run of this step.
    """

    def __init__(self, func, tags=None, name=None, ignore_errors=False,
                 ignore_exceptions=False, retries=0, **func_kwargs):
        if not callable(func):
            raise PipelineError(f"step function must be callable, not {type(func).__name__}")
        if isinstance(tags, str):
            tags = [tags]
        if int(retries) < 0:
            raise PipelineError(f"retries must be >= 0, not {retries!r}")
        self.func = func
        self.tags = list(tags or [])
        self.name = name or _func_name(func)
        self.ignore_errors = bool(ignore_errors)
        self.ignore_exceptions = bool(ignore_exceptions)
        self.retries = int(retries)
        self.func_kwargs = func_kwargs
        self.reset()

    def __setattr__(self, name, value):
        # The last line of defence: an outcome recorded here goes into the
        # checkpoint, the log and `pipekit status`; no secret may ride along.
        if name in ("error", "result") and value is not None:
            value = scrub_value(value)
        super().__setattr__(name, value)

    def reset(self):
        """Forget the outcome of any earlier run."""
        self.status = "not run"
        self.result = None
        self.error = None
        self.started = None
        self.finished = None
        self.duration = None
        self.attempts = 0

    def call(self, pipeline=None):
        """Call the function once with fresh copies of its arguments."""
        kwargs = copy.deepcopy(self.func_kwargs)
        wanted = _parameters(self.func)
        if "pipeline" in wanted and "pipeline" not in kwargs:
            kwargs["pipeline"] = pipeline
        if "step" in wanted and "step" not in kwargs:
            kwargs["step"] = self
        return self.func(**kwargs)

    def call_with_retries(self, pipeline=None, backoff=1.0, backoff_max=60.0):
        """Call the function until it returns, at most ``retries`` more times after the first.

        Waits ``backoff`` seconds before the first retry, doubling up to
        ``backoff_max``. Counts ``attempts``; ``error`` gets the traceback of
        the last exception.

        Returns
        -------
        tuple
            ``(result, None)``, or ``(None, exception)`` when every attempt raised.
        """
        while True:
            self.attempts += 1
            try:
                return self.call(pipeline=pipeline), None
            except Exception as err:  # noqa: BLE001 - every failure is recorded
                self.error = traceback.format_exc()
                if self.attempts > self.retries:
                    return None, err
                delay = min(backoff * 2 ** (self.attempts - 1), backoff_max)
                log.warning("step %s: attempt %d of %d raised %s: %s; retrying in %.1f s",
                            self.name, self.attempts, self.retries + 1,
                            type(err).__name__, err, delay)
                time.sleep(delay)

    def __repr__(self):
        return (f"PipelineStep(name={self.name!r}, tags={self.tags!r}, "
                f"status={self.status!r})")


def _func_name(func):
    name = getattr(func, "__name__", None) or type(func).__name__
    return "lambda" if name == "<lambda>" else name


def _parameters(func):
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
