"""The dataset driver: measure every frame of a dataset folder, one resumable file per frame.

Field stars are detected once on a reference frame; each frame is then read, its stars
placed through its own WCS and measured with `measure_frame`, and its table written to
``<red_dir>/photometry/<frame>.ecsv``. Frames that cannot be measured are listed, with
their reasons, in ``rejected_frames.json``. Every file is written atomically;
`invalidate_frame` marks one frame's photometry stale (a reprocessed frame).
"""

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import lco
from ..atomic import write_text_atomic
from ..datasets import dataset_frames
from ..errors import ConfigError, FrameError, PipekitError
from .alignment import centroid_shift
from .detection import detect_stars
from .frame import measure_frame
from .sky import annulus_sky
from .times import bjd_tdb

__all__ = ["REFERENCE_STARS", "REJECTED_FRAMES", "DatasetPhotometry", "measure_dataset",
           "measure_frame_file", "load_dataset_config", "write_ecsv", "invalidate_frame",
           "frame_photometry_path"]

log = logging.getLogger("pipekit.photometry")

#: The field-star list inside ``<red_dir>/photometry/`` (the target is ``id`` 0).
REFERENCE_STARS = "reference_stars.ecsv"
#: Frame name -> reason, for every frame not measured, inside ``<red_dir>/photometry/``.
REJECTED_FRAMES = "rejected_frames.json"


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
    rejected: dict = field(default_factory=dict)
    reference_frame: str | None = None
    n_stars: int = 0


def _settings(config, pixscale):
    p = config.photometry
    return dict(radius=p.aperture_arcsec / pixscale, annulus_in=p.annulus_inner_arcsec / pixscale,
                annulus_out=p.annulus_outer_arcsec / pixscale,
                edge=p.edge_margin_arcsec / pixscale,
                centroid=p.centroid_box_arcsec / pixscale, sigma=p.sky_sigma_clip)


def _header_fwhm(header, pixscale):
    """FWHM in pixels from BANZAI's ``L1FWHM`` (arcsec) or ``FWHM`` (pixels), else None."""
    fwhm = lco.clean_float(header.get("L1FWHM"), positive=True)
    if fwhm is not None:
        return fwhm / pixscale
    return lco.clean_float(header.get("FWHM"), positive=True)


