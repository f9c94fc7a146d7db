"""Faults the local archive server injects, and the ledger that hands them out.

:class:`Faults` says which faults the next responses get; :class:`FaultLedger` decides,
request by request, which one a response gets, so that ``every`` and
``max_per_request`` spread them as asked.
"""

import collections
import dataclasses

__all__ = ["Faults", "FaultLedger", "html_error_page"]


@dataclasses.dataclass
class Faults:
    """Faults the server injects, each for the next N eligible responses.

    Attributes
    ----------
    http_5xx : int
        Answer 500/502/503/504 instead of the real response.
    rate_limit : int
        Answer 429 with ``Retry-After: retry_after``.
    retry_after : float
        Seconds announced in ``Retry-After``.
    slow : int
        Wait ``delay`` seconds before answering (then answer normally).
    delay : float
        The wait of a slow response, in seconds.
    drop : int
        Close the connection without answering.
    truncate : int
        Send the headers with the full ``Content-Length`` and half of the
        body, then close the connection.
    corrupt : int
        Flip bytes in a download body (its md5 no longer matches).
    stall : int
        Send half of a download body, then wait ``stall_seconds`` before the
        rest (for killing a client mid-stream).
    stall_seconds : float
        Length of a stall.
    every : int
        Only every ``every``-th eligible request may get a fault, so faults
        spread over many frames instead of piling on the first ones.
    target : {"all", "api", "download"}
        Which requests are eligible.
    count_error : int
        Added to ``count`` on API pages: the archive's count is an estimate.
    html_errors : bool
        Serve the ``http_5xx`` answers as an HTML error page (a proxy's), not JSON.
    max_per_request : int, optional
        At most this many faults for one request target (one page, one
        download link), so a client with that many retries must get through.
    """

    http_5xx: int = 0
    rate_limit: int = 0
    retry_after: float = 1.0
    slow: int = 0
    delay: float = 0.0
    drop: int = 0
    truncate: int = 0
    corrupt: int = 0
    stall: int = 0
    stall_seconds: float = 30.0
    every: int = 1
    target: str = "all"
    count_error: int = 0
    max_per_request: int = None
    html_errors: bool = False


# One fault replaces a response; checked in this order.
_REPLACING = ("http_5xx", "rate_limit", "drop", "truncate", "corrupt", "stall")


class FaultLedger:
    """Hands out the faults of a :class:`Faults` request by request.

    It counts eligible requests (for ``every``) and faults per request target
    (for ``max_per_request``); the per-target counts start again when the
    server is given a new :class:`Faults`. Not thread-safe: the server holds its
    lock around :meth:`take`.
    """

    def __init__(self):
        self.seq = 0
        self.per_target = collections.Counter()
        self.seen_for = None

    def take(self, faults, kind, target, stats):
        """The faults for one request: (delay seconds, replacing fault name or None).

        Parameters
        ----------
        faults : Faults
            The server's faults; the one taken is counted down.
        kind : {"api", "download"}
        target : str
            The request's path (one page, one download link).
        stats : collections.Counter
            ``fault_<name>`` is counted up for each fault handed out.
        """
        if faults.target not in ("all", kind):
            return 0.0, None
        self.seq += 1
        if faults.every > 1 and self.seq % faults.every:
            return 0.0, None
        if faults is not self.seen_for:
            self.per_target = collections.Counter()
            self.seen_for = faults
        if (faults.max_per_request is not None
                and self.per_target[target] >= faults.max_per_request):
            return 0.0, None
        delay = 0.0
        if faults.slow > 0:
            faults.slow -= 1
            delay = faults.delay
            stats["fault_slow"] += 1
        for name in _REPLACING:
            if kind == "api" and name in ("corrupt", "stall"):
                continue
            if getattr(faults, name) > 0:
                setattr(faults, name, getattr(faults, name) - 1)
                stats[f"fault_{name}"] += 1
                self.per_target[target] += 1
                return delay, name
        if delay:
            self.per_target[target] += 1
        return delay, None


def html_error_page(code, reason):
    """The HTML error page a proxy (nginx) sends in front of an API, as bytes."""
    return (f"<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
            "</body>\r\n</html>\r\n").encode()
