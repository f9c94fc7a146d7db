"""Alignment of predicted star positions with a frame: one common centroid shift."""

import math

import numpy as np

__all__ = ["centroid_shift"]


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


