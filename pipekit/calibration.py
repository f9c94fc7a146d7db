"""Calibrated magnitudes: the zero point of a dataset's normalised light curve.

A light curve's normalised flux ``F`` becomes ``mag = zeropoint - 2.5 log10(F)``. The zero
point comes, in order, from the frames' BANZAI zero points (``L1ZP``), from a local reference
catalogue named in ``reduction_config.yaml``, else it is instrumental (25) and says so.
Its uncertainty is kept apart from each point's error, as photometrists expect.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic
from .errors import ConfigError, FrameError
from .photometry import frame_photometry_path
from .photometry.store import done_stamp, read_frame_ecsv

__all__ = ["Calibration", "calibrate", "robust_mean", "frame_facts", "INSTRUMENTAL_ZEROPOINT",
           "FRAME_CACHE"]

log = logging.getLogger("pipekit.calibration")

#: Instrumental magnitudes are ``INSTRUMENTAL_ZEROPOINT - 2.5 log10(normalised flux)``.
INSTRUMENTAL_ZEROPOINT = 25.0
#: Per-frame header facts and aperture corrections, inside the dataset folder (its own
#: folder: ``photometry/`` holds what the photometry step writes, and only that).
FRAME_CACHE = "calibration/frames.json"
#: At most this many frames are read again to measure their aperture correction.
MAX_APCOR_FRAMES = 25
_MAG = 2.5 / np.log(10.0)


@dataclass
class Calibration:
    """The zero point of a light curve and where it came from.

    Attributes
    ----------
    source : str
        ``"banzai"`` (the frames' ``L1ZP``), ``"catalogue"`` or ``"instrumental"``.
    zeropoint : float
        Magnitude of a normalised flux of 1.
    zp_err : float
        Its 1-sigma uncertainty (NaN for instrumental magnitudes): common to every point,
        so it is not folded into ``mag_err``.
    frame_zp : ndarray
        Per frame, the zero point of its raw counts per second implied by ``zeropoint``
        (comparable to ``L1ZP``; for instrumental magnitudes a relative transparency).
    l1zp, l1zperr : ndarray
        Per frame, BANZAI's zero point and error (NaN where missing or failed).
    details : dict
        Figures for the provenance: numbers used and rejected, scatter, catalogue, reasons.
    """

    source: str
    zeropoint: float
    zp_err: float
    frame_zp: np.ndarray
    l1zp: np.ndarray
    l1zperr: np.ndarray
    details: dict = field(default_factory=dict)

    @property
    def calibrated(self):
        """True unless the magnitudes are instrumental."""
        return self.source != "instrumental"


def robust_mean(values, errors, clip=3.0, max_iter=10):
    """Inverse-variance weighted mean with iterative sigma clipping about it.

    Points further than ``clip`` times the larger of their error and the robust scatter
    (1.4826 MAD) from the mean are left out, until nothing changes. The mean's error is
    ``1 / sqrt(sum w)``, scaled by the square root of the reduced chi-square when that
    exceeds 1 (errors too small for the scatter seen).

    Returns
    -------
    mean, err, used, scatter : float, float, ndarray of bool, float

    Examples
    --------
    >>> m, e, used, s = robust_mean([20.0, 20.02, 19.98, 25.0], [0.02, 0.02, 0.02, 0.02])
    >>> round(m, 3), int(used.sum())
    (20.0, 3)
    """
    v = np.asarray(values, float)
    e = np.asarray(errors, float)
    used = np.isfinite(v) & np.isfinite(e) & (e > 0)
    if not used.any():
        return np.nan, np.nan, used, np.nan
    mean = float(np.median(v[used]))
    for _ in range(max_iter):
        scatter = 1.4826 * float(np.median(np.abs(v[used] - mean)))
        keep = np.isfinite(v) & np.isfinite(e) & (e > 0) & \
            (np.abs(v - mean) <= clip * np.maximum(e, scatter))
        if not keep.any():
            break
        w = 1.0 / e[keep] ** 2
        mean = float((w * v[keep]).sum() / w.sum())
        if np.array_equal(keep, used):
            break
        used = keep
    w = 1.0 / e[used] ** 2
    n = int(used.sum())
    chi2 = float((w * (v[used] - mean) ** 2).sum() / max(n - 1, 1))
    err = float(np.sqrt(max(chi2, 1.0) / w.sum()))
    scatter = float(np.std(v[used])) if n > 1 else 0.0
    return mean, err, used, scatter


# ---- per-frame facts -----------------------------------------------------------------

class _FramePaths:
    """Where a dataset's frame files are, by name, looked up one by one (not listed): at
    the top of the dataset, else in ``data/`` (`pipekit.datasets.dataset_frames`)."""

    def __init__(self, red_dir):
        from .datasets import frame_folders

        self.folders = frame_folders(red_dir)

    def get(self, name):
        for folder in self.folders:
            path = folder / name
            if path.is_file():
                return path
        return None


def _load_cache(red_dir):
    path = Path(red_dir) / FRAME_CACHE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_cache(red_dir, cache):
    path = Path(red_dir) / FRAME_CACHE
    path.parent.mkdir(exist_ok=True)
    write_text_atomic(path, json.dumps(cache, indent=1, sort_keys=True))


def frame_facts(red_dir, names, paths=None, cache=None):
    """``L1ZP``, ``L1ZPERR`` and mid-exposure MJD (UTC) of frames, from their headers.

    Read once per frame file and kept in ``<red_dir>/calibration/frames.json``
    (a frame replaced by another file is read again).

    Parameters
    ----------
    red_dir : str or Path
    names : iterable of str
        Frame file names of the dataset.

    Returns
    -------
    dict
        name -> ``{"l1zp", "l1zperr", "mjd_mid"}`` (None where unknown); frames whose file
        is gone are left out.
    """
    from .frames import read_frame_info

    red_dir = Path(red_dir)
    paths = _FramePaths(red_dir) if paths is None else paths
    own_cache = cache is None
    cache = _load_cache(red_dir) if own_cache else cache
    out, changed = {}, False
    for name in names:
        path = paths.get(name)
        if path is None:
            continue
        entry, stamp = cache.get(name), done_stamp(path)
        if entry is None or entry.get("stamp") != stamp:
            try:
                info = read_frame_info(path)
            except (FrameError, OSError) as exc:
                log.warning("%s: cannot read its header for calibration: %s", path, exc)
                continue
            entry = {"stamp": stamp, "l1zp": info.l1zp, "l1zperr": info.l1zperr,
                     "mjd_mid": info.mjd_mid}
            cache[name] = entry
            changed = True
        out[name] = {k: entry.get(k) for k in ("l1zp", "l1zperr", "mjd_mid")}
    if changed and own_cache:
        _save_cache(red_dir, cache)
    return out


def _aperture_correction(path, phot_path, config):
    """The fraction of a star's light inside the photometry aperture, on one frame.

    Measured on the brightest unflagged field stars: their measured flux over the flux inside
    the sky annulus's inner radius, with the same sky (so an error of the sky level mostly
    cancels). The growth of the flux over the last quarter of that radius bounds the light
    still outside it. Returns ``(fraction, error, n_stars, growth)`` or None.
    """
    from .frames import read_frame
    from .photometry import aperture_sums

    # the frame's own photometry file: positions and sky of every star
    table = read_frame_ecsv(phot_path)
    meta = table.meta
    r = float(meta["radius_px"])
    r_big = float(meta["annulus_in_px"])
    if r_big < 1.2 * r:
        return None
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    flux, err = np.asarray(table["flux"], float), np.asarray(table["flux_err"], float)
    sky = np.asarray(table["sky"], float)
    # any star will do within one frame (a variable is constant during an exposure)
    ok = (np.asarray(table["flags"]) == 0) & (flux > 20 * err) & np.isfinite(sky)
    ok[0] = False  # the target
    data = read_frame(path).data
    ny, nx = data.shape
    margin = r_big + 2
    ok &= (x > margin) & (x < nx - 1 - margin) & (y > margin) & (y < ny - 1 - margin)
    pick = np.flatnonzero(ok)
    pick = pick[np.argsort(-flux[pick])][:20]
    if len(pick) < 3:
        return None
    big, a_big, _ = aperture_sums(data, x[pick], y[pick], r_big)
    mid, a_mid, _ = aperture_sums(data, x[pick], y[pick], 0.75 * r_big)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = big - a_big * sky[pick]
        frac = flux[pick] / total
        growth = total / (mid - a_mid * sky[pick])
    good = np.isfinite(frac) & (frac > 0.2) & (frac < 1.5) & np.isfinite(growth)
    if good.sum() < 3:
        return None
    frac, growth = frac[good], growth[good]
    med = float(np.median(frac))
    spread = 1.4826 * float(np.median(np.abs(frac - med)))
    return (med, max(spread, 1e-4) * 1.2533 / np.sqrt(len(frac)), int(len(frac)),
            float(np.median(growth)))


# ---- the three sources -----------------------------------------------------------------

def _l1zp(red_dir, frames, paths):
    """``(L1ZP, L1ZPERR)`` arrays of ``frames``, NaN where unknown, failed or zero.

    The photometry files hold them; files of earlier versions do not, and those frames'
    headers are read (`frame_facts`)."""
    l1zp, l1zperr = frames.numbers("l1zp"), frames.numbers("l1zperr")
    missing = np.flatnonzero(~np.array(frames.has("l1zp"), bool))
    if len(missing):
        names = frames.take(missing).meta("frame")
        facts = frame_facts(red_dir, names, paths)
        for i, name in zip(missing, names):
            found = facts.get(name, {})
            l1zp[i] = found.get("l1zp") or np.nan
            l1zperr[i] = found.get("l1zperr") or np.nan
    with np.errstate(invalid="ignore"):
        # a zero is no zero point (as a missing one)
        l1zp[l1zp == 0] = np.nan
        l1zperr[l1zperr == 0] = np.nan
    return l1zp, l1zperr


def _banzai(red_dir, config, frames, scale, scale_err, l1zp, l1zperr, paths):
    """Zero point from the frames' L1ZP, after the ensemble normalisation; or a reason."""
    n = len(frames)
    valid = np.isfinite(l1zp) & np.isfinite(l1zperr)
    details = {"n_frames": n, "n_valid_l1zp": int(valid.sum())}
    need = int(config.calibration.min_stars)
    if valid.sum() < need:
        return None, l1zp, l1zperr, (f"{int(valid.sum())} of {n} frames have a valid L1ZP "
                                     f"(calibration.min_stars = {need})"), details
    exptime = frames.numbers("exptime")
    # frame i: mag = L1ZP_i - 2.5 log10(raw / t_i) and raw = scale_i * F (in the aperture)
    per_frame = l1zp - 2.5 * np.log10(scale / exptime)
    frame_err = np.hypot(l1zperr, _MAG * scale_err / scale)
    # BANZAI's fluxes hold (nearly) all of a star's light, the aperture not: correct each
    # frame by its measured aperture fraction (a subset of frames, evenly spread)
    cache = _load_cache(red_dir)
    key = f"apcor-v2:{frames.first('settings_hash')}"
    candidates = np.flatnonzero(valid)
    if len(candidates) > MAX_APCOR_FRAMES:
        candidates = candidates[np.linspace(0, len(candidates) - 1, MAX_APCOR_FRAMES).astype(int)]
    apcor = np.full(n, np.nan)
    apcor_err = np.full(n, np.nan)
    growth = np.full(n, np.nan)
    changed = False
    for i, name in zip(candidates, frames.take(candidates).meta("frame")):
        entry = cache.setdefault(name, {})
        path = paths.get(name)
        if path is None:
            continue
        stamp = done_stamp(path)
        if entry.get(key) is None or entry.get(key + ":stamp") != stamp:
            try:
                result = _aperture_correction(path, frame_photometry_path(red_dir, name),
                                              config)
            except (FrameError, OSError, KeyError, ValueError) as exc:
                log.warning("%s: aperture correction not measured: %s", path, exc)
                result = None
            entry[key] = list(result) if result else [None, None, 0, None]
            entry[key + ":stamp"] = stamp
            changed = True
        frac, ferr, _, grow = entry[key]
        if frac is not None:
            apcor[i], apcor_err[i], growth[i] = frac, ferr, grow
    if changed:
        _save_cache(red_dir, cache)
    corrected = np.isfinite(apcor)
    if corrected.sum() < need:
        return None, l1zp, l1zperr, (f"aperture correction measured on {int(corrected.sum())}"
                                     f" frames (calibration.min_stars = {need})"), details
    values = per_frame + 2.5 * np.log10(np.where(corrected, apcor, np.nan))
    errors = np.hypot(frame_err, _MAG * apcor_err / apcor)
    zp, zp_err, used, scatter = robust_mean(values, errors)
    # light beyond the correction radius: about what the last quarter of it added (a
    # Moffat star's wing); common to all frames, so it does not average down
    systematic = float(np.median(2.5 * np.log10(growth[corrected])))
    zp_err = float(np.hypot(zp_err, systematic))
    details.update({
        "n_used": int(used.sum()), "n_clipped": int((corrected & ~used).sum()),
        "scatter_mag": round(scatter, 5), "aperture_correction_systematic_mag":
        round(systematic, 5),
        "aperture_correction_mag": round(float(np.median(-2.5 * np.log10(apcor[corrected]))), 5),
        "aperture_correction_frames": int(corrected.sum()),
        "method": "weighted mean over frames of L1ZP - 2.5 log10(ensemble scale / EXPTIME) "
                  "+ 2.5 log10(aperture fraction), 3-sigma clipped; zp_err includes the "
                  "light beyond the aperture correction's radius; colour term not applied",
    })
    return (zp, zp_err), l1zp, l1zperr, None, details


