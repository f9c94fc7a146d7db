"""What the local archive server lists, and how: permissions, filters, ordering, pagination.

The rules follow the real LCO science archive (``observatorycontrolsystem/science-archive``):
who sees which frame (``archive/frames/views.py``, ``FrameViewSet.get_queryset``), which
filters exist (``archive/frames/filters.py``), and when ``count`` is exact or only an
estimate, with DRF's ``next`` cut short by an estimate (``archive/frames/pagination.py``).
"""

import base64
import dataclasses
import datetime as dt
from pathlib import Path

from .. import lco
from ..archive.records import record_int

__all__ = ["ServedFrame", "DEFAULT_LIMIT", "MAX_LIMIT", "EXACT_COUNT_SPAN",
           "EXACT_COUNT_SPAN_NARROWED", "ORDERING_FIELDS", "LEGACY_ALIASES", "is_visible",
           "is_small_query", "select_frames", "paginate", "paginate_cursor", "frame_record", "lookup",
           "public_date", "new_version"]

# archive/settings.py: PAGINATION_DEFAULT_LIMIT and PAGINATION_MAX_LIMIT (a larger
# ``limit`` is clamped silently).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

# archive/frames/pagination.py, LimitedLimitOffsetPagination.paginate_queryset: the count
# is exact ("small_query") for a start..end of at most 7 days, or 9 weeks when proposal_id
# or target_name_exact narrows it, or with request_id / observation_id / basename_exact;
# otherwise it is the query planner's estimate, with ``count_estimated: true``.
EXACT_COUNT_SPAN = dt.timedelta(days=7)
EXACT_COUNT_SPAN_NARROWED = dt.timedelta(weeks=9)

# archive/frames/filters.py: OrderingFilter fields.
ORDERING_FIELDS = ("id", "basename", "observation_date", "primary_optical_element",
                   "configuration_type", "proposal_id", "instrument_id", "target_name",
                   "reduction_level", "exposure_time")

# Lower-case field -> legacy alias, as the real archive still returns them.
LEGACY_ALIASES = {
    "observation_date": "DATE_OBS",
    "observation_day": "DAY_OBS",
    "proposal_id": "PROPID",
    "instrument_id": "INSTRUME",
    "target_name": "OBJECT",
    "site_id": "SITEID",
    "telescope_id": "TELID",
    "exposure_time": "EXPTIME",
    "primary_optical_element": "FILTER",
    "configuration_type": "OBSTYPE",
    "reduction_level": "RLEVEL",
    "request_id": "REQNUM",
    "public_date": "L1PUBDAT",
}

# Query parameters that filter by exact value (the archive's field names).
EXACT_FILTERS = ("proposal_id", "instrument_id", "site_id", "telescope_id",
                 "primary_optical_element", "configuration_type", "target_name_exact",
                 "basename_exact", "request_id", "observation_id")


@dataclasses.dataclass
class ServedFrame:
    """One frame the server serves: its file, the md5 of its bytes, its fields, its versions.

    ``versions`` is newest first, as the archive's ``version_set`` (``Version.Meta.ordering
    = ['-created']``); a reprocessed frame keeps its ``id`` and ``basename``.
    """

    path: Path
    size: int
    md5: str
    fields: dict
    versions: list = dataclasses.field(default_factory=list)


def is_visible(frame, proposals, now):
    """Whether a caller may see ``frame`` (``FrameViewSet.get_queryset``).

    Parameters
    ----------
    frame : ServedFrame
    proposals : set of str or None
        The proposals the caller's token belongs to; None for a caller who sees
        everything (a superuser, or a server with no permissions configured); an
        empty set for an anonymous caller.
    now : datetime.datetime
        Frames whose ``public_date`` is before ``now`` are public (strictly before).
    """
    if proposals is None:
        return True
    if frame.fields.get("proposal_id") in proposals:
        return True
    public = lco.parse_utc(frame.fields.get("public_date"))
    return public is not None and public < now


