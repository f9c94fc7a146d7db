"""Alignment of predicted star positions with a frame.

`match_stars` finds the similarity transform between two star lists by triangle patterns
(no trust in the header WCS); `centroid_shift` then refines a common sub-pixel shift.
"""

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["centroid_shift", "Similarity", "Match", "fit_similarity", "match_stars"]


def centroid_shift(data, x, y, radius, sky, *, iterations=5, max_shift=None,
                   background=None):
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
    background : Background, optional
        A sky map (`pipekit.photometry.detection.background_map`) subtracted from the
        window pixels (``sky`` is then the level left above it).

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
        if background is not None:
            vals -= background.at(py[:, :, None], px[:, None, :])
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




@dataclass
class Similarity:
    """A similarity transform ``(x, y) -> s R(θ) (x, y) + (dx, dy)`` between pixel frames.

    Attributes
    ----------
    scale : float
    rotation_deg : float
        Counter-clockwise in pixel coordinates.
    dx, dy : float
        Translation in pixels.
    """

    scale: float = 1.0
    rotation_deg: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    @classmethod
    def from_params(cls, a, b, dx, dy):
        """From ``a = s cos θ``, ``b = s sin θ`` and the translation."""
        return cls(float(math.hypot(a, b)), float(math.degrees(math.atan2(b, a))), float(dx),
                   float(dy))

    def inverse(self):
        """The transform taking the image of `apply` back."""
        s, t = 1.0 / self.scale, -self.rotation_deg
        back = Similarity(s, t, 0.0, 0.0)
        dx, dy = back.apply(-self.dx, -self.dy)
        return Similarity(s, t, float(dx), float(dy))

    def apply(self, x, y):
        """Transform positions ``x, y`` (arrays); returns the new ``x, y``."""
        t = math.radians(self.rotation_deg)
        a, b = self.scale * math.cos(t), self.scale * math.sin(t)
        x = np.asarray(x, float)
        y = np.asarray(y, float)
        return a * x - b * y + self.dx, b * x + a * y + self.dy


@dataclass
class Match:
    """The outcome of `match_stars`: the transform and how well it is supported.

    Attributes
    ----------
    transform : Similarity
    n_matched : int
        Star pairs used in the final least-squares fit.
    residual_px : float
        RMS distance of those pairs after the fit.
    """

    transform: Similarity
    n_matched: int
    residual_px: float


def fit_similarity(src, dst):
    """Least-squares similarity transform taking ``src`` (n, 2) onto ``dst`` (n, 2)."""
    src = np.asarray(src, float)
    dst = np.asarray(dst, float)
    n = len(src)
    A = np.zeros((2 * n, 4))
    A[0::2] = np.column_stack([src[:, 0], -src[:, 1], np.ones(n), np.zeros(n)])
    A[1::2] = np.column_stack([src[:, 1], src[:, 0], np.zeros(n), np.ones(n)])
    p, *_ = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)
    return Similarity.from_params(*p)


def _triangles(xy, k=5):
    """Triangles of each star with its ``k - 1`` nearest neighbours: vertex indices ordered
    by the opposite side (shortest, middle, longest) and invariants (L2 / L1, L1 / L0)."""
    from itertools import combinations

    from scipy.spatial import cKDTree

    n = len(xy)
    if n < 3:
        return np.zeros((0, 3), int), np.zeros((0, 2))
    k = min(k, n)
    _, nb = cKDTree(xy).query(xy, k)
    tri = {tuple(sorted(c)) for row in nb for c in combinations(row, 3)}
    tri = np.array(sorted(tri), int)
    p = xy[tri]                                           # (m, 3, 3 vertices, 2)
    # side opposite vertex i joins the two other vertices
    sides = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T), np.hypot(*(p[:, 0] - p[:, 2]).T),
                      np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)
    order = np.argsort(sides, axis=1)
    s = np.take_along_axis(sides, order, axis=1)
    ok = s[:, 0] > 1.0                                    # degenerate: two stars on one spot
    inv = np.column_stack([s[:, 2] / np.maximum(s[:, 1], 1e-9),
                           s[:, 1] / np.maximum(s[:, 0], 1e-9)])
    return np.take_along_axis(tri, order, axis=1)[ok], inv[ok]


