"""HTTP plumbing shared by the archive and TOM clients.

Retrying a request with exponential backoff, reading ``Retry-After``, and
keeping secrets and signed query strings out of messages. Each client keeps
its own policy (what to retry, how long to wait) and its own wording.
"""

import datetime as dt
import email.utils
import json
import re
import time
import urllib.parse

import requests
import urllib3

from .secrets import scrub

__all__ = [
    "TRANSIENT_ERRORS",
    "RetryableError",
    "call_with_retries",
    "backoff_wait",
    "retry_after_seconds",
    "redact",
    "redact_url",
    "describe_error",
    "server_message",
    "Deadline",
    "iter_body",
]

#: Transport failures worth another attempt: the request may not have arrived.
TRANSIENT_ERRORS = (requests.ConnectionError, requests.Timeout)

_QUERY_RE = re.compile(r"\?[^\s'\")]*")


class RetryableError(Exception):
    """An attempt failed in a way that another attempt may fix.

    Parameters
    ----------
    reason : str, optional
        What went wrong, for messages.
    wait : float, optional
        Seconds the server asked to wait (``Retry-After``); None to back off.
    response : requests.Response, optional
        The answer that failed, when there was one.
    error : Exception, optional
        The transport error that failed the attempt, when there was one.
    """

    def __init__(self, reason=None, wait=None, response=None, error=None):
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.response = response
        self.error = error


def call_with_retries(attempt, retries, wait, on_retry, transient=TRANSIENT_ERRORS):
    """Call ``attempt()`` until it returns, at most ``retries + 1`` times.

    An attempt that raises `RetryableError`, or one of ``transient`` (wrapped
    in a `RetryableError` with ``error`` set), is repeated after a pause; any
    other exception goes straight through.

    Parameters
    ----------
    attempt : callable
        Makes one attempt and returns its result.
    retries : int
        Extra attempts after the first.
    wait : callable
        ``wait(attempt_index, failure)``: seconds to pause before the next attempt.
    on_retry : callable
        ``on_retry(failure, attempt_index, seconds)``, called before each pause
        (to log it).
    transient : tuple of type
        Exceptions that count as a retryable failure.

    Returns
    -------
    object
        What ``attempt()`` returned.

    Raises
    ------
    RetryableError
        The last failure, once every attempt has failed (``"no attempt
        made"`` when ``retries`` is negative).

    Examples
    --------
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise RetryableError("busy")
    ...     return "done"
    >>> call_with_retries(flaky, 5, lambda n, f: 0.0, lambda f, n, s: None)
    'done'
    """
    for index in range(retries + 1):
        try:
            return attempt()
        except RetryableError as exc:
            failure = exc
        except transient as exc:
            failure = RetryableError(error=exc)
        if index == retries:
            raise failure
        seconds = wait(index, failure)
        on_retry(failure, index, seconds)
        time.sleep(seconds)
    raise RetryableError("no attempt made")


def backoff_wait(attempt, first, longest):
    """The pause before retry number ``attempt + 1``: doubling, capped.

    Parameters
    ----------
    attempt : int
        Index of the attempt that failed (0 for the first).
    first : float
        Pause after the first failure, in seconds.
    longest : float
        Longest pause, in seconds.

    Returns
    -------
    float

    Examples
    --------
    >>> [backoff_wait(n, 0.5, 3.0) for n in range(4)]
    [0.5, 1.0, 2.0, 3.0]
    """
    return min(longest, first * (2 ** attempt))


def retry_after_seconds(value):
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP date).

    Parameters
    ----------
    value : str or None
        The header's value.

    Returns
    -------
    float or None
        Zero or more seconds; None when the header is absent or unreadable.

    Examples
    --------
    >>> retry_after_seconds("7")
    7.0
    >>> retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT")
    0.0
    >>> retry_after_seconds("soon") is None
    True
    """
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())


def redact(text, secrets, min_length=1):
    """``text`` with every secret replaced by ``***``.

    Parameters
    ----------
    text : str
    secrets : iterable of str
        The values to hide; empty ones and those shorter than ``min_length``
        are left alone.
    min_length : int
        Shortest secret hidden (a one-letter "secret" would blank out text).

    Returns
    -------
    str

    Examples
    --------
    >>> redact("token abc123 refused", ["abc123"])
    'token *** refused'
    """
    for secret in secrets:
        if secret and len(secret) >= min_length:
            text = text.replace(secret, "***")
    return text


def redact_url(url):
    """``url`` without its query string, which may carry a signature.

    Parameters
    ----------
    url : str

    Returns
    -------
    str
        Scheme, host and path, with ``?...`` where there was a query.

    Examples
    --------
    >>> redact_url("https://s3.example.org/f.fits.fz?Signature=abc&Expires=1")
    'https://s3.example.org/f.fits.fz?...'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except (TypeError, ValueError):
        return "<unparseable url>"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path,
                                    "..." if parts.query else "", ""))


