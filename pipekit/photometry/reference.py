"""The reference frame and its star list: the deepest frame with a good WCS, field stars
detected on its background-subtracted image, and the target's position refined there.

Also the identity of the settings (`star_list_hash`, `frame_settings_hash`): an output made
with other settings is not "done".
"""

import hashlib
import json
import logging
import re
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import lco
from ..errors import ConfigError, FrameError, PipekitError
from .alignment import centroid_shift, match_stars
from .apertures import aperture_sums
from .detection import background_map, bright_sources, select_stars

__all__ = ["settings_px", "frame_fwhm_px", "check_pixels", "star_list_hash",
           "frame_settings_hash", "field_depth", "select_reference_stars", "DEPTH_CANDIDATES",
           "Candidate", "TargetOffFrame", "examine_candidate", "wcs_target_estimate",
           "target_on_reference", "star_list"]

log = logging.getLogger("pipekit.photometry")

#: Frames read (best header score first) to measure their depth and to estimate the
#: reference frame's own WCS error from their star patterns.
DEPTH_CANDIDATES = 8


def settings_px(config, pixscale):
    """The photometry settings of ``config`` in pixels of a frame with ``pixscale``."""
    p = config.photometry
    return dict(radius=p.aperture_arcsec / pixscale, annulus_in=p.annulus_inner_arcsec / pixscale,
                annulus_out=p.annulus_outer_arcsec / pixscale,
                edge=p.edge_margin_arcsec / pixscale,
                centroid=p.centroid_box_arcsec / pixscale, sigma=p.sky_sigma_clip,
                max_shift=p.align_max_shift_arcsec / pixscale,
                tolerance=p.align_tolerance_arcsec / pixscale)


def frame_fwhm_px(header, pixscale):
    """FWHM in pixels from BANZAI's ``L1FWHM`` (arcsec) or ``FWHM`` (pixels), else None."""
    fwhm = lco.clean_float(header.get("L1FWHM"), positive=True)
    if fwhm is not None:
        return fwhm / pixscale
    return lco.clean_float(header.get("FWHM"), positive=True)


def check_pixels(data, path):
    """Raise `FrameError` when most of the image is not finite."""
    finite = np.isfinite(data[::4, ::4]).mean()
    if finite < 0.5:
        raise FrameError(f"{path}: {100 * (1 - finite):.0f}% of the image is NaN or infinite; "
                         "expected a reduced image")


def _hash(values):
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def star_list_hash(config):
    """Identity of the settings the reference star list depends on (16 hex digits)."""
    p = config.photometry
    return _hash({"ra": config.target.ra, "dec": config.target.dec,
                  "detection_sigma": p.detection_sigma, "max_field_stars": p.max_field_stars,
                  "reference_frame": p.reference_frame, "target_xy": p.target_xy,
                  "aperture": p.aperture_arcsec, "annulus": [p.annulus_inner_arcsec,
                                                             p.annulus_outer_arcsec]})


def frame_settings_hash(config):
    """Identity of everything a per-frame photometry file depends on (16 hex digits).

    The star list's settings plus the aperture, annulus, sky clipping, edge margin,
    centroid, alignment and cosmic-ray settings: a file made with another value is measured
    again. Settings used only later (``min_comparison_stars``) are left out.
    """
    p = config.photometry
    return _hash({"stars": star_list_hash(config), "sigma": p.sky_sigma_clip,
                  "centroid": p.centroid_box_arcsec, "edge": p.edge_margin_arcsec,
                  "align": [p.align_max_shift_arcsec, p.align_max_rotation_deg,
                            p.align_tolerance_arcsec], "cr": p.cosmic_ray_sigma})


def _aperture_m(telescope):
    """Telescope aperture in metres from LCO's ``TELESCOP`` (``1m0-05`` -> 1.0), else 1."""
    m = re.match(r"(\d)m(\d)", telescope or "")
    return float(f"{m.group(1)}.{m.group(2)}") if m else 1.0


