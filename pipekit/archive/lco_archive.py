"""Client of the LCO science archive API: query ``/frames/`` and stream frames, md5-checked.

:class:`LCOArchive` follows every page of a query and lands each frame through
:class:`pipekit.atomic.AtomicFile`; the token is read from the environment at each
request and never kept.
"""

import datetime as dt
import logging
import os
import threading
import urllib.parse
from pathlib import Path

import requests

from .. import lco
from ..atomic import AtomicFile
from ..errors import ArchiveAuthError, ArchiveError
from ..http import (Deadline, RetryableError, backoff_wait, call_with_retries, describe_error,
                    iter_body, redact_url, retry_after_seconds, server_message)
from ..secrets import register_envvar, scrub
from .listing import list_by_cursor, list_by_offset
from .paging import MAX_LIMIT, MIN_SPLIT_SPAN, exact_span, split_window
from .records import CHUNK_SIZE, ArchiveRecord, safe_destination

__all__ = ["LCOArchive", "DEFAULT_URL"]

log = logging.getLogger("pipekit.archive")

#: The LCO science archive API root.
DEFAULT_URL = "https://archive-api.lco.global/"


def _parse_time(value, what):
    when = lco.parse_utc(value)
    if value is not None and when is None:
        raise ArchiveError(f"{what} {value!r} is not a date/time; expected ISO 'YYYY-MM-DD HH:MM'")
    return when


def _time_param(when):
    # Fractional seconds kept: the archive's DateTimeFilter reads them, and a window
    # resumed from a stored end must not lose the instant it ended at.
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%S.%f")


#: Default overall bound of one query or one download (seconds).
MAX_SECONDS = 3600.0
#: Default most pages read by one query.
MAX_PAGES = 10_000
#: Default largest frame accepted when its size is declared nowhere (bytes).
MAX_FRAME_BYTES = 4 << 30


_RETRYABLE = (requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)


def _server_detail(resp):
    return server_message(resp, limit=200)


def _same_origin(url_a, url_b):
    a, b = urllib.parse.urlsplit(url_a), urllib.parse.urlsplit(url_b)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


