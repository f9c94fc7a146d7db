"""Cosmic-ray hits inside apertures: a sharpness test against the frame's PSF.

A star's light is spread by the seeing; a cosmic ray lands on one or a few pixels. A pixel
is a hit when it stands out from the median of its 3 x 3 neighbourhood both in noise
(``sigma`` standard deviations) and in contrast: by more than ``contrast`` times what the
PSF itself allows at its peak. Only the pixels inside the apertures are tested, so the
cost is that of the photometry, not of the frame.
"""

import math

import numpy as np

__all__ = ["psf_peak_contrast", "cosmic_ray_hits", "sharp_sources"]


def psf_peak_contrast(fwhm):
    """Peak pixel over the median of its 3 x 3 neighbourhood, for a Gaussian PSF.

    Parameters
    ----------
    fwhm : float
        In pixels.

    Returns
    -------
    float
        ``exp(1 / (2 s²))`` with ``s = fwhm / 2.355``: the median of the 3 x 3 is an edge
        neighbour. 2.0 at FWHM 2 px, 1.29 at 3.3 px.

    Examples
    --------
    >>> round(psf_peak_contrast(2.0), 2)
    2.0
    """
    s = max(float(fwhm), 0.5) / 2.3548
    return math.exp(min(1.0 / (2 * s * s), 50.0))


def cosmic_ray_hits(data, x, y, radius, fwhm, gain, rdnoise, sky, *, sigma=6.0,
                    contrast=2.0):
    """Count cosmic-ray pixels inside circular apertures.

    Parameters
    ----------
    data : ndarray
        The frame (ADU, sky not subtracted).
    x, y : ndarray
        Aperture centres (0-based pixels), inside the frame.
    radius : float
        Aperture radius in pixels.
    fwhm : float
        The frame's PSF FWHM in pixels.
    gain, rdnoise : float
        e-/ADU and e-, for each pixel's noise.
    sky : ndarray
        Local sky per aperture (ADU per pixel).
    sigma : float
        A hit stands this many noise sigmas above its neighbourhood's median.
    contrast : float
        ... and its excess over the sky exceeds ``contrast * psf_peak_contrast(fwhm)``
        times the neighbourhood's.

    Returns
    -------
    ndarray of int
        Hit pixels per aperture.
    """
    data = np.asarray(data)
    ny, nx = data.shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    sky = np.where(np.isfinite(sky), np.asarray(sky, float), 0.0)
    if len(x) == 0:
        return np.zeros(0, int)
    h = int(math.ceil(radius)) + 1
    off = np.arange(-h - 1, h + 2)                        # one more pixel for the 3 x 3
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    px = np.clip(ix[:, None] + off, 0, nx - 1)
    py = np.clip(iy[:, None] + off, 0, ny - 1)
    cut = data[py[:, :, None], px[:, None, :]].astype(float)
    cut = np.where(np.isfinite(cut), cut, sky[:, None, None])
    m = cut.shape[1] - 2
    views = [cut[:, 1 + a:1 + a + m, 1 + b:1 + b + m] for a in (-1, 0, 1) for b in (-1, 0, 1)]
    centre = views[4]
    noise = np.sqrt(np.maximum(centre, 0.0) / gain + (rdnoise / gain) ** 2)
    s = sky[:, None, None]
    limit = contrast * psf_peak_contrast(fwhm)
    # a hit stands ``limit`` noises above the sky at least: the 3 x 3 medians (the cost)
    # are taken for those pixels only
    cand = np.nonzero((centre - s) > limit * noise)
    med3 = np.stack([v[cand] for v in views]).astype(float)
    med3 = np.median(med3, axis=0) if med3.size else np.zeros(0)
    c, nz, sk = centre[cand], noise[cand], s[cand[0], 0, 0]
    hit = np.zeros(centre.shape, bool)
    hit[cand] = ((c - med3) > sigma * nz) & ((c - sk) > limit * np.maximum(med3 - sk, nz))
    gx = (ix[:, None] + off[1:-1])[:, None, :] - x[:, None, None]
    gy = (iy[:, None] + off[1:-1])[:, :, None] - y[:, None, None]
    inside = gx ** 2 + gy ** 2 <= (radius + 0.5) ** 2
    return (hit & inside).sum(axis=(1, 2))


def sharp_sources(data, x, y, fwhm, gain, rdnoise, background):
    """Which detected sources are cosmic rays, not stars (for the alignment star lists).

    Parameters
    ----------
    data : ndarray
        The frame (ADU, sky not subtracted).
    x, y : ndarray
        Source positions (0-based pixels), inside the frame.
    fwhm : float
        The frame's PSF FWHM in pixels.
    gain, rdnoise : float
        e-/ADU and e-.
    background : Background or ndarray
        The frame's sky map (`pipekit.photometry.detection.background_map`, or its ``map``).

    Returns
    -------
    ndarray of bool
        True where a source holds a cosmic-ray pixel within 1.5 px of its centre
        (`cosmic_ray_hits`): such a source is a hit, or a star a hit fell on; either way
        its position is not the star's.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) == 0:
        return np.zeros(0, bool)
    ny, nx = background.shape
    iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
    ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
    sky = background.at(iy, ix) if hasattr(background, "at") else background[iy, ix]
    return cosmic_ray_hits(data, x, y, 1.5, fwhm, gain, rdnoise, sky) > 0
