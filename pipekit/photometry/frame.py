"""Aperture photometry of many stars in one frame, from arrays alone (no files)."""

import math

import numpy as np

from .apertures import aperture_sums, repair_bad_pixels
from .flags import EDGE, OFF_FRAME, SKY_POOR
from .sky import annulus_sky

__all__ = ["measure_frame", "MIN_SKY_PIXELS"]


def _level(bkg, x, y):
    """The background map at the nearest pixel of each position (0 off the frame)."""
    ny, nx = bkg.shape
    ok = np.isfinite(x) & np.isfinite(y)
    ix = np.clip(np.rint(np.where(ok, x, 0)).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(np.where(ok, y, 0)).astype(int), 0, ny - 1)
    return np.where(ok, _at(bkg, iy, ix), 0.0)


def _at(bkg, iy, ix):
    """A map (array, or `~pipekit.photometry.detection.Background`) at integer pixels."""
    return bkg.at(iy, ix) if hasattr(bkg, "at") else bkg[iy, ix]

#: Fewer usable annulus pixels than this flag a star ``SKY_POOR``.
MIN_SKY_PIXELS = 20


def measure_frame(data, positions, radius, annulus_in, annulus_out, gain, rdnoise,
                  saturate=None, *, sigma=3.0, maxiters=10, edge_margin=0.0, background=None,
                  repair=True):
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
    background : Background or ndarray, optional
        A smooth sky map of the frame (`pipekit.photometry.detection.background_map`, or
        its ``map``; a `Background` is evaluated only at the pixels measured):
        the annulus then measures only what the map leaves, so a sky gradient neither
        biases the sky of a star whose annulus is cut by the edge nor inflates its scatter.
        ``sky`` is reported as the map plus that local residual.
    repair : bool
        Fill masked (non-finite) aperture pixels from the star's mirror image
        (`repair_bad_pixels`); only stars left with masked pixels are flagged ``BAD_PIXELS``.

    Returns
    -------
    astropy.table.Table
        One row per position: ``x, y, aperture_sum, area, sky, sky_std, n_sky, flux,
        flux_err, flags, n_filled``. ``flux = aperture_sum - area * sky`` (ADU);
        ``flux_err² = flux / gain + area σ² + area² σ² π / (2 n_sky)`` with the per-pixel
        variance ``σ² = max(sky_std², sky / gain + (rdnoise / gain)²)``: Poisson noise of
        the star, noise of the sky and read noise in the aperture, and the uncertainty of the
        median sky level; each of the ``n_filled`` repaired pixels adds twice a pixel's
        variance (it repeats its mirror's noise). Off-frame stars get NaN and ``OFF_FRAME``.

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
    bkg = None
    local = None   # a map subtracted where pixels are gathered (no full-frame copy)
    if background is not None:
        bkg = background
        if hasattr(bkg, "at") and (not repair or np.isfinite(data).all()):
            local = bkg
        else:  # repairs write into the map-subtracted frame: make it
            bkg = np.asarray(getattr(bkg, "map", bkg), float)
            data = np.ascontiguousarray(data - bkg)
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
    n_filled = np.zeros(n, np.int64)
    filled_sum = np.zeros(n)
    if repair and local is None and not np.isfinite(data).all():
        level = 0.0
        if bkg is None:
            data = data.astype(float)          # a copy: the caller's frame stays as it was
            level = float(np.nanmedian(data[::4, ::4]))
        for start in range(0, len(index), chunk):
            k = index[start:start + chunk]
            n_filled[k], filled_sum[k] = repair_bad_pixels(data, x[k], y[k], radius,
                                                           sky=level)
    for start in range(0, len(index), chunk):
        k = index[start:start + chunk]
        sat, level = saturate, 0.0
        if bkg is not None:  # the map's level at each star: saturation and Poisson noise
            level = _at(bkg, np.clip(np.rint(y[k]).astype(int), 0, ny - 1),
                        np.clip(np.rint(x[k]).astype(int), 0, nx - 1))
            sat = None if saturate is None else saturate - level
        s, a, f = aperture_sums(data, x[k], y[k], radius, sat, background=local)
        sums[k], area[k] = s, a
        flags[k] |= f
        sk, ss, ns = annulus_sky(data, x[k], y[k], annulus_in, annulus_out, sigma, maxiters,
                                 background=local)
        sk = sk + level
        sky[k], sky_std[k], n_sky[k] = sk, ss, ns
    if edge_margin > 0:
        with np.errstate(invalid="ignore"):
            near = (np.minimum(x, nx - 1 - x) < edge_margin) | \
                (np.minimum(y, ny - 1 - y) < edge_margin)
        flags[on & near] |= EDGE
    flags[on & (n_sky < MIN_SKY_PIXELS)] |= SKY_POOR
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = sums - area * (sky if bkg is None else sky - _level(bkg, x, y))
        var_model = np.maximum(sky, 0.0) / gain + (rdnoise / gain) ** 2
        var_pix = np.fmax(sky_std ** 2, var_model)
        var = (np.maximum(flux, 0.0) / gain + area * var_pix
               + area ** 2 * var_pix * (np.pi / 2.0) / np.maximum(n_sky, 1))
        # a filled pixel repeats its mirror's noise: twice a pixel's variance more
        # (filled values are in ``data``: with a map subtracted, its level comes back on top)
        filled = filled_sum + (0.0 if bkg is None else n_filled * _level(bkg, x, y))
        var += 2.0 * (np.maximum(filled, 0.0) / gain + n_filled * (rdnoise / gain) ** 2)
        flux_err = np.sqrt(var)
    return Table({"x": x, "y": y, "aperture_sum": sums, "area": area, "sky": sky,
                  "sky_std": sky_std, "n_sky": n_sky, "flux": flux, "flux_err": flux_err,
                  "flags": flags, "n_filled": n_filled})


