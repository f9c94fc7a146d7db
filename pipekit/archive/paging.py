"""How a query is cut so the LCO archive lists every frame: windows short enough to count.

The archive counts a ``/frames/`` query exactly only over a short window; past it the
count is an estimate, and an estimate too low cuts the listing short (DRF's ``next`` goes
null and offsets past the estimate return nothing). :func:`split_window` cuts a long
window into ones the archive counts exactly; :func:`exact_span` says how long they may be.
"""

import datetime as dt

__all__ = ["EXACT_COUNT_SPAN", "EXACT_COUNT_SPAN_WITH_PROPOSAL", "MIN_SPLIT_SPAN",
           "MAX_LIMIT", "EXACT_FILTERS", "exact_span", "split_window"]

# The real archive's rules, from observatorycontrolsystem/science-archive
# archive/frames/pagination.py (LimitedLimitOffsetPagination.paginate_queryset): the
# count is exact ("small_query") when end - start <= 7 days, or <= 9 weeks when
# proposal_id (or target_name_exact) is given, or whenever request_id, observation_id or
# basename_exact is given; otherwise, or when counting takes over 1.5 s, it is an estimate
# flagged ``count_estimated: true``.
EXACT_COUNT_SPAN = dt.timedelta(days=7)
EXACT_COUNT_SPAN_WITH_PROPOSAL = dt.timedelta(weeks=9)
#: Filters that make any window counted exactly.
EXACT_FILTERS = ("request_id", "observation_id", "basename_exact")
#: A window still estimated (the 1.5 s count timeout) is halved down to this span;
#: below it the query fails rather than report a listing it cannot vouch for.
MIN_SPLIT_SPAN = dt.timedelta(days=1)
# archive/settings.py: PAGINATION_MAX_LIMIT (a larger limit is clamped silently).
MAX_LIMIT = 1000


def exact_span(proposal_id=None, filters=None):
    """The longest window the archive counts exactly for a query.

    Parameters
    ----------
    proposal_id : str, optional
    filters : dict, optional
        The query's other filters.

    Returns
    -------
    datetime.timedelta or None
        None when any window is counted exactly (``request_id`` ...).

    Examples
    --------
    >>> exact_span("KEY2024A-001").days, exact_span().days
    (63, 7)
    >>> exact_span(filters={"request_id": 42}) is None
    True
    """
    filters = filters or {}
    if any(filters.get(key) not in (None, "") for key in EXACT_FILTERS):
        return None
    if proposal_id or filters.get("target_name_exact"):
        return EXACT_COUNT_SPAN_WITH_PROPOSAL
    return EXACT_COUNT_SPAN


def split_window(start, end, span):
    """Cut ``[start, end]`` into consecutive windows of at most ``span``.

    Neighbours share their boundary instant (the archive's ``start`` and ``end`` are
    both inclusive), so a frame observed exactly there is listed twice and must be
    kept once (by id).

    Parameters
    ----------
    start, end : datetime.datetime
    span : datetime.timedelta

    Returns
    -------
    list of (datetime.datetime, datetime.datetime)
        In time order; one window when ``end - start <= span``.

    Examples
    --------
    >>> t0 = dt.datetime(2024, 5, 1)
    >>> [(a.day, b.day) for a, b in split_window(t0, t0 + dt.timedelta(days=10),
    ...                                          dt.timedelta(days=7))]
    [(1, 8), (8, 11)]
    """
    if span <= dt.timedelta(0):
        raise ValueError(f"window span must be positive, not {span}")
    windows = []
    left = start
    while True:
        right = min(end, left + span)
        windows.append((left, right))
        if right >= end:
            return windows
        left = right