def field_depth(data, fwhm, radius, gain, rdnoise, saturate=None, background=None, n=300):
    """How deep a frame is on its field: the number of stars it measures at S/N > 10.

    Transparency, exposure, telescope size, seeing and sky all change that count, so
    frames of different telescopes compare directly; a count is not swayed by one bright
    star that saturates in some frames and not in others (a sum of S/N would be).

    Returns
    -------
    depth : int
        Unsaturated sources with aperture S/N above 10 (of the ``n`` brightest).
    sources : tuple of ndarray
        ``x, y, flux`` of the bright sources found, brightest first (for matching).
    background : Background
    """
    bkg = background if background is not None else background_map(data)
    x, y, f = bright_sources(data, fwhm, n=n, background=bkg, saturate=saturate)
    if len(x) == 0:
        return 0, (x, y, f), bkg
    sums, area, flags = aperture_sums(np.ascontiguousarray(data), x, y, radius, saturate)
    sky = bkg.at(np.rint(y).astype(int), np.rint(x).astype(int))
    flux = sums - area * sky
    var = np.maximum(flux, 0) / gain + area * (np.maximum(sky, 0) / gain + (rdnoise / gain) ** 2)
    snr = np.where((flags == 0) & (flux > 0), flux / np.sqrt(np.maximum(var, 1e-12)), 0.0)
    return int((snr > 10).sum()), (x[:60], y[:60], f[:60]), bkg


@dataclass
class Candidate:
    """A frame examined as the reference frame: its depth and what matching needs.

    Small enough to travel between processes (no pixels).
    """

    path: object
    info: object
    wcs: object
    depth: float
    sources: tuple
    fwhm: float
    shape: tuple = ()


class TargetOffFrame(FrameError):
    """The target falls outside a frame: it cannot be the reference frame."""


def _header_ranked(frames, rejected):
    """Frames with a good WCS, best header score (exposure x aperture² / seeing²) first."""
    from ..frames import read_frame_info

    ranked, pointing_only = [], {}
    for i, f in enumerate(frames):
        try:
            info = read_frame_info(f)
        except FrameError as exc:
            rejected[f.name] = str(exc)
            continue
        if info.wcserr:
            pointing_only[f.name] = info.wcserr
            continue
        score = (info.exptime or 1.0) * _aperture_m(info.telescope) ** 2 / \
            max(info.fwhm_arcsec or 2.0, 0.3) ** 2
        ranked.append((-score, abs(i - len(frames) / 2), f))
    return [f for *_, f in sorted(ranked, key=lambda r: r[:2])], pointing_only


def examine_candidate(path, frame, config):
    """Measure the depth of one frame as a candidate reference frame.

    Parameters
    ----------
    path : Path
    frame : pipekit.frames.Frame
    config : pipekit.config.ReductionConfig

    Returns
    -------
    candidate : Candidate
    background : Background
        The frame's background map (to keep with the frame).

    Raises
    ------
    TargetOffFrame
        When the target falls outside the frame.
    FrameError
        When the frame has no usable WCS, header problems or mostly non-finite pixels.
    """
    info = frame.info
    if frame.wcs is None or info.problems:
        raise FrameError(f"{path}: " + ("; ".join(info.problems) or "no celestial WCS"))
    check_pixels(frame.data, path)
    tx, ty = frame.wcs.all_world2pix([config.target.ra], [config.target.dec], 0)
    ny, nx = frame.data.shape
    if not (0 <= tx[0] <= nx - 1 and 0 <= ty[0] <= ny - 1):
        raise TargetOffFrame(f"{path}: {_target_position(config)} falls outside this frame "
                             f"(at pixel x={tx[0]:.0f}, y={ty[0]:.0f} of {nx} x {ny})")
    s = settings_px(config, info.pixscale)
    fwhm = frame_fwhm_px(frame.header, info.pixscale) or 2.0 / info.pixscale
    depth, sources, bkg = field_depth(frame.data, fwhm, s["radius"], info.gain,
                                      info.rdnoise, info.saturate)
    return Candidate(path, info, frame.wcs, depth, sources, fwhm, frame.data.shape), bkg


