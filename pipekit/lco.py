"""LCO conventions in one place: every other module asks here.

What a frame file is called and how a folder's frames are listed, what "no
value" looks like in a header or an archive record, which instrument class a
camera belongs to, what LCO file names look like, how a name becomes a folder
or file name, and how angles and times are parsed.
"""

import datetime as dt
import hashlib
import math
import os
import re
from pathlib import Path

__all__ = [
    "FRAME_SUFFIXES", "NO_VALUE_STRINGS", "INSTRUMENT_CLASSES",
    "frame_suffix", "frame_stem", "is_frame_name", "list_frames",
    "is_no_value", "clean_str", "clean_float", "clean_int", "banzai_zeropoint",
    "BANZAI_FAILED",
    "instrument_class", "reduction_level_from_name", "LCO_FILENAME_RE",
    "slug", "distinct_slug", "name_hash", "SLUG_HASH_LENGTH",
    "parse_ra", "parse_dec", "format_ra", "format_dec", "parse_utc", "mjd_utc",
]

#: FITS frame file suffixes, longest first so that ``x.fits.fz`` is not read as ``.fits``.
#: Matching is case-insensitive (``.FITS`` is a frame too).
FRAME_SUFFIXES = (".fits.fz", ".fits.gz", ".fits", ".fit", ".fts")

#: Strings that real headers and archive records use to say "no value"
#: (compared after ``strip().upper()``).
NO_VALUE_STRINGS = frozenset({
    "", "N/A", "NA", "UNKNOWN", "NAN", "NONE", "NULL", "NOTPRESENT", "UNSPECIFIED", "-",
})

#: Instrument class from the first two letters of ``INSTRUME`` (LCO camera naming).
INSTRUMENT_CLASSES = {
    "fa": "sinistro",
    "fl": "sinistro",
    "kb": "sbig",
    "sq": "qhy",
    "ep": "muscat",
    "fs": "spectral",
    "en": "floyds",
}

#: An LCO frame file name: ``{site}{telescope}-{instrument}-{YYYYMMDD}-{number}-{type}{level}``
#: followed by a frame suffix, e.g. ``lsc1m005-fa15-20240501-0042-e91.fits.fz``.
LCO_FILENAME_RE = re.compile(
    r"^(?P<site>[a-z]{3})(?P<telescope>\d[a-z]\d{3})-(?P<instrument>[a-z]{2}\d{2})-"
    r"(?P<day>\d{8})-(?P<number>\d{4})-(?P<type>[a-z])(?P<level>\d\d)$", re.IGNORECASE)

# The reduction level alone, for names that follow only the tail of the pattern.
_LEVEL_TAIL_RE = re.compile(r"-[a-z](\d\d)$", re.IGNORECASE)


# ---- frame files ------------------------------------------------------------------

def frame_suffix(name):
    """The frame suffix of a file name as written in it, or None when it is no frame.

    Examples
    --------
    >>> frame_suffix("a-e91.FITS.fz"), frame_suffix("notes.txt")
    ('.FITS.fz', None)
    """
    name = _basename(name)
    lower = name.lower()
    for suffix in FRAME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[len(name) - len(suffix):]
    return None


def _basename(name):
    """``Path(name).name``, ten times faster (it runs for every frame of big datasets)."""
    if type(name) is str and "/" not in name:
        return name
    return os.path.basename(os.fspath(name).rstrip("/"))


def is_frame_name(name):
    """True when ``name`` is a frame file's name: a FITS suffix, not hidden, not temporary."""
    name = _basename(name)
    return not name.startswith(".") and frame_suffix(name) is not None


