"""Sigma-clipped median sky in circular annuli, for many stars at once."""

import math

import numpy as np

__all__ = ["annulus_sky"]


def annulus_sky(data, x, y, r_in, r_out, sigma=3.0, maxiters=10, *, background=None):
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
    background : Background, optional
        A sky map (`pipekit.photometry.detection.background_map`) subtracted from the
        annulus pixels, evaluated at those pixels only.

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
    if background is not None:
        values -= background.at(py, px)
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
        med, std = _range_stats(values, cs1, cs2, lo, hi, rows, m)
        lower = (med - sigma * std)[:, None]
        upper = (med + sigma * std)[:, None]
        new_lo = np.where(hi > 0, (values < lower).sum(axis=1), 0)
        new_hi = np.where(hi > 0, (values <= upper).sum(axis=1), 0)
        new_hi = np.maximum(new_hi, new_lo)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    med, std = _range_stats(values, cs1, cs2, lo, hi, rows, m)
    return med, std, hi - lo


def _range_stats(values, cs1, cs2, lo, hi, rows, m):
    """Median and population std of each row's sorted values ``[lo, hi)`` (NaN when empty)."""
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


