"""The time window of each download query: from where the last successful one ended.

A nightly run with ``start_datetime: none`` used to ask for "the last 24 h", so a night
whose run failed lost its frames. :func:`query_window` starts instead from the end of the
last fully successful query of that archive and proposal (kept by :class:`QueryState`
beside the frame list) minus an overlap; the frame list keeps the overlap from being
downloaded twice.
"""

import datetime as dt
import json
import logging
from pathlib import Path

from .. import lco
from ..atomic import write_text_atomic

__all__ = ["OVERLAP", "FIRST_RUN_LOOKBACK_DAYS", "QueryState", "query_state_path",
           "query_window", "proposal_window", "record_successes"]

log = logging.getLogger("pipekit.archive")

#: Each window starts this long before the previous one ended: frames the archive
#: ingests late (observed just before the last run, listed just after) are still found.
OVERLAP = dt.timedelta(hours=1)
#: Days looked back by the first run, which has no previous query to start from.
FIRST_RUN_LOOKBACK_DAYS = 1.0


def query_state_path(frame_list):
    """Where the query state of a frame list is kept: ``<frame_list>.state.json``."""
    return Path(str(frame_list) + ".state.json")


def query_window(last_end, start=None, end=None, now=None,
                 first_run_lookback_days=FIRST_RUN_LOOKBACK_DAYS, overlap=OVERLAP):
    """The UTC window of one archive/proposal query.

    Parameters
    ----------
    last_end : datetime or None
        End of the last fully successful query (:meth:`QueryState.last_end`).
    start, end : datetime, optional
        ``start_datetime`` / ``end_datetime`` of ``data_download.yaml``; an explicit
        ``start`` is used as it is.
    now : datetime, optional
        "Now" (UTC), the end when ``end`` is not given; default the current time.
    first_run_lookback_days : float
        How far back to start when there is no ``last_end``.
    overlap : datetime.timedelta
        How far before ``last_end`` to start.

    Returns
    -------
    (datetime, datetime)
        Aware UTC start and end, start before end.

    Examples
    --------
    >>> t = dt.datetime(2024, 5, 3, 8, tzinfo=dt.timezone.utc)
    >>> s, e = query_window(t - dt.timedelta(days=2), now=t)
    >>> (e - s) == dt.timedelta(days=2, hours=1)
    True
    """
    end = lco.parse_utc(end) or lco.parse_utc(now) or dt.datetime.now(dt.timezone.utc)
    if start is not None:
        return lco.parse_utc(start), end
    if last_end is None:
        return end - dt.timedelta(days=float(first_run_lookback_days)), end
    begin = last_end - overlap
    return (begin if begin < end else end - overlap), end


class QueryState:
    """The end of the last fully successful query, per archive and proposal.

    A small JSON file beside the frame list (:func:`query_state_path`), rewritten
    atomically. An end only moves forward: a catch-up run over an older window never
    makes the next nightly run skip frames.

    Parameters
    ----------
    path : str or os.PathLike
        The state file (need not exist yet).

    Examples
    --------
    >>> state = QueryState("logs/frame_list.txt.state.json")           # doctest: +SKIP
    >>> state.record("lco", "KEY2024A-001", end)                        # doctest: +SKIP
    >>> state.last_end("lco", "KEY2024A-001")                           # doctest: +SKIP
    """

    FORMAT = 1

    def __init__(self, path):
        self.path = Path(path)
        self.queries = self._read()

    def __repr__(self):
        return f"QueryState({str(self.path)!r}, {len(self.queries)} queries)"

    @staticmethod
    def key(archive, proposal):
        """The state's key of an archive and proposal (``*`` for every proposal)."""
        return f"{archive}\t{proposal if proposal is not None else '*'}"

    def _read(self):
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            queries = data["queries"]
            if not isinstance(queries, dict):
                raise TypeError("'queries' is not a mapping")
            return queries
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("query state %s is unreadable (%s): windows start from the first-run "
                        "lookback; set start_datetime to cover any gap", self.path, exc)
            return {}

    def last_end(self, archive, proposal):
        """End of the last fully successful query, or None (aware UTC datetime)."""
        entry = self.queries.get(self.key(archive, proposal)) or {}
        return lco.parse_utc(entry.get("end"))

    def record(self, archive, proposal, end):
        """Note a fully successful query (and download) of ``archive``/``proposal`` up to ``end``.

        Written at once, atomically; a later ``end`` than the recorded one only.
        """
        end = lco.parse_utc(end)
        self.queries = self._read()  # another process may have recorded meanwhile
        before = self.last_end(archive, proposal)
        if before is not None and before >= end:
            return
        self.queries[self.key(archive, proposal)] = {
            "end": end.isoformat(),
            "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": self.FORMAT, "queries": self.queries}, indent=1,
                          sort_keys=True)
        write_text_atomic(self.path, text + "\n")


def proposal_window(config, state, archive, proposal, now=None):
    """The window of one archive/proposal query of a ``data_download.yaml``.

    Parameters
    ----------
    config : pipekit.config.DownloadConfig
        Its ``start_datetime``, ``end_datetime`` and ``first_run_lookback_days``.
    state : QueryState
    archive : str
        The archive's name.
    proposal : str or None
    now : datetime, optional

    Returns
    -------
    (datetime, datetime)
    """
    lookback = getattr(config, "first_run_lookback_days", None)
    return query_window(state.last_end(archive, proposal), config.start_datetime,
                        config.end_datetime, now,
                        FIRST_RUN_LOOKBACK_DAYS if lookback is None else lookback)


def record_successes(state, archive, queried, result):
    """Record the end of each query whose frames all landed (or were already there).

    Parameters
    ----------
    state : QueryState
    archive : str
        The archive's name.
    queried : dict
        Proposal -> (window end, records found), for the queries that succeeded.
    result : DownloadResult
        The download of those records. A frame refused for good (an unsafe file
        name) does not hold a window back: no retry could fetch it.

    Returns
    -------
    list
        The proposals recorded.
    """
    refused = {name for name, _ in result.refused}
    failed = {name for name, _ in result.failures} - refused
    done = []
    for proposal, (end, records) in queried.items():
        if not failed.intersection(r.filename for r in records):
            state.record(archive, proposal, end)
            done.append(proposal)
    return done
