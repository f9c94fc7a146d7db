"""Aperture photometry of a target and its field stars, ensemble normalisation and times.

`measure_frame` measures one frame from arrays and positions (no files in sight), vectorised
over stars; `normalise_ensemble` turns raw fluxes into normalised ones; `measure_dataset`
runs a whole dataset folder, one resumable per-frame file at a time.
"""

import io
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import TMP_PREFIX, write_text_atomic
from .errors import FrameError, PipekitError

__all__ = [
    "FLAGS", "OFF_FRAME", "EDGE", "SATURATED", "BAD_PIXELS", "SKY_POOR", "NON_POSITIVE",
    "NORMALISATION", "describe_flags", "circular_overlap", "aperture_sums", "annulus_sky",
    "measure_frame", "centroid_shift", "detect_stars", "bjd_tdb", "Ensemble",
    "normalise_ensemble", "DatasetPhotometry", "measure_dataset", "frame_stem",
    "list_frames", "REFERENCE_STARS", "REJECTED_FRAMES",
]

log = logging.getLogger("pipekit.photometry")

# Bit flags of one star in one frame (combine with |, test with &).
OFF_FRAME = 1        #: centre outside the frame (or WCS failed): not measured
EDGE = 2             #: aperture or annulus within the edge margin or partly off the frame
SATURATED = 4        #: a pixel in the aperture at or above SATURATE
BAD_PIXELS = 8       #: a non-finite pixel in the aperture (counted as zero)
SKY_POOR = 16        #: fewer than 20 usable sky pixels in the annulus
NON_POSITIVE = 32    #: light curve only: normalised flux <= 0, so no magnitude
NORMALISATION = 64   #: the frame's ensemble normalisation failed (too few comparison stars)

#: Flag names by bit.
FLAGS = {OFF_FRAME: "off_frame", EDGE: "edge", SATURATED: "saturated", BAD_PIXELS: "bad_pixels",
         SKY_POOR: "sky_poor", NON_POSITIVE: "non_positive", NORMALISATION: "normalisation"}

#: File names inside ``<red_dir>/photometry/``.
REFERENCE_STARS = "reference_stars.ecsv"
REJECTED_FRAMES = "rejected_frames.json"

_MIN_SKY_PIXELS = 20
_FRAME_SUFFIXES = (".fits.fz", ".fits", ".fit", ".fts")


def describe_flags(flags):
    """Names of the bits set in ``flags``, e.g. ``describe_flags(6) -> ['edge', 'saturated']``."""
    flags = int(flags)
    return [name for bit, name in FLAGS.items() if flags & bit]


# ---- exact aperture sums ------------------------------------------------------

def _quadrant_area(x, y, r):
    """Signed area of the circle ``X² + Y² < r²`` inside the box between 0 and (x, y)."""
    ax = np.minimum(np.abs(x), r)
    ay = np.minimum(np.abs(y), r)
    inside = ax * ax + ay * ay <= r * r
    # Outside the circle's corner: a rectangle up to xc plus the arc from xc to ax.
    xc = np.sqrt(np.maximum(r * r - ay * ay, 0.0))
    ax_c = np.maximum(ax, xc)

    def arc(X):  # integral of sqrt(r² - t²) dt from 0 to X
        return 0.5 * (X * np.sqrt(np.maximum(r * r - X * X, 0.0))
                      + r * r * np.arcsin(np.clip(X / r, -1.0, 1.0)))

    area = np.where(inside, ax * ay, ay * xc + arc(ax_c) - arc(xc))
    return np.sign(x) * np.sign(y) * area


def circular_overlap(x0, x1, y0, y1, r):
    """Exact area of the circle of radius ``r`` at the origin within boxes ``[x0,x1]x[y0,y1]``.

    Parameters
    ----------
    x0, x1, y0, y1 : array_like
        Box edges relative to the circle's centre (broadcast together).
    r : float

    Returns
    -------
    ndarray
        The overlap areas.

    Examples
    --------
    >>> float(circular_overlap(-10, 10, -10, 10, 1.0)) == math.pi
    True
    """
    return (_quadrant_area(x1, y1, r) - _quadrant_area(x0, y1, r)
            - _quadrant_area(x1, y0, r) + _quadrant_area(x0, y0, r))