def frame_stem(name):
    """A frame's name without its FITS suffix (``...-e91.fits.fz`` -> ``...-e91``).

    Examples
    --------
    >>> frame_stem("lsc1m005-fa15-20240501-0042-e91.fits.fz")
    'lsc1m005-fa15-20240501-0042-e91'
    """
    name = _basename(name)
    suffix = frame_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def list_frames(folder, recursive=False):
    """The frame files in ``folder``, sorted by path.

    A frame is a regular file whose name ends in one of `FRAME_SUFFIXES`, in
    any case (``.fits``, ``.FITS``, ``.fit``, ``.fts``, ``.fits.fz``,
    ``.fits.gz``). Anything else is not a frame and is not listed: other
    suffixes, hidden files (a leading dot, which includes pipekit's own
    temporaries), folders and dangling links.

    Parameters
    ----------
    folder : str or os.PathLike
        A folder; a missing folder has no frames.
    recursive : bool
        Also list frames in sub-folders (hidden sub-folders are skipped).

    Returns
    -------
    list of pathlib.Path
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    if not recursive:  # one scandir: the file type comes with the name, no stat per file
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if is_frame_name(e.name) and e.is_file()]
        return [folder / name for name in sorted(names)]  # the order of sorted paths
    found = []
    for path in folder.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(folder).parts[:-1]):
            continue
        if is_frame_name(path.name) and path.is_file():
            found.append(path)
    return sorted(found)


# ---- "no value" -------------------------------------------------------------------

def is_no_value(value):
    """True for None, a non-finite float, astropy's ``Undefined`` or a "no value" string."""
    if value is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    if isinstance(value, str):
        return value.strip().upper() in NO_VALUE_STRINGS
    return type(value).__name__ == "Undefined"


def clean_str(value):
    """The stripped text of a header or record value, or None for a "no value" marker."""
    if is_no_value(value):
        return None
    text = str(value).strip()
    return text or None


def clean_float(value, *, positive=False):
    """A finite float from a header or record value, or None.

    Lists (``"[3.3,3.4]"`` or a Python list) give their mean; ``positive``
    turns zero and negative values into None.

    Examples
    --------
    >>> round(clean_float("[3.3,3.4]"), 6), clean_float("N/A"), clean_float(0, positive=True)
    (3.35, None, None)
    """
    if is_no_value(value) or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            value = [p for p in text[1:-1].split(",") if p.strip()]
        else:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, (list, tuple)):
        parts = [p for p in (clean_float(p) for p in value) if p is not None]
        if not parts:
            return None
        value = sum(parts) / len(parts)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or (positive and value <= 0):
        return None
    return value


#: BANZAI's "this calibration failed" value (``L1ZP = L1ZPERR = -99``).
BANZAI_FAILED = -99.0


def banzai_zeropoint(zeropoint, error):
    """BANZAI's photometric zero point ``(L1ZP, L1ZPERR)`` when valid, else ``(None, None)``.

    BANZAI fits ``catalogue mag = -2.5 log10(flux / EXPTIME) + L1ZP`` (plus a colour term)
    on each frame; a failed fit writes -99 to both keys, older frames lack them.

    Examples
    --------
    >>> banzai_zeropoint(23.61, 0.02), banzai_zeropoint(-99, -99), banzai_zeropoint("N/A", 0.1)
    ((23.61, 0.02), (None, None), (None, None))
    """
    zp, err = clean_float(zeropoint), clean_float(error, positive=True)
    if zp is None or err is None or zp == BANZAI_FAILED or zp <= 0 or err >= 5:
        return None, None
    return zp, err


def clean_int(value):
    """An integer from a header or record value (``"42"``, ``42.0``), or None."""
    number = clean_float(value)
    if number is None or number != int(number):
        return None
    return int(number)


# ---- instruments and file names -----------------------------------------------------

def instrument_class(instrument):
    """The instrument class of an LCO camera name.

    Parameters
    ----------
    instrument : str
        ``INSTRUME``, e.g. ``"fa15"``, ``"kb70"``, ``"ep02"``.

    Returns
    -------
    str or None
        ``"sinistro"`` (fa, fl), ``"sbig"`` (kb), ``"qhy"`` (sq), ``"muscat"``
        (ep), ``"spectral"`` (fs), ``"floyds"`` (en); None when unknown.

    Examples
    --------
    >>> instrument_class("fa15")
    'sinistro'
    """
    name = clean_str(instrument)
    if name is None:
        return None
    return INSTRUMENT_CLASSES.get(name[:2].lower())


