"""Frame records: a frame as the archive describes it, and the same description of a file on disk.

:class:`ArchiveRecord` reads one ``/frames/`` result; :func:`frame_fields` builds
the archive's fields from a frame's header (for :class:`~pipekit.archive.LocalArchive`
and the local archive server); :func:`md5_file` and :func:`safe_destination` are how
a record's md5 and file name are checked on disk.
"""

import dataclasses
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

from .. import lco
from ..atomic import TMP_PREFIX
from ..errors import ArchiveError

__all__ = ["ArchiveRecord", "CHUNK_SIZE", "record_int", "md5_file", "read_header",
           "frame_fields", "safe_destination"]

#: Bytes read per chunk when streaming, hashing or copying a frame.
CHUNK_SIZE = 1 << 20

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
    "public_date": ("L1PUBDAT",),
}


def record_int(value):
    """An archive or header value as an integer, truncating (``"91.0"`` -> 91), or None.

    Unlike :func:`pipekit.lco.clean_int`, which refuses a fractional value, this
    keeps the archive's reading of ids and levels: ``int(float(value))``.

    Examples
    --------
    >>> record_int("91"), record_int(91.7), record_int("N/A")
    (91, 91, None)
    """
    number = lco.clean_float(value)
    return None if number is None else int(number)


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
    public_date: str = None
    #: Bytes of the file, as ``version_set`` declares it (None when not given):
    #: a download stops there.
    size: int = None

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
            if lco.is_no_value(value):
                for alias in _ALIASES.get(name, ()):
                    value = data.get(alias)
                    if not lco.is_no_value(value):
                        break
            return None if lco.is_no_value(value) else value

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
            basename = lco.frame_stem(filename)
        md5 = (version or {}).get("md5") or data.get("md5")
        url = data.get("url") or (version or {}).get("url")
        return cls(
            id=data.get("id"),
            basename=basename,
            filename=filename,
            url=url,
            md5=md5.lower() if isinstance(md5, str) else None,
            reduction_level=record_int(get("reduction_level")),
            observation_date=lco.clean_str(get("observation_date")),
            observation_day=lco.clean_str(get("observation_day")),
            proposal_id=lco.clean_str(get("proposal_id")),
            instrument_id=lco.clean_str(get("instrument_id")),
            target_name=lco.clean_str(get("target_name")),
            site_id=lco.clean_str(get("site_id")),
            telescope_id=lco.clean_str(get("telescope_id")),
            exposure_time=lco.clean_float(get("exposure_time")),
            filter=lco.clean_str(get("primary_optical_element")),
            configuration_type=lco.clean_str(get("configuration_type")),
            request_id=get("request_id"),
            public_date=lco.clean_str(get("public_date")),
            size=record_int((version or {}).get("size") or data.get("size")),
        )


def _latest_version(versions):
    # The archive lists versions newest first; trust 'created' when every entry has it.
    if not isinstance(versions, list) or not versions:
        return None
    versions = [v for v in versions if isinstance(v, dict)]
    if not versions:
        return None
    if all(v.get("created") for v in versions):
        oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        return max(versions, key=lambda v: lco.parse_utc(v["created"]) or oldest)
    return versions[0]


# --------------------------------------------------------------------------
# A frame on disk
# --------------------------------------------------------------------------

def md5_file(path):
    """The md5 hex digest of a file, as the archive's ``version_set`` gives it."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path):
    """The header that describes a frame: the first of its first three HDUs with ``DATE-OBS``.

    That is ``SCI`` in a ``.fits.fz``; a frame without ``DATE-OBS`` gives its
    primary header.

    Returns
    -------
    astropy.io.fits.Header
        A copy, detached from the closed file.
    """
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
    return None if lco.is_no_value(value) else value


def frame_fields(path, header, proposal_id=None):
    """The archive's lower-case ``/frames/`` fields of a frame on disk, from its header.

    Parameters
    ----------
    path : str or os.PathLike
        The frame file (its name gives ``filename``, ``basename`` and, when
        ``RLEVEL`` is missing, the reduction level).
    header : astropy.io.fits.Header
        From :func:`read_header`.
    proposal_id : str, optional
        Overrides the header's ``PROPID``.

    Returns
    -------
    dict
        ``basename, filename, reduction_level, observation_date`` (ISO, ``Z``),
        ``observation_day, proposal_id, instrument_id, target_name, site_id,
        telescope_id, exposure_time, primary_optical_element,
        configuration_type, request_id``; no ``id``, ``url`` or md5.
    """
    path = Path(path)
    date_obs = lco.parse_utc(_header_value(header, "DATE-OBS"))
    rlevel = record_int(_header_value(header, "RLEVEL"))
    if rlevel is None:
        rlevel = lco.reduction_level_from_name(path.name) or 0
    day_obs = lco.clean_str(_header_value(header, "DAY-OBS"))
    if day_obs and re.fullmatch(r"\d{8}", day_obs):
        day_obs = f"{day_obs[:4]}-{day_obs[4:6]}-{day_obs[6:]}"
    elif date_obs is not None:
        day_obs = date_obs.date().isoformat()
    return {
        "basename": lco.frame_stem(path.name),
        "filename": path.name,
        "reduction_level": rlevel,
        "observation_date": (date_obs.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                             if date_obs is not None else None),
        "observation_day": day_obs,
        "proposal_id": proposal_id or lco.clean_str(_header_value(header, "PROPID")),
        "instrument_id": lco.clean_str(_header_value(header, "INSTRUME")),
        "target_name": lco.clean_str(_header_value(header, "OBJECT")),
        "site_id": lco.clean_str(_header_value(header, "SITEID")),
        "telescope_id": lco.clean_str(_header_value(header, "TELID")),
        "exposure_time": lco.clean_float(_header_value(header, "EXPTIME")),
        "primary_optical_element": lco.clean_str(_header_value(header, "FILTER")),
        "configuration_type": lco.clean_str(_header_value(header, "OBSTYPE")),
        "request_id": _header_value(header, "REQNUM"),
    }


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