def select_reference_stars(frames, config, rejected, red_dir, pool=None):
    """Choose the reference frame and detect the dataset's field stars on it.

    Parameters
    ----------
    frames : list of Path
    config : pipekit.config.ReductionConfig
    rejected : dict
        Frame name -> reason; unreadable frames are added.
    red_dir : Path
        The dataset folder (for messages).
    pool : pipekit.photometry.workers.InlinePool or ProcessPool, optional
        Where frames are read and examined (default: in this process). The frames read
        stay in the pool's memory (with their background maps), so that the measuring
        pass does not read them again.

    Returns
    -------
    astropy.table.Table
        ``id, ra, dec, x_ref, y_ref, flux_ref, is_target`` (the target is ``id`` 0); ``meta``
        says which frame, why (its depth against the others'), how the target was placed and
        the settings hash.

    Raises
    ------
    PipekitError
        No usable reference frame; the target outside every frame; fewer than
        ``min_field_stars`` stars detected (after a WARNING naming the count and frame).
    """
    from .tasks import remove_band_file
    from .workers import InlinePool

    if pool is None:
        with InlinePool(config) as own:
            return select_reference_stars(frames, config, rejected, red_dir, own)
    wanted = config.photometry.reference_frame
    pointing_only = {}
    if wanted:
        order = [named_reference_frame(frames, config, red_dir)]
    else:
        if len(frames) <= DEPTH_CANDIDATES:  # all are examined: no need to wait for the ranks
            pool.start("examine", frames)
        order, pointing_only = _header_ranked(frames, rejected)
    target_off, cands = {}, []
    with closing(pool.run_ordered("examine", order)) as results:
        for f, cand, error in results:
            if isinstance(error, TargetOffFrame):
                log.warning("%s: target off this frame; not used as the reference frame", f.name)
                target_off[f.name] = str(error)
            elif isinstance(error, FrameError):
                rejected[f.name] = str(error)
            elif error is not None:
                raise error
            else:
                cands.append(cand)
                if len(cands) >= DEPTH_CANDIDATES:
                    break
    if not cands:
        _raise_no_reference(frames, order, rejected, target_off, pointing_only, config, red_dir)
    best = max(cands, key=lambda c: c.depth)
    why = (f"deepest of {len(cands)} frames with a good WCS examined: {best.depth} stars at "
           f"S/N > 10 (others {', '.join(str(c.depth) for c in cands if c is not best) or 'none'})")
    if wanted:
        why = "photometry.reference_frame"
    # The stars are searched in bands of rows, one per process, the worker keeping the frame
    # handing the other bands out; this process estimates the target's position from the
    # WCS meanwhile, and that worker centroids it once its band is searched.
    splitting = pool.submit("split_detection", best.path, best, pool.processes)
    kept_band = pool.submit("detect_kept_band", best.path)
    jobs = pool.result(splitting)
    try:
        others = [pool.submit_elsewhere("detect_band", best.path, *job) for job in jobs]
        estimate = None if config.photometry.target_xy is not None else \
            wcs_target_estimate(best, cands, config)
        targeting = pool.submit("target_position", best.path, best, cands, estimate)
        bands = [pool.result(t) for t in [kept_band] + others]
    finally:
        for job in jobs:
            remove_band_file(job[0])
    s = settings_px(config, best.info.pixscale)
    found = select_stars(bands, best.shape, best.fwhm,
                         max_stars=4 * config.photometry.max_field_stars,
                         border=s["annulus_out"], min_separation=s["radius"] + best.fwhm)
    stars = star_list(best, cands, config, why, found, pool.result(targeting))
    log.info("%s: %d field stars on %s (%s); target %s", red_dir, len(stars) - 1,
             best.path.name, why, stars.meta["target_position"])
    return stars


def target_on_reference(frame, background, best, cands, config, estimate=None):
    """The target's position on the reference frame: pinned, else centroided near the
    frames' WCS estimate (`wcs_target_estimate`).

    Returns
    -------
    tuple
        ``(x, y, how, (sky level, sky gradient))``: 0-based pixels, how the position was
        found (in words), and the reference frame's background figures.
    """
    s = settings_px(config, frame.info.pixscale)
    tx, ty, how = _target_on_reference(frame, best, cands, config, s, background, estimate)
    return tx, ty, how, (background.level, background.gradient)