def _seeing(path):
    """The FWHM in pixels a frame's header states (no pixels read), or None."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            # the image's header: extension SCI (.fits.fz), else the first image
            header = next((h.header for h in hdul if h.name == "SCI"), None)
            if header is None:
                header = next((h.header for h in hdul if h.is_image
                               and (h.header.get("NAXIS") or 0) >= 2), hdul[0].header)
            pixscale = lco.clean_float(header.get("PIXSCALE"), positive=True) or 1.0
            return _header_fwhm(header, pixscale)
    except Exception:  # noqa: BLE001 - an unreadable frame only loses its place in the order
        return None


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
    """Write an astropy table as ECSV through `pipekit.atomic` (never half-written)."""
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    return write_text_atomic(path, buf.getvalue())


def _reference_stars(frames, phot_dir, config, rejected):
    """Detect field stars once on a reference frame; return the star table (target first)."""
    from astropy.table import Table

    path = phot_dir / REFERENCE_STARS
    if path.exists():
        return Table.read(path, format="ascii.ecsv")
    from ..frames import read_frame

    wanted = config.photometry.reference_frame
    order = list(frames)
    if wanted:
        order = [_reference_frame(frames, config, phot_dir.parent)]
    else:
        # best seeing (BANZAI's L1FWHM) first, the middle frame when headers do not say
        scores = [(_seeing(f) or np.inf, abs(i - len(order) / 2)) for i, f in enumerate(order)]
        order = [order[i] for i in sorted(range(len(order)), key=lambda i: scores[i])]
    # Kept apart from ``rejected`` until no frame will do: a frame the target is off
    # may still be measured (its stars flagged) once another frame is the reference.
    target_off = {}
    for f in order:
        try:
            frame = read_frame(f)
        except FrameError as exc:
            rejected[f.name] = str(exc)
            continue
        info = frame.info
        if frame.wcs is None or info.problems:
            rejected[f.name] = f"{f}: " + ("; ".join(info.problems) or "no celestial WCS")
            continue
        try:
            _check_pixels(frame.data, f)
        except FrameError as exc:
            rejected[f.name] = str(exc)
            continue
        s = _settings(config, info.pixscale)
        tx, ty = frame.wcs.all_world2pix([config.target.ra], [config.target.dec], 0)
        ny, nx = frame.data.shape
        if not (0 <= tx[0] <= nx - 1 and 0 <= ty[0] <= ny - 1):
            # a WCS pointing elsewhere must not define the star list of the whole dataset
            log.warning("%s: target off this frame; not used as the reference frame", f.name)
            target_off[f.name] = (f"{f}: {_target_position(config)} falls outside this frame "
                                  f"(at pixel x={tx[0]:.0f}, y={ty[0]:.0f} of {nx} x {ny})")
            continue
        fwhm = _header_fwhm(frame.header, info.pixscale) or 2.0 / info.pixscale
        found = detect_stars(frame.data, fwhm, config.photometry.detection_sigma,
                             max_stars=4 * config.photometry.max_field_stars,
                             saturate=info.saturate, border=s["annulus_out"],
                             min_separation=s["radius"] + fwhm)
        ra, dec = frame.wcs.all_pix2world(found["x"], found["y"], 0)
        # the target itself (and stars blended with it) are not field stars
        far = np.hypot(found["x"] - tx[0], found["y"] - ty[0]) > s["annulus_in"]
        found, ra, dec = found[far], ra[far], dec[far]
        n = min(len(found), config.photometry.max_field_stars)
        stars = Table({
            "id": np.arange(n + 1),
            "ra": np.concatenate([[config.target.ra], ra[:n]]),
            "dec": np.concatenate([[config.target.dec], dec[:n]]),
            "x_ref": np.concatenate([tx, found["x"][:n]]),
            "y_ref": np.concatenate([ty, found["y"][:n]]),
            "flux_ref": np.concatenate([[np.nan], found["flux"][:n]]),
            "is_target": np.arange(n + 1) == 0,
        })
        stars.meta = {"reference_frame": f.name, "fwhm_px": float(fwhm),
                      "target": config.target.name,
                      "detection_sigma": float(config.photometry.detection_sigma)}
        write_ecsv(stars, path)
        log.info("%s: %d field stars detected on %s", phot_dir.parent, n, f.name)
        return stars
    others = {f.name: rejected[f.name] for f in order if f.name in rejected}
    rejected.update(target_off)
    if target_off:
        config_file = config.source or phot_dir.parent / "reduction_config.yaml"
        where = f"all {len(order)} frames" if len(order) > 1 else f"the frame {order[0].name}"
        if others:
            where = (f"all {len(target_off)} readable frames (the other "
                     f"{len(others)} rejected: {others})")
        raise PipekitError(f"{phot_dir.parent}: {_target_position(config)} falls outside "
                           f"{where}: check target.RA/target.Dec in {config_file}")
    raise PipekitError(f"{phot_dir.parent}: no usable reference frame among {len(frames)} frames "
                       f"(reasons: {rejected})")


def _reference_frame(frames, config, red_dir):
    """The frame ``photometry.reference_image`` names (by file name or stem), or ConfigError."""
    wanted = config.photometry.reference_frame
    stem = lco.frame_stem(wanted)
    for f in frames:  # the seed funpacks: 'x.fits' in its config names pipekit's 'x.fits.fz'
        if f.name == wanted or lco.frame_stem(f) == stem:
            return f
    raise ConfigError(f"{config.source or Path(red_dir) / 'reduction_config.yaml'}: key "
                      f"'photometry.reference_image' = {wanted!r} names no frame of the dataset "
                      f"{red_dir} ({len(frames)} frames at its top and in data/); expected the "
                      "file name of one of its frames, or none to choose automatically")


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
    return Path(red_dir) / "photometry" / (lco.frame_stem(frame_name) + ".ecsv")


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


def _target_position(config):
    return f"target at RA {config.target.ra:.5f} deg, Dec {config.target.dec:+.5f} deg"


def _check_pixels(data, path):
    finite = np.isfinite(data[::4, ::4]).mean()
    if finite < 0.5:
        raise FrameError(f"{path}: {100 * (1 - finite):.0f}% of the image is NaN or infinite; "
                         "expected a reduced image")


def measure_frame_file(path, stars, config, bright):
    """Read one frame file, place the stars through its WCS and measure them.

    Parameters
    ----------
    path : str or Path
        A frame file (any suffix in `pipekit.lco.FRAME_SUFFIXES`).
    stars : astropy.table.Table
        ``id, ra, dec`` of the stars (the target is ``id`` 0), as in ``reference_stars.ecsv``.
    config : pipekit.config.ReductionConfig
    bright : array_like of int
        Rows of ``stars`` to align the frame with (one common centroid shift).

    Returns
    -------
    astropy.table.Table
        `measure_frame`'s table with an ``id`` column first; ``meta`` holds the frame's
        facts (times, BJD_TDB, filter, gain, radii in pixels, shift).

    Raises
    ------
    FrameError
        When the frame cannot be read, has no celestial WCS, misses header keys or is
        mostly non-finite.
    """
    from ..frames import read_frame

    frame = read_frame(path)
    info = frame.info
    if frame.wcs is None:
        raise FrameError(f"{path}: no celestial WCS; cannot place the target and field stars")
    if info.problems:
        raise FrameError(f"{path}: " + "; ".join(info.problems))
    _check_pixels(frame.data, path)
    s = _settings(config, info.pixscale)
    x, y = frame.wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
    dx = dy = 0.0
    n_shift = 0
    if s["centroid"] > 0 and len(bright):
        bx, by = x[bright], y[bright]
        sky_b, _, _ = annulus_sky(frame.data, bx, by, s["annulus_in"], s["annulus_out"],
                                  s["sigma"])
        dx, dy, n_shift = centroid_shift(frame.data, bx, by, max(s["centroid"], s["radius"]),
                                         sky_b, max_shift=max(s["centroid"], s["radius"]))
        if n_shift:
            x, y = x + dx, y + dy
    table = measure_frame(frame.data, np.column_stack([x, y]), s["radius"], s["annulus_in"],
                          s["annulus_out"], info.gain, info.rdnoise, info.saturate,
                          sigma=s["sigma"], edge_margin=s["edge"])
    table.add_column(np.asarray(stars["id"]), name="id", index=0)
    mid = info.mid_time()
    bjd = bjd_tdb(mid, config.target.ra, config.target.dec, info.location())
    table.meta = {
        "frame": Path(path).name, "date_obs": info.date_obs, "exptime": info.exptime,
        "mjd_mid_utc": float(mid.mjd), "bjd_tdb": float(bjd.jd), "filter": info.filter,
        "instrument": info.instrument, "site": info.site, "pixscale": info.pixscale,
        "gain": info.gain, "rdnoise": info.rdnoise, "saturate": info.saturate,
        "fwhm_px": _header_fwhm(frame.header, info.pixscale),
        "radius_px": s["radius"], "annulus_in_px": s["annulus_in"],
        "annulus_out_px": s["annulus_out"], "shift_px": [dx, dy], "n_shift_stars": n_shift,
        "n_stars": len(stars),
    }
    return table


def measure_dataset(red_dir, config=None):
    """Measure every frame of a dataset that has no photometry on disk yet.

    Field stars are detected once on a reference frame (best seeing) and stored in
    ``<red_dir>/photometry/reference_stars.ecsv`` with their sky positions (the target is
    star 0); every frame places them through its own WCS, refined by a common centroid
    shift, and gets ``<red_dir>/photometry/<frame>.ecsv`` written atomically as soon as it
    is measured. A frame that cannot be measured (corrupt, no WCS, missing keys) is listed
    with its reason in ``rejected_frames.json`` and the others go on.

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
        _reference_frame(frames, config, red_dir)  # a wrong name fails even on a resumed run
    rejected = {}
    by_stem = {}
    for f in frames:  # x.fits and x.fits.fz are one exposure: measure it once
        first = by_stem.setdefault(lco.frame_stem(f), f)
        if first is not f:
            rejected[f.name] = (f"{f}: the same frame as {first.name} (one name, two frame "
                                f"suffixes); measured once, from {first.name}")
            log.warning("%s", rejected[f.name])
    frames = list(by_stem.values())
    todo = []
    for f in frames:
        if frame_photometry_path(red_dir, f).exists():
            result.skipped.append(f.name)
        else:
            todo.append(f)
    if todo:
        try:
            stars = _reference_stars(frames, phot_dir, config, rejected)
        except PipekitError:
            _write_rejected(phot_dir, rejected)
            raise
        result.reference_frame = stars.meta.get("reference_frame")
        result.n_stars = len(stars)
        flux_ref = np.asarray(stars["flux_ref"], float)
        order = np.argsort(np.where(np.isfinite(flux_ref), -flux_ref, np.inf))
        bright = order[: min(50, max(len(stars) - 1, 0))]
        bright = bright[bright != 0]
        for f in todo:
            try:
                table = measure_frame_file(f, stars, config, bright)
            except (FrameError, PipekitError) as exc:
                rejected[f.name] = str(exc)
                log.warning("rejected %s: %s", f.name, exc)
            except Exception as exc:  # one bad frame never stops the others (BANZAI's habit)
                rejected[f.name] = f"{f}: unexpected {type(exc).__name__} while measuring: {exc}"
                log.exception("rejected %s", f.name)
            else:
                write_ecsv(table, frame_photometry_path(red_dir, f))
                rejected.pop(f.name, None)
                result.measured.append(f.name)
    elif (phot_dir / REFERENCE_STARS).exists():
        from astropy.table import Table
        stars = Table.read(phot_dir / REFERENCE_STARS, format="ascii.ecsv")
        result.reference_frame = stars.meta.get("reference_frame")
        result.n_stars = len(stars)
    result.rejected = rejected
    _write_rejected(phot_dir, rejected)
    log.info("%s: %d frames measured, %d already done, %d rejected", red_dir,
             len(result.measured), len(result.skipped), len(rejected))
    return result


def _write_rejected(phot_dir, rejected):
    write_text_atomic(phot_dir / REJECTED_FRAMES, json.dumps(rejected, indent=1, sort_keys=True))