def reduction_level_from_name(name):
    """The reduction level in an LCO file name (``...-e91.fits.fz`` -> 91), or None."""
    match = _LEVEL_TAIL_RE.search(frame_stem(name))
    return int(match.group(1)) if match else None


#: Characters of the hash `slug` appends to a shortened name and `distinct_slug`
#: to a colliding one.
SLUG_HASH_LENGTH = 8


def name_hash(text):
    """A short, stable hash of a name (`SLUG_HASH_LENGTH` hex digits of its SHA-1).

    Examples
    --------
    >>> name_hash("T 1") != name_hash("T/1")
    True
    """
    digest = hashlib.sha1(str(text if text is not None else "").encode("utf-8"))
    return digest.hexdigest()[:SLUG_HASH_LENGTH]


def slug(text, limit=100, default="unnamed"):
    """A name made safe as one folder or file name: the one rule for every name.

    Runs of characters other than letters, digits, ``.``, ``_``, ``+`` and
    ``-`` become ``_``; leading and trailing dots and underscores go (so a
    name can never be ``..`` or hidden). A result longer than ``limit``
    characters is shortened the one way: cut, then ``-`` and `name_hash` of the
    original name appended, so two long names that share their beginning stay
    distinct and the result is exactly ``limit`` characters at most.

    Distinct names may still give one slug (``T 1``, ``T/1``, ``T?1`` all give
    ``T_1``): where slugs become folders that must not merge, use
    `distinct_slug`.

    Examples
    --------
    >>> slug("GJ 3470"), slug("OGLE-2024-BLG-0034"), slug("../x")
    ('GJ_3470', 'OGLE-2024-BLG-0034', 'x')
    >>> len(slug("x" * 300))
    100
    """
    original = str(text if text is not None else "")
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", original.strip()).strip("._")
    if len(text) > limit:
        keep = max(1, limit - SLUG_HASH_LENGTH - 1)
        text = f"{text[:keep].rstrip('._')}-{name_hash(original)}"[-limit:]
    return text or default


def distinct_slug(text, taken_by, limit=100, default="unnamed"):
    """`slug`, made distinct from a slug already taken by another name.

    ``taken_by`` is the original name that already owns ``slug(text)`` (for a
    folder, the name recorded in it), or None when that slug is free. When it
    is another name, the result is the slug shortened to leave room for ``-``
    and `name_hash` of ``text``: ``T 1``, ``T/1`` and ``T?1`` get ``T_1``,
    ``T_1-<hash of "T/1">`` and ``T_1-<hash of "T?1">`` (the first one seen keeps
    the plain slug).

    Parameters
    ----------
    text : str
        The name.
    taken_by : str or None
        The name that already owns ``slug(text)``, if any.
    limit, default
        As for `slug`.

    Returns
    -------
    str

    Examples
    --------
    >>> distinct_slug("T 1", None), distinct_slug("T 1", "T 1")
    ('T_1', 'T_1')
    >>> distinct_slug("T/1", "T 1") == "T_1-" + name_hash("T/1")
    True
    """
    base = slug(text, limit, default)
    if taken_by is None or str(taken_by) == str(text):
        return base
    keep = max(1, limit - SLUG_HASH_LENGTH - 1)
    return f"{base[:keep].rstrip('._-') or default}-{name_hash(text)}"


# ---- angles and times ---------------------------------------------------------------

_SEXAGESIMAL_RA = re.compile(r"[:\shms]")
_SEXAGESIMAL_DEC = re.compile(r"[:\sdms°'\"]")


def _angle(value, sexagesimal, unit, wrap):
    from astropy import units as u
    from astropy.coordinates import Angle

    if is_no_value(value) or isinstance(value, bool):
        return None
    try:
        if isinstance(value, str) and sexagesimal.search(value.strip()):
            angle = Angle(value.strip(), unit=unit)
        else:
            number = clean_float(value)
            if number is None:
                return None
            angle = Angle(number, unit=u.deg)
    except (ValueError, TypeError, u.UnitsError):
        return None
    degrees = float(angle.to_value(u.deg))
    if not math.isfinite(degrees):
        return None
    return wrap(degrees)


