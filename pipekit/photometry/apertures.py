"""Exact-overlap circular aperture sums, for many stars at once.

The area of a circle inside each pixel is computed in closed form, so sums are exact for
any radius and sub-pixel position (the numpy / photutils / sep pixel convention).
"""

import math

import numpy as np

from .flags import BAD_PIXELS, EDGE, SATURATED

__all__ = ["circular_overlap", "aperture_sums", "repair_bad_pixels"]


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


def aperture_sums(data, x, y, radius, saturate=None, *, background=None):
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
    saturate : float or ndarray, optional
        Pixels at or above this flag the star ``SATURATED`` (one value per star allowed).
    background : Background, optional
        A sky map (`pipekit.photometry.detection.background_map`) subtracted from the
        aperture pixels, evaluated at those pixels only.

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
    if background is not None:
        values = values - background.at(np.clip(py, 0, ny - 1)[:, :, None],
                                        np.clip(px, 0, nx - 1)[:, None, :])
    used = (area > 0) & inside
    finite = np.isfinite(values)
    w = np.where(used, area, 0.0)
    sums = np.einsum("nij,nij->n", w, np.where(finite, values, 0.0))
    flags = np.zeros(len(x), np.int32)
    total = np.pi * radius * radius
    in_area = w.sum(axis=(1, 2))
    flags[in_area < total * (1 - 1e-9)] |= EDGE
    # a masked pixel the circle only grazes (rounding leaves areas of ~1e-12) takes no flux
    flags[(used & ~finite & (area > 1e-6)).any(axis=(1, 2))] |= BAD_PIXELS
    if saturate is not None:
        sat = np.broadcast_to(np.asarray(saturate, float), (len(x),))
        on = np.isfinite(sat) & (sat > 0)
        if on.any():
            hit = used & finite & (values >= sat[:, None, None])
            flags[on & hit.any(axis=(1, 2))] |= SATURATED
    return sums, in_area, flags




def repair_bad_pixels(data, x, y, radius, max_share=0.02, sky=0.0):
    """Fill non-finite pixels inside apertures from the star's mirror image.

    A PSF is point-symmetric about the star's centre, so a masked pixel at offset ``d``
    is replaced by the bilinear interpolation of the image at ``-d``. A pixel whose mirror
    is also masked (a bad column through the star's centre) stays non-finite, and so does
    every masked pixel of a star whose filled pixels would carry more than ``max_share`` of
    its aperture sum (interpolation smooths the PSF's core): `aperture_sums` then flags
    those stars ``BAD_PIXELS``. ``data`` is changed in place.

    Parameters
    ----------
    data : ndarray
        2-D image, sky (or a background map) subtracted, C-contiguous float.
    x, y : ndarray
        0-based aperture centres.
    radius : float
        Aperture radius in pixels.
    max_share : float
        Largest share of the aperture sum the filled pixels may carry.
    sky : float
        The sky level left in ``data`` (0 when a background map was subtracted): the
        share counts the star's light only.

    Returns
    -------
    n_filled, filled_sum : ndarray
        Pixels filled per star and the sum of their values (for the error budget: a filled
        pixel repeats its mirror's noise).
    """
    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    n_filled = np.zeros(n, int)
    filled_sum = np.zeros(n)
    if n == 0:
        return n_filled, filled_sum
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h, h + 1)
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    px = (ix[:, None] + off)[:, None, :] + 0 * off[None, :, None]
    py = (iy[:, None] + off)[:, :, None] + 0 * off[None, None, :]
    # pixels whose box meets the circle: nearest point of the box within the radius
    gx = np.maximum(np.abs(px - x[:, None, None]) - 0.5, 0.0)
    gy = np.maximum(np.abs(py - y[:, None, None]) - 0.5, 0.0)
    near = gx * gx + gy * gy < radius * radius * (1 + 1e-9)
    near &= (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    values = data[np.clip(py, 0, ny - 1), np.clip(px, 0, nx - 1)]
    star, bi, bj = np.nonzero(near & ~np.isfinite(values))
    if star.size == 0:
        return n_filled, filled_sum
    bx, by = px[star, bi, bj], py[star, bi, bj]
    mx, my = 2 * x[star] - bx, 2 * y[star] - by
    x0, y0 = np.floor(mx).astype(np.int64), np.floor(my).astype(np.int64)
    fx, fy = mx - x0, my - y0
    inside = (x0 >= 0) & (x0 + 1 < nx) & (y0 >= 0) & (y0 + 1 < ny)
    x0c, y0c = np.clip(x0, 0, nx - 2), np.clip(y0, 0, ny - 2)
    fill = ((1 - fx) * (1 - fy) * data[y0c, x0c] + fx * (1 - fy) * data[y0c, x0c + 1]
            + (1 - fx) * fy * data[y0c + 1, x0c] + fx * fy * data[y0c + 1, x0c + 1])
    ok = inside & np.isfinite(fill)
    total = np.einsum("nij->n", np.where(near & np.isfinite(values), values - sky, 0.0))
    share = np.bincount(star[ok], weights=np.abs(fill[ok] - sky), minlength=n)
    ok &= share[star] <= max_share * np.maximum(np.abs(total[star]), 1e-30)
    data[by[ok], bx[ok]] = fill[ok]
    n_filled += np.bincount(star[ok], minlength=n)
    filled_sum += np.bincount(star[ok], weights=fill[ok], minlength=n)
    return n_filled, filled_sum
