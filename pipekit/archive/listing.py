"""Listing one query window of the LCO archive, page by page, and vouching for it.

Two ways, both bounded by the caller's page reader (its page limit and deadline):
limit/offset pages checked against the archive's exact ``count``
(:func:`list_by_offset`), and cursor pages, which need no count
(:func:`list_by_cursor`, the archive's ``pagination_style=cursor``).
"""

import logging
import urllib.parse

from ..errors import ArchiveError
from ..http import redact_url
from .records import ArchiveRecord

__all__ = ["WINDOW_ATTEMPTS", "list_by_offset", "list_by_cursor"]

log = logging.getLogger("pipekit.archive")

#: Times a window is listed again when its frames changed while it was paged.
WINDOW_ATTEMPTS = 3


def _key(record):
    return record.id if record.id is not None else record.filename


def list_by_offset(read, url, params, label, archive_name):
    """Every frame of one window by limit/offset pages, or None if its count is estimated.

    Pages are read until an empty or short page and until they hold ``count``
    frames; ``next`` links are not followed (they end early on an estimate). A
    listing shorter than the count is read again, up to :data:`WINDOW_ATTEMPTS`.

    Parameters
    ----------
    read : callable
        ``read(url, params, what)`` -> one page's JSON object (with a ``results`` list).
    url : str
        The ``/frames/`` endpoint.
    params : dict
        The window's query (``start``, ``end``, ``limit``, filters).
    label, archive_name : str
        For messages.

    Returns
    -------
    list of ArchiveRecord or None
        None when the archive gave only an estimated count (``count_estimated``).

    Raises
    ------
    ArchiveError
        The pages loop, run far past the count, or stay short of it.
    """
    limit = int(params["limit"])
    for attempt_number in range(1, WINDOW_ATTEMPTS + 1):
        got, offset, count = {}, 0, None
        while True:
            what = f"archive query {redact_url(url)} ({label}, offset {offset})"
            data = read(url, dict(params, offset=offset), what)
            if data.get("count_estimated") is True:
                return None
            count = data.get("count")
            results = data["results"]
            new = 0
            for item in results:
                record = ArchiveRecord.from_api(item)
                if _key(record) not in got:
                    got[_key(record)] = record
                    new += 1
            if results and not new:
                raise ArchiveError(f"{what}: the page repeats only frames already read; "
                                   "the archive's pagination loops")
            offset += len(results)
            if isinstance(count, int) and offset > count + 10 * max(limit, len(results)):
                raise ArchiveError(f"{what}: the archive keeps listing frames far past "
                                   f"the {count} it counts; its pagination does not end")
            if not results or (len(results) < limit and isinstance(count, int)
                               and offset >= count):
                break
        if not isinstance(count, int) or len(got) >= count:
            return list(got.values())
        log.warning("archive %s: %s listed %d frames of the %d it counts (frames changed "
                    "while paging?); listing it again (%d of %d)", archive_name, label,
                    len(got), count, attempt_number, WINDOW_ATTEMPTS)
    raise ArchiveError(f"archive {archive_name}: {label}: listed {len(got)} frames of the "
                       f"{count} the archive counts, {WINDOW_ATTEMPTS} times; the listing "
                       "is incomplete, so it is not used")


def list_by_cursor(read, url, params, label, archive_name):
    """Every frame of one window by cursor pages, or None when the archive has none.

    The archive's ``pagination_style=cursor`` pages carry no count: each ``next``
    continues after the last frame listed, so nothing is estimated and nothing
    cut short. An answer with a ``count`` means the server ignored the style.

    Parameters
    ----------
    read, url, params, label, archive_name
        As :func:`list_by_offset`.

    Returns
    -------
    list of ArchiveRecord or None

    Raises
    ------
    ArchiveError
        The pages loop, or ``next`` points at another server.
    """
    params = dict(params, pagination_style="cursor")
    origin = urllib.parse.urlsplit(url)[:2]
    got = {}
    while url:
        what = f"archive query {redact_url(url)} ({label}, cursor pages, {len(got)} read)"
        data = read(url, params, what)
        if "count" in data or "count_estimated" in data:
            return None
        records = {_key(r): r for r in map(ArchiveRecord.from_api, data["results"])}
        if records and not records.keys() - got.keys():
            raise ArchiveError(f"{what}: the page repeats only frames already read; "
                               "the archive's pagination loops")
        got.update(records)
        url, params = data.get("next"), None
        if url and urllib.parse.urlsplit(url)[:2] != origin:
            raise ArchiveError(f"{what}: the next page is on another server "
                               f"({redact_url(url)}); not followed")
    log.info("archive %s: %s listed by cursor pages (the archive could not count it): "
             "%d frames", archive_name, label, len(got))
    return list(got.values())
