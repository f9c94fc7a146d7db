"""Detection of field stars on a reference frame (photutils ``DAOStarFinder``)."""

import warnings

import numpy as np

__all__ = ["detect_stars"]


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
    from photutils.utils.exceptions import NoDetectionsWarning
    from scipy.spatial import cKDTree

    data = np.asarray(data, float)
    step = max(1, int(np.sqrt(data.size / 250_000)))  # statistics on a subsample of big frames
    _, median, std = sigma_clipped_stats(data[::step, ::step], sigma=3.0, maxiters=5)
    peak_max = None if saturate is None else saturate - median
    # min_separation=0: photutils < 3.0's default (3.0 made it 2.5 fwhm); crowded pairs are
    # dropped below, both stars of a pair, at this function's own ``min_separation``.
    finder = DAOStarFinder(threshold=threshold_sigma * std, fwhm=fwhm, exclude_border=True,
                           peak_max=peak_max, min_separation=0)
    with warnings.catch_warnings():
        # an empty field is an answer here (an empty table), not a warning
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        found = finder(data - median)
    if found is None or len(found) == 0:
        return Table({"x": np.zeros(0), "y": np.zeros(0), "flux": np.zeros(0),
                      "peak": np.zeros(0)})
    t = Table({"x": np.asarray(found["x_centroid"], float),
               "y": np.asarray(found["y_centroid"], float),
               "flux": np.asarray(found["flux"], float), "peak": np.asarray(found["peak"], float)})
    ny, nx = data.shape
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
    t.sort("flux", reverse=True)
    return t[:max_stars]