def aperture_sums(data, x, y, radius, saturate=None):
    """Exact-overlap circular aperture sums at many positions at once.

    Pixel ``(i, j)`` covers ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]`` (0-based centres, the
    numpy / photutils / sep convention). Non-finite pixels count as zero.

    Parameters
    ----------
    data : ndarray
        2-D image.
    x, y : ndarray
        0-based pixel positions; they must lie within the frame (callers drop the others).
    radius : float
        Aperture radius in pixels.
    saturate : float, optional
        Pixels at or above this flag the star ``SATURATED``.

    Returns
    -------
    sums, area, flags : ndarray
        Aperture sums, the area (pixels) of the aperture inside the frame, and
        ``EDGE | SATURATED | BAD_PIXELS`` flags.
    """
    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h, h + 1)
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    edges = np.arange(-h, h + 2) - 0.5
    ex = (ix[:, None] + edges) - x[:, None]            # (n, s+1)
    ey = (iy[:, None] + edges) - y[:, None]
    q = _quadrant_area(ex[:, None, :], ey[:, :, None], radius)   # (n, s+1, s+1)
    area = q[:, 1:, 1:] - q[:, :-1, 1:] - q[:, 1:, :-1] + q[:, :-1, :-1]
    px = ix[:, None] + off
    py = iy[:, None] + off
    inx = (px >= 0) & (px < nx)
    iny = (py >= 0) & (py < ny)
    inside = iny[:, :, None] & inx[:, None, :]
    flat = np.clip(py, 0, ny - 1)[:, :, None] * nx + np.clip(px, 0, nx - 1)[:, None, :]
    values = np.take(data, flat)                      # data is C-contiguous 2-D
    used = (area > 0) & inside
    finite = np.isfinite(values)
    w = np.where(used, area, 0.0)
    sums = np.einsum("nij,nij->n", w, np.where(finite, values, 0.0))
    flags = np.zeros(len(x), np.int32)
    total = np.pi * radius * radius
    in_area = w.sum(axis=(1, 2))
    flags[in_area < total * (1 - 1e-9)] |= EDGE
    flags[(used & ~finite).any(axis=(1, 2))] |= BAD_PIXELS
    if saturate is not None and np.isfinite(saturate) and saturate > 0:
        flags[(used & finite & (values >= saturate)).any(axis=(1, 2))] |= SATURATED
    return sums, in_area, flags


# ---- sigma-clipped annulus sky --------------------------------------------------

