"""The dataset driver: measure every frame of a dataset folder, one resumable file per frame.

Field stars are detected once on a reference frame; each frame is then read once, its
stars placed through its own WCS and measured with `measure_frame` (in worker processes
when there are cores for them: `pipekit.photometry.workers`), and its table written by
this process to ``<red_dir>/photometry/<frame>.ecsv`` (groups of up to `WRITE_GROUP`
frames, their BJD_TDB in one call). Frames that cannot be measured are
listed, with their reasons, in ``rejected_frames.json``. Every file is written atomically;
`invalidate_frame` marks one frame's photometry stale (a reprocessed frame).
"""

import json
import logging
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import lco
from ..atomic import write_text_atomic
from ..datasets import dataset_frames, frame_folders
from ..errors import FrameError, PipekitError
from .alignment import centroid_shift, match_stars
from .cosmics import cosmic_ray_hits, sharp_sources
from .detection import background_map, bright_sources
from .flags import COSMIC_RAY, OFF_FRAME
from .frame import measure_frame
from .reference import (check_pixels, frame_fwhm_px, frame_settings_hash, named_reference_frame,
                        select_reference_stars, settings_px, star_list_hash)
from .sky import annulus_sky
from .store import FrameSummary, done_stamp, ecsv_text, read_frame_ecsv
from .times import bjd_tdb, bjd_tdb_many
from .workers import RemoteError, WorkerDied, frame_pool

__all__ = ["REFERENCE_STARS", "REJECTED_FRAMES", "REJECTED_STAMPS", "DatasetPhotometry",
           "rejected_frame_times", "measure_dataset",
           "measure_frame_file", "measure_frame_data", "load_dataset_config", "write_ecsv",
           "invalidate_frame", "frame_photometry_path", "bright_rows"]

log = logging.getLogger("pipekit.photometry")

#: The field-star list inside ``<red_dir>/photometry/`` (the target is ``id`` 0).
REFERENCE_STARS = "reference_stars.ecsv"
#: Frame name -> reason, for every frame not measured, inside ``<red_dir>/photometry/``.
REJECTED_FRAMES = "rejected_frames.json"
#: Frames whose measuring rejected them, with their file's ``[size, mtime_ns]`` and the
#: settings then, inside ``<red_dir>/photometry/``: such a frame is not tried again until its
#: file or the settings change (derived data: deleting the file tries them all again).
REJECTED_STAMPS = "rejected_frames_stamps.json"
#: Frames measured before their files are written together (their BJD_TDB in one call):
#: an interrupted run loses at most this many frames' work.
WRITE_GROUP = 8


@dataclass
class DatasetPhotometry:
    """Summary of `measure_dataset`: small, so it fits in a pipeline checkpoint.

    Attributes
    ----------
    red_dir, photometry_dir : Path
    n_frames : int
        Frames found in the dataset (`pipekit.datasets.dataset_frames`).
    measured : list of str
        Frames measured by this call.
    skipped : list of str
        Frames whose photometry was already on disk.
    unchanged_rejected : list of str
        Frames rejected by an earlier run, not tried again: their file and the settings are
        unchanged since (their reasons are in ``rejected``).
    rejected : dict
        Frame name -> reason, for frames that could not be measured.
    reference_frame : str
        The frame field stars were detected on.
    n_stars : int
        Stars measured per frame (the target is star 0).
    """

    red_dir: Path
    photometry_dir: Path
    n_frames: int = 0
    measured: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    unchanged_rejected: list = field(default_factory=list)
    rejected: dict = field(default_factory=dict)
    reference_frame: str | None = None
    n_stars: int = 0


def load_dataset_config(red_dir, config=None):
    """The dataset's reduction config: ``config`` when given, else its file, loaded once.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder.
    config : pipekit.config.ReductionConfig, optional
        An already-loaded config, returned as it is.

    Returns
    -------
    pipekit.config.ReductionConfig
        ``config``, or ``<red_dir>/reduction_config.yaml`` validated by
        `pipekit.config.load_reduction_config`.
    """
    if config is not None:
        return config
    from ..config import load_reduction_config
    return load_reduction_config(Path(red_dir) / "reduction_config.yaml")


