"""Stop signals as exceptions: SIGTERM handled like SIGINT.

Slurm, systemd and ``kill`` stop a process with SIGTERM, whose default action
ends Python at once: no ``finally``, no checkpoint, the lock left behind.
While a pipeline runs in the main thread, `interrupts_raise` turns SIGTERM
into `Terminated` (a `KeyboardInterrupt`), so the running step is recorded
"interrupted", the checkpoint written and the lock released, exactly as for
Ctrl-C. The previous handlers come back afterwards.
"""

import contextlib
import logging
import signal
import threading

__all__ = ["Terminated", "interrupts_raise", "exit_status", "StopWorkers", "forward_to_children",
           "kill_children", "STOP_SIGNALS"]

log = logging.getLogger("pipekit.signals")

#: The signals pipekit stops on: SIGINT (Ctrl-C) and SIGTERM (kill, Slurm, systemd).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM.

    A subclass of `KeyboardInterrupt`, so code that cleans up after Ctrl-C
    cleans up after SIGTERM too.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum=signal.SIGTERM):
        self.signum = int(signum)
        super().__init__(f"received signal {signal.Signals(self.signum).name}")

    def __reduce__(self):
        return type(self), (self.signum,)


def exit_status(exc):
    """The conventional exit status for a stop: 128 + signal number (130 SIGINT, 143 SIGTERM).

    Parameters
    ----------
    exc : KeyboardInterrupt
        `Terminated` or a plain `KeyboardInterrupt` (SIGINT).

    Returns
    -------
    int
    """
    return 128 + getattr(exc, "signum", signal.SIGINT)


def _is_default(handler, signum):
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler == signal.SIG_DFL


@contextlib.contextmanager
def interrupts_raise():
    """While inside, SIGTERM raises `Terminated` and SIGINT `KeyboardInterrupt`, once.

    Only in the main thread (signals are delivered there), and only for a
    signal whose handler is Python's default: a handler the application set
    (or an outer `interrupts_raise`) is left alone. The first signal raises;
    further ones while the exception unwinds are logged and ignored, so the
    clean-up (checkpoint, lock release) is not itself cut short. The previous
    handlers are restored on exit.

    Examples
    --------
    >>> with interrupts_raise():  # doctest: +SKIP
    ...     pipe.run()            # SIGTERM -> Terminated, step "interrupted"
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if raised:
            log.warning("signal %s received while already stopping; finishing the clean-up",
                        signal.Signals(signum).name)
            return
        raised.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            current = signal.getsignal(signum)
            if _is_default(current, signum):
                previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main interpreter, or unsupported
            continue
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class StopWorkers:
    """A parent's handling of SIGINT/SIGTERM: pass the signal on to its worker processes.

    Used by `pipekit.manager.Manager` around a run, in the main thread. The
    first signal is sent on to every child process (`multiprocessing`
    children: the pool's workers), which stop their pipelines as
    "interrupted", and raises `KeyboardInterrupt` (SIGINT) or `Terminated`
    (SIGTERM) in the parent; a second signal kills the children at once.
    `reap` then waits a bounded time for the children and kills what is left,
    so no process outlives the parent.

    Parameters
    ----------
    grace : float
        Seconds `reap` gives the children to finish their clean-up.
    """

    def __init__(self, grace=10.0):
        self.grace = float(grace)
        self.received = []
        self._previous = {}

    @property
    def forced(self):
        """True after a second signal: stop at once."""
        return len(self.received) > 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except (ValueError, OSError):
                    continue
        return self

    def __exit__(self, *exc):
        for signum, old in self._previous.items():
            signal.signal(signum, old)
        self._previous = {}

    def _handle(self, signum, frame):
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.forced:
            log.warning("second signal (%s): stopping the workers at once", name)
            kill_children()
        else:
            log.warning("%s received: passing it on to %d worker process(es) and stopping",
                        name, forward_to_children(signum))
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signum)

    def reap(self):
        """Wait up to ``grace`` seconds for the children to end; kill those left; join all."""
        import time
        deadline = time.monotonic() + (0.0 if self.forced else self.grace)
        for child in _children():
            try:
                child.join(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt:  # a second signal while waiting: at once
                deadline = 0.0
        if kill_children():
            for child in _children():
                child.join(5.0)


def _children():
    import multiprocessing
    return multiprocessing.active_children()


def forward_to_children(signum):
    """Send ``signum`` to every live `multiprocessing` child; return how many were sent it.

    Parameters
    ----------
    signum : int

    Returns
    -------
    int
    """
    import os
    n = 0
    for child in _children():
        try:
            os.kill(child.pid, signum)
            n += 1
        except (ProcessLookupError, TypeError):
            continue
    return n


def kill_children():
    """SIGKILL every live `multiprocessing` child; return how many were killed.

    Returns
    -------
    int
    """
    return forward_to_children(signal.SIGKILL)
