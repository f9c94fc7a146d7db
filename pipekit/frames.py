"""FITS frames: read image data, header and WCS, and normalise LCO header keys.

`read_frame_info` reads only the header (cheap: used to sort thousands of frames);
`read_frame` reads the image too. Both turn the quirks of real LCO headers
("N/A", "UNKNOWN", "NaN", ``GAIN = "[3.3,3.4,3.3,3.4]"``) into plain values or None.
"""

import contextlib
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import FrameError
# Re-exported: the names have been importable from here since pipekit's first release.
from .lco import (INSTRUMENT_CLASSES, banzai_zeropoint, clean_float, clean_int, clean_str,
                  instrument_class,
                  mjd_utc, parse_dec, parse_ra, parse_utc, reduction_level_from_name)

__all__ = [
    "FrameInfo", "Frame", "info_from_header", "read_frame_info", "read_frame",
    "instrument_class", "parse_ra", "parse_dec", "INSTRUMENT_CLASSES",
    "SCIENCE_OBSTYPES", "CALIBRATION_OBSTYPES",
]

log = logging.getLogger("pipekit.frames")

#: Frames whose pixels are a science image of the sky (photometry is possible).
SCIENCE_OBSTYPES = frozenset({"EXPOSE", "STANDARD"})

#: Frames that calibrate the detector or the spectrograph, never measured.
CALIBRATION_OBSTYPES = frozenset({
    "BIAS", "DARK", "SKYFLAT", "LAMPFLAT", "DOMEFLAT", "FLAT", "ARC", "BPM",
    "TRACE", "DOUBLE", "LAMP", "STANDARD_BIAS",
})

# Filter wheel positions that mean "no filter in this wheel".
# ("N/A", "UNKNOWN" and the other "no value" markers are None already, from clean_str.)
_EMPTY_FILTERS = frozenset({"AIR", "CLEAR"})


