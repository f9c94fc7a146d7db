"""Barycentric times: BJD_TDB of an observation, computed offline."""

__all__ = ["bjd_tdb"]


def bjd_tdb(time, ra, dec, location):
    """Barycentric Julian Date (TDB) of ``time`` for a target seen from ``location``.

    Computed offline: astropy's built-in solar-system ephemeris and its bundled IERS tables
    (automatic IERS downloads are switched off for the call).

    Parameters
    ----------
    time : astropy.time.Time
        E.g. the mid-exposure time, any scale (``scale="utc"`` for LCO headers).
    ra, dec : float
        Target ICRS coordinates in degrees.
    location : astropy.coordinates.EarthLocation
        The observatory.

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

    with iers.conf.set_temp("auto_download", False), \
            iers.conf.set_temp("auto_max_age", None):
        t = Time(time, location=location)
        target = SkyCoord(ra, dec, unit="deg", frame="icrs")
        ltt = t.light_travel_time(target, kind="barycentric", ephemeris="builtin")
        return t.tdb + ltt


