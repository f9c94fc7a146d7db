"""A pipeline's ``pipeline.log``: the records of its own run, one line if unwritable.

`open_run_log` attaches a `LogFile` to the ``pipekit`` logger for one run, keeping
out the records of other pipelines run in threads beside it; `close_run_log` detaches it.
"""

import logging
import sys
import threading

__all__ = ["LogFile", "open_run_log", "close_run_log"]

# Threads that are running a pipeline now. A pipeline's log file takes the
# records of its own thread and of helper threads (download workers), but
# not those of another pipeline run in a thread beside it.
_RUNNING_THREADS = set()


class LogFile(logging.FileHandler):
    """A pipeline's ``pipeline.log``: never reopened once closed, one line when unwritable.

    A record emitted by another thread just as the run ends would make a plain
    `logging.FileHandler` reopen its file (and leak it); a full disk or a
    read-only folder would print a traceback for every record. This handler
    drops records once closed, and says once, in one line on stderr, that the
    log cannot be written and why (the run goes on).
    """

    def __init__(self, *args, **kwargs):
        self.closed = False
        self.failed = False
        super().__init__(*args, **kwargs)

    def emit(self, record):
        if not self.closed:
            super().emit(record)

    def close(self):
        self.closed = True
        super().close()

    def handleError(self, record):
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        cause = getattr(err, "strerror", None) or err
        sys.stderr.write(f"pipekit: cannot write the log {self.baseFilename}: {cause}; "
                         "the run goes on without it\n")


def open_run_log(path):
    """Send this thread's ``pipekit`` records (and its helpers') to ``path``; return the handler.

    Parameters
    ----------
    path : path-like
        The log file (appended to).

    Returns
    -------
    LogFile
        To give to `close_run_log` when the run ends.
    """
    handler = LogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    own = threading.get_ident()
    handler.addFilter(lambda record: record.thread == own
                      or record.thread not in _RUNNING_THREADS)
    _RUNNING_THREADS.add(own)
    root = logging.getLogger("pipekit")
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def close_run_log(handler):
    """Detach and close a handler from `open_run_log` (None is allowed)."""
    if handler is not None:
        logging.getLogger("pipekit").removeHandler(handler)
        handler.close()
        _RUNNING_THREADS.discard(threading.get_ident())