def describe_error(exc):
    """An exception as one short line, with any URL's query string and secret hidden.

    Parameters
    ----------
    exc : Exception

    Returns
    -------
    str
        ``"<type>: <message>"``, at most 300 characters.

    Examples
    --------
    >>> describe_error(ValueError("bad link https://h/f?sig=1"))
    'ValueError: bad link https://h/f?...'
    """
    return scrub(f"{type(exc).__name__}: {_QUERY_RE.sub('?...', str(exc))}")[:300]


_TITLE_RE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_H1_RE = re.compile(r"<h1[^>]*>(.*?)</h1>", re.I | re.S)
_TAG_RE = re.compile(r"<[^>]+>")
_SCRIPT_RE = re.compile(r"<(script|style)[^>]*>.*?</\1>", re.I | re.S)


def _one_line(text):
    return re.sub(r"\s+", " ", _TAG_RE.sub(" ", text)).strip()


def server_message(response, limit=300):
    """What a server said in an error answer, on one line.

    Any secret the server echoed (`pipekit.secrets.scrub`) is blanked out.
    A JSON body gives its ``detail`` (or the whole object, compact); an HTML page
    (a proxy's or load balancer's error page) gives its title and first heading
    rather than its markup; other text comes with its whitespace collapsed.

    Parameters
    ----------
    response : requests.Response
    limit : int
        Longest message; a longer one is cut and ends with `` ...``.

    Returns
    -------
    str
        One line, ``(empty body)`` when there was nothing.

    Examples
    --------
    >>> resp = requests.Response()
    >>> resp.status_code, resp._content = 502, b"<html><head><title>502 Bad Gateway</title>"
    >>> resp.headers["Content-Type"] = "text/html"
    >>> server_message(resp)
    'HTML page: 502 Bad Gateway'
    """
    try:
        payload = response.json()
    except ValueError:
        text = response.text or ""
        kind = response.headers.get("Content-Type", "")
        if "html" in kind.lower() or re.search(r"<(!doctype|html|body|head)", text[:1000], re.I):
            parts = []
            for pattern in (_TITLE_RE, _H1_RE):
                match = pattern.search(text)
                found = _one_line(match.group(1)) if match else ""
                if found and found not in parts:
                    parts.append(found)
            if not parts:
                parts = [_one_line(_SCRIPT_RE.sub(" ", text))]
            text = "HTML page: " + " - ".join(p for p in parts if p) if any(parts) else ""
        else:
            text = _one_line(text)
    else:
        if isinstance(payload, dict) and set(payload) == {"detail"}:
            text = str(payload["detail"])
        else:
            text = json.dumps(payload, sort_keys=True)
        text = re.sub(r"\s+", " ", text).strip()
    text = scrub(text)
    if not text:
        return "(empty body)"
    return (text[:limit] + " ...") if len(text) > limit else text


class Deadline:
    """An overall time bound for one conversation with a server.

    A read timeout bounds each wait for bytes, not a server that trickles a
    body forever or a listing whose pages never end; this bounds the whole.

    Parameters
    ----------
    seconds : float or None
        The bound; None or 0 for none.
    what : str
        The conversation, for the message.
    setting : str
        The option that sets the bound, for the message.

    Examples
    --------
    >>> Deadline(None, "x").expired()
    False
    >>> Deadline(3600, "x").remaining() > 3599
    True
    """

    def __init__(self, seconds, what, setting="max_seconds"):
        self.seconds = float(seconds) if seconds else None
        self.what, self.setting = what, setting
        self.end = time.monotonic() + self.seconds if self.seconds else None

    def remaining(self):
        """Seconds left (``inf`` without a bound, never below 0)."""
        return float("inf") if self.end is None else max(0.0, self.end - time.monotonic())

    def expired(self):
        """Whether the bound has passed."""
        return self.end is not None and time.monotonic() >= self.end

    def message(self, progress=""):
        """Why the conversation was stopped, in one line."""
        done = f" ({progress})" if progress else ""
        return (f"{self.what}: stopped after {self.seconds:g} s, the overall time bound "
                f"({self.setting}){done}; the server kept the conversation going without "
                f"finishing it. Raise {self.setting} if it is just slow")

    def check(self, error, progress=""):
        """Raise ``error(self.message(progress))`` once the bound has passed.

        Parameters
        ----------
        error : type
            The exception class to raise (`ArchiveError`, `TOMError`, ...).
        progress : str, optional
            What was done so far, for the message.
        """
        if self.expired():
            raise error(self.message(progress))


def iter_body(response, size):
    """A streamed body in pieces as they arrive, each at most ``size`` bytes.

    ``iter_content`` blocks until a whole piece has come, so a body trickling a byte
    at a time would never reach the caller's checks (size, time bound); urllib3's
    ``read1`` returns what is there. Transport failures come out as the `requests`
    exceptions ``iter_content`` raises.

    Parameters
    ----------
    response : requests.Response
        Opened with ``stream=True``.
    size : int
        Largest piece, in bytes.

    Yields
    ------
    bytes
    """
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2
        yield from response.iter_content(size)
        return
    while True:
        try:
            chunk = raw.read1(size, decode_content=True)
        except urllib3.exceptions.ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ConnectionError(exc) from exc
        if not chunk:
            return
        yield chunk