def annulus_sky(data, x, y, r_in, r_out, sigma=3.0, maxiters=10):
    """Sigma-clipped median sky in circular annuli, for all positions at once.

    Annulus pixels (centres with ``r_in <= d < r_out``) are gathered into one row per star and
    sorted once; each clipping iteration is then an index range per row, so medians and
    standard deviations of every star cost O(1) from the sorted rows and their cumulative sums.
    Clipping follows ``astropy.stats.sigma_clip`` (median centre, population std, iterate
    until nothing changes or ``maxiters``).

    Parameters
    ----------
    data : ndarray
        2-D image.
    x, y : ndarray
        0-based positions.
    r_in, r_out : float
        Annulus radii in pixels.
    sigma : float
        Clipping threshold in standard deviations.
    maxiters : int

    Returns
    -------
    sky, sky_std, n_sky : ndarray
        Median sky per pixel, standard deviation of the clipped pixels and their number
        (NaN, NaN, 0 where no pixel is usable).
    """
    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    h = int(math.ceil(r_out)) + 1
    gx, gy = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1))
    d0 = np.hypot(gx, gy).ravel()
    # superset of the annulus for any sub-pixel centre (the true centre is within 0.71 px)
    sel = (d0 >= r_in - 0.75) & (d0 <= r_out + 0.75)
    ox, oy = gx.ravel()[sel], gy.ravel()[sel]
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    px = ix[:, None] + ox
    py = iy[:, None] + oy
    d = np.hypot(px - x[:, None], py - y[:, None])
    ok = (d >= r_in) & (d < r_out) & (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    values = np.take(data, np.clip(py, 0, ny - 1) * nx + np.clip(px, 0, nx - 1)).astype(np.float64)
    ok &= np.isfinite(values)
    values[~ok] = np.inf
    values.sort(axis=1)
    hi = ok.sum(axis=1)
    lo = np.zeros(n, np.int64)
    rows = np.arange(n)
    # cumulative sums about a per-row offset, for exact means and variances of index ranges
    shift = values[rows, np.maximum(hi - 1, 0) // 2]
    shift = np.where(np.isfinite(shift), shift, 0.0)
    centred = np.where(np.isfinite(values), values - shift[:, None], 0.0)
    cs1 = np.concatenate([np.zeros((n, 1)), np.cumsum(centred, axis=1)], axis=1)
    cs2 = np.concatenate([np.zeros((n, 1)), np.cumsum(centred * centred, axis=1)], axis=1)
    m = values.shape[1]
    for _ in range(max(int(maxiters), 1)):
        med, std = _range_stats(values, cs1, cs2, lo, hi, shift, rows, m)
        lower = (med - sigma * std)[:, None]
        upper = (med + sigma * std)[:, None]
        new_lo = np.where(hi > 0, (values < lower).sum(axis=1), 0)
        new_hi = np.where(hi > 0, (values <= upper).sum(axis=1), 0)
        new_hi = np.maximum(new_hi, new_lo)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, std = _range_stats(values, cs1, cs2, lo, hi, shift, rows, m)
    count = hi - lo
    med[count == 0] = np.nan
    std[count == 0] = np.nan
    return med, std, count


def _range_stats(values, cs1, cs2, lo, hi, shift, rows, m):
    count = hi - lo
    c = np.maximum(count, 1)
    a = np.clip(lo + (c - 1) // 2, 0, m - 1)
    b = np.clip(lo + c // 2, 0, m - 1)
    with np.errstate(invalid="ignore"):
        med = 0.5 * (values[rows, a] + values[rows, b])
        mean = (cs1[rows, hi] - cs1[rows, lo]) / c
        var = (cs2[rows, hi] - cs2[rows, lo]) / c - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    med = np.where(count > 0, med, np.nan)
    return med, np.where(count > 0, std, np.nan)


# ---- one frame --------------------------------------------------------------------

def measure_frame(data, positions, radius, annulus_in, annulus_out, gain, rdnoise,
                  saturate=None, *, sigma=3.0, maxiters=10, edge_margin=0.0):
    """Aperture photometry of many stars in one frame (photutils-style, vectorised).

    Parameters
    ----------
    data : ndarray
        2-D image in ADU, sky not subtracted (as in LCO's reduced frames).
    positions : array_like, shape (n, 2)
        0-based ``(x, y)`` pixel positions.
    radius : float
        Aperture radius (pixels). Sums use the exact pixel/circle overlap.
    annulus_in, annulus_out : float
        Sky annulus radii (pixels).
    gain : float
        e-/ADU.
    rdnoise : float
        Read noise in e-.
    saturate : float, optional
        ADU level flagging ``SATURATED``.
    sigma, maxiters : float, int
        Sky sigma clipping.
    edge_margin : float
        Stars whose centre is closer than this (pixels) to an edge are flagged ``EDGE``.

    Returns
    -------
    astropy.table.Table
        One row per position: ``x, y, aperture_sum, area, sky, sky_std, n_sky, flux,
        flux_err, flags``. ``flux = aperture_sum - area * sky`` (ADU);
        ``flux_err² = flux / gain + area σ² + area² σ² π / (2 n_sky)`` with the per-pixel
        variance ``σ² = max(sky_std², sky / gain + (rdnoise / gain)²)``: Poisson noise of
        the star, noise of the sky and read noise in the aperture, and the uncertainty of the
        median sky level. Off-frame stars get NaN and ``OFF_FRAME``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64), 100.0)
    >>> t = measure_frame(img, [(32, 32)], 4.0, 8.0, 12.0, gain=1.0, rdnoise=5.0)
    >>> abs(float(t["flux"][0])) < 1e-9
    True
    """
    from astropy.table import Table

    data = np.ascontiguousarray(data)
    ny, nx = data.shape
    pos = np.atleast_2d(np.asarray(positions, dtype=float)).reshape(-1, 2)
    x, y = pos[:, 0], pos[:, 1]
    n = len(x)
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & \
        (y < ny - 0.5)
    flags = np.where(on, 0, OFF_FRAME).astype(np.int32)
    sums = np.full(n, np.nan)
    area = np.full(n, np.nan)
    sky = np.full(n, np.nan)
    sky_std = np.full(n, np.nan)
    n_sky = np.zeros(n, np.int64)
    # stars go in chunks so that memory stays bounded (~100 MB) for any radius
    per_star = max((2 * math.ceil(radius) + 4) ** 2,
                   int(np.pi * ((annulus_out + 1.75) ** 2 - max(annulus_in - 0.75, 0) ** 2)))
    chunk = max(1, int(1_500_000 // per_star))
    index = np.flatnonzero(on)
    for start in range(0, len(index), chunk):
        k = index[start:start + chunk]
        s, a, f = aperture_sums(data, x[k], y[k], radius, saturate)
        sums[k], area[k] = s, a
        flags[k] |= f
        sk, ss, ns = annulus_sky(data, x[k], y[k], annulus_in, annulus_out, sigma, maxiters)
        sky[k], sky_std[k], n_sky[k] = sk, ss, ns
    if edge_margin > 0:
        with np.errstate(invalid="ignore"):
            near = (np.minimum(x, nx - 1 - x) < edge_margin) | \
                (np.minimum(y, ny - 1 - y) < edge_margin)
        flags[on & near] |= EDGE
    flags[on & (n_sky < _MIN_SKY_PIXELS)] |= SKY_POOR
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = sums - area * sky
        var_model = np.maximum(sky, 0.0) / gain + (rdnoise / gain) ** 2
        var_pix = np.fmax(sky_std ** 2, var_model)
        var = (np.maximum(flux, 0.0) / gain + area * var_pix
               + area ** 2 * var_pix * (np.pi / 2.0) / np.maximum(n_sky, 1))
        flux_err = np.sqrt(var)
    return Table({"x": x, "y": y, "aperture_sum": sums, "area": area, "sky": sky,
                  "sky_std": sky_std, "n_sky": n_sky, "flux": flux, "flux_err": flux_err,
                  "flags": flags})


def centroid_shift(data, x, y, radius, sky, *, iterations=5, max_shift=None):
    """The frame's common offset between predicted and measured star positions.

    Intensity-weighted centroids of all given stars are refined together (a few
    re-centred iterations in a circular window of ``radius``), and the median offset is
    returned: one shift for the frame is far more precise than each faint star's own centroid.

    Parameters
    ----------
    data : ndarray
    x, y : ndarray
        Predicted 0-based positions (from the WCS) of bright, unsaturated stars.
    radius : float
        Centroid window radius in pixels.
    sky : ndarray
        Sky level per star (ADU per pixel).
    iterations : int
    max_shift : float, optional
        Stars whose centroid moved further than this are ignored (default ``radius``).

    Returns
    -------
    dx, dy : float
        Median shift (0 when no star qualifies).
    n : int
        Stars used.
    """
    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    max_shift = radius if max_shift is None else max_shift
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(sky) & (x > radius) & \
        (x < nx - 1 - radius) & (y > radius) & (y < ny - 1 - radius)
    if ok.sum() == 0:
        return 0.0, 0.0, 0
    cx, cy, sk = x[ok].copy(), y[ok].copy(), np.asarray(sky, float)[ok]
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h, h + 1)
    for _ in range(iterations):
        ix = np.clip(np.rint(cx).astype(np.int64), h, nx - 1 - h)
        iy = np.clip(np.rint(cy).astype(np.int64), h, ny - 1 - h)
        px = ix[:, None] + off
        py = iy[:, None] + off
        vals = np.take(data, py[:, :, None] * nx + px[:, None, :]).astype(np.float64)
        w = np.where(np.isfinite(vals), vals - sk[:, None, None], 0.0)
        r2 = (px[:, None, :] - cx[:, None, None]) ** 2 + (py[:, :, None] - cy[:, None, None]) ** 2
        w = np.where((r2 <= radius * radius) & (w > 0), w, 0.0)
        tot = w.sum(axis=(1, 2))
        good = tot > 0
        nxc = np.where(good, np.einsum("nij,nj->n", w, px.astype(float)) / np.where(good, tot, 1),
                       cx)
        nyc = np.where(good, np.einsum("nij,ni->n", w, py.astype(float)) / np.where(good, tot, 1),
                       cy)
        cx, cy = nxc, nyc
    dx = cx - x[ok]
    dy = cy - y[ok]
    keep = np.hypot(dx, dy) <= max_shift
    if keep.sum() == 0:
        return 0.0, 0.0, 0
    return float(np.median(dx[keep])), float(np.median(dy[keep])), int(keep.sum())


def detect_stars(data, fwhm, threshold_sigma=5.0, *, max_stars=200, saturate=None,
                 border=0.0, min_separation=None):
    """Detect field stars (photutils ``DAOStarFinder``) on a reference frame.

    Parameters
    ----------
    data : ndarray
    fwhm : float
        PSF FWHM in pixels.
    threshold_sigma : float
        Detection threshold in sky standard deviations (sigma-clipped, whole frame).
    max_stars : int
        Keep the brightest this many.
    saturate : float, optional
        Stars peaking at or above this are dropped (useless as comparison stars).
    border : float
        Stars closer than this to an edge are dropped.
    min_separation : float, optional
        Stars closer than this to a neighbour are dropped (both), default ``2 * fwhm``.

    Returns
    -------
    astropy.table.Table
        ``x, y, flux, peak`` sorted brightest first (0-based positions).
    """
    from astropy.stats import sigma_clipped_stats
    from astropy.table import Table
    from photutils.detection import DAOStarFinder

    data = np.asarray(data, float)
    step = max(1, int(np.sqrt(data.size / 250_000)))  # statistics on a subsample of big frames
    _, median, std = sigma_clipped_stats(data[::step, ::step], sigma=3.0, maxiters=5)
    peak_max = None if saturate is None else saturate - median
    finder = DAOStarFinder(threshold=threshold_sigma * std, fwhm=fwhm, exclude_border=True,
                           peak_max=peak_max)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = finder(data - median)
    empty = Table({"x": np.zeros(0), "y": np.zeros(0), "flux": np.zeros(0), "peak": np.zeros(0)})
    if found is None or len(found) == 0:
        return empty
    xc = "x_centroid" if "x_centroid" in found.colnames else "xcentroid"
    yc = "y_centroid" if "y_centroid" in found.colnames else "ycentroid"
    t = Table({"x": np.asarray(found[xc], float), "y": np.asarray(found[yc], float),
               "flux": np.asarray(found["flux"], float), "peak": np.asarray(found["peak"], float)})
    ny, nx = data.shape
    keep = (t["x"] >= border) & (t["x"] <= nx - 1 - border) & (t["y"] >= border) & \
        (t["y"] <= ny - 1 - border)
    t = t[keep]
    sep = 2.0 * fwhm if min_separation is None else min_separation
    if len(t) > 1 and sep > 0:
        xy = np.column_stack([t["x"], t["y"]])
        from scipy.spatial import cKDTree
        pairs = cKDTree(xy).query_pairs(sep, output_type="ndarray")
        crowded = np.zeros(len(t), bool)
        crowded[pairs.ravel()] = True
        t = t[~crowded]
    t.sort("flux", reverse=True)
    return t[:max_stars]


# ---- times ------------------------------------------------------------------------

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


# ---- ensemble normalisation --------------------------------------------------------

@dataclass
class Ensemble:
    """Result of `normalise_ensemble`; arrays are (frames, stars) or per frame / star.

    Attributes
    ----------
    flux, flux_err : ndarray
        Normalised fluxes and their errors (comparison stars are normalised without
        themselves, so their errors can be checked against their scatter).
    zero_point, zero_point_err : ndarray
        Per-frame factor ``z`` (raw = z * normalised) and its uncertainty.
    comparison : ndarray of bool
        Stars used as comparison stars.
    n_comparison : ndarray of int
        Comparison stars used per frame.
    chi2 : ndarray
        Reduced chi-square of each star's normalised flux about its median.
    reference_flux : ndarray
        Each star's flux at the reference zero point (median over frames).
    """

    flux: np.ndarray
    flux_err: np.ndarray
    zero_point: np.ndarray
    zero_point_err: np.ndarray
    comparison: np.ndarray
    n_comparison: np.ndarray
    chi2: np.ndarray
    reference_flux: np.ndarray


def normalise_ensemble(flux, flux_err, flags, *, exclude=(0,), min_stars=3, max_bad_fraction=0.2,
                       clip=5.0, chi2_clip=5.0, max_iter=10):
    """Per-frame ensemble normalisation from constant field stars.

    Each star's reference flux is its median over frames; a frame's zero point ``z`` is the
    inverse-variance weighted mean of ``flux / reference`` over comparison stars, with
    outliers in that frame clipped at ``clip`` sigma. Stars that vary (reduced chi-square of
    their normalised flux above ``median + chi2_clip * 1.4826 MAD`` and above 2) or are flagged in
    more than ``max_bad_fraction`` of frames are dropped, and the whole repeats until the
    comparison set is stable. ``z``'s variance is ``1 / Σw`` scaled up by the frame's reduced
    chi-square when that exceeds 1, and is propagated:
    ``err² = (σ / z)² + (F σ_z / z²)²``.

    Parameters
    ----------
    flux, flux_err : ndarray, shape (n_frames, n_stars)
        Raw fluxes and errors.
    flags : ndarray of int, same shape
        Non-zero marks a measurement that must not be used as a comparison.
    exclude : sequence of int
        Star columns never used as comparisons (the target).
    min_stars : int
        Frames with fewer comparison stars get NaN zero points.

    Returns
    -------
    Ensemble
    """
    F = np.asarray(flux, float)
    E = np.asarray(flux_err, float)
    bad = (np.asarray(flags) != 0) | ~np.isfinite(F) | ~np.isfinite(E) | (E <= 0) | (F <= 0)
    n_frames, n_stars = F.shape
    candidate = np.ones(n_stars, bool)
    candidate[list(exclude)] = False
    candidate &= bad.mean(axis=0) <= max_bad_fraction
    comp = candidate.copy()
    outlier = np.zeros_like(bad)
    z = np.ones(n_frames)
    chi2 = np.full(n_stars, np.nan)
    Fm = np.where(bad, np.nan, F)
    for _ in range(max_iter):
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmedian(Fm / z[:, None], axis=0)
            r = F / ref
            e = E / ref
            use = comp[None, :] & ~bad & ~outlier & np.isfinite(r)
            w = np.where(use, 1.0 / e ** 2, 0.0)
            W = w.sum(axis=1)
            z = np.where(use.sum(axis=1) >= min_stars, (w * np.where(use, r, 0)).sum(axis=1) / W,
                         np.nan)
            # per-frame outliers (cosmic rays, a neighbour's glint)
            new_outlier = comp[None, :] & ~bad & (np.abs(r - z[:, None]) > clip * e)
            zl, zle = _leave_one_out(w, r, use, z, W)
            nrm = r / zl
            nerr = np.hypot(e / zl, r * zle / zl ** 2)
            good = ~bad & ~new_outlier
            res = np.where(good, ((nrm - 1.0) / nerr) ** 2, np.nan)
            chi2 = np.nanmean(res, axis=0)
        c = chi2[comp & np.isfinite(chi2)]
        if c.size >= min_stars:
            med = np.median(c)
            mad = 1.4826 * np.median(np.abs(c - med))
            limit = max(2.0, med + chi2_clip * max(mad, 0.05 * med))
            new_comp = candidate & (chi2 <= limit)
        else:
            new_comp = comp
        if np.array_equal(new_comp, comp) and np.array_equal(new_outlier, outlier):
            break
        comp, outlier = new_comp, new_outlier
    use = comp[None, :] & ~bad & ~outlier
    n_comp = use.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(use, 1.0 / (E / ref) ** 2, 0.0)
        W = w.sum(axis=1)
        r = F / ref
        z = np.where(n_comp >= min_stars, (w * np.where(use, r, 0)).sum(axis=1) / W, np.nan)
        zl, zle = _leave_one_out(w, r, use, z, W)
        chi_frame = np.where(n_comp > 1, (w * np.where(use, r - z[:, None], 0) ** 2).sum(axis=1)
                             / np.maximum(n_comp - 1, 1), 1.0)
        z_err = np.sqrt(np.maximum(chi_frame, 1.0) / W)
        # comparison stars use their leave-one-out zero point, everyone else the full one
        zz = np.where(use, zl, z[:, None])
        zze = np.where(use, zle, z_err[:, None])
        norm = F / zz
        norm_err = np.hypot(E / zz, F * zze / zz ** 2)
    return Ensemble(flux=norm, flux_err=norm_err, zero_point=z, zero_point_err=z_err,
                    comparison=comp, n_comparison=n_comp, chi2=chi2, reference_flux=ref)


def _leave_one_out(w, r, use, z, W):
    """Zero points and errors without each star itself (for the stars in ``use``)."""
    S = (w * np.where(use, r, 0)).sum(axis=1)
    n = use.sum(axis=1)
    W1 = W[:, None] - w
    with np.errstate(invalid="ignore", divide="ignore"):
        zl = np.where(use, (S[:, None] - w * np.where(use, r, 0)) / W1, z[:, None])
        resid = np.where(use, w * (r - z[:, None]) ** 2, 0)
        chi = resid.sum(axis=1) / np.maximum(n - 1, 1)
        zle = np.sqrt(np.maximum(chi, 1.0)[:, None] / np.where(use, W1, W[:, None]))
    return zl, zle


# ---- a dataset --------------------------------------------------------------------

def frame_stem(path):
    """A frame's name without its FITS suffix (``...-e91.fits.fz`` -> ``...-e91``)."""
    name = Path(path).name
    for suffix in _FRAME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def list_frames(folder):
    """The frame files in ``folder`` (``.fits``, ``.fits.fz``), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(TMP_PREFIX)
                  and p.name.endswith(_FRAME_SUFFIXES))


@dataclass
class DatasetPhotometry:
    """Summary of `measure_dataset`: small, so it fits in a pipeline checkpoint.

    Attributes
    ----------
    red_dir, photometry_dir : Path
    n_frames : int
        Frames found in ``data/``.
    measured : list of str
        Frames measured by this call.
    skipped : list of str
        Frames whose photometry was already on disk.
    rejected : dict
        Frame name -> reason, for frames that could not be measured.
    reference_frame : str
        The frame field stars were detected on.
    n_stars : int
        Stars measured per frame (the target is star 0).
    """

    red_dir: Path
    photometry_dir: Path
    n_frames: int = 0
    measured: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    reference_frame: str | None = None
    n_stars: int = 0


def _settings(config, pixscale):
    p = config.photometry
    return dict(radius=p.aperture_arcsec / pixscale, annulus_in=p.annulus_inner_arcsec / pixscale,
                annulus_out=p.annulus_outer_arcsec / pixscale,
                edge=p.edge_margin_arcsec / pixscale,
                centroid=p.centroid_box_arcsec / pixscale, sigma=p.sky_sigma_clip)


def _header_fwhm(header, pixscale):
    for key in ("L1FWHM", "FWHM"):
        try:
            v = float(header.get(key))
        except (TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return v / pixscale if key == "L1FWHM" else v
    return None


def _load_config(red_dir, config):
    if config is not None:
        return config
    from .config import load_reduction_config
    return load_reduction_config(Path(red_dir) / "reduction_config.yaml")


def _write_table(table, path):
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    write_text_atomic(path, buf.getvalue())


def _reference_stars(frames, phot_dir, config, rejected):
    """Detect field stars once on a reference frame; return the star table (target first)."""
    from astropy.table import Table

    path = phot_dir / REFERENCE_STARS
    if path.exists():
        return Table.read(path, format="ascii.ecsv")
    from .frames import read_frame

    wanted = config.photometry.reference_frame
    order = list(frames)
    if wanted:
        order = [f for f in frames if f.name == wanted or frame_stem(f) == wanted]
        if not order:
            raise PipekitError(f"{config.source}: photometry.reference_frame {wanted!r} is not "
                               f"among the frames in {frames[0].parent if frames else '?'}")
    else:
        # best seeing (BANZAI's L1FWHM) first, the middle frame when headers do not say
        from astropy.io import fits
        scores = []
        for i, f in enumerate(order):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hdr = fits.getheader(f, "SCI") if f.name.endswith(".fz") else fits.getheader(f)
                ps = float(hdr.get("PIXSCALE", 1.0))
                score = _header_fwhm(hdr, ps)
            except Exception:
                score = None
            scores.append((score if score else np.inf, abs(i - len(order) / 2)))
        order = [order[i] for i in sorted(range(len(order)), key=lambda i: scores[i])]
    # Kept apart from ``rejected`` until no frame will do: a frame the target is off
    # may still be measured (its stars flagged) once another frame is the reference.
    target_off = {}
    for f in order:
        try:
            frame = read_frame(f)
        except FrameError as exc:
            rejected[f.name] = str(exc)
            continue
        info = frame.info
        if frame.wcs is None or info.problems:
            rejected[f.name] = f"{f}: " + ("; ".join(info.problems) or "no celestial WCS")
            continue
        try:
            _check_pixels(frame.data, f)
        except FrameError as exc:
            rejected[f.name] = str(exc)
            continue
        s = _settings(config, info.pixscale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tx, ty = frame.wcs.all_world2pix([config.target.ra], [config.target.dec], 0)
        ny, nx = frame.data.shape
        if not (0 <= tx[0] <= nx - 1 and 0 <= ty[0] <= ny - 1):
            # a WCS pointing elsewhere must not define the star list of the whole dataset
            log.warning("%s: target off this frame; not used as the reference frame", f.name)
            target_off[f.name] = (f"{f}: {_target_position(config)} falls outside this frame "
                                  f"(at pixel x={tx[0]:.0f}, y={ty[0]:.0f} of {nx} x {ny})")
            continue
        fwhm = _header_fwhm(frame.header, info.pixscale) or 2.0 / info.pixscale
        found = detect_stars(frame.data, fwhm, config.photometry.detection_sigma,
                             max_stars=4 * config.photometry.max_field_stars,
                             saturate=info.saturate, border=s["annulus_out"],
                             min_separation=s["radius"] + fwhm)
        ra, dec = frame.wcs.all_pix2world(found["x"], found["y"], 0)
        # the target itself (and stars blended with it) are not field stars
        far = np.hypot(found["x"] - tx[0], found["y"] - ty[0]) > s["annulus_in"]
        found, ra, dec = found[far], ra[far], dec[far]
        n = min(len(found), config.photometry.max_field_stars)
        stars = Table({
            "id": np.arange(n + 1),
            "ra": np.concatenate([[config.target.ra], ra[:n]]),
            "dec": np.concatenate([[config.target.dec], dec[:n]]),
            "x_ref": np.concatenate([tx, found["x"][:n]]),
            "y_ref": np.concatenate([ty, found["y"][:n]]),
            "flux_ref": np.concatenate([[np.nan], found["flux"][:n]]),
            "is_target": np.arange(n + 1) == 0,
        })
        stars.meta = {"reference_frame": f.name, "fwhm_px": float(fwhm),
                      "target": config.target.name,
                      "detection_sigma": float(config.photometry.detection_sigma)}
        _write_table(stars, path)
        log.info("%s: %d field stars detected on %s", phot_dir.parent, n, f.name)
        return stars
    others = {f.name: rejected[f.name] for f in order if f.name in rejected}
    rejected.update(target_off)
    if target_off:
        config_file = config.source or phot_dir.parent / "reduction_config.yaml"
        where = f"all {len(order)} frames" if len(order) > 1 else f"the frame {order[0].name}"
        if others:
            where = (f"all {len(target_off)} readable frames (the other "
                     f"{len(others)} rejected: {others})")
        raise PipekitError(f"{phot_dir.parent}: {_target_position(config)} falls outside "
                           f"{where}: check target.RA/target.Dec in {config_file}")
    raise PipekitError(f"{phot_dir.parent}: no usable reference frame among {len(frames)} frames "
                       f"(reasons: {rejected})")


def _target_position(config):
    return f"target at RA {config.target.ra:.5f} deg, Dec {config.target.dec:+.5f} deg"


def _check_pixels(data, path):
    finite = np.isfinite(data[::4, ::4]).mean()
    if finite < 0.5:
        raise FrameError(f"{path}: {100 * (1 - finite):.0f}% of the image is NaN or infinite; "
                         "expected a reduced image")


def _measure_one(path, stars, config, bright):
    """Measure one frame; returns the per-frame table (meta holds the frame's facts)."""
    from .frames import read_frame

    frame = read_frame(path)
    info = frame.info
    if frame.wcs is None:
        raise FrameError(f"{path}: no celestial WCS; cannot place the target and field stars")
    if info.problems:
        raise FrameError(f"{path}: " + "; ".join(info.problems))
    _check_pixels(frame.data, path)
    s = _settings(config, info.pixscale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = frame.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    dx = dy = 0.0
    n_shift = 0
    if s["centroid"] > 0 and len(bright):
        bx, by = x[bright], y[bright]
        sky_b, _, _ = annulus_sky(frame.data, bx, by, s["annulus_in"], s["annulus_out"],
                                  s["sigma"])
        dx, dy, n_shift = centroid_shift(frame.data, bx, by, max(s["centroid"], s["radius"]),
                                         sky_b, max_shift=max(s["centroid"], s["radius"]))
        if n_shift:
            x, y = x + dx, y + dy
    table = measure_frame(frame.data, np.column_stack([x, y]), s["radius"], s["annulus_in"],
                          s["annulus_out"], info.gain, info.rdnoise, info.saturate,
                          sigma=s["sigma"], edge_margin=s["edge"])
    table.add_column(np.asarray(stars["id"]), name="id", index=0)
    mid = info.mid_time()
    bjd = bjd_tdb(mid, config.target.ra, config.target.dec, info.location())
    table.meta = {
        "frame": Path(path).name, "date_obs": info.date_obs, "exptime": info.exptime,
        "mjd_mid_utc": float(mid.mjd), "bjd_tdb": float(bjd.jd), "filter": info.filter,
        "instrument": info.instrument, "site": info.site, "pixscale": info.pixscale,
        "gain": info.gain, "rdnoise": info.rdnoise, "saturate": info.saturate,
        "fwhm_px": _header_fwhm(frame.header, info.pixscale),
        "radius_px": s["radius"], "annulus_in_px": s["annulus_in"],
        "annulus_out_px": s["annulus_out"], "shift_px": [dx, dy], "n_shift_stars": n_shift,
        "n_stars": len(stars),
    }
    return table


def measure_dataset(red_dir, config=None, *, progress=None):
    """Measure every frame of a dataset that has no photometry on disk yet.

    Field stars are detected once on a reference frame (best seeing) and stored in
    ``<red_dir>/photometry/reference_stars.ecsv`` with their sky positions (the target is
    star 0); every frame places them through its own WCS, refined by a common centroid
    shift, and gets ``<red_dir>/photometry/<frame>.ecsv`` written atomically as soon as it
    is measured. A frame that cannot be measured (corrupt, no WCS, missing keys) is listed
    with its reason in ``rejected_frames.json`` and the others go on.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder (``data/`` holds its frames).
    config : pipekit.config.ReductionConfig, optional
        Default: ``<red_dir>/reduction_config.yaml``.
    progress : callable, optional
        Called as ``progress(done, total)`` after each frame.

    Returns
    -------
    DatasetPhotometry

    Raises
    ------
    PipekitError
        When no frame can serve as the reference frame; when the target falls
        outside every frame, the message says so and names the config to check.
    """

    red_dir = Path(red_dir)
    config = _load_config(red_dir, config)
    phot_dir = red_dir / "photometry"
    phot_dir.mkdir(parents=True, exist_ok=True)
    frames = list_frames(red_dir / "data")
    result = DatasetPhotometry(red_dir=red_dir, photometry_dir=phot_dir, n_frames=len(frames))
    if not frames:
        log.warning("%s: no frames in %s", red_dir, red_dir / "data")
        _write_rejected(phot_dir, {})
        return result
    rejected = {}
    by_stem = {}
    for f in frames:  # x.fits and x.fits.fz are one exposure: measure it once
        first = by_stem.setdefault(frame_stem(f), f)
        if first is not f:
            rejected[f.name] = (f"{f}: the same frame as {first.name} (one name with .fz, one "
                                f"without); measured once, from {first.name}")
            log.warning("%s", rejected[f.name])
    frames = list(by_stem.values())
    todo = []
    for f in frames:
        if (phot_dir / (frame_stem(f) + ".ecsv")).exists():
            result.skipped.append(f.name)
        else:
            todo.append(f)
    if todo:
        try:
            stars = _reference_stars(frames, phot_dir, config, rejected)
        except PipekitError:
            _write_rejected(phot_dir, rejected)
            raise
        result.reference_frame = stars.meta.get("reference_frame")
        result.n_stars = len(stars)
        flux_ref = np.asarray(stars["flux_ref"], float)
        order = np.argsort(np.where(np.isfinite(flux_ref), -flux_ref, np.inf))
        bright = order[: min(50, max(len(stars) - 1, 0))]
        bright = bright[bright != 0]
        for k, f in enumerate(todo):
            try:
                table = _measure_one(f, stars, config, bright)
            except (FrameError, PipekitError) as exc:
                rejected[f.name] = str(exc)
                log.warning("rejected %s: %s", f.name, exc)
            except Exception as exc:  # one bad frame never stops the others (BANZAI's habit)
                rejected[f.name] = f"{f}: unexpected {type(exc).__name__} while measuring: {exc}"
                log.exception("rejected %s", f.name)
            else:
                _write_table(table, phot_dir / (frame_stem(f) + ".ecsv"))
                rejected.pop(f.name, None)
                result.measured.append(f.name)
            if progress is not None:
                progress(k + 1, len(todo))
    elif (phot_dir / REFERENCE_STARS).exists():
        from astropy.table import Table
        stars = Table.read(phot_dir / REFERENCE_STARS, format="ascii.ecsv")
        result.reference_frame = stars.meta.get("reference_frame")
        result.n_stars = len(stars)
    result.rejected = rejected
    _write_rejected(phot_dir, rejected)
    log.info("%s: %d frames measured, %d already done, %d rejected", red_dir,
             len(result.measured), len(result.skipped), len(rejected))
    return result


def _write_rejected(phot_dir, rejected):
    write_text_atomic(phot_dir / REJECTED_FRAMES, json.dumps(rejected, indent=1, sort_keys=True))