def write_ecsv(table, path):
    """Write an astropy table as ECSV through `pipekit.atomic` (never half-written).

    Tables of plain numeric columns are written by `pipekit.photometry.store.ecsv_text`
    (the same ECSV, about 20 times faster); others by astropy's writer.
    """
    return write_text_atomic(path, ecsv_text(table))


def _stored_reference_stars(phot_dir, config):
    """The star list on disk when it was made with today's settings, else None."""
    path = phot_dir / REFERENCE_STARS
    if not path.exists():
        return None
    stars = read_frame_ecsv(path)
    if stars.meta.get("settings_hash") == star_list_hash(config):
        return stars
    log.info("%s: star-list settings changed; choosing the reference frame again", path)
    return None


def _done_with(path, settings_hash, summary=None):
    """True when the per-frame file exists and was made with ``settings_hash``.

    A file the photometry summary knows (same size and modification time) is judged by
    its summary entry, without opening it.
    """
    if summary is not None:
        name = os.path.basename(path)
        stamp = summary.stamp(name)
        if stamp is not None and stamp == done_stamp(path):
            return summary.meta_value(name, "settings_hash") == settings_hash
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(16384)
    except OSError:
        return False
    return f"settings_hash: {settings_hash}" in head


def frame_photometry_path(red_dir, frame_name):
    """Where a frame's photometry is stored: ``<red_dir>/photometry/<frame stem>.ecsv``.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder.
    frame_name : str or Path
        The frame's file name (or path; only the name counts).

    Returns
    -------
    pathlib.Path
    """
    return Path(red_dir) / "photometry" / frame_photometry_name(frame_name)


def frame_photometry_name(frame_name):
    """The file name of a frame's photometry: ``<frame stem>.ecsv`` (`frame_photometry_path`)."""
    return lco.frame_stem(frame_name) + ".ecsv"


def invalidate_frame(red_dir, frame_name):
    """Mark one frame's photometry stale, so the next `measure_dataset` measures it again.

    Used when a frame is replaced by a reprocessed version. The frame's
    ``photometry/<stem>.ecsv`` is removed (the light curve step rebuilds the light curve
    from the per-frame files on every run, so the new measurement enters it). The field-star
    list is kept even when this frame was the reference frame: it holds sky positions,
    which a reprocessing does not move.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder.
    frame_name : str or Path
        The frame's file name.

    Returns
    -------
    pathlib.Path or None
        The removed photometry file, or None when the frame had none.

    Examples
    --------
    >>> invalidate_frame("reduction/OGLE-2024-BLG-0034/sinistro/ip",
    ...                  "lsc1m005-fa15-20240501-0042-e91.fits.fz")  # doctest: +SKIP
    """
    path = frame_photometry_path(red_dir, frame_name)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    log.info("%s: photometry of %s marked stale (%s removed); it is measured again on the "
             "next reduction", red_dir, Path(frame_name).name, path.name)
    return path


def measure_frame_file(path, stars, config, bright):
    """Read one frame file, align it with the reference stars and measure them.

    Stars are placed through the frame's header WCS, then moved by the similarity
    transform (shift, rotation, scale) that matches the frame's own bright stars to the
    reference star pattern (`match_stars`), then refined by one common centroid shift.
    The header WCS is only a first guess: errors of tens of pixels and degrees are absorbed;
    a frame with a failed astrometric fit (``WCSERR`` non-zero) is matched without a bound
    on the offset. Cosmic-ray hits inside the apertures are counted and flagged.

    Parameters
    ----------
    path : str or Path
        A frame file (any suffix in `pipekit.lco.FRAME_SUFFIXES`).
    stars : astropy.table.Table
        ``id, ra, dec, flux_ref`` of the stars (the target is ``id`` 0), as in
        ``reference_stars.ecsv``.
    config : pipekit.config.ReductionConfig
    bright : array_like of int
        Rows of ``stars`` to align the frame with (brightest first).

    Returns
    -------
    astropy.table.Table
        `measure_frame`'s table with ``id`` first and ``cr_hits`` last; ``meta`` holds the
        frame's facts (times, BJD_TDB, filter, gain, radii in pixels), its quality figures
        (alignment transform, residual and stars matched, sky level and gradient, FWHM,
        cosmic-ray hits) and the settings hash.

    Raises
    ------
    FrameError
        When the frame cannot be read, has no celestial WCS, misses header keys, is
        mostly non-finite, or its stars cannot be matched to the reference stars.
    """
    from ..frames import read_frame

    table, info = measure_frame_data(read_frame(path), path, stars, config, bright)
    table.meta["bjd_tdb"] = float(bjd_tdb(info.mid_time(), config.target.ra, config.target.dec,
                                          info.location()).jd)
    return table


