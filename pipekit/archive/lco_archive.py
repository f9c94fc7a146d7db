"""Client of the LCO science archive API: query ``/frames/`` and stream frames, md5-checked.

:class:`LCOArchive` follows every page of a query and lands each frame through
:class:`pipekit.atomic.AtomicFile`; the token is read from the environment at each
request and never kept.
"""

import logging
import os
import threading
import urllib.parse
from pathlib import Path

import requests

from .. import lco
from ..atomic import AtomicFile
from ..errors import ArchiveAuthError, ArchiveError
from ..http import (RetryableError, backoff_wait, call_with_retries, describe_error, redact,
                    redact_url, retry_after_seconds)
from .records import CHUNK_SIZE, ArchiveRecord, safe_destination

__all__ = ["LCOArchive", "DEFAULT_URL"]

log = logging.getLogger("pipekit.archive")

#: The LCO science archive API root.
DEFAULT_URL = "https://archive-api.lco.global/"


def _time_param(value, what):
    when = lco.parse_utc(value)
    if value is not None and when is None:
        raise ArchiveError(f"{what} {value!r} is not a date/time; expected ISO 'YYYY-MM-DD HH:MM'")
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%S")


_RETRYABLE = (requests.ConnectionError, requests.Timeout,
              requests.exceptions.ChunkedEncodingError,
              requests.exceptions.ContentDecodingError)


def _server_detail(resp):
    try:
        data = resp.json()
    except ValueError:
        text = (resp.text or "").strip()
        return text[:200] or resp.reason or ""
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:200]
    return str(data)[:200]


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

    Examples
    --------
    >>> archive = LCOArchive(token_envvar="LCO_API_TOKEN")      # doctest: +SKIP
    >>> records = archive.query("KEY2020B-001", "2024-05-01", "2024-05-02")  # doctest: +SKIP
    >>> paths = [archive.download(r, "downloads/") for r in records]  # doctest: +SKIP
    """

    def __init__(self, url=DEFAULT_URL, token_envvar=None, timeout=(5, 60), retries=5,
                 backoff=0.5, max_backoff=30.0, max_retry_after=300.0, session=None, name=None):
        if not url or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ArchiveError(f"archive url {url!r} is not an http(s) URL")
        self.url = url if url.endswith("/") else url + "/"
        self.token_envvar = token_envvar or None
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_retry_after = float(max_retry_after)
        self.name = name or urllib.parse.urlsplit(self.url).netloc
        self._session = session
        self._local = threading.local()

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

    def _redact(self, text):
        token = os.environ.get(self.token_envvar) if self.token_envvar else None
        return redact(text, [token.strip()] if token else [])

    # -- retries ----------------------------------------------------------

    def _reason(self, failure):
        reason = failure.reason if failure.error is None else describe_error(failure.error)
        return self._redact(reason)

    def _retrying(self, what, attempt_fn):
        def wait(attempt, failure):
            if failure.wait is None:
                return backoff_wait(attempt, self.backoff, self.max_backoff)
            return min(failure.wait, self.max_retry_after)

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
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            raise RetryableError(f"HTTP 429 rate limited (Retry-After {wait} s)", wait=wait)
        if code >= 500:
            raise RetryableError(f"HTTP {code}: {detail}")
        raise ArchiveError(f"{what}: HTTP {code}: {detail}")

    # -- query ------------------------------------------------------------

    def query(self, proposal_id=None, start=None, end=None, reduction_level=91, limit=100,
              **filters):
        """Every frame of a proposal observed in ``[start, end]``.

        Follows ``next`` links to the last page (``count`` may be an
        estimate, so it is not trusted); a frame seen twice (results shifting
        between pages) is kept once.

        Parameters
        ----------
        proposal_id : str, optional
            The proposal (``PROPID``).
        start, end : str or datetime, optional
            Observation-date window, UTC (naive datetimes are taken as UTC).
        reduction_level : int, optional
            91 for reduced frames, 0 for raw ones; None for both.
        limit : int
            Results per page.
        **filters
            Further ``/frames/`` filters (``site_id``, ``configuration_type`` ...).

        Returns
        -------
        list of ArchiveRecord

        Raises
        ------
        ArchiveAuthError
            The archive refused the token (HTTP 401/403) or the token
            variable is not set.
        ArchiveError
            The archive kept failing after all retries, or answered nonsense.
        """
        params = {
            "proposal_id": proposal_id,
            "start": _time_param(start, "start"),
            "end": _time_param(end, "end"),
            "reduction_level": reduction_level,
            "include_related_frames": "false",
            "limit": int(limit),
            "offset": 0,
        }
        params.update(filters)
        params = {k: v for k, v in params.items() if v is not None}
        url = urllib.parse.urljoin(self.url, "frames/")
        records, seen, visited = [], set(), set()
        pages = 0
        while url:
            page_url = url
            what = (f"archive query {redact_url(page_url)} "
                    f"(proposal {proposal_id}, page {pages + 1})")

            def attempt(page_url=page_url, page_params=params, what=what):
                resp = self.session.get(page_url, params=page_params,
                                        headers=self._auth_headers(page_url),
                                        timeout=self.timeout)
                self._check_api_status(resp, what)
                try:
                    return resp.json()
                except ValueError as exc:
                    raise RetryableError(f"response is not JSON ({exc})") from None

            data = self._retrying(what, attempt)
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise ArchiveError(f"{what}: expected a JSON object with a 'results' list, "
                                   f"got {str(data)[:200]!r}")
            pages += 1
            for item in data["results"]:
                record = ArchiveRecord.from_api(item)
                key = record.id if record.id is not None else record.filename
                if key not in seen:
                    seen.add(key)
                    records.append(record)
            visited.add(page_url if params is None else
                         page_url + "?" + urllib.parse.urlencode(params))
            nxt = data.get("next")
            if nxt:
                nxt = urllib.parse.urljoin(page_url, nxt)
                if nxt in visited:
                    raise ArchiveError(f"{what}: the 'next' link {redact_url(nxt)} repeats a "
                                       "page already read; the archive's pagination loops")
            url, params = nxt, None
        log.info("archive %s: proposal %s, %s to %s, reduction level %s: %d frames in %d pages",
                 self.name, proposal_id, start, end, reduction_level, len(records), pages)
        return records

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

        def attempt():
            # None removes any Authorization a caller's session might add.
            resp = self.session.get(record.url, headers={"Authorization": None},
                                    timeout=self.timeout, stream=True)
            with resp:
                self._check_download_status(resp, what)
                length = resp.headers.get("Content-Length")
                encoded = resp.headers.get("Content-Encoding", "identity") not in ("identity", "")
                out = AtomicFile(final, digest="md5")
                try:
                    for chunk in resp.iter_content(CHUNK_SIZE):
                        out.write(chunk)
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

        out = self._retrying(what, attempt)
        log.debug("downloaded %s (%s)", final.name, out.hexdigest)
        return out

    def _check_download_status(self, resp, what):
        code = resp.status_code
        if code < 400:
            return
        detail = _server_detail(resp)
        resp.close()
        if code == 429:
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            raise RetryableError(f"HTTP 429 rate limited (Retry-After {wait} s)", wait=wait)
        if code >= 500:
            raise RetryableError(f"HTTP {code}: {detail}")
        if code in (401, 403):
            raise ArchiveError(f"{what}: the download link was refused (HTTP {code}: {detail}); "
                               "pre-signed links expire, query the archive again for fresh ones")
        raise ArchiveError(f"{what}: HTTP {code}: {detail}")
