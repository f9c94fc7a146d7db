"""Archive clients: the LCO science archive over HTTP, and a local folder of frames.

Both speak one interface, ``query`` (the frames of a proposal in a date window)
and ``download`` (one frame, md5-checked, written atomically);
:func:`pipekit.downloads.download_frames` fetches many at once.
"""

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import requests

from .atomic import TMP_PREFIX, fsync_dir
from .errors import ArchiveAuthError, ArchiveError, ConfigError
from .http import (RetryableError, backoff_wait, call_with_retries, describe_error, redact,
                   redact_url, retry_after_seconds)

__all__ = [
    "ArchiveRecord",
    "LCOArchive",
    "LocalArchive",
    "archive_from_config",
    "safe_destination",
    "DEFAULT_URL",
]

log = logging.getLogger("pipekit.archive")

#: The LCO science archive API root.
DEFAULT_URL = "https://archive-api.lco.global/"

#: Bytes read per chunk when streaming, hashing or copying a frame.
CHUNK_SIZE = 1 << 20

#: File name endings recognised as frames.
FRAME_SUFFIXES = (".fits.fz", ".fits")

# Lower-case API name -> legacy upper-case aliases, read when the name is absent.
_ALIASES = {
    "observation_date": ("DATE_OBS",),
    "observation_day": ("DAY_OBS",),
    "proposal_id": ("PROPID",),
    "instrument_id": ("INSTRUME",),
    "target_name": ("OBJECT",),
    "site_id": ("SITEID",),
    "telescope_id": ("TELID",),
    "exposure_time": ("EXPTIME",),
    "primary_optical_element": ("FILTER",),
    "configuration_type": ("OBSTYPE",),
    "reduction_level": ("RLEVEL",),
    "request_id": ("REQNUM",),
    "basename": ("BASENAME",),
}

# Header values that mean "no value" in real LCO headers.
_MISSING = {"", "N/A", "UNKNOWN", "NAN", "NONE", "UNSPECIFIED"}


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------

@dataclasses.dataclass
class ArchiveRecord:
    """One frame as the archive describes it.

    Attributes mirror the LCO science archive's ``/frames/`` results; ``filter``
    is the archive's ``primary_optical_element``. ``url`` is a pre-signed
    download link and is left out of ``repr`` (it carries a signature).

    Examples
    --------
    >>> rec = ArchiveRecord.from_api({"id": 7, "basename": "f-e91",
    ...     "filename": "f-e91.fits.fz", "FILTER": "ip",
    ...     "version_set": [{"md5": "0" * 32, "extension": ".fits.fz"}]})
    >>> rec.filter, rec.md5[:4]
    ('ip', '0000')
    """

    id: object
    basename: str
    filename: str
    url: str = dataclasses.field(default=None, repr=False)
    md5: str = None
    reduction_level: int = None
    observation_date: str = None
    observation_day: str = None
    proposal_id: str = None
    instrument_id: str = None
    target_name: str = None
    site_id: str = None
    telescope_id: str = None
    exposure_time: float = None
    filter: str = None
    configuration_type: str = None
    request_id: object = None

    @classmethod
    def from_api(cls, data):
        """Build a record from one ``results`` entry of the archive API.

        Lower-case field names are read first; the legacy upper-case aliases
        (``OBJECT``, ``FILTER``, ``INSTRUME``, ``DATE_OBS``, ``RLEVEL``,
        ``OBSTYPE``, ``PROPID``, ...) fill in what is missing. The md5 comes
        from the latest entry of ``version_set``.

        Parameters
        ----------
        data : dict
            One JSON object from ``/frames/``.

        Returns
        -------
        ArchiveRecord

        Raises
        ------
        ArchiveError
            If the entry has neither ``filename`` nor ``basename``.
        """
        if not isinstance(data, dict):
            raise ArchiveError(f"archive result is not a JSON object: {data!r:.200}")

        def get(name):
            value = data.get(name)
            if _is_missing(value):
                for alias in _ALIASES.get(name, ()):
                    value = data.get(alias)
                    if not _is_missing(value):
                        break
            return None if _is_missing(value) else value

        version = _latest_version(data.get("version_set"))
        basename = get("basename") or ""
        filename = data.get("filename") or ""
        if not filename and basename:
            filename = basename + str((version or {}).get("extension") or "")
        if not filename:
            raise ArchiveError(
                f"archive result id={data.get('id')!r} has no 'filename' or 'basename'; "
                "expected an LCO /frames/ result")
        if not basename:
            basename = _strip_suffix(filename)
        md5 = (version or {}).get("md5") or data.get("md5")
        url = data.get("url") or (version or {}).get("url")
        return cls(
            id=data.get("id"),
            basename=basename,
            filename=filename,
            url=url,
            md5=md5.lower() if isinstance(md5, str) else None,
            reduction_level=_as_int(get("reduction_level")),
            observation_date=_as_str(get("observation_date")),
            observation_day=_as_str(get("observation_day")),
            proposal_id=_as_str(get("proposal_id")),
            instrument_id=_as_str(get("instrument_id")),
            target_name=_as_str(get("target_name")),
            site_id=_as_str(get("site_id")),
            telescope_id=_as_str(get("telescope_id")),
            exposure_time=_as_float(get("exposure_time")),
            filter=_as_str(get("primary_optical_element")),
            configuration_type=_as_str(get("configuration_type")),
            request_id=get("request_id"),
        )