def measure_frame_data(frame, path, stars, config, bright, background=None):
    """`measure_frame_file` on a frame already read, without its BJD_TDB.

    Returns ``(table, info)``: ``table.meta["bjd_tdb"]`` is None, to be filled from
    ``info`` (`~pipekit.frames.FrameInfo`; `measure_dataset` computes the BJD_TDB of
    several frames in one call). ``background`` is the frame's background map when
    already computed (`pipekit.photometry.detection.background_map`).
    """
    info = frame.info
    if frame.wcs is None:
        raise FrameError(f"{path}: no celestial WCS; cannot place the target and field stars")
    if info.problems:
        raise FrameError(f"{path}: " + "; ".join(info.problems))
    check_pixels(frame.data, path)
    s = settings_px(config, info.pixscale)
    p = config.photometry
    data = frame.data
    ny, nx = data.shape
    fwhm = frame_fwhm_px(frame.header, info.pixscale) or 2.0 / info.pixscale
    x, y = frame.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    bkg = background if background is not None else background_map(data)
    sx, sy, _ = bright_sources(data, fwhm, n=80, background=bkg, saturate=info.saturate)
    star = ~sharp_sources(data, sx, sy, fwhm, info.gain, info.rdnoise, bkg)  # no hits
    sx, sy = sx[star], sy[star]
    bright = np.asarray(bright, int)
    pointing_only = bool(info.wcserr)
    max_shift = None if pointing_only else s["max_shift"]
    bx, by = x[bright], y[bright]
    if not pointing_only:  # only stars that can be on the frame, for similar star lists
        on = (bx > -max_shift) & (bx < nx + max_shift) & (by > -max_shift) & \
            (by < ny + max_shift)
        bx, by = bx[on], by[on]
        if len(bx):  # and only sources where reference stars can be (a wider camera's field)
            near = (sx > bx.min() - max_shift) & (sx < bx.max() + max_shift) & \
                (sy > by.min() - max_shift) & (sy < by.max() + max_shift)
            sx, sy = sx[near], sy[near]
    sx, sy = sx[:40], sy[:40]
    # star lists of similar depth share their triangles
    k, kd = min(len(bx), len(sx) + 10), min(len(sx), len(bx) + 10)
    match = match_stars(np.column_stack([bx[:k], by[:k]]), np.column_stack([sx[:kd], sy[:kd]]),
                        tolerance=s["tolerance"], max_shift=max_shift,
                        max_rotation_deg=p.align_max_rotation_deg,
                        centre=((nx - 1) / 2, (ny - 1) / 2))
    if match is None and len(bx) == 0:
        tx, ty = x[0], y[0]
        raise FrameError(f"{path}: alignment failed: the header WCS puts the target outside the "
                         f"frame (pixel x={tx:.0f}, y={ty:.0f} of {nx} x {ny}) and no bright "
                         f"reference star within {max_shift:.0f} px of the frame; the WCS "
                         "points elsewhere")
    if match is None:
        bound = ("any offset searched (WCSERR = %d: pointing-only WCS)" % info.wcserr
                 if pointing_only else f"header WCS within {s['max_shift']:.0f} px")
        raise FrameError(f"{path}: alignment failed: its {len(sx)} detected stars do not match "
                         f"the reference star pattern ({len(bx)} stars; {bound})")
    x, y = match.transform.apply(x, y)
    dx = dy = 0.0
    n_shift = 0
    if s["centroid"] > 0 and len(bright):
        # above the background map (subtracted at the pixels used): a gradient under the
        # window would pull every centroid uphill
        data = np.ascontiguousarray(data)
        bx, by = x[bright], y[bright]
        sky_b, _, _ = annulus_sky(data, bx, by, s["annulus_in"], s["annulus_out"], s["sigma"],
                                  background=bkg)
        dx, dy, n_shift = centroid_shift(data, bx, by, max(s["centroid"], s["radius"]),
                                         sky_b, max_shift=max(s["centroid"], s["radius"]),
                                         background=bkg)
        if n_shift:
            x, y = x + dx, y + dy
    table = measure_frame(data, np.column_stack([x, y]), s["radius"], s["annulus_in"],
                          s["annulus_out"], info.gain, info.rdnoise, info.saturate,
                          sigma=s["sigma"], edge_margin=s["edge"], background=bkg)
    table.add_column(np.asarray(stars["id"]), name="id", index=0)
    hits = np.zeros(len(table), int)
    if p.cosmic_ray_sigma > 0:
        on = (np.asarray(table["flags"]) & OFF_FRAME) == 0
        hits[on] = cosmic_ray_hits(data, x[on], y[on], s["radius"], fwhm, info.gain,
                                   info.rdnoise, np.asarray(table["sky"])[on],
                                   sigma=p.cosmic_ray_sigma)
        table["flags"][hits > 0] |= COSMIC_RAY
    table["cr_hits"] = hits
    mid = info.mid_time()
    info.location()  # raises FrameError naming the missing keys
    t = match.transform
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    mx, my = t.apply(cx, cy)
    table.meta = {
        "frame": Path(path).name, "date_obs": info.date_obs, "exptime": info.exptime,
        "mjd_mid_utc": float(mid.mjd), "bjd_tdb": None, "filter": info.filter,
        "instrument": info.instrument, "site": info.site, "pixscale": info.pixscale,
        "gain": info.gain, "rdnoise": info.rdnoise, "saturate": info.saturate,
        "fwhm_px": float(fwhm), "wcserr": info.wcserr,
        "radius_px": s["radius"], "annulus_in_px": s["annulus_in"],
        "annulus_out_px": s["annulus_out"],
        "align_offset_px": float(np.hypot(mx - cx, my - cy)),
        "align_rotation_deg": t.rotation_deg, "align_scale": t.scale,
        "align_residual_px": match.residual_px, "align_n_matched": match.n_matched,
        "shift_px": [dx, dy], "n_shift_stars": n_shift,
        "sky_level": bkg.level, "sky_gradient": bkg.gradient,
        "cr_hits_target": int(hits[0]), "cr_hits_total": int(hits.sum()),
        "l1zp": info.l1zp, "l1zperr": info.l1zperr,
        "n_stars": len(stars), "settings_hash": frame_settings_hash(config),
    }
    return table, info