def _column(table, name, source, key):
    by_lower = {c.lower(): c for c in table.colnames}
    if name.lower() not in by_lower:
        raise ConfigError(f"{source}: key 'calibration.{key}' = {name!r}: no such column in "
                          f"the catalogue (columns: {', '.join(table.colnames)})")
    return np.asarray(table[by_lower[name.lower()]], float)


def _catalogue(config, stars, reference_flux, norm_flux, comparison):
    """Zero point from a local reference catalogue matched to the comparison stars."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    c = config.calibration
    path = Path(c.catalogue)
    src = config.source or "reduction_config.yaml"
    if not path.is_file():
        raise ConfigError(f"{src}: key 'calibration.catalogue' = {str(path)!r}: no such file")
    try:
        cat = Table.read(path)
    except Exception as exc:  # astropy raises many kinds for an unreadable table
        raise ConfigError(f"{src}: key 'calibration.catalogue': cannot read {path} as a table "
                          f"({type(exc).__name__}: {exc})") from exc
    ra = _column(cat, c.ra_column, src, "ra_column")
    dec = _column(cat, c.dec_column, src, "dec_column")
    mag = _column(cat, c.mag_column, src, "mag_column")
    mag_err = (_column(cat, c.mag_err_column, src, "mag_err_column") if c.mag_err_column
               else np.zeros(len(cat)))
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)
    ra, dec, mag, mag_err = ra[good], dec[good], mag[good], np.nan_to_num(mag_err[good])
    idx = np.flatnonzero(comparison & np.isfinite(reference_flux) & (reference_flux > 0))
    details = {"catalogue": path.name, "n_catalogue": int(good.sum()),
               "match_arcsec": c.match_arcsec}
    if len(idx) == 0 or len(ra) == 0:
        return None, "no comparison star or no catalogue star to match", details
    field_c = SkyCoord(np.asarray(stars["ra"])[idx] * u.deg, np.asarray(stars["dec"])[idx] * u.deg)
    j, sep, _ = field_c.match_to_catalog_sky(SkyCoord(ra * u.deg, dec * u.deg))
    hit = sep.arcsec <= c.match_arcsec
    details["n_matched"] = int(hit.sum())
    if hit.sum() < c.min_stars:
        return None, (f"{int(hit.sum())} comparison stars matched in {path.name} within "
                      f"{c.match_arcsec} arcsec (calibration.min_stars = {c.min_stars})"), details
    s, k = idx[hit], j[hit]
    # each star's normalised flux is its reference flux; its error from its scatter
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.nanstd(norm_flux[:, s], axis=0) / reference_flux[s]
        n_ok = np.maximum(np.isfinite(norm_flux[:, s]).sum(axis=0), 1)
    values = mag[k] + 2.5 * np.log10(reference_flux[s])
    errors = np.hypot(mag_err[k], np.maximum(_MAG * rel / np.sqrt(n_ok), 1e-3))
    zp, zp_err, used, scatter = robust_mean(values, errors)
    details.update({"n_used": int(used.sum()), "n_clipped": int((~used).sum()),
                    "scatter_mag": round(scatter, 5),
                    "method": "weighted mean over matched comparison stars of catalogue mag + "
                              "2.5 log10(reference flux), 3-sigma clipped"})
    return (zp, zp_err), None, details


def calibrate(red_dir, config, frames, ensemble, frames_idx, stars):
    """The zero point of a light curve built from the photometry of ``frames``.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder (its frames are read for their headers, once).
    config : pipekit.config.ReductionConfig
    frames : pipekit.photometry.store.FrameRows
        The kept frames' summarised photometry, in light-curve order.
    ensemble : pipekit.photometry.Ensemble
        The normalisation over all measured frames.
    frames_idx : ndarray of int
        Rows of ``ensemble`` that ``frames`` are.
    stars : astropy.table.Table
        The reference star list (``ra``, ``dec``).

    Returns
    -------
    Calibration
    """
    red_dir = Path(red_dir)
    scale = np.asarray(ensemble.zero_point, float)[frames_idx]
    scale_err = np.asarray(ensemble.zero_point_err, float)[frames_idx]
    exptime = frames.numbers("exptime")
    paths = _FramePaths(red_dir)
    reasons = {}
    result = None
    nan = np.full(len(frames), np.nan)
    l1zp, l1zperr = nan, nan
    if config.calibration.use_banzai_zeropoints:
        frame_l1zp, frame_l1zperr = _l1zp(red_dir, frames, paths)
        found, l1zp, l1zperr, why, details = _banzai(red_dir, config, frames, scale, scale_err,
                                                     frame_l1zp, frame_l1zperr, paths)
        if found:
            result = ("banzai", found, details)
        else:
            reasons["banzai"] = why
    else:
        reasons["banzai"] = "calibration.use_banzai_zeropoints is false"
    if result is None and config.calibration.catalogue is not None:
        found, why, details = _catalogue(config, stars, ensemble.reference_flux, ensemble.flux,
                                         ensemble.comparison)
        if found:
            result = ("catalogue", found, details)
        else:
            reasons["catalogue"] = why
    elif result is None:
        reasons["catalogue"] = "no calibration.catalogue in the reduction config"
    if result is None:
        zp, zp_err, source, details = INSTRUMENTAL_ZEROPOINT, np.nan, "instrumental", {}
        log.warning("%s: magnitudes are instrumental (zero point %.1f): %s", red_dir, zp,
                    "; ".join(f"{k}: {v}" for k, v in reasons.items()))
    else:
        source, (zp, zp_err), details = result
        log.info("%s: zero point %.4f +- %.4f from %s", red_dir, zp, zp_err, source)
    details["not_used"] = reasons
    frame_zp = zp + 2.5 * np.log10(scale / exptime)
    return Calibration(source=source, zeropoint=float(zp), zp_err=float(zp_err),
                       frame_zp=frame_zp, l1zp=np.asarray(l1zp, float),
                       l1zperr=np.asarray(l1zperr, float), details=details)
