"""Exact-overlap circular aperture sums, for many stars at once.

The area of a circle inside each pixel is computed in closed form, so sums are exact for
any radius and sub-pixel position (the numpy / photutils / sep pixel convention).
"""

import math

import numpy as np

from .flags import BAD_PIXELS, EDGE, SATURATED

__all__ = ["circular_overlap", "aperture_sums"]


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
    saturate : float or ndarray, optional
        Pixels at or above this flag the star ``SATURATED`` (one value per star allowed).

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
    if saturate is not None:
        sat = np.broadcast_to(np.asarray(saturate, float), (len(x),))
        on = np.isfinite(sat) & (sat > 0)
        if on.any():
            hit = used & finite & (values >= sat[:, None, None])
            flags[on & hit.any(axis=(1, 2))] |= SATURATED
    return sums, in_area, flags