def measure_dataset(red_dir, config=None):
    """Measure every frame of a dataset that has no photometry on disk yet.

    Field stars are detected once on a reference frame (best seeing) and stored in
    ``<red_dir>/photometry/reference_stars.ecsv`` with their sky positions (the target is
    star 0); every frame places them through its own WCS, refined by a common centroid
    shift, and gets ``<red_dir>/photometry/<frame>.ecsv`` written atomically, in groups of
    up to `WRITE_GROUP` frames whose BJD_TDB are computed in one call. Frames are read
    once (those the reference choice read are kept in memory, `FrameCache`), in worker
    processes when ``photometry.processes`` allows (`pipekit.photometry.workers`); this
    process writes every file. A frame that cannot be measured (corrupt, no WCS, missing
    keys) is listed with its reason in ``rejected_frames.json`` and the others go on.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder: frames at its top (and in ``data/`` for a dataset sorted by
        an earlier pipekit; `pipekit.datasets.dataset_frames`).
    config : pipekit.config.ReductionConfig, optional
        The dataset's config, already loaded (`pipekit.config.load_reduction_config`);
        None loads ``<red_dir>/reduction_config.yaml``.

    Returns
    -------
    DatasetPhotometry

    Raises
    ------
    PipekitError
        When no frame can serve as the reference frame; when the target falls
        outside every frame, the message says so and names the config to check.
    ConfigError
        When ``photometry.reference_image`` names no frame of the dataset.
    """

    red_dir = Path(red_dir)
    config = load_dataset_config(red_dir, config)
    phot_dir = red_dir / "photometry"
    phot_dir.mkdir(parents=True, exist_ok=True)
    frames = dataset_frames(red_dir, log_layout=True)
    result = DatasetPhotometry(red_dir=red_dir, photometry_dir=phot_dir, n_frames=len(frames))
    if not frames:
        log.warning("%s: no frames (none at its top, none in data/)", red_dir)
        _write_rejected(phot_dir, {})
        return result
    if config.photometry.reference_frame:
        named_reference_frame(frames, config, red_dir)  # a wrong name fails on a resumed run too
    rejected = {}
    by_stem = {}
    for f in frames:  # x.fits and x.fits.fz are one exposure: measure it once
        first = by_stem.setdefault(lco.frame_stem(f.name), f)
        if first is not f:
            rejected[f.name] = (f"{f}: the same frame as {first.name} (one name, two frame "
                                f"suffixes); measured once, from {first.name}")
            log.warning("%s", rejected[f.name])
    frames = list(by_stem.values())
    # a frame is done when its file was made with today's settings (Luigi's task identity)
    digest = frame_settings_hash(config)
    summary = FrameSummary(phot_dir)
    known = _rejection_stamps(phot_dir, digest)
    todo, stamps = [], {}
    phot_folder = os.fspath(phot_dir)  # joined as text: no Path per frame of big datasets
    for f in frames:
        if _done_with(os.path.join(phot_folder, frame_photometry_name(f.name)), digest,
                      summary):
            result.skipped.append(f.name)
        elif f.name in known and known[f.name]["stamp"] == done_stamp(f):
            rejected[f.name] = known[f.name]["reason"]  # the same file, the same settings
            stamps[f.name] = known[f.name]
            result.unchanged_rejected.append(f.name)
        else:
            todo.append(f)
    stars = _stored_reference_stars(phot_dir, config)
    with frame_pool(config, len(frames) if stars is None else len(todo),
                    star_search=stars is None) as pool:
        if stars is None:
            try:
                stars = select_reference_stars(frames, config, rejected, red_dir, pool)
            except PipekitError:
                _write_rejected(phot_dir, rejected)
                raise
            write_ecsv(stars, phot_dir / REFERENCE_STARS)
        result.reference_frame = stars.meta.get("reference_frame")
        result.n_stars = len(stars)
        if todo:
            try:
                _measure_frames(todo, stars, config, red_dir, rejected, result, pool, stamps,
                                summary)
            finally:
                _write_rejection_stamps(phot_dir, digest, stamps, rejected)
                summary.save()
    result.rejected = rejected
    _write_rejected(phot_dir, rejected)
    unchanged = (f" ({len(result.unchanged_rejected)} of them unchanged since an earlier run "
                 "rejected them: not tried again)" if result.unchanged_rejected else "")
    log.info("%s: %d frames measured, %d already done, %d rejected%s", red_dir,
             len(result.measured), len(result.skipped), len(rejected), unchanged)
    return result