class LCOArchive:
    """Client of the LCO science archive API (``/frames/``).

    The token is read from the environment variable ``token_envvar`` at each
    request and is never stored on the object, so it cannot reach a pickle, a
    log line or an exception message. Requests retry with exponential backoff
    on connection errors, timeouts, HTTP 5xx and 429 (honouring
    ``Retry-After``).

    Parameters
    ----------
    url : str
        API root, e.g. ``https://archive-api.lco.global/``.
    token_envvar : str, optional
        Name of the environment variable holding the API token. None for
        anonymous access (public data only).
    timeout : float or (float, float)
        Connect and read timeouts in seconds.
    retries : int
        Extra attempts after a failed one, per request and per download.
    backoff : float
        First wait between attempts (s); it doubles each time.
    max_backoff : float
        Longest wait between attempts (s).
    max_retry_after : float
        Longest ``Retry-After`` honoured (s).
    session : requests.Session, optional
        A session to use for every request (default: one per thread). It
        should not carry credentials of its own.
    name : str, optional
        A label for logs (the archive's name in ``data_download.yaml``).
    max_seconds : float or None
        Longest a whole query, or one download, may take (s); past it the
        conversation stops with an `ArchiveError`. None for no bound.
    max_pages : int
        Most pages one query may read; a listing whose pages never end stops
        with an `ArchiveError` here at the latest.
    max_frame_bytes : int
        Largest body accepted for a frame whose size is declared neither in
        its ``version_set`` nor by ``Content-Length``.

    Examples
    --------
    >>> archive = LCOArchive(token_envvar="LCO_API_TOKEN")      # doctest: +SKIP
    >>> records = archive.query("KEY2020B-001", "2024-05-01", "2024-05-02")  # doctest: +SKIP
    >>> paths = [archive.download(r, "downloads/") for r in records]  # doctest: +SKIP
    """

    def __init__(self, url=DEFAULT_URL, token_envvar=None, timeout=(5, 60), retries=5,
                 backoff=0.5, max_backoff=30.0, max_retry_after=300.0, session=None, name=None,
                 max_seconds=MAX_SECONDS, max_pages=MAX_PAGES, max_frame_bytes=MAX_FRAME_BYTES):
        if not url or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ArchiveError(f"archive url {url!r} is not an http(s) URL")
        self.url = url if url.endswith("/") else url + "/"
        self.token_envvar = token_envvar or None
        register_envvar(self.token_envvar)
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.name = name or urllib.parse.urlsplit(self.url).netloc
        self.max_seconds = float(max_seconds) if max_seconds else None
        self.max_pages = int(max_pages)
        self.max_frame_bytes = int(max_frame_bytes)
        self._session = session
        self._local = threading.local()
        self._warned_anonymous = False

    def __repr__(self):
        return (f"LCOArchive(url={self.url!r}, token_envvar={self.token_envvar!r}, "
                f"timeout={self.timeout!r}, retries={self.retries})")

    # Sessions hold sockets: leave them out of pickles, make new ones after loading.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None
        state["_local"] = None
        return state

    def __setstate__(self, state):
        state = {"max_seconds": MAX_SECONDS, "max_pages": MAX_PAGES,
                 "max_frame_bytes": MAX_FRAME_BYTES, **state}
        self.__dict__.update(state)
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close this thread's HTTP session (a new one opens when needed)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    @property
    def session(self):
        """The ``requests.Session`` used by the calling thread."""
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=8,
                                                    max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    # -- secrets ----------------------------------------------------------

    def _token(self):
        if not self.token_envvar:
            return None
        register_envvar(self.token_envvar)
        token = os.environ.get(self.token_envvar)
        if not token:
            raise ArchiveAuthError(
                f"the archive at {self.url} needs a token, but the environment variable "
                f"{self.token_envvar!r} is not set (or is empty); set it to your LCO API token")
        return token.strip()

    def _auth_headers(self, url):
        # Only the API's own host ever sees the token, whatever a `next` link says.
        token = self._token()
        if token is None or not _same_origin(url, self.url):
            return {}
        return {"Authorization": f"Token {token}"}

    @staticmethod
    def _redact(text):
        return scrub(text)

    # -- retries ----------------------------------------------------------

    def _reason(self, failure):
        reason = failure.reason if failure.error is None else describe_error(failure.error)
        return self._redact(reason)

    def _retrying(self, what, attempt_fn, deadline=None):
        def wait(attempt, failure):
            if failure.wait is None:
                seconds = backoff_wait(attempt, self.backoff, self.max_backoff)
            else:
                seconds = min(failure.wait, self.max_retry_after)
            if deadline is not None:
                if seconds >= deadline.remaining():
                    raise ArchiveError(deadline.message(f"last failure: {self._reason(failure)}"))
            return seconds

        def announce(failure, attempt, seconds):
            log.warning("%s: %s; retry %d of %d in %.2f s", what, self._reason(failure),
                        attempt + 1, self.retries, seconds)

        try:
            return call_with_retries(attempt_fn, self.retries, wait, announce,
                                     transient=_RETRYABLE)
        except RetryableError as exc:
            failure = exc
        raise ArchiveError(self._redact(
            f"{what} failed after {self.retries + 1} attempts: {self._reason(failure)}"))

    def _rate_limited(self, resp, what):
        """The failure for an HTTP 429: retried, or final when the wait is too long."""
        wait = retry_after_seconds(resp.headers.get("Retry-After"))
        if wait is not None and wait > self.max_retry_after:
            # Sleeping that long would hold the pipeline for nothing: say when to come back.
            when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=wait)
            return ArchiveError(
                f"{what}: the archive is rate limiting this client (HTTP 429) and asks it to "
                f"wait {wait:.0f} s (Retry-After), longer than this client waits "
                f"(max_retry_after = {self.max_retry_after:g} s); try again after "
                f"{when:%Y-%m-%d %H:%M:%S} UTC")
        return RetryableError(f"HTTP 429 rate limited (Retry-After {wait} s)", wait=wait)

    def _check_api_status(self, resp, what):
        code = resp.status_code
        if code < 400:
            return
        detail = self._redact(_server_detail(resp))
        resp.close()
        if code in (401, 403):
            if self.token_envvar:
                hint = (f"check the token in the environment variable {self.token_envvar!r} "
                        "(and that it may read this proposal)")
            else:
                hint = ("no token was sent: set token_envvar for this archive in "
                        "data_download.yaml and put your LCO API token in that variable")
            raise ArchiveAuthError(f"{what}: the archive refused the credentials "
                                   f"(HTTP {code}: {detail}); {hint}")
        if code == 429:
            raise self._rate_limited(resp, what)
        if code >= 500:
            raise RetryableError(f"HTTP {code}: {detail}")
        raise ArchiveError(f"{what}: HTTP {code}: {detail}")

    # -- query ------------------------------------------------------------

    def query(self, proposal_id=None, start=None, end=None, reduction_level=91,
              limit=MAX_LIMIT, **filters):
        """Every frame of a proposal observed in ``[start, end]``, every one once.

        The archive counts a query exactly only over a short window (7 days, 9
        weeks with a proposal; see :mod:`pipekit.archive.paging`); past it the
        count is an estimate that cuts its ``next`` links and results short. So the
        window is cut into sub-windows the archive counts exactly, each paged by
        offset until an empty or short page and until it holds ``count`` frames.
        A sub-window still answered with ``count_estimated`` is halved, down to a
        day, and a day still estimated is listed by cursor pages
        (``pagination_style=cursor``), which need no count; a frame listed in two
        sub-windows (their boundaries are inclusive) is kept once. Offset pages'
        ``next`` links are not followed: they end early on an estimate.

        With a token, a proposal that yields no frames, or only public ones, is
        named in a warning (the archive answers 200 with public frames for a
        proposal the token does not belong to); with no token, a warning says once
        that only public frames are visible.

        Parameters
        ----------
        proposal_id : str, optional
            The proposal (``PROPID``).
        start, end : str or datetime, optional
            Observation-date window, UTC (naive datetimes are taken as UTC); both
            inclusive; no ``end`` means now. Without ``start``, the query is one
            window and must be counted exactly by the archive.
        reduction_level : int, optional
            91 for reduced frames, 0 for raw ones; None for both.
        limit : int
            Results per page asked for (the archive clamps it to 1000).
        **filters
            Further ``/frames/`` filters (``site_id``, ``configuration_type`` ...).

        Returns
        -------
        list of ArchiveRecord
            In time order of the sub-windows.

        Raises
        ------
        ArchiveAuthError
            The archive refused the token (HTTP 401/403) or the token
            variable is not set.
        ArchiveError
            The archive kept failing after all retries, answered nonsense, gave only
            an estimated count for a window that cannot be cut shorter and no
            cursor pages, or listed
            fewer frames than it counted: never a silently truncated listing.
        """
        t0, t1 = _parse_time(start, "start"), _parse_time(end, "end")
        if t0 is not None and t1 is None:  # an open end is now: a window that can be cut
            t1 = dt.datetime.now(dt.timezone.utc)
        base = {"proposal_id": proposal_id, "reduction_level": reduction_level,
                "include_related_frames": "false", "ordering": "id"}
        base.update(filters)
        base = {k: v for k, v in base.items() if v is not None}
        span = exact_span(proposal_id, filters)
        if t0 is not None and t1 is not None and span is not None and t1 > t0:
            pending = split_window(t0, t1, span)[::-1]
        else:
            pending = [(t0, t1)]
        records, seen = [], set()
        stats = {"windows": 0, "pages": 0, "splits": 0,
                 "deadline": Deadline(self.max_seconds, f"archive {self.name}: query of "
                                      f"proposal {proposal_id}, {start} to {end}")}
        url, read = urllib.parse.urljoin(self.url, "frames/"), self._page_reader(stats)
        while pending:
            w0, w1 = pending.pop()
            params = dict(base, start=_time_param(w0), end=_time_param(w1), limit=int(limit))
            params = {k: v for k, v in params.items() if v is not None}
            label = f"proposal {proposal_id}, {params.get('start')} to {params.get('end')}"
            listing = list_by_offset(read, url, params, label, self.name)
            if listing is None and (w0 is None or w1 is None or w1 - w0 <= MIN_SPLIT_SPAN):
                # Too slow to count even over a day: cursor pages need no count.
                listing = list_by_cursor(read, url, params, label, self.name)
                if listing is None:
                    raise ArchiveError(
                        f"archive {self.name}: proposal {proposal_id}, {_time_param(w0)} to "
                        f"{_time_param(w1)}: the archive gave only an estimated count "
                        "(count_estimated) and does not offer cursor pagination, so its "
                        "listing may be cut short and cannot be vouched for; query a shorter "
                        "window (or with a proposal) so that it counts exactly")
            if listing is None:  # the archive only estimated this window's count
                middle = w0 + (w1 - w0) / 2
                pending += [(middle, w1), (w0, middle)]
                stats["splits"] += 1
                continue
            stats["windows"] += 1
            for record in listing:
                key = record.id if record.id is not None else record.filename
                if key not in seen:
                    seen.add(key)
                    records.append(record)
        log.info("archive %s: proposal %s, %s to %s, reduction level %s: %d frames "
                 "(%d windows, %d pages, %d windows halved for an estimated count)",
                 self.name, proposal_id, start, end, reduction_level, len(records),
                 stats["windows"], stats["pages"], stats["splits"])
        self._warn_on_access(proposal_id, records, start, end)
        return records

    def _page_reader(self, stats):
        """``read(url, params, what)``: one listing page, within the query's bounds."""
        def read(url, params, what):
            self._check_bounds(stats, what)
            data = self._get_page(url, params, what, stats.get("deadline"))
            stats["pages"] += 1
            return data
        return read

    def _check_bounds(self, stats, what):
        pages = f"{stats['pages']} pages read"
        deadline = stats.get("deadline")
        if deadline is not None:
            deadline.check(ArchiveError, pages)
        if stats["pages"] >= self.max_pages:
            raise ArchiveError(f"{what}: stopped after {pages}, the most one query may read "
                               f"(max_pages = {self.max_pages}); the archive's listing does "
                               "not end")

    def _get_page(self, url, params, what, deadline=None):
        def attempt():
            resp = self.session.get(url, params=params, headers=self._auth_headers(url),
                                    timeout=self.timeout)
            self._check_api_status(resp, what)
            try:
                return resp.json()
            except ValueError as exc:
                raise RetryableError(f"response is not JSON ({exc})") from None

        data = self._retrying(what, attempt, deadline)
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ArchiveError(f"{what}: expected a JSON object with a 'results' list, "
                               f"got {str(data)[:200]!r}")
        return data

    def _warn_on_access(self, proposal_id, records, start, end):
        # The archive answers 200, never 401/403, for a proposal the token does not
        # belong to: it lists that proposal's public frames only (or none).
        if not self.token_envvar:
            if not self._warned_anonymous:
                self._warned_anonymous = True
                log.warning("archive %s: no token configured (token_envvar): only public "
                            "frames are visible, proprietary ones are not listed", self.name)
            return
        if proposal_id is None:
            return
        now = dt.datetime.now(dt.timezone.utc)
        public = [lco.parse_utc(r.public_date) for r in records]
        if all(when is not None and when < now for when in public):
            what = "no frames" if not records else f"only public frames ({len(records)})"
            log.warning("archive %s: proposal %s gave %s from %s to %s: the token in %s may "
                        "not belong to proposal %s (the archive then shows its public frames "
                        "only)", self.name, proposal_id, what, start, end, self.token_envvar,
                        proposal_id)

    # -- download ---------------------------------------------------------

    def download(self, record, folder, overwrite=False):
        """Fetch one frame into ``folder``, verified against its md5.

        The body streams to a temporary file in ``folder``, is checked for
        length and md5, and only then renamed to ``record.filename``: a
        partial or corrupt file never appears under the final name. A
        truncated body or md5 mismatch is retried like a failed request. The
        pre-signed ``url`` is fetched without the archive token.

        Parameters
        ----------
        record : ArchiveRecord
        folder : str or os.PathLike
            Download folder; created if missing.
        overwrite : bool
            Fetch even if the file is already there.

        Returns
        -------
        pathlib.Path
            The downloaded file.

        Raises
        ------
        ArchiveError
            Unsafe file name, no URL, or the download kept failing.
        """
        fetched = self.fetch(record, folder, overwrite=overwrite)
        return fetched.commit() if isinstance(fetched, AtomicFile) else fetched

    def fetch(self, record, folder, overwrite=False):
        """Stream and verify one frame into a temporary file, without committing it.

        The first half of :meth:`download`, for a driver that commits in another
        thread (:func:`pipekit.archive.download_frames`).

        Parameters
        ----------
        record : ArchiveRecord
        folder : str or os.PathLike
            Download folder; created if missing.
        overwrite : bool
            Fetch even if the file is already there.

        Returns
        -------
        pipekit.atomic.AtomicFile or pathlib.Path
            The verified, closed temporary file (its ``hexdigest`` is the md5):
            commit or discard it. A path when the frame is already in place.

        Raises
        ------
        ArchiveError
            As :meth:`download`.
        """
        folder = Path(folder)
        final = safe_destination(folder, record.filename)
        if not overwrite and final.is_file():
            return final
        if not record.url:
            raise ArchiveError(f"frame {record.filename!r} (id {record.id}) has no download url")
        folder.mkdir(parents=True, exist_ok=True)
        expected = record.md5.lower() if record.md5 else None
        what = f"download of {record.filename} from {redact_url(record.url)}"
        deadline = Deadline(self.max_seconds, what)

        def attempt():
            deadline.check(ArchiveError)
            # None removes any Authorization a caller's session might add.
            resp = self.session.get(record.url, headers={"Authorization": None},
                                    timeout=self.timeout, stream=True)
            with resp:
                self._check_download_status(resp, what)
                length = resp.headers.get("Content-Length")
                encoded = resp.headers.get("Content-Encoding", "identity") not in ("identity", "")
                limit, declared = self._size_limit(record, None if encoded else length)
                out = AtomicFile(final, digest="md5")
                try:
                    for chunk in iter_body(resp, CHUNK_SIZE):
                        if out.size + len(chunk) > limit:
                            raise ArchiveError(
                                f"{what}: the body goes on past the {limit} bytes {declared}; "
                                "stopped and removed the partial file (a server sending a "
                                "frame that never ends)")
                        out.write(chunk)
                        deadline.check(ArchiveError, f"{out.size} bytes received")
                    out.close()
                    if length is not None and not encoded and out.size != int(length):
                        raise RetryableError(f"truncated body: {out.size} of {length} bytes")
                    if expected and out.hexdigest != expected:
                        raise RetryableError(
                            f"md5 mismatch: expected {expected}, got {out.hexdigest}")
                except BaseException:
                    out.discard()
                    raise
            return out

        out = self._retrying(what, attempt, deadline)
        log.debug("downloaded %s (%s)", final.name, out.hexdigest)
        return out

    def _size_limit(self, record, length):
        """The most bytes a frame's body may have, and where that number comes from."""
        if record.size:
            return int(record.size), "its archive record declares (version_set size)"
        try:
            if length is not None and int(length) >= 0:
                return int(length), "its Content-Length declares"
        except ValueError:
            pass
        return self.max_frame_bytes, ("accepted for a frame of undeclared size "
                                      "(max_frame_bytes)")

    def _check_download_status(self, resp, what):
        code = resp.status_code
        if code < 400:
            return
        detail = _server_detail(resp)
        resp.close()
        if code == 429:
            raise self._rate_limited(resp, what)
        if code >= 500:
            raise RetryableError(f"HTTP {code}: {detail}")
        if code in (401, 403):
            raise ArchiveError(f"{what}: the download link was refused (HTTP {code}: {detail}); "
                               "pre-signed links expire, query the archive again for fresh ones")
        raise ArchiveError(f"{what}: HTTP {code}: {detail}")
