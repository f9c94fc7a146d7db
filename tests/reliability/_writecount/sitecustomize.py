"""Count pipekit's per-frame photometry writes in every process (spawned workers too).

Put this folder first on ``PYTHONPATH`` and set ``PIPEKIT_WRITE_LOG`` to a file:
every ``write_text_atomic`` into a ``photometry/`` folder appends
``begin <pid> <path>`` before it and ``end <pid> <path>`` after it returns (one
``O_APPEND`` write per line, so processes do not mix). A SIGKILL can land between
the rename and the ``end`` line: such a write has a ``begin`` and no ``end``, and
whether it landed is told by the file, not by the log.
"""

import os

_LOG = os.environ.get("PIPEKIT_WRITE_LOG")

if _LOG:
    import pipekit.atomic as _atomic

    _original = _atomic.write_text_atomic

    def _log(event, path):
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {os.getpid()} {os.fspath(path)}\n".encode())
        finally:
            os.close(fd)

    def write_text_atomic(path, text, *args, **kwargs):
        counted = os.path.basename(os.path.dirname(os.fspath(path))) == "photometry"
        if counted:
            _log("begin", path)
        result = _original(path, text, *args, **kwargs)
        if counted:
            _log("end", path)
        return result

    _atomic.write_text_atomic = write_text_atomic