def _ra_range(degrees):
    return degrees % 360.0 if 0.0 <= degrees <= 360.0 else None


def _dec_range(degrees):
    return degrees if -90.0 <= degrees <= 90.0 else None


def parse_ra(value):
    """Right ascension in degrees from sexagesimal hours or decimal degrees.

    Parameters
    ----------
    value : str or float
        ``"17:59:27.05"``, ``"17 59 27.05"`` or ``"17h59m27.05s"`` (hours), or
        ``269.86`` / ``"269.86"`` (degrees).

    Returns
    -------
    float or None
        Degrees in [0, 360), or None for a "no value" marker, nonsense or a
        value outside [0, 360].

    Examples
    --------
    >>> round(parse_ra("01:24:11.435"), 6)
    21.047646
    """
    from astropy import units as u
    return _angle(value, _SEXAGESIMAL_RA, u.hourangle, _ra_range)


def format_ra(degrees):
    """Right ascension in degrees as sexagesimal hours ``'HH:MM:SS.sss'`` (config files).

    Examples
    --------
    >>> format_ra(21.047646)
    '01:24:11.435'
    """
    from astropy import units as u
    from astropy.coordinates import Angle
    return str(Angle(degrees, u.deg).to_string(unit=u.hourangle, sep=":", precision=3, pad=True))


def format_dec(degrees):
    """Declination in degrees as signed sexagesimal degrees ``'+DD:MM:SS.ss'`` (config files).

    Examples
    --------
    >>> format_dec(-28.6028333)
    '-28:36:10.20'
    """
    from astropy import units as u
    from astropy.coordinates import Angle
    return str(Angle(degrees, u.deg).to_string(unit=u.deg, sep=":", precision=2, pad=True,
                                               alwayssign=True))


def parse_dec(value):
    """Declination in degrees from sexagesimal or decimal degrees.

    Parameters
    ----------
    value : str or float
        ``"-32:22:57.34"``, ``"-32 22 57.34"``, ``"-32d22m57.34s"`` or ``-32.38``.

    Returns
    -------
    float or None
        Degrees in [-90, 90], or None for a "no value" marker or nonsense.

    Examples
    --------
    >>> round(parse_dec("-00:30:00"), 6)
    -0.5
    """
    from astropy import units as u
    return _angle(value, _SEXAGESIMAL_DEC, u.deg, _dec_range)


_FRACTION_RE = re.compile(r"\.(\d+)")


def parse_utc(value):
    """An aware UTC datetime from a datetime, a date or an ISO 8601 string.

    Strings may use a space or ``T``, a trailing ``Z`` or an offset, and 1 to
    9 fractional digits (real headers carry any of these). Naive values are
    taken as UTC.

    Returns
    -------
    datetime.datetime or None
        None for a "no value" marker or text that is not a date/time.

    Examples
    --------
    >>> parse_utc("2015-12-19 21:39:45.1Z").isoformat()
    '2015-12-19T21:39:45.100000+00:00'
    """
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime(value.year, value.month, value.day)
    elif is_no_value(value):
        return None
    else:
        text = str(value).strip().replace(" ", "T", 1)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Python 3.10 accepts only 3 or 6 fractional digits; headers carry 1 to 9.
        text = _FRACTION_RE.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        return when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc)


_MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.timezone.utc)


def mjd_utc(when):
    """The Modified Julian Date (UTC) of a date/time, as `parse_utc` reads it.

    Returns
    -------
    float or None
        None when ``when`` is not a date/time.

    Examples
    --------
    >>> mjd_utc("2000-01-01T12:00:00Z")
    51544.5
    """
    when = parse_utc(when)
    if when is None:
        return None
    return (when - _MJD_EPOCH) / dt.timedelta(days=1)