@dataclass
class FrameInfo:
    """Normalised metadata of one frame, from its header.

    Every field may be None when the header lacks it or holds a "no value"
    marker ("N/A", "UNKNOWN", "NaN", ""). Angles are in degrees, times in UTC.

    Attributes
    ----------
    path, filename : str
        Where the frame is and its base name.
    target : str or None
        ``OBJECT``.
    ra, dec : float or None
        Telescope pointing in degrees (``RA``/``DEC``, sexagesimal or degrees),
        falling back to the catalogue position ``CAT-RA``/``CAT-DEC``.
    cat_ra, cat_dec : float or None
        Catalogue (requested) position of the target, ``CAT-RA``/``CAT-DEC``,
        falling back to ``RA``/``DEC``. Stable across dithered frames.
    filter, instrument, instrument_class, obstype : str or None
        ``FILTER`` (or the first real filter of ``FILTER1..3``), ``INSTRUME``,
        its class (see `instrument_class`) and ``OBSTYPE`` (upper case).
    rlevel : int or None
        Reduction level: ``RLEVEL``, else the ``-e91`` suffix of the file name.
    date_obs : str or None
        Start of exposure, ISO 8601 UTC (``DATE-OBS``).
    exptime : float or None
        Exposure time in seconds.
    mjd_mid : float or None
        MJD (UTC) of mid-exposure, ``DATE-OBS + EXPTIME / 2``.
    pixscale, gain, rdnoise, saturate : float or None
        Arcsec/pixel, e-/ADU (mean of a list), e-, ADU (``SATURATE``, else
        ``MAXLIN``; a value of 0 means unknown).
    site, latitude, longitude, height : str, float or None
        ``SITEID``; geodetic latitude and longitude in degrees (east positive)
        and height in metres, or from ``OBSGEO-X/Y/Z``.
    naxis1, naxis2 : int or None
        Image size in pixels (``NAXIS1``/``NAXIS2`` of the image header).
    has_wcs : bool
        The header holds a celestial WCS (``CTYPE1``/``CTYPE2`` RA/DEC).
    wcserr : int or None
        BANZAI's ``WCSERR``: 0 when its astrometric fit succeeded; non-zero (e.g. 4) means
        the WCS is the telescope's pointing only, possibly hundreds of pixels off.
    telescope : str or None
        ``TELESCOP`` (e.g. ``1m0-05``).
    fwhm_arcsec : float or None
        BANZAI's ``L1FWHM`` (arcsec).
    l1zp, l1zperr : float or None
        BANZAI's photometric zero point and its error (``L1ZP``, ``L1ZPERR``, magnitudes of
        1 count per second); None when missing or failed (-99): `pipekit.lco.banzai_zeropoint`.
    problems : list of str
        Reasons the frame cannot be used for photometry; empty when usable.
    """

    path: str = ""
    filename: str = ""
    target: str | None = None
    ra: float | None = None
    dec: float | None = None
    filter: str | None = None
    instrument: str | None = None
    instrument_class: str | None = None
    obstype: str | None = None
    rlevel: int | None = None
    date_obs: str | None = None
    exptime: float | None = None
    mjd_mid: float | None = None
    pixscale: float | None = None
    gain: float | None = None
    rdnoise: float | None = None
    saturate: float | None = None
    site: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    height: float | None = None
    cat_ra: float | None = None
    cat_dec: float | None = None
    naxis1: int | None = None
    naxis2: int | None = None
    has_wcs: bool = False
    wcserr: int | None = None
    telescope: str | None = None
    fwhm_arcsec: float | None = None
    l1zp: float | None = None
    l1zperr: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self):
        """True when nothing stops photometry on this frame."""
        return not self.problems

    def mid_time(self):
        """Mid-exposure time, ``DATE-OBS + EXPTIME / 2``.

        Returns
        -------
        astropy.time.Time
            In scale ``"utc"``.

        Raises
        ------
        FrameError
            When ``DATE-OBS`` or ``EXPTIME`` is missing.
        """
        from astropy import units as u
        from astropy.time import Time

        if self.date_obs is None or self.exptime is None:
            raise FrameError(f"{self.path or self.filename}: no mid-exposure time: "
                             f"DATE-OBS={self.date_obs!r}, EXPTIME={self.exptime!r}")
        return Time(self.date_obs, format="isot", scale="utc") + (self.exptime / 2.0) * u.s

    def location(self):
        """The observatory's location from the header.

        Returns
        -------
        astropy.coordinates.EarthLocation

        Raises
        ------
        FrameError
            When latitude, longitude or height is missing.
        """
        from astropy import units as u
        from astropy.coordinates import EarthLocation

        if None in (self.latitude, self.longitude, self.height):
            raise FrameError(
                f"{self.path or self.filename}: no site location: LATITUDE={self.latitude!r}, "
                f"LONGITUD={self.longitude!r}, HEIGHT={self.height!r} (expected numbers)")
        return EarthLocation.from_geodetic(lon=self.longitude * u.deg, lat=self.latitude * u.deg,
                                           height=self.height * u.m)


@dataclass
class Frame:
    """One frame's image, header, WCS and normalised metadata.

    Attributes
    ----------
    data : numpy.ndarray
        2-D float32 image (a length-1 third axis is squeezed away).
    header : astropy.io.fits.Header
        The image header, with primary-header keys it lacks merged in.
    wcs : astropy.wcs.WCS or None
        The celestial WCS, or None when the header has none.
    info : FrameInfo
    """

    data: np.ndarray
    header: object
    wcs: object
    info: FrameInfo


def _parse_date_obs(header):
    """Aware UTC start of exposure from DATE-OBS (with UTSTART when DATE-OBS is a bare date)."""
    text = clean_str(header.get("DATE-OBS"))
    if text is None:
        return None
    if "T" not in text and " " not in text.strip():
        # Old headers split the date and the time: DATE-OBS = '2024-05-01', UTSTART = '...'.
        text = f"{text}T{clean_str(header.get('UTSTART')) or '00:00:00'}"
    return parse_utc(text)


def _location(header):
    lat = clean_float(header.get("LATITUDE"))
    lon = clean_float(header.get("LONGITUD"))
    height = clean_float(header.get("HEIGHT"))
    if lat is not None and not -90 <= lat <= 90:
        lat = None
    if None in (lat, lon, height):
        xyz = [clean_float(header.get(f"OBSGEO-{c}")) for c in "XYZ"]
        if None not in xyz and any(xyz):
            from astropy import units as u
            from astropy.coordinates import EarthLocation
            geo = EarthLocation.from_geocentric(*xyz, unit=u.m).to_geodetic()
            lat, lon = float(geo.lat.deg), float(geo.lon.deg)
            height = float(geo.height.to_value(u.m))
    if lon is not None and lon > 180:
        lon -= 360.0
    return lat, lon, height