def star_list(best, cands, config, why, found, target):
    """The reference star list from the sources found (`dao_sources` of every band, chosen
    by `select_stars`) and the target (`target_on_reference`): the target first, then the
    brightest field stars.

    Raises
    ------
    PipekitError
        Fewer than ``photometry.min_field_stars`` field stars (after a WARNING).
    """
    from astropy.table import Table

    p = config.photometry
    s = settings_px(config, best.info.pixscale)
    tx, ty, how, (sky_level, sky_gradient) = target
    far = np.hypot(found["x"] - tx, found["y"] - ty) > s["annulus_in"]
    found = found[far]
    n = min(len(found), p.max_field_stars)
    if n < p.min_field_stars:
        msg = (f"{best.path}: only {n} field stars detected on the reference frame at "
               f"{p.detection_sigma} sigma above its background (photometry.min_field_stars = "
               f"{p.min_field_stars}); photometry needs comparison stars")
        log.warning("%s", msg)
        raise PipekitError(msg)
    xs = np.concatenate([[tx], found["x"][:n]])
    ys = np.concatenate([[ty], found["y"][:n]])
    ra, dec = best.wcs.all_pix2world(xs, ys, 0)
    stars = Table({"id": np.arange(n + 1), "ra": ra, "dec": dec, "x_ref": xs, "y_ref": ys,
                   "flux_ref": np.concatenate([[np.nan], found["flux"][:n]]),
                   "is_target": np.arange(n + 1) == 0})
    stars.meta = {"reference_frame": best.path.name, "reference_reason": why,
                  "reference_depth": {c.path.name: c.depth for c in cands},
                  "fwhm_px": float(best.fwhm), "target": config.target.name,
                  "target_position": how, "detection_sigma": float(p.detection_sigma),
                  "sky_level": sky_level, "sky_gradient": sky_gradient,
                  "settings_hash": star_list_hash(config)}
    return stars


def wcs_target_estimate(best, cands, config):
    """Where the frames' header WCSs put the target on the reference frame.

    Each frame's header WCS says where the target is; the star patterns carry those
    opinions onto the reference frame, and their median outvotes the reference's own error.
    Needs no pixels (the candidates' WCS and bright sources only).

    Parameters
    ----------
    best : Candidate
        The reference frame.
    cands : list of Candidate
        Every frame examined.
    config : pipekit.config.ReductionConfig

    Returns
    -------
    x, y : float
        The median position (0-based pixels of the reference frame).
    search : float
        How far from it to look for the target (pixels): three times the median's
        uncertainty from the opinions' spread, at least the centroid window.
    how : str
        The estimate, in words (for the star list's ``meta``).
    """
    p = config.photometry
    s = settings_px(config, best.info.pixscale)
    tx, ty = (float(v[0]) for v in best.wcs.all_world2pix([config.target.ra],
                                                          [config.target.dec], 0))
    ex, ey = [tx], [ty]
    rx, ry, _ = best.sources
    ref_ra, ref_dec = best.wcs.all_pix2world(rx, ry, 0)
    for c in cands:
        if c is best or c.path == best.path:
            continue
        px, py = c.wcs.all_world2pix(ref_ra, ref_dec, 0)
        m = match_stars(np.column_stack([px, py]), np.column_stack(c.sources[:2]),
                        tolerance=s["tolerance"] * 2, max_shift=None,
                        max_rotation_deg=p.align_max_rotation_deg)
        if m is None:
            continue
        cx, cy = c.wcs.all_world2pix([config.target.ra], [config.target.dec], 0)
        ux, uy = m.transform.inverse().apply(cx, cy)
        ra, dec = c.wcs.all_pix2world(ux, uy, 0)
        qx, qy = best.wcs.all_world2pix(ra, dec, 0)
        ex.append(float(qx[0]))
        ey.append(float(qy[0]))
    sx, sy = float(np.median(ex)), float(np.median(ey))
    how = f"header WCS (median of {len(ex)} frames' WCS, {np.hypot(sx - tx, sy - ty):.1f} px " \
          "from the reference frame's own)"
    win = max(s["centroid"], s["radius"])
    spread = 1.4826 * np.median(np.hypot(np.subtract(ex, sx), np.subtract(ey, sy)))
    search = float(min(max(win, 3 * 1.25 * spread / np.sqrt(len(ex))), s["max_shift"]))
    return sx, sy, search, how