def is_small_query(params, bounds, exact_span=EXACT_COUNT_SPAN,
                   narrowed_span=EXACT_COUNT_SPAN_NARROWED):
    """Whether the archive counts this ``/frames/`` query exactly (``small_query``).

    Parameters
    ----------
    params : dict
        The query parameters.
    bounds : dict
        ``start`` / ``end`` parsed to datetimes, when given.
    exact_span, narrowed_span : datetime.timedelta
        Longest window counted exactly, without and with ``proposal_id`` (or
        ``target_name_exact``).
    """
    if any(params.get(key) for key in ("request_id", "observation_id", "basename_exact")):
        return True
    if "start" not in bounds or "end" not in bounds:
        return False
    span = bounds["end"] - bounds["start"]
    if span <= exact_span:
        return True
    narrowed = any(params.get(key) for key in ("proposal_id", "target_name_exact"))
    return narrowed and span <= narrowed_span


def _ordering_key(name):
    def key(frame):
        value = frame.fields.get(name)
        # None sorts first ascending, as PostgreSQL puts NULLs last descending.
        return (value is not None, value if value is not None else 0)
    return key


def select_frames(frames, params, bounds, proposals, now):
    """The frames a query selects, in the order asked (default: newest observation first).

    Parameters
    ----------
    frames : list of ServedFrame
    params : dict
        The query parameters (filters, ``ordering``).
    bounds : dict
        ``start`` / ``end`` parsed to datetimes (``observation_date__gte`` / ``__lte``).
    proposals : set of str or None
        As for :func:`is_visible`.
    now : datetime.datetime

    Returns
    -------
    list of ServedFrame

    Raises
    ------
    ValueError
        A bad ``reduction_level``; ``args[0]`` is the JSON body of a 400 answer.
    """
    level = params.get("reduction_level", params.get("RLEVEL"))
    if level not in (None, "") and record_int(level) is None:
        raise ValueError({"reduction_level": ["Enter a number."]})
    selected = []
    for frame in frames:
        f = frame.fields
        when = lco.parse_utc(f["observation_date"])
        if when is None:  # the archive excludes frames without an observation date
            continue
        if "start" in bounds and when < bounds["start"]:
            continue
        if "end" in bounds and when > bounds["end"]:
            continue
        if level not in (None, "") and f["reduction_level"] != record_int(level):
            continue
        if not all(str(f.get(key.replace("_exact", ""))) == params[key]
                   for key in EXACT_FILTERS if key in params):
            continue
        if "basename" in params and params["basename"] not in f["basename"]:
            continue
        if "target_name" in params and params["target_name"].lower() not in str(
                f.get("target_name") or "").lower():
            continue
        if not is_visible(frame, proposals, now):
            continue
        selected.append(frame)
    ordering = [o.strip() for o in params.get("ordering", "").split(",") if o.strip()]
    ordering = [o for o in ordering if o.lstrip("-") in ORDERING_FIELDS]
    if not ordering:  # Frame.Meta.ordering
        ordering = ["-observation_date", "-id"]
    for item in reversed(ordering):  # stable sorts, last key first
        selected.sort(key=_ordering_key(item.lstrip("-")), reverse=item.startswith("-"))
    return selected


def paginate(selected, params, small_query, estimate_factor, count_error, default_limit,
             max_limit, link):
    """One limit/offset page, as DRF's ``LimitOffsetPagination`` with the archive's count.

    An estimated count changes more than the number: DRF's ``next`` is null once
    ``offset + limit >= count``, and an ``offset`` beyond ``count`` gives no results,
    so an estimate that is too low truncates the listing.

    Parameters
    ----------
    selected : list of ServedFrame
        From :func:`select_frames`.
    params : dict
        The query parameters (``limit``, ``offset``).
    small_query : bool
        From :func:`is_small_query`: the count is exact.
    estimate_factor : float
        The estimate is ``int(true count * estimate_factor)``.
    count_error : int
        Added to any count (a fault).
    default_limit, max_limit : int
    link : callable
        ``link(limit, offset)``: the URL of another page.

    Returns
    -------
    (dict, list of ServedFrame)
        ``{count, count_estimated, next, previous}`` and the page's frames.

    Raises
    ------
    ValueError
        A bad ``limit`` or ``offset``; ``args[0]`` is the JSON body of a 400 answer.
    """
    try:
        limit = int(params.get("limit", default_limit))
        offset = max(int(params.get("offset", 0)), 0)
    except ValueError:
        raise ValueError({"limit": ["A valid integer is required."]}) from None
    limit = min(limit, max_limit) if limit > 0 else default_limit
    true_count = len(selected)
    count = true_count if small_query else int(true_count * estimate_factor)
    count = max(0, count + count_error)
    page = [] if count == 0 or offset > count else selected[offset: offset + limit]
    meta = {
        "count": count,
        "count_estimated": not small_query,
        "next": link(limit, offset + limit) if offset + limit < count else None,
        "previous": link(limit, max(0, offset - limit)) if offset > 0 else None,
    }
    return meta, page


