"""Barycentric times: BJD_TDB of observations, computed offline, many frames in one call.

astropy needs the Earth's orientation (UT1 - UTC, polar motion) to place the observatory;
its bundled IERS tables take about a second to parse. `earth_orientation` parses them once
per process and keeps a copy in a cache file (``$PIPEKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/pipekit`` or ``~/.cache/pipekit``), keyed by the astropy and
astropy-iers-data versions and the tables' files, so a new process loads it in ~20 ms.
The values are astropy's own: the same table, the same calls. Nothing is downloaded.
"""

import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["bjd_tdb", "bjd_tdb_many", "earth_orientation"]

log = logging.getLogger("pipekit.photometry")

_TABLE = None


def _cache_dir():
    env = os.environ.get("PIPEKIT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pipekit"


def _cache_key():
    """Versions and the bundled tables' names, sizes and times: what the parsed table is of."""
    import astropy
    from astropy.utils import iers

    parts = [astropy.__version__]
    try:
        import astropy_iers_data

        parts.append(astropy_iers_data.__version__)
    except ImportError:  # older astropy bundles its own tables
        pass
    for name in ("IERS_A_FILE", "IERS_B_FILE"):
        path = getattr(iers, name, None)
        if path and os.path.exists(path):
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def earth_orientation():
    """astropy's IERS table (bundled IERS-A with IERS-B), parsed once per process, offline.

    Returns
    -------
    astropy.utils.iers.IERS_Auto
        The table ``IERS_Auto.open()`` gives with automatic downloads off; read from the
        cache file when there is one for this astropy, else parsed and cached (a cache
        that cannot be written is only logged at DEBUG).
    """
    global _TABLE
    if _TABLE is not None:
        return _TABLE
    from astropy.utils import iers

    path = _cache_dir() / f"iers-{_cache_key()}.pickle"
    try:
        with open(path, "rb") as fh:
            table = pickle.load(fh)
        if isinstance(table, iers.IERS):
            _TABLE = table
            return table
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - a damaged cache is parsed again
        log.debug("%s: unreadable IERS cache (%s); parsing astropy's tables", path, exc)
    saved = iers.IERS_Auto.iers_table
    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("auto_max_age", None):
        iers.IERS_Auto.iers_table = None   # never a table fetched by someone else's settings
        try:
            table = iers.IERS_Auto.open()
        finally:
            iers.IERS_Auto.iers_table = saved
    _TABLE = table
    try:
        from ..atomic import write_bytes_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as exc:
        log.debug("%s: IERS cache not written (%s)", path, exc)
    return table


def bjd_tdb(time, ra, dec, location):
    """Barycentric Julian Date (TDB) of ``time`` for a target seen from ``location``.

    Computed offline: astropy's built-in solar-system ephemeris and its bundled IERS tables
    (`earth_orientation`; automatic IERS downloads are switched off for the call).

    Parameters
    ----------
    time : astropy.time.Time
        E.g. the mid-exposure time, any scale (``scale="utc"`` for LCO headers); an array
        of times is computed in one call.
    ra, dec : float
        Target ICRS coordinates in degrees.
    location : astropy.coordinates.EarthLocation
        The observatory (one, or one per time).

    Returns
    -------
    astropy.time.Time
        Scale ``tdb``; ``.jd`` is the BJD_TDB.

    Examples
    --------
    >>> from astropy.time import Time
    >>> from astropy.coordinates import EarthLocation
    >>> site = EarthLocation.from_geodetic(-70.80, -30.17, 2198)
    >>> t = Time("2026-08-01T03:00:30", scale="utc")
    >>> bjd = bjd_tdb(t, 269.76, -28.21, site)  # doctest: +SKIP
    """
    from astropy.coordinates import SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    table = earth_orientation()
    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("auto_max_age", None), \
            iers.earth_orientation_table.set(table):
        t = Time(time, location=location)
        target = SkyCoord(ra, dec, unit="deg", frame="icrs")
        ltt = t.light_travel_time(target, kind="barycentric", ephemeris="builtin")
        return t.tdb + ltt


def bjd_tdb_many(mjd_utc, ra, dec, sites):
    """BJD_TDB of many mid-exposure times at once, one astropy call per observatory.

    The same numbers as `bjd_tdb` frame by frame (the same astropy calls on arrays).

    Parameters
    ----------
    mjd_utc : array_like of astropy.time.Time or float
        Mid-exposure times: `~astropy.time.Time` scalars (any scale) or MJD (UTC) floats.
    ra, dec : float
        Target ICRS coordinates in degrees.
    sites : sequence of tuple
        ``(longitude, latitude, height)`` (degrees east, degrees, metres) per time.

    Returns
    -------
    numpy.ndarray
        BJD_TDB (JD) per time.
    """
    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

    n = len(mjd_utc)
    out = np.full(n, np.nan)
    groups = {}
    for i, site in enumerate(sites):
        groups.setdefault(tuple(float(v) for v in site), []).append(i)
    for (lon, lat, height), idx in groups.items():
        site = EarthLocation.from_geodetic(lon=lon * u.deg, lat=lat * u.deg, height=height * u.m)
        times = [mjd_utc[i] for i in idx]
        if isinstance(times[0], Time):
            t = Time(times)
        else:
            t = Time(np.asarray(times, float), format="mjd", scale="utc")
        out[idx] = bjd_tdb(t, ra, dec, site).jd
    return out