def match_stars(src, dst, *, tolerance=2.0, max_shift=None, max_rotation_deg=3.0,
                max_scale_error=0.03, min_matched=None, centre=(0.0, 0.0), k=5):
    """Match two star lists by their triangle patterns and fit a similarity transform.

    Triangles of each star and its nearest neighbours are compared through their
    scale- and rotation-free side ratios; every pair of similar triangles proposes a
    transform (RANSAC), the one that brings most stars within ``tolerance`` wins and is
    refined by least squares on all its pairs. No prior position is trusted, so header
    WCS errors of any size are absorbed; ``max_shift`` (at ``centre``), ``max_rotation_deg``
    and ``max_scale_error`` bound what counts as plausible.

    Parameters
    ----------
    src : ndarray, shape (n, 2)
        Predicted positions (e.g. reference stars placed through the header WCS),
        brightest first.
    dst : ndarray, shape (m, 2)
        Detected positions in the frame, brightest first.
    tolerance : float
        Pixels within which a transformed ``src`` star counts as matched.
    max_shift : float, optional
        Largest plausible displacement of ``centre`` (None: unbounded).
    max_rotation_deg, max_scale_error : float
    min_matched : int, optional
        Fewer matched pairs than this: no match. A triangle pair matches its own three
        stars by construction, so 5 means only two more by chance, which thousands of
        proposals can find among many ``src`` stars on a sparse frame. Default: 5 for up to
        10 ``src`` stars (few stars to land by chance), else 6.
    centre : tuple
        Where ``max_shift`` is measured (the frame's centre).

    Returns
    -------
    Match or None
        None when no transform is supported by ``min_matched`` stars.
    """
    from scipy.spatial import cKDTree

    src = np.asarray(src, float).reshape(-1, 2)
    dst = np.asarray(dst, float).reshape(-1, 2)
    if len(src) < 3 or len(dst) < 3:
        return None
    if min_matched is None:
        min_matched = 5 if len(src) <= 10 else 6
    ts, inv_s = _triangles(src, k)
    td, inv_d = _triangles(dst, k)
    if len(ts) == 0 or len(td) == 0:
        return None
    pairs = cKDTree(inv_s).query_ball_point(inv_d, r=0.03)
    cand = [(i, j) for j, row in enumerate(pairs) for i in row]
    if not cand:
        return None
    ci, cj = np.array(cand).T
    # all proposals at once: closed-form similarity of each triangle pair (complex numbers)
    zs = src[ts[ci]] @ np.array([1, 1j])                  # (m, 3)
    zd = dst[td[cj]] @ np.array([1, 1j])
    zs0 = zs - zs.mean(axis=1, keepdims=True)
    zd0 = zd - zd.mean(axis=1, keepdims=True)
    ab = (zd0 * zs0.conj()).sum(axis=1) / (np.abs(zs0) ** 2).sum(axis=1)
    shift = zd.mean(axis=1) - ab * zs.mean(axis=1)
    ok = (np.abs(np.abs(ab) - 1.0) <= max_scale_error) & \
        (np.abs(np.degrees(np.angle(ab))) <= max_rotation_deg)
    if max_shift is not None:
        c = complex(*centre)
        ok &= np.abs(ab * c + shift - c) <= max_shift
    ab, shift = ab[ok], shift[ok]
    if len(ab) == 0:
        return None
    zsrc = src @ np.array([1, 1j])
    dst_tree = cKDTree(dst)
    best, best_n = None, 0
    for start in range(0, len(ab), 2000):  # bounded memory for crowded fields
        moved = ab[start:start + 2000, None] * zsrc + shift[start:start + 2000, None]
        d, _ = dst_tree.query(np.column_stack([moved.real.ravel(), moved.imag.ravel()]),
                              distance_upper_bound=tolerance)
        n = np.isfinite(d).reshape(moved.shape).sum(axis=1)
        k_best = int(np.argmax(n))
        if n[k_best] > best_n:
            best_n = int(n[k_best])
            z = ab[start + k_best]
            best = Similarity.from_params(z.real, z.imag, shift[start + k_best].real,
                                          shift[start + k_best].imag)
    if best is None or best_n < min_matched:
        return None
    t = best
    for _ in range(3):  # refine on every pair, one nearest neighbour each
        d, idx = dst_tree.query(np.column_stack(t.apply(src[:, 0], src[:, 1])),
                                distance_upper_bound=tolerance)
        ok = np.isfinite(d)
        _, first = np.unique(idx[ok], return_index=True)  # a detection serves one star
        keep = np.flatnonzero(ok)[first]
        if len(keep) < min_matched:
            return None
        t = fit_similarity(src[keep], dst[idx[keep]])
    px, py = t.apply(src[keep, 0], src[keep, 1])
    res = np.hypot(px - dst[idx[keep], 0], py - dst[idx[keep], 1])
    return Match(t, int(len(keep)), float(np.sqrt(np.mean(res ** 2))))