def frame_record(frame, link):
    """One ``/frames/`` result (``Frame.as_dict``): fields, legacy aliases, ``version_set``.

    Parameters
    ----------
    frame : ServedFrame
    link : str
        The signed download link of the frame's newest version.

    Returns
    -------
    dict
    """
    fields = frame.fields
    # Only the newest version's bytes are on disk: older versions keep their md5
    # (their links would serve the newest bytes, which no client should fetch).
    record = {
        "id": fields["id"],
        "basename": fields["basename"],
        "area": None,
        "related_frames": [],
        "version_set": [dict(v, url=link) for v in frame.versions],
        "filename": frame.path.name,
        "url": link,
    }
    for name in ("reduction_level", "observation_day", "observation_date", "proposal_id",
                 "instrument_id", "target_name", "site_id", "telescope_id", "exposure_time",
                 "primary_optical_element", "public_date", "configuration_type",
                 "observation_id", "request_id"):
        record[name] = fields.get(name)
    for name, alias in LEGACY_ALIASES.items():
        record[alias] = fields.get(name)
    return record


def lookup(mapping, path, header):
    """A per-frame setting: ``mapping[file name or basename]``, or ``mapping(path, header)``."""
    if callable(mapping):
        return mapping(path, header)
    if isinstance(mapping, dict):
        return mapping.get(path.name) or mapping.get(path.name.split(".")[0])
    return None


def public_date(explicit, observation_date, proprietary_days):
    """A frame's ``public_date`` (ISO, ``Z``): as given, else observed + the proprietary period."""
    when = lco.parse_utc(explicit)
    if when is None:
        observed = lco.parse_utc(observation_date)
        if observed is None:
            return None
        when = observed + dt.timedelta(days=proprietary_days)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_version(version_id, md5, filename, created=None):
    """One ``version_set`` entry (``Version.as_dict`` without its link), created now by default."""
    if created is None:
        created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"id": version_id, "created": created, "key": md5[:16], "md5": md5,
            "extension": lco.frame_suffix(filename)}


def paginate_cursor(selected, params, default_limit, max_limit, link):
    """One page as DRF's ``CursorPagination`` (``pagination_style=cursor``): no count.

    The cursor carries the last frame's id (base64, as DRF's opaque cursors), so a
    page follows the previous one whatever the listing's length: nothing to count,
    nothing to estimate.

    Parameters
    ----------
    selected : list of ServedFrame
        From :func:`select_frames`, in the query's ordering.
    params : dict
        The query parameters (``limit``, ``cursor``).
    default_limit, max_limit : int
    link : callable
        ``link(limit, cursor)``: the URL of another page.

    Returns
    -------
    (dict, list of ServedFrame)
        ``{next, previous}`` and the page's frames.

    Raises
    ------
    ValueError
        A bad ``limit`` or cursor; ``args[0]`` is the JSON body of a 404/400 answer.
    """
    try:
        limit = int(params.get("limit", default_limit))
    except ValueError:
        raise ValueError({"limit": ["A valid integer is required."]}) from None
    limit = min(limit, max_limit) if limit > 0 else default_limit
    start = 0
    if params.get("cursor"):
        try:
            after = int(base64.urlsafe_b64decode(params["cursor"].encode()).decode()[2:])
            start = 1 + next(i for i, f in enumerate(selected) if f.fields.get("id") == after)
        except (ValueError, StopIteration, UnicodeDecodeError):
            raise ValueError({"detail": "Invalid cursor"}) from None
    page = selected[start: start + limit]
    more = start + limit < len(selected)
    cursor = base64.urlsafe_b64encode(f"p={page[-1].fields.get('id')}".encode()).decode() if page else None
    meta = {"next": link(limit, cursor) if more and cursor else None,
            "previous": None}
    return meta, page