def _filter_name(header):
    name = clean_str(header.get("FILTER"))
    if name is not None and name.upper() not in _EMPTY_FILTERS:
        return name
    for key in ("FILTER1", "FILTER2", "FILTER3"):
        name = clean_str(header.get(key))
        if name is not None and name.upper() not in _EMPTY_FILTERS:
            return name
    return None


def _pixscale(header):
    scale = clean_float(header.get("PIXSCALE"), positive=True)
    if scale is not None:
        return scale
    # From the WCS CD matrix: sqrt(|det CD|) in deg/pixel.
    cd = [clean_float(header.get(k)) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
    if cd[0] is not None and cd[3] is not None:
        cd = [c or 0.0 for c in cd]
        det = abs(cd[0] * cd[3] - cd[1] * cd[2])
        if det > 0:
            return math.sqrt(det) * 3600.0
    return None


def _has_celestial_wcs(header):
    c1 = clean_str(header.get("CTYPE1")) or ""
    c2 = clean_str(header.get("CTYPE2")) or ""
    return c1.upper().startswith("RA") and c2.upper().startswith("DEC")


def info_from_header(header, path=""):
    """Normalised metadata from a FITS header or a plain dict of header keys.

    Never raises on odd values: a key that is missing or unreadable gives None,
    and what stops photometry is listed in ``problems``.

    Parameters
    ----------
    header : astropy.io.fits.Header or dict
        The image header, or a record such as those of ``archive_headers.json``.
    path : str or os.PathLike, optional
        The file the header came from.

    Returns
    -------
    FrameInfo

    Examples
    --------
    >>> info = info_from_header({"INSTRUME": "fa15", "GAIN": "[3.3,3.4]"})
    >>> info.instrument_class, round(info.gain, 2)
    ('sinistro', 3.35)
    """
    path = str(path) if path else ""
    filename = Path(path).name if path else (clean_str(header.get("ORIGNAME")) or "")

    ra = parse_ra(header.get("RA"))
    dec = parse_dec(header.get("DEC"))
    cat_ra = parse_ra(header.get("CAT-RA"))
    cat_dec = parse_dec(header.get("CAT-DEC"))
    if ra is None or dec is None:
        ra, dec = (cat_ra, cat_dec) if cat_ra is not None and cat_dec is not None else (None, None)
    if cat_ra is None or cat_dec is None:
        cat_ra, cat_dec = ra, dec

    instrument = clean_str(header.get("INSTRUME"))
    obstype = clean_str(header.get("OBSTYPE"))
    obstype = obstype.upper() if obstype else None

    rlevel = clean_int(header.get("RLEVEL"))
    if rlevel is None and path:
        rlevel = reduction_level_from_name(path)

    start = _parse_date_obs(header)
    exptime = clean_float(header.get("EXPTIME"))
    if exptime is not None and exptime < 0:
        exptime = None
    mjd_mid = None
    if start is not None and exptime is not None:
        mjd_mid = mjd_utc(start) + exptime / 2.0 / 86400.0

    saturate = clean_float(header.get("SATURATE"), positive=True)
    if saturate is None:
        saturate = clean_float(header.get("MAXLIN"), positive=True)
    lat, lon, height = _location(header)

    naxis = clean_int(header.get("NAXIS"))
    info = FrameInfo(
        path=path,
        filename=filename,
        target=clean_str(header.get("OBJECT")),
        ra=ra, dec=dec, cat_ra=cat_ra, cat_dec=cat_dec,
        filter=_filter_name(header),
        instrument=instrument,
        instrument_class=instrument_class(instrument),
        obstype=obstype,
        rlevel=rlevel,
        date_obs=start.isoformat(timespec="milliseconds").replace("+00:00", "") if start else None,
        exptime=exptime,
        mjd_mid=mjd_mid,
        pixscale=_pixscale(header),
        gain=clean_float(header.get("GAIN"), positive=True),
        rdnoise=clean_float(header.get("RDNOISE")),
        saturate=saturate,
        site=clean_str(header.get("SITEID")),
        latitude=lat, longitude=lon, height=height,
        naxis1=clean_int(header.get("NAXIS1")) if naxis else None,
        naxis2=clean_int(header.get("NAXIS2")) if naxis else None,
        has_wcs=_has_celestial_wcs(header),
        wcserr=clean_int(header.get("WCSERR")),
        telescope=clean_str(header.get("TELESCOP")),
        fwhm_arcsec=clean_float(header.get("L1FWHM"), positive=True),
    )
    info.l1zp, info.l1zperr = banzai_zeropoint(header.get("L1ZP"), header.get("L1ZPERR"))
    info.problems = _problems(info, naxis)
    return info


def _problems(info, naxis):
    problems = []
    if info.obstype is not None and info.obstype not in SCIENCE_OBSTYPES:
        problems.append(f"OBSTYPE {info.obstype!r} is not a science exposure")
    if naxis is not None and naxis < 2:
        problems.append(f"no image in this header (NAXIS={naxis})")
    if not info.has_wcs:
        problems.append("no celestial WCS (CTYPE1/CTYPE2 missing or not RA/DEC)")
    if info.date_obs is None:
        problems.append("DATE-OBS missing or unreadable")
    if info.exptime is None or info.exptime <= 0:
        problems.append(f"EXPTIME missing or not positive ({info.exptime!r})")
    if info.pixscale is None:
        problems.append("PIXSCALE missing (and no CD matrix)")
    if info.gain is None:
        problems.append("GAIN missing or unreadable")
    if info.rdnoise is None:
        problems.append("RDNOISE missing or unreadable")
    if None in (info.latitude, info.longitude, info.height):
        problems.append("site location missing (LATITUDE/LONGITUD/HEIGHT or OBSGEO-X/Y/Z)")
    return problems


# ---- reading files ----------------------------------------------------------

_STRUCTURAL = frozenset({"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND",
                         "XTENSION", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER", "CHECKSUM",
                         "DATASUM", "BSCALE", "BZERO", "COMMENT", "HISTORY", ""})


# Image extensions that hold something other than the sky (BANZAI: mask, errors).
_AUXILIARY_EXTNAMES = frozenset({"BPM", "ERR", "MASK", "VAR", "WEIGHT", "WHT", "RMS"})

# Keys astropy.wcs reads for a celestial WCS (with SIP / TPV distortions).
_WCS_KEY = re.compile(r"^(WCSAXES|NAXIS\d?|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|"
                      r"CD\d_\d|PC\d_\d|PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|RADESYSA?|RADECSYS|"
                      r"EQUINOX|EPOCH|[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX)$")


@contextlib.contextmanager
def _astropy_quirk_warnings_silenced():
    """Silence astropy's warnings about quirks of real headers that pipekit handles itself.

    Only these: any other warning (a real problem, or a deprecation) still shows.
    """
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning
    from astropy.wcs import FITSFixedWarning

    with warnings.catch_warnings():
        # Non-standard cards (real LCO headers carry some) are read as they are.
        warnings.filterwarnings("ignore", category=VerifyWarning)
        # WCS keys astropy fixes while reading (old date formats, ...): the fix is wanted.
        warnings.filterwarnings("ignore", category=FITSFixedWarning)
        # A short file becomes a FrameError that names the truncation (see _truncation).
        warnings.filterwarnings("ignore", message=".*truncated", category=AstropyUserWarning)
        yield


def _image_hdu(hdul, path):
    """The 'SCI' extension, else the first HDU holding a >= 2-D sky image.

    HDUs are read lazily and the search stops at the first match, so the
    headers of later extensions (masks, error maps, catalogues) are never parsed.
    """
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            break
        index += 1
        if not hdu.is_image:
            continue
        if hdu.name == "SCI":
            return hdu
        if (hdu.header.get("NAXIS") or 0) >= 2 and hdu.name not in _AUXILIARY_EXTNAMES:
            return hdu
    raise FrameError(f"{path}: no image HDU (expected extension 'SCI' or a 2-D image)")


def _merged_header(hdul, hdu):
    """The image header, with the primary header's keys it lacks appended."""
    header = hdu.header  # the file is read-only and closed after: no copy needed
    if hdu is not hdul[0]:
        extra = [card for card in hdul[0].header.cards
                 if card.keyword not in _STRUCTURAL and card.keyword not in header]
        for card in extra:
            header.append(card)
    return header


def _open(path):
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: no such frame file")
    try:
        return fits.open(path, memmap=False, lazy_load_hdus=True)
    except Exception as exc:
        raise FrameError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc


def read_frame_info(path):
    """Normalised metadata of a frame from its header alone (no pixels decompressed).

    Parameters
    ----------
    path : str or os.PathLike
        A ``.fits`` or ``.fits.fz`` file.

    Returns
    -------
    FrameInfo

    Raises
    ------
    FrameError
        Naming the file, when it is missing, not FITS, or holds no image.
    """
    with _astropy_quirk_warnings_silenced():
        hdul = _open(path)
        try:
            with hdul:
                hdu = _image_hdu(hdul, path)
                header = _merged_header(hdul, hdu)
        except FrameError:
            raise
        except Exception as exc:
            raise FrameError(f"{path}: cannot read the FITS header "
                             f"({type(exc).__name__}: {exc})") from exc
    return info_from_header(header, path)


def _celestial_wcs(header, path):
    from astropy.wcs import WCS

    from astropy.io import fits

    if not _has_celestial_wcs(header):
        return None
    # Real LCO headers hold ~900 cards; astropy.wcs re-serialises the whole header, so
    # hand it only the WCS keys (8x faster, same result).
    wcs_header = fits.Header([card for card in header.cards if _WCS_KEY.match(card.keyword)])
    try:
        wcs = WCS(wcs_header, naxis=2)
    except Exception as exc:  # astropy raises a zoo of types for broken WCS keys
        log.warning("%s: WCS keys present but unusable (%s)", path, exc)
        return None
    return wcs if wcs.has_celestial else None


def _truncation(hdul, path):
    """Why the data cannot be read when the file is shorter than its headers declare, else None."""
    try:
        size = Path(path).stat().st_size
        expected = max(info["datLoc"] + info["datSpan"]
                       for info in (hdul.fileinfo(i) for i in range(len(hdul))) if info)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None
    if size < expected:
        return f"file truncated: {size} bytes, its headers declare {expected}"
    return None


def read_frame(path):
    """Read a frame's image, header, WCS and metadata.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.fits`` or ``.fits.fz`` file; the image is taken from extension
        ``SCI`` or the first image HDU.

    Returns
    -------
    Frame
        ``data`` is 2-D float32; a length-1 extra axis (raw Sinistro frames are
        ``1 x ny x nx``) is squeezed away.

    Raises
    ------
    FrameError
        Naming the file and the reason: missing, not FITS, no image, corrupt or
        truncated data, or an image with more than two real axes.

    Examples
    --------
    >>> frame = read_frame("lsc1m005-fa15-20240501-0042-e91.fits.fz")  # doctest: +SKIP
    >>> frame.data.shape, frame.info.filter, frame.info.problems  # doctest: +SKIP
    ((4096, 4096), 'ip', [])
    """
    with _astropy_quirk_warnings_silenced():
        hdul = _open(path)
        try:
            with hdul:
                hdu = _image_hdu(hdul, path)
                data = hdu.data
                if data is None:
                    raise FrameError(f"{path}: image HDU '{hdu.name}' holds no data")
                data = np.asarray(data, dtype=np.float32)
                header = _merged_header(hdul, hdu)
        except FrameError:
            raise
        except Exception as exc:
            short = _truncation(hdul, path)
            raise FrameError(f"{path}: cannot read the image data{': ' + short if short else ''} "
                             f"({type(exc).__name__}: {exc})") from exc
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise FrameError(f"{path}: image has shape {data.shape}; expected a 2-D image")
        wcs = _celestial_wcs(header, path)
    info = info_from_header(header, path)
    if wcs is None and info.has_wcs:
        info.has_wcs = False
        info.problems.append("WCS keys present but unusable")
    return Frame(data=data, header=header, wcs=wcs, info=info)