def _target_on_reference(frame, best, cands, config, s, bkg, estimate=None):
    """The target's pixel position on the reference frame and how it was found."""
    p = config.photometry
    if p.target_xy is not None:
        return float(p.target_xy[0]), float(p.target_xy[1]), "pinned by photometry.target_xy"
    sx, sy, search, how = estimate or wcs_target_estimate(best, cands, config)
    win = max(s["centroid"], s["radius"])
    ny, nx = frame.data.shape
    if win > 0 and win < sx < nx - 1 - win and win < sy < ny - 1 - win:
        sky = float(bkg.at(int(round(sy)), int(round(sx))))
        cx, cy, k = sx, sy, 0
        px, py, _ = bright_sources(frame.data, best.fwhm, n=300, background=bkg,
                                   saturate=frame.info.saturate)
        d = np.hypot(px - sx, py - sy)
        if len(d) and d.min() <= search:  # start from the nearest source in reach
            cx, cy = float(px[np.argmin(d)]), float(py[np.argmin(d)])
        # the map subtracted (no gradient to pull the centroid) where the centroid can go:
        # within the search, two centroid steps of at most ``win`` and an aperture
        half = int(np.ceil(search + 2 * win + s["radius"])) + 3
        x0, y0 = max(int(sx) - half, 0), max(int(sy) - half, 0)
        x1, y1 = min(int(sx) + half + 1, nx), min(int(sy) + half + 1, ny)
        flat = np.ascontiguousarray(frame.data[y0:y1, x0:x1]
                                    - bkg.sampled(np.arange(y0, y1), np.arange(x0, x1)))
        cx, cy = cx - x0, cy - y0
        for _ in range(2):  # twice: a start a few pixels off converges
            dx, dy, k = centroid_shift(flat, [cx], [cy], win, np.zeros(1), max_shift=win)
            cx, cy = cx + dx, cy + dy
        sums, area, _ = aperture_sums(flat, [cx], [cy], s["radius"])
        cx, cy = cx + x0, cy + y0
        gain, rdnoise = frame.info.gain, frame.info.rdnoise
        flux = float(sums[0])
        noise = float(np.sqrt(max(flux, 0) / gain + area[0] * (max(sky, 0) / gain
                                                             + (rdnoise / gain) ** 2)))
        if k and flux > 10 * noise and np.hypot(cx - sx, cy - sy) <= search:
            return cx, cy, (f"centroided (S/N {flux / noise:.0f}), searched within "
                            f"{search:.0f} px of the {how}")
    log.info("%s: target not detectable near its WCS position; using the %s (set "
             "photometry.target_xy to pin it)", best.path.name, how)
    return sx, sy, how


def _target_position(config):
    return f"target at RA {config.target.ra:.5f} deg, Dec {config.target.dec:+.5f} deg"


def _raise_no_reference(frames, order, rejected, target_off, pointing_only, config, red_dir):
    others = {f.name: rejected[f.name] for f in frames if f.name in rejected}
    rejected.update(target_off)
    if target_off:
        config_file = config.source or red_dir / "reduction_config.yaml"
        n = len(target_off)
        where = f"all {n} frames" if n > 1 else f"the frame {next(iter(target_off))}"
        if others:
            where = (f"all {len(target_off)} readable frames (the other "
                     f"{len(others)} rejected: {others})")
        raise PipekitError(f"{red_dir}: {_target_position(config)} falls outside "
                           f"{where}: check target.RA/target.Dec in {config_file}")
    if pointing_only and not order:
        raise PipekitError(f"{red_dir}: no frame with a good WCS to serve as the reference "
                           f"frame: all {len(pointing_only)} readable frames have WCSERR != 0 "
                           "(pointing-only astrometry)")
    raise PipekitError(f"{red_dir}: no usable reference frame among {len(frames)} frames "
                       f"(reasons: {rejected})")


def named_reference_frame(frames, config, red_dir):
    """The frame ``photometry.reference_image`` names, by file name or stem.

    The existing pipeline funpacks its frames, so ``x.fits`` in its config names
    pipekit's ``x.fits.fz`` too.

    Raises
    ------
    ConfigError
        When the name matches no frame of the dataset, naming the config and the key.
    """
    wanted = config.photometry.reference_frame
    stem = lco.frame_stem(wanted)
    for f in frames:
        if f.name == wanted or lco.frame_stem(f) == stem:
            return f
    raise ConfigError(f"{config.source or Path(red_dir) / 'reduction_config.yaml'}: key "
                      f"'photometry.reference_image' = {wanted!r} names no frame of the dataset "
                      f"{red_dir} ({len(frames)} frames at its top and in data/); expected the "
                      "file name of one of its frames, or none to choose automatically")
