"""The pipekit exception family.

Every error pipekit raises derives from :class:`PipekitError`, so a caller can
catch one name. Messages name the file, key, frame or URL and what was expected.
"""

from .secrets import scrub


class PipekitError(Exception):
    """Base class of every error raised by pipekit.

    Its message passes through `pipekit.secrets.scrub`: a secret a server
    echoed, or any piece of one, never reaches the text.
    """

    def __init__(self, *args):
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class PipelineError(PipekitError):
    """A pipeline step failed, or the pipeline itself cannot run or load."""


class ConfigError(PipekitError):
    """A configuration file is missing, unreadable or invalid."""


class FrameError(PipekitError):
    """A frame cannot be read or used (corrupt, no image, no WCS, ...)."""


class ArchiveError(PipekitError):
    """The archive refused a request or a download failed its checks."""


class ArchiveAuthError(ArchiveError):
    """The archive rejected the credentials (HTTP 401/403)."""


class TOMError(PipekitError):
    """The TOM refused a request or returned something unexpected."""


class LockError(PipekitError):
    """A dataset is locked by another live process."""


def describe_os_error(err):
    """One line for an `OSError`: the path, then the cause (``No space left on device``).

    Parameters
    ----------
    err : OSError

    Returns
    -------
    str
        ``"<path>: <cause>"`` (``"<path> -> <path2>: <cause>"`` for a rename), or
        the error's own text when it names no path.

    Examples
    --------
    >>> import errno, os
    >>> describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "logs/pipeline.p"))
    'logs/pipeline.p: No space left on device'
    """
    cause = err.strerror or " ".join(str(err).split()) or type(err).__name__
    if err.filename is None:
        return cause
    target = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{target}: {cause}"