def _rejection_stamps(phot_dir, digest=None):
    """Frame name -> ``{"reason", "stamp"[, "mjd_mid"]}`` of the frames the photometry step
    rejected (with the settings ``digest`` when given)."""
    try:
        data = json.loads((phot_dir / REJECTED_STAMPS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or (digest is not None and
                                      data.get("settings_hash") != digest):
        return {}
    frames = data.get("frames")
    return {k: v for k, v in frames.items() if isinstance(v, dict)} \
        if isinstance(frames, dict) else {}


def rejected_frame_times(red_dir):
    """Frame -> mid-exposure MJD (UTC) of the frames the photometry step rejected after
    reading their header, as it recorded them (frames whose file has changed since are
    left out; no frame file is opened).

    Parameters
    ----------
    red_dir : str or Path

    Returns
    -------
    dict
    """
    red_dir = Path(red_dir)
    out = {}
    for name, entry in _rejection_stamps(red_dir / "photometry").items():
        mjd = entry.get("mjd_mid")
        if isinstance(mjd, (int, float)) and not isinstance(mjd, bool) and \
                entry.get("stamp") is not None and any(
                done_stamp(folder / name) == entry.get("stamp")
                for folder in frame_folders(red_dir)):
            out[name] = float(mjd)
    return out


def _write_rejection_stamps(phot_dir, digest, stamps, rejected):
    kept = {name: entry for name, entry in stamps.items() if name in rejected}
    write_text_atomic(phot_dir / REJECTED_STAMPS, json.dumps(
        {"settings_hash": digest, "frames": kept}, indent=1, sort_keys=True))


def bright_rows(stars):
    """Rows of the (at most 50) brightest field stars of a star list, for alignment."""
    flux_ref = np.asarray(stars["flux_ref"], float)
    order = np.argsort(np.where(np.isfinite(flux_ref), -flux_ref, np.inf))
    bright = order[: min(50, max(len(stars) - 1, 0))]
    return bright[bright != 0]


def _measure_frames(todo, stars, config, red_dir, rejected, result, pool, stamps, summary):
    """Measure ``todo`` in ``pool``; write each group's files once its BJD_TDB are known
    (and add them to the photometry ``summary``)."""
    batch = []

    def flush():
        if not batch:
            return
        try:
            bjd = bjd_tdb_many([info.mid_time() for _, _, info in batch], config.target.ra,
                               config.target.dec,
                               [(i.longitude, i.latitude, i.height) for _, _, i in batch])
        except Exception as exc:  # noqa: BLE001 - every frame of the group is named
            for f, _, _ in batch:
                rejected[f.name] = (f"{f}: BJD_TDB could not be computed "
                                    f"({type(exc).__name__}: {exc})")
                log.warning("rejected %s: %s", f.name, rejected[f.name])
            batch.clear()
            return
        for (f, table, _), value in zip(batch, bjd):
            table.meta["bjd_tdb"] = float(value)
            summary.add(write_ecsv(table, frame_photometry_path(red_dir, f)), table)
            rejected.pop(f.name, None)
            result.measured.append(f.name)
        batch.clear()

    pool.broadcast("use_stars", stars)
    if pool.processes > 1:
        log.info("%s: measuring %d frames in %d processes", red_dir, len(todo), pool.processes)
    todo = sorted(todo, key=lambda f: not pool.holds(f))  # frames kept in memory first
    try:
        with closing(pool.run_ordered("measure", todo)) as results:
            for f, value, error in results:
                if error is None:
                    batch.append((f, *value))
                    if len(batch) >= WRITE_GROUP:
                        flush()
                else:
                    _reject(f, error, rejected, stamps)
    finally:
        flush()


def _reject(f, error, rejected, stamps):
    """Record why frame ``f`` was not measured; an unexpected error with its traceback.

    A frame its measuring rejects (`FrameError`: alignment, WCS, header, pixels) gets a
    stamp in ``stamps``: it is not tried again while its file and the settings stay the
    same. Anything else (a crash, a dying worker process) is tried again on the next run.
    """
    if isinstance(error, (FrameError, PipekitError)) and not isinstance(error, RemoteError):
        rejected[f.name] = str(error)
        log.warning("rejected %s: %s", f.name, error)
        if isinstance(error, FrameError) and not isinstance(error, WorkerDied):
            stamps[f.name] = {"reason": str(error), "stamp": done_stamp(f)}
            mjd = getattr(error, "mjd_mid", None)
            if mjd is not None:   # for the light curve's list of rejected frames' times
                stamps[f.name]["mjd_mid"] = mjd
        return
    name = getattr(error, "type_name", None) or type(error).__name__
    # one bad frame never stops the others (BANZAI's habit)
    rejected[f.name] = f"{f}: unexpected {name} while measuring: {error}"
    remote = getattr(error, "remote_traceback", "")
    if remote:
        log.error("rejected %s\n%s", f.name, remote)
    else:
        log.error("rejected %s", f.name, exc_info=error)


def _write_rejected(phot_dir, rejected):
    write_text_atomic(phot_dir / REJECTED_FRAMES, json.dumps(rejected, indent=1, sort_keys=True))