def _latest_version(versions):
    # The archive lists versions newest first; trust 'created' when every entry has it.
    if not isinstance(versions, list) or not versions:
        return None
    versions = [v for v in versions if isinstance(v, dict)]
    if not versions:
        return None
    if all(v.get("created") for v in versions):
        return max(versions, key=lambda v: _parse_time(v["created"]) or dt.datetime.min.replace(
            tzinfo=dt.timezone.utc))
    return versions[0]


def _is_missing(value):
    if value is None:
        return True
    if isinstance(value, str) and value.strip().upper() in _MISSING:
        return True
    return isinstance(value, float) and value != value


def _as_str(value):
    return None if _is_missing(value) else str(value).strip()


def _as_int(value):
    if _is_missing(value):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _as_float(value):
    if _is_missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _strip_suffix(filename):
    for suffix in FRAME_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


_FRACTION_RE = re.compile(r"\.(\d+)")


def _parse_time(value):
    """A datetime, date or ISO string as an aware UTC datetime (None if empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace(" ", "T", 1)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # Python 3.10 accepts only 3 or 6 fractional digits; headers carry 1 to 9.
        text = _FRACTION_RE.sub(lambda m: "." + (m.group(1) + "000000")[:6], text)
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


def _time_param(value, what):
    when = _parse_time(value)
    if value is not None and when is None:
        raise ArchiveError(f"{what} {value!r} is not a date/time; expected ISO 'YYYY-MM-DD HH:MM'")
    return None if when is None else when.strftime("%Y-%m-%dT%H:%M:%S")


# --------------------------------------------------------------------------
# Safe file names
# --------------------------------------------------------------------------

def safe_destination(folder, filename):
    """The path of ``filename`` inside ``folder``, refusing names that leave it.

    Parameters
    ----------
    folder : str or os.PathLike
        The download folder.
    filename : str
        A frame's file name as given by the archive.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ArchiveError
        If the name is empty, absolute, contains a path separator or ``..``,
        a NUL byte, or starts with pipekit's temporary-file prefix.

    Examples
    --------
    >>> safe_destination("downloads", "f-e91.fits.fz").as_posix()
    'downloads/f-e91.fits.fz'
    >>> safe_destination("downloads", "../f-e91.fits.fz")
    Traceback (most recent call last):
    ...
    pipekit.errors.ArchiveError: refusing frame file name '../f-e91.fits.fz': ...
    """
    folder = Path(folder)
    name = filename if isinstance(filename, str) else ""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or os.path.isabs(name)
        or (len(name) > 1 and name[1] == ":")
        or name.startswith(TMP_PREFIX)
    )
    if not bad:
        dest = folder / name
        try:
            bad = dest.resolve().parent != folder.resolve()
        except (OSError, RuntimeError):
            bad = True
    if bad:
        raise ArchiveError(
            f"refusing frame file name {filename!r}: it would leave the download folder "
            f"{str(folder)!r}; expected a plain file name such as 'xxx-e91.fits.fz'")
    return folder / name


def _md5_file(path):
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Header reading (shared with the local archive server)
# --------------------------------------------------------------------------

def _find_frames(folder, recursive=False):
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    found = []
    for path in folder.glob(pattern):
        name = path.name
        if name.startswith(TMP_PREFIX) or name.startswith("."):
            continue
        if name.endswith(FRAME_SUFFIXES) and path.is_file():
            found.append(path)
    return sorted(found)


def _read_header(path):
    """The header that describes a frame: the first HDU that has DATE-OBS."""
    from astropy.io import fits

    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        first = None
        for index in range(3):
            try:
                hdu = hdul[index]
            except IndexError:
                break
            header = hdu.header
            if first is None:
                first = header
            if "DATE-OBS" in header:
                return header.copy()
        return first.copy() if first is not None else fits.Header()


def _header_value(header, key):
    try:
        value = header.get(key)
    except (KeyError, ValueError):
        return None
    return None if _is_missing(value) else value


def _frame_fields(path, header, proposal_id=None):
    """Archive-style lower-case fields of a frame on disk, from its header."""
    path = Path(path)
    basename = _strip_suffix(path.name)
    date_obs = _parse_time(_header_value(header, "DATE-OBS"))
    rlevel = _as_int(_header_value(header, "RLEVEL"))
    if rlevel is None:
        match = re.search(r"-[a-z](\d\d)$", basename)
        rlevel = int(match.group(1)) if match else 0
    day_obs = _as_str(_header_value(header, "DAY-OBS"))
    if day_obs and re.fullmatch(r"\d{8}", day_obs):
        day_obs = f"{day_obs[:4]}-{day_obs[4:6]}-{day_obs[6:]}"
    elif date_obs is not None:
        day_obs = date_obs.date().isoformat()
    return {
        "basename": basename,
        "filename": path.name,
        "reduction_level": rlevel,
        "observation_date": (date_obs.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                             if date_obs is not None else None),
        "observation_day": day_obs,
        "proposal_id": proposal_id or _as_str(_header_value(header, "PROPID")),
        "instrument_id": _as_str(_header_value(header, "INSTRUME")),
        "target_name": _as_str(_header_value(header, "OBJECT")),
        "site_id": _as_str(_header_value(header, "SITEID")),
        "telescope_id": _as_str(_header_value(header, "TELID")),
        "exposure_time": _as_float(_header_value(header, "EXPTIME")),
        "primary_optical_element": _as_str(_header_value(header, "FILTER")),
        "configuration_type": _as_str(_header_value(header, "OBSTYPE")),
        "request_id": _header_value(header, "REQNUM"),
    }


def _in_window(observation_date, start, end):
    when = _parse_time(observation_date)
    if when is None:
        return start is None and end is None
    if start is not None and when < start:
        return False
    return end is None or when <= end


class _Landing:
    """A verified frame in a temporary file of its folder, not yet under its final name.

    :meth:`commit` makes it durable (fsync), renames it and fsyncs the folder:
    Luigi's temporary-then-rename habit, split in two so that
    :func:`pipekit.downloads.download_frames` can stream the next frame while this one
    is synced.
    """

    def __init__(self, final, tmp=None, md5=None):
        self.final = Path(final)
        self.tmp = tmp
        self.md5 = md5
        self._fh = None

    @classmethod
    def open(cls, final):
        final = Path(final)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
        landing = cls(final, Path(tmp))
        landing._fh = os.fdopen(fd, "wb")
        return landing

    def write(self, data):
        self._fh.write(data)

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def commit(self):
        """fsync, rename over the final name, fsync the folder; returns the final path."""
        if self.tmp is None:
            return self.final
        try:
            self.close()
            fd = os.open(self.tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.final)
        except BaseException:
            self.discard()
            raise
        self.tmp = None
        fsync_dir(self.final.parent)
        return self.final

    def discard(self):
        """Remove the temporary file (nothing appears under the final name)."""
        try:
            self.close()
        except OSError:
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None


# --------------------------------------------------------------------------
# The LCO science archive
# --------------------------------------------------------------------------

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
        return self._fetch(record, folder, overwrite=overwrite).commit()

    def _fetch(self, record, folder, overwrite=False):
        """Stream and verify one frame into a temporary file: a :class:`_Landing`."""
        folder = Path(folder)
        final = safe_destination(folder, record.filename)
        if not overwrite and final.is_file():
            return _Landing(final)
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
                digest = hashlib.md5()
                size = 0
                landing = _Landing.open(final)
                try:
                    for chunk in resp.iter_content(CHUNK_SIZE):
                        digest.update(chunk)
                        landing.write(chunk)
                        size += len(chunk)
                    landing.close()
                    if length is not None and not encoded and size != int(length):
                        raise RetryableError(f"truncated body: {size} of {length} bytes")
                    landing.md5 = digest.hexdigest()
                    if expected and landing.md5 != expected:
                        raise RetryableError(f"md5 mismatch: expected {expected}, got {landing.md5}")
                except BaseException:
                    landing.discard()
                    raise
            return landing

        landing = self._retrying(what, attempt)
        log.debug("downloaded %s (%s)", final.name, landing.md5)
        return landing

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


# --------------------------------------------------------------------------
# A folder of frames
# --------------------------------------------------------------------------

class LocalArchive:
    """Frames already on disk, behind the same interface as :class:`LCOArchive`.

    ``query`` reads the FITS headers (``DATE-OBS``, ``PROPID``, ``RLEVEL``)
    of the ``.fits`` and ``.fits.fz`` files in ``folder``; ``download`` copies
    a frame atomically, checking the md5 when the record has one.

    Parameters
    ----------
    folder : str or os.PathLike
        The folder holding the frames.
    recursive : bool
        Also look in sub-folders.
    name : str, optional
        A label for logs.

    Examples
    --------
    >>> archive = LocalArchive("/data/lco/incoming")                # doctest: +SKIP
    >>> records = archive.query(start="2024-05-01", end="2024-05-02")  # doctest: +SKIP
    """

    def __init__(self, folder, recursive=False, name=None):
        self.folder = Path(folder).expanduser()
        self.recursive = bool(recursive)
        self.name = name or str(self.folder)

    def __repr__(self):
        return f"LocalArchive({str(self.folder)!r}, recursive={self.recursive})"

    def query(self, proposal_id=None, start=None, end=None, reduction_level=None, limit=None,
              **filters):
        """The frames of the folder observed in ``[start, end]`` (UTC).

        Parameters
        ----------
        proposal_id : str, optional
            Keep frames whose ``PROPID`` matches.
        start, end : str or datetime, optional
            Window on ``DATE-OBS``; naive datetimes are UTC.
        reduction_level : int, optional
            Keep frames whose ``RLEVEL`` matches.
        limit : ignored
            Accepted for interface compatibility.
        **filters
            Exact matches on other record fields (``site_id``, ``filter`` ...).

        Returns
        -------
        list of ArchiveRecord
            Sorted by observation date. A file whose header cannot be read
            is skipped with a warning.

        Raises
        ------
        ArchiveError
            The folder does not exist.
        """
        if not self.folder.is_dir():
            raise ArchiveError(f"local archive folder {str(self.folder)!r} does not exist")
        t0 = _parse_time(start)
        t1 = _parse_time(end)
        if start is not None and t0 is None or end is not None and t1 is None:
            raise ArchiveError(f"local archive query: start {start!r} / end {end!r} are not "
                               "ISO dates ('YYYY-MM-DD HH:MM')")
        records = []
        for path in _find_frames(self.folder, self.recursive):
            try:
                header = _read_header(path)
            except Exception as exc:  # one unreadable file must not hide the others
                log.warning("local archive: cannot read the header of %s (%s); skipped",
                            path, describe_error(exc))
                continue
            fields = _frame_fields(path, header)
            if proposal_id is not None and fields["proposal_id"] != proposal_id:
                continue
            if reduction_level is not None and fields["reduction_level"] != int(reduction_level):
                continue
            if not _in_window(fields["observation_date"], t0, t1):
                continue
            fields["id"] = str(path.relative_to(self.folder))
            fields["url"] = path.resolve().as_uri()
            record = ArchiveRecord.from_api(fields)
            if any(getattr(record, k, None) != v for k, v in filters.items()):
                continue
            records.append(record)
        records.sort(key=lambda r: (r.observation_date or "", r.filename))
        log.info("local archive %s: proposal %s, %s to %s: %d frames", self.name, proposal_id,
                 start, end, len(records))
        return records

    def download(self, record, folder, overwrite=False):
        """Copy one frame into ``folder`` atomically (md5-checked when known).

        Parameters
        ----------
        record : ArchiveRecord
            A record from :meth:`query`.
        folder : str or os.PathLike
        overwrite : bool

        Returns
        -------
        pathlib.Path

        Raises
        ------
        ArchiveError
            Unsafe file name, missing source, or md5 mismatch.
        """
        return self._fetch(record, folder, overwrite=overwrite).commit()

    def _fetch(self, record, folder, overwrite=False):
        folder = Path(folder)
        final = safe_destination(folder, record.filename)
        source = self._source(record)
        if final.exists() and final.resolve() == source.resolve():
            return _Landing(final)
        if not overwrite and final.is_file():
            return _Landing(final)
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        landing = None
        try:
            landing = _Landing.open(final)
            with open(source, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK_SIZE), b""):
                    digest.update(chunk)
                    landing.write(chunk)
            landing.close()
        except OSError as exc:
            if landing is not None:
                landing.discard()
            raise ArchiveError(f"cannot copy {str(source)!r} to {str(final)!r}: {exc}") from exc
        landing.md5 = digest.hexdigest()
        if record.md5 and landing.md5 != record.md5.lower():
            landing.discard()
            raise ArchiveError(f"copy of {str(source)!r}: md5 mismatch, expected {record.md5}, "
                               f"got {landing.md5}")
        return landing

    def _source(self, record):
        if record.url and record.url.startswith("file:"):
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(record.url).path))
        else:
            path = self.folder / str(record.id or record.filename)
        if not path.is_file():
            raise ArchiveError(f"local archive: frame {record.filename!r} not found at "
                               f"{str(path)!r}")
        return path


# --------------------------------------------------------------------------
# From configuration
# --------------------------------------------------------------------------

def _cfg(cfg, key, default=None):
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def archive_from_config(cfg, **kwargs):
    """The archive client an ``archives.<name>`` entry of ``data_download.yaml`` asks for.

    Parameters
    ----------
    cfg : ArchiveConfig or dict
        Needs ``url``; ``token_envvar``, ``name``, ``timeout`` (read timeout,
        seconds) and ``retries`` are used when present.
        An ``http(s)://`` URL gives an :class:`LCOArchive`; a ``file://`` URL
        or a plain folder path gives a :class:`LocalArchive`.
    **kwargs
        Passed to the client (``timeout``, ``retries`` ...).

    Returns
    -------
    LCOArchive or LocalArchive

    Raises
    ------
    ConfigError
        The URL is empty or of an unknown scheme.

    Examples
    --------
    >>> archive_from_config({"name": "lco", "url": "https://archive-api.lco.global",
    ...                      "token_envvar": "LCO_ARCHIVE_TOKEN"})
    LCOArchive(url='https://archive-api.lco.global/', token_envvar='LCO_ARCHIVE_TOKEN', \
timeout=(5, 60), retries=5)
    """
    name = _cfg(cfg, "name")
    url = str(_cfg(cfg, "url") or "").strip()
    if not url:
        raise ConfigError(f"archive {name!r}: 'url' is empty; expected an http(s):// archive "
                          "API root, a file:// URL or a folder path")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        timeout, retries = _cfg(cfg, "timeout"), _cfg(cfg, "retries")
        if timeout is not None:  # the config's read timeout; connecting never waits longer
            kwargs.setdefault("timeout", (min(5.0, float(timeout)), float(timeout)))
        if retries is not None:
            kwargs.setdefault("retries", int(retries))
        return LCOArchive(url, token_envvar=_cfg(cfg, "token_envvar"), name=name, **kwargs)
    if parts.scheme == "file":
        folder = urllib.request.url2pathname(parts.path)
        return LocalArchive(folder, name=name, **kwargs)
    if not parts.scheme or (len(parts.scheme) == 1 and os.name == "nt"):
        return LocalArchive(url, name=name, **kwargs)
    raise ConfigError(f"archive {name!r}: url {url!r} has an unknown scheme {parts.scheme!r}; "
                      "expected http(s)://, file:// or a folder path")
