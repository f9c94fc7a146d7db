"""Count pipekit's per-frame photometry writes in every process (spawned workers too).

Put this folder first on ``PYTHONPATH`` and set ``PIPEKIT_WRITE_LOG`` to a file:
every ``write_text_atomic`` into a ``photometry/`` folder appends
``<pid> <path>`` to it (one ``O_APPEND`` write per line, so processes do not mix).
"""

import os

_LOG = os.environ.get("PIPEKIT_WRITE_LOG")

if _LOG:
    import pipekit.atomic as _atomic

    _original = _atomic.write_text_atomic

    def write_text_atomic(path, text, *args, **kwargs):
        result = _original(path, text, *args, **kwargs)
        if os.path.basename(os.path.dirname(os.fspath(path))) == "photometry":
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()} {os.fspath(path)}\n".encode())
            finally:
                os.close(fd)
        return result

    _atomic.write_text_atomic = write_text_atomic
