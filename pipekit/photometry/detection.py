"""Star detection: a coarse background map, field stars on the reference frame (photutils
``DAOStarFinder`` on the background-subtracted image) and fast bright-source finding on
every frame (for alignment)."""

import warnings

import numpy as np

__all__ = ["detect_stars", "Background", "background_map", "bright_sources",
           "detection_threshold", "band_residual", "detection_bands", "dao_sources",
           "select_stars"]


class Background:
    """A smooth sky map of a frame and its noise, kept as its coarse grid.

    The map is bilinear between box medians: it is evaluated where it is used (`at`,
    `binned`) and made at full resolution only when ``map`` is asked for, so a frame's
    measuring makes no full-frame copy of it.

    Attributes
    ----------
    grid : ndarray
        Box medians (median-filtered), shape ``(by, bx)``.
    shape : tuple
        The frame's shape ``(ny, nx)``.
    rms : float
        Robust (MAD) standard deviation of the frame about the map.
    level, gradient : float
        Median sky and the full range (max - min) of the box medians.
    """

    def __init__(self, grid, shape, box, first, rms, level, gradient):
        self.grid = np.asarray(grid, float)
        self.shape = tuple(shape)
        self.box, self.first = box, first
        self.rms, self.level, self.gradient = rms, level, gradient
        self._map = None
        self._tables = None
        # bright_sources found above this map: (fwhm, nsigma, saturate) -> (image, n, x, y, flux)
        self.sources = {}

    def __getstate__(self):
        """Pickled as its grid and figures: no maps or found sources (made again on need)."""
        state = dict(self.__dict__)
        state.update(_map=None, _tables=None, sources={})
        return state

    def highest(self):
        """The highest value of `map` over the frame's pixels, without making the map.

        Bilinear between grid nodes (and extrapolated beyond the outer ones), the map peaks
        at a pixel next to a node or on the frame's edge: only those are evaluated.
        """
        lines = []
        for axis, n in enumerate(self.shape):
            nodes = self.first + self.box * np.arange(self.grid.shape[axis])
            near = np.concatenate([[0, n - 1], np.floor(nodes), np.ceil(nodes)])
            lines.append(np.unique(np.clip(near, 0, n - 1).astype(np.int64)))
        return float(self.sampled(*lines, np.float32).max())

    def _weights(self, index, axis):
        """Lower grid index and weight of the next one, per pixel index along ``axis``."""
        n_box = self.grid.shape[axis]
        index = np.asarray(index)
        if n_box == 1:
            return np.zeros(index.shape, np.int64), np.zeros(index.shape)
        t = (index - self.first) / self.box
        i = np.clip(np.floor(t).astype(np.int64), 0, n_box - 2)
        return i, t - i

    def _along(self, values, index, axis, dtype):
        """``values`` (grid-shaped along ``axis``) interpolated to the pixel ``index``es.

        Two gathers and a blend instead of a matrix product: BLAS threads on a busy
        machine cost ten times the arithmetic.
        """
        i, f = self._weights(np.asarray(index), axis)
        i1 = np.minimum(i + 1, self.grid.shape[axis] - 1)
        f = f.astype(dtype)
        if axis == 1 and values.shape[0] * len(i) > 1 << 16 and np.all(np.diff(i) >= 0):
            return self._along_columns(values, i, i1, f, dtype)
        if axis == 0:
            f = f[:, None]
        lo, hi = np.take(values, i, axis=axis), np.take(values, i1, axis=axis)
        return lo + f * (hi - lo)

    @staticmethod
    def _along_columns(values, i, i1, f, dtype):
        """`_along` over columns in increasing order, one run of columns between two grid
        columns at a time: two passes over the output instead of five (the same numbers)."""
        out = np.empty((values.shape[0], len(i)), dtype)
        edges = np.concatenate([[0], np.flatnonzero(np.diff(i)) + 1, [len(i)]])
        for a, b in zip(edges[:-1], edges[1:]):
            lo = values[:, i[a]]
            block = out[:, a:b]
            np.multiply((values[:, i1[a]] - lo)[:, None], f[None, a:b], out=block)
            block += lo[:, None]
        return out

    def at(self, iy, ix):
        """The map at integer pixels ``(iy, ix)`` (any matching shapes, clipped to the frame).

        Equal to ``map[iy, ix]`` without making the map.
        """
        ny, nx = self.shape
        iy = np.clip(np.asarray(iy, np.int64), 0, ny - 1)
        ix = np.clip(np.asarray(ix, np.int64), 0, nx - 1)
        if self._tables is None:  # per row and per column, made once: flat grid offsets
            (i, fy), (j, fx) = self._weights(np.arange(ny), 0), self._weights(np.arange(nx), 1)
            by, bx = self.grid.shape
            self._tables = (i * bx, np.minimum(i + 1, by - 1) * bx, fy,
                            j, np.minimum(j + 1, bx - 1), fx)
        r0, r1, fy, c0, c1, fx = self._tables
        r0, r1, fy, c0, c1, fx = r0[iy], r1[iy], fy[iy], c0[ix], c1[ix], fx[ix]
        g = self.grid.ravel()
        lo = np.take(g, r0 + c0)
        lo += fx * (np.take(g, r0 + c1) - lo)
        hi = np.take(g, r1 + c0)
        hi += fx * (np.take(g, r1 + c1) - hi)
        return lo + fy * (hi - lo)

    def sampled(self, rows, cols, dtype=float):
        """The map on the pixel grid ``rows`` x ``cols`` (1-D arrays of pixel positions)."""
        part = self._along(self.grid.astype(dtype), rows, 0, dtype)
        return self._along(part, cols, 1, dtype)

    def binned(self, b, dtype=np.float32):
        """The map at the centres of ``b`` x ``b`` pixel blocks (as `_binned` bins the frame):
        the blocks' mean, but where a block straddles a grid node (a change of slope of a
        fraction of an ADU per pixel)."""
        ny, nx = self.shape
        centre = (b - 1) / 2.0
        return self.sampled(np.arange(ny // b) * b + centre, np.arange(nx // b) * b + centre,
                            dtype)

    @property
    def map(self):
        """Sky level per pixel (ADU), the whole frame (made once, when first asked for)."""
        if self._map is None:
            ny, nx = self.shape
            self._map = self.sampled(np.arange(ny), np.arange(nx))
        return self._map


def _balanced(values):
    """NaN replaced by +inf and -inf in turn: the median of the rest is unchanged, and
    ``np.median`` is several times faster than ``np.nanmedian``."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    sign = np.where(np.arange(values.shape[-1]) % 2, np.inf, -np.inf).astype(values.dtype)
    return np.where(bad, sign, values)  # the row of signs broadcast, not copied per row


def _block_stats(blocks, spread=True):
    """Median and 1.4826 MAD along the last axis, NaN ignored (NaN for all-NaN rows);
    without ``spread``, the median alone (the MAD is a second median, as costly)."""
    n_ok = np.isfinite(blocks).sum(axis=2)
    med = np.median(_balanced(blocks), axis=2)
    bad = (n_ok < 3) | ~np.isfinite(med)
    if not spread:
        return np.where(bad, np.nan, med)
    with np.errstate(invalid="ignore"):
        mad = 1.4826 * np.median(_balanced(np.abs(blocks - med[:, :, None])), axis=2)
    return np.where(bad, np.nan, med), np.where(bad | ~np.isfinite(mad), np.nan, mad)


def background_map(data, box=64):
    """The sky of a frame on a coarse grid: clipped medians of ``box`` x ``box`` pixel
    blocks, median-filtered 3 x 3 (a bright star's block is replaced), interpolated
    bilinearly where it is used.

    Costs a few percent of photutils ``Background2D`` (blocks subsampled to 16 x 16, the
    map kept as its grid and evaluated only where it is consumed); it follows gradients of
    thousands of ADU.

    Parameters
    ----------
    data : ndarray
    box : int
        Block size in pixels (shrunk so that each axis has at least 4 blocks).

    Returns
    -------
    Background
    """
    from scipy.ndimage import median_filter

    data = np.asarray(data)
    ny, nx = data.shape
    box = int(max(8, min(box, ny // 4, nx // 4)))
    by, bx = ny // box, nx // box
    step = max(1, box // 16)          # 256 pixels per block measure its sky to ~0.1 sigma
    m = box // step
    # float32 (the frames' own type) is exact for a median and 3x cheaper to partition
    blocks = data[:by * box:step, :bx * box:step][:by * m, :bx * m].astype(np.float32)
    blocks = blocks.reshape(by, m, bx, m).transpose(0, 2, 1, 3).reshape(by, bx, -1)
    med, mad = _block_stats(blocks)
    # one clipping round (stars above 3 sigma out), then the statistics again
    med = _block_stats(np.where(np.abs(blocks - med[:, :, None]) <= 3 * mad[:, :, None],
                                blocks, np.float32(np.nan)), spread=False)
    med = med.astype(float)
    fill = np.nanmedian(med) if np.isfinite(med).any() else 0.0
    med = np.where(np.isfinite(med), med, fill)
    # pad by linear extrapolation, so that the median filter leaves a plane as it is
    pad = np.pad(med, 1, mode="reflect", reflect_type="odd") if min(by, bx) > 1 else med
    med = median_filter(pad, size=3)[1:-1, 1:-1] if pad is not med else med
    first = (m - 1) * step / 2.0      # centre of a block's sampled pixels
    bkg = Background(med, (ny, nx), box, first, 0.0, float(np.median(med)),
                     float(med.max() - med.min()))
    # the noise about the map (a block's own scatter would include its gradient)
    resid = data[::step, ::step] - bkg.sampled(np.arange(0, ny, step), np.arange(0, nx, step))
    resid = resid[np.isfinite(resid)]
    bkg.rms = float(1.4826 * np.median(np.abs(resid - np.median(resid)))) if resid.size else 0.0
    return bkg


def _binned(img, b):
    """Mean of ``b`` x ``b`` pixel blocks (b = 1 or 2), by slices: 10x faster than a
    reshaped ``mean`` over two axes."""
    ny, nx = img.shape
    if b == 1:
        return img
    img = img[:ny // 2 * 2, :nx // 2 * 2]
    rows = img[0::2] + img[1::2]          # whole rows first: contiguous, the cheap pass
    return (rows[:, 0::2] + rows[:, 1::2]) * 0.25


def _binned_residual(data, bkg, b, by, bx):
    """``_binned(data - map)`` at binned pixels ``(by, bx)``, non-finite pixels as 0."""
    acc = np.zeros(len(by), np.float32)
    for dy in range(b):
        for dx in range(b):
            iy, ix = by * b + dy, bx * b + dx
            r = data[iy, ix].astype(np.float32) - bkg.at(iy, ix).astype(np.float32)
            acc += np.where(np.isfinite(r), r, np.float32(0.0))
    return acc / np.float32(b * b)


def _smoothed(img, sigma):
    """``scipy.ndimage.gaussian_filter(img, sigma, truncate=3.0)`` (reflected edges) as
    two passes of shifted float32 slices: 3x faster than scipy's generic correlation,
    equal to it within float32 rounding."""
    radius = int(3.0 * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    w = (w / w.sum()).astype(np.float32)
    out = np.asarray(img, np.float32)
    for axis in (0, 1):
        n = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")   # scipy's "reflect"
        take = (lambda a, k: a[k:k + n]) if axis == 0 else (lambda a, k: a[:, k:k + n])
        acc = take(padded, radius) * w[radius]
        for j in range(1, radius + 1):
            acc += (take(padded, radius - j) + take(padded, radius + j)) * w[radius + j]
        out = acc
    return out


def _local_maxima(smooth, thresh, hb):
    """Pixels above ``thresh`` that equal the maximum of their (2 hb + 1)² window.

    The same pixels as ``smooth == maximum_filter(smooth, 2 hb + 1) & (smooth > thresh)``
    (a window cut by the edge holds the same values as scipy's reflected one), tested only
    at the pixels above the threshold, in row-major order.
    """
    ny, nx = smooth.shape
    iy, ix = np.nonzero(smooth > thresh)
    value = smooth[iy, ix]
    keep = np.ones(len(iy), bool)
    for dy in range(-hb, hb + 1):
        jy = np.clip(iy + dy, 0, ny - 1)
        for dx in range(-hb, hb + 1):
            if dy == 0 and dx == 0:
                continue
            keep &= value >= smooth[jy, np.clip(ix + dx, 0, nx - 1)]
    return iy[keep], ix[keep]


def bright_sources(data, fwhm, *, n=40, nsigma=5.0, background=None, saturate=None):
    """The ``n`` brightest point sources of a frame, fast, for alignment.

    Local maxima of the background-subtracted image smoothed by the PSF, above
    ``nsigma`` times the smoothed noise, centroided (intensity-weighted, twice re-centred).

    Parameters
    ----------
    data : ndarray
    fwhm : float
        PSF FWHM in pixels.
    n : int
    nsigma : float
    background : Background, optional
        From `background_map` (computed when None).
    saturate : float, optional
        Sources peaking at or above this are kept (they align fine) but listed last.

    Returns
    -------
    x, y, flux : ndarray
        Brightest first; ``flux`` is the sum in the centroid window above the background.

    Notes
    -----
    The sources are remembered by ``background`` (`Background.sources`): the same image
    array asked again, for as many sources or fewer, gets the first ``n`` of the list
    already found (the reference choice finds 300 on a frame that is then aligned with 80).
    An image changed in place after a call needs a new `background_map`.
    """
    bkg = background if background is not None else background_map(data)
    key = (float(fwhm), float(nsigma), None if saturate is None else float(saturate))
    known = bkg.sources.get(key)
    if known is not None and known[0] is data and known[1] >= n:
        return tuple(v[:n].copy() for v in known[2:])
    x, y, flux = _find_bright(data, fwhm, n, nsigma, bkg, saturate)
    bkg.sources[key] = (data, n, x, y, flux)
    return x, y, flux


def _find_bright(data, fwhm, n, nsigma, bkg, saturate):
    """`bright_sources`, found anew."""
    data = np.asarray(data)
    ny, nx = data.shape
    # peaks are looked for on a 2 x 2 binned image when the PSF is wide enough (4x cheaper):
    # the frame is binned first and the map subtracted at the binned pixels (the mean of a
    # bilinear map over a block), so no full-resolution copy is made; the centroids below
    # are measured at full resolution, on cutouts
    b = 2 if fwhm >= 3.0 and min(ny, nx) >= 64 else 1
    small = _binned(np.asarray(data, np.float32), b)
    small = small - bkg.binned(b)
    bad = ~np.isfinite(small)
    if bad.any():  # a non-finite pixel counts as sky, as in the full-resolution residual
        small[bad] = _binned_residual(data, bkg, b, *np.nonzero(bad))
    sig = max(fwhm / b / 2.3548, 0.5)
    smooth = _smoothed(small, sig)
    # the smoothed noise of white noise: rms / b / (2 sqrt(pi) sigma)
    thresh = nsigma * max(bkg.rms, 1e-12) / b / (2 * np.sqrt(np.pi) * sig)
    hb = max(1, int(round(fwhm / b)))
    iy, ix = _local_maxima(smooth, thresh, hb)
    h = max(2, int(round(fwhm)))
    peak_values = smooth[iy, ix]
    ix, iy = ix * b + (b - 1) / 2.0, iy * b + (b - 1) / 2.0
    order = np.argsort(peak_values)[::-1]
    edge = (ix[order] >= h) & (ix[order] < nx - h) & (iy[order] >= h) & (iy[order] < ny - h)
    order = order[edge][: 3 * n]
    cx, cy = ix[order].astype(float), iy[order].astype(float)
    off = np.arange(-h, h + 1)
    tot = np.zeros(len(cx))
    jx = jy = np.zeros(0, int)
    for _ in range(3):
        jx = np.clip(np.rint(cx).astype(int), h, nx - 1 - h)
        jy = np.clip(np.rint(cy).astype(int), h, ny - 1 - h)
        px, py = jx[:, None] + off, jy[:, None] + off
        gy, gx = py[:, :, None], px[:, None, :]
        w = data[gy, gx].astype(np.float32) - bkg.at(gy, gx).astype(np.float32)
        w = np.maximum(np.where(np.isfinite(w), w, 0.0), 0.0)
        tot = np.maximum(w.sum(axis=(1, 2)), 1e-12)
        cx = np.einsum("nij,nj->n", w, px.astype(float)) / tot
        cy = np.einsum("nij,ni->n", w, py.astype(float)) / tot
    flux = tot
    if saturate is not None and len(cx):
        peak = np.asarray(data)[jy, jx]
        rank = np.lexsort((-flux, peak >= saturate))
    else:
        rank = np.argsort(-flux)
    rank = rank[:n]
    return cx[rank], cy[rank], flux[rank]


def detect_stars(data, fwhm, threshold_sigma=5.0, *, max_stars=200, saturate=None,
                 border=0.0, min_separation=None, background=None):
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
    background : Background, optional
        The frame's sky map (`background_map`, computed when None): stars are found on
        the background-subtracted image, at ``threshold_sigma`` times its noise, so a
        moonlight gradient neither hides stars nor invents them.

    Returns
    -------
    astropy.table.Table
        ``x, y, flux, peak`` sorted brightest first (0-based positions).
    """
    bkg = background if background is not None else background_map(data)
    threshold, peak_max = detection_threshold(data, threshold_sigma, saturate=saturate,
                                              background=bkg)
    found = dao_sources(band_residual(data, 0, bkg), fwhm, threshold, peak_max)
    return select_stars(found, np.shape(data), fwhm, max_stars=max_stars, border=border,
                        min_separation=min_separation)


def detection_threshold(data, threshold_sigma, *, saturate=None, background=None):
    """The thresholds of `detect_stars` on a frame.

    Returns
    -------
    threshold : float
        ``threshold_sigma`` times the sigma-clipped noise of the background-subtracted
        frame (measured on a subsample of a big frame).
    peak_max : float or None
        The highest peak above the sky a usable star may have (saturation).
    """
    from astropy.stats import sigma_clipped_stats

    data = np.asarray(data)
    bkg = background if background is not None else background_map(data)
    ny, nx = data.shape
    step = max(1, int(np.sqrt(data.size / 250_000)))  # statistics on a subsample of big frames
    sub = _residual(data[::step, ::step], np.arange(0, ny, step), np.arange(0, nx, step), bkg)
    _, _, std = sigma_clipped_stats(sub, sigma=3.0, maxiters=5)
    # saturation is a level of the raw pixels: compare peaks above the local sky
    peak_max = None if saturate is None else saturate - bkg.highest()
    return threshold_sigma * float(std), peak_max


def band_residual(band, y0, background):
    """Rows ``y0:y0 + len(band)`` of a frame, its background map subtracted, as float32
    (the frames' own type: half the memory traffic of the star search); non-finite
    pixels are 0."""
    return _residual(band, np.arange(y0, y0 + len(band)), np.arange(np.shape(band)[1]),
                     background)


def _residual(pixels, rows, cols, background):
    """``pixels`` (the frame at ``rows`` x ``cols``) minus the map there, float32, with
    non-finite pixels 0: what the star search looks at."""
    resid = np.asarray(pixels, np.float32) - background.sampled(rows, cols, np.float32)
    resid[~np.isfinite(resid)] = 0.0
    return resid


def band_margin(fwhm):
    """Rows a band of `detection_bands` overlaps its neighbour by: three DAO kernel radii
    and more, so a source found in a band is found the same as in the whole image."""
    from astropy.stats import gaussian_fwhm_to_sigma

    return 3 * int(max(2, 1.5 * fwhm * gaussian_fwhm_to_sigma)) + 6


def detection_bands(shape, fwhm, n=2):
    """Split an image's rows into ``n`` overlapping bands for `dao_sources`.

    Returns
    -------
    list of tuple
        ``(y0, y1, lo, hi)``: search rows ``y0:y1``, keep the sources whose centroid row is
        in ``[lo, hi)``; the ``[lo, hi)`` tile the image.
    """
    ny = shape[0]
    margin = band_margin(fwhm)
    edges = [round(i * ny / n) for i in range(n + 1)]
    return [(max(lo - margin, 0), min(hi + margin, ny), lo if i else -np.inf,
             hi if i < n - 1 else np.inf)
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))]


def dao_sources(resid, fwhm, threshold, peak_max, *, y0=0, keep=(-np.inf, np.inf)):
    """photutils ``DAOStarFinder`` on ``resid``: ``x, y, flux, peak`` of every source.

    ``resid`` may be a band of rows of an image starting at row ``y0`` (`detection_bands`):
    positions are then in the image's rows, and only sources whose row is in ``keep`` are
    returned.
    """
    from astropy.table import Table
    from photutils.detection import DAOStarFinder
    from photutils.utils.exceptions import NoDetectionsWarning

    # min_separation=0: photutils < 3.0's default (3.0 made it 2.5 fwhm); crowded pairs are
    # dropped in `select_stars`, both stars of a pair.
    finder = DAOStarFinder(threshold=threshold, fwhm=fwhm, exclude_border=True,
                           peak_max=peak_max, min_separation=0)
    with warnings.catch_warnings():
        # an empty field is an answer here (an empty table), not a warning
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        found = finder(resid)
    if found is None or len(found) == 0:
        return Table({"x": np.zeros(0), "y": np.zeros(0), "flux": np.zeros(0),
                      "peak": np.zeros(0)})
    t = Table({"x": np.asarray(found["x_centroid"], float),
               "y": np.asarray(found["y_centroid"], float) + y0,
               "flux": np.asarray(found["flux"], float), "peak": np.asarray(found["peak"], float)})
    return t[(t["y"] >= keep[0]) & (t["y"] < keep[1])]


def select_stars(found, shape, fwhm, *, max_stars=200, border=0.0, min_separation=None):
    """`detect_stars`'s choice among `dao_sources`: away from the edges and from each
    other, the brightest ``max_stars`` first."""
    from astropy.table import vstack
    from scipy.spatial import cKDTree

    if isinstance(found, (list, tuple)):
        found = vstack(list(found)) if len(found) > 1 else found[0]
    t = found
    ny, nx = shape
    keep = (t["x"] >= border) & (t["x"] <= nx - 1 - border) & (t["y"] >= border) & \
        (t["y"] <= ny - 1 - border)
    t = t[keep]
    sep = 2.0 * fwhm if min_separation is None else min_separation
    if len(t) > 1 and sep > 0:
        xy = np.column_stack([t["x"], t["y"]])
        pairs = cKDTree(xy).query_pairs(sep, output_type="ndarray")
        crowded = np.zeros(len(t), bool)
        crowded[pairs.ravel()] = True
        t = t[~crowded]
    t.sort("flux", reverse=True, kind="stable")
    return t[:max_stars]
