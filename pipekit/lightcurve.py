"""Light curves from a dataset's per-frame photometry: the ECSV table, the TOM CSV, the plot.

`build_lightcurve` normalises the stored photometry with the field-star ensemble;
`write_lightcurve` writes ``<target>_<filter>_lc.ecsv`` (with its provenance),
``<target>_<filter>_lc.csv`` for the TOM Toolkit and ``lightcurve.png``, all atomically.
"""

import csv
import io
import dataclasses
import json
import os
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import lco
from .atomic import write_bytes_atomic, write_text_atomic
from .calibration import INSTRUMENTAL_ZEROPOINT, calibrate, frame_facts
from .errors import PipekitError
from .photometry import (FLAGS, NON_POSITIVE, OFF_FRAME, REFERENCE_STARS, REJECTED_FRAMES,
                         load_dataset_config, normalise_ensemble, write_ecsv)
from .photometry.dataset import rejected_frame_times
from .photometry.store import FrameSummary, plain, read_frame_ecsv
from .secrets import scrub_value

__all__ = ["LightCurve", "build_lightcurve", "write_lightcurve", "tom_csv_text",
           "plot_lightcurve", "lightcurve_paths", "DEFAULT_ZEROPOINT", "magnitude_system"]

log = logging.getLogger("pipekit.lightcurve")

#: Quality columns of the light-curve ECSV: (column, per-frame meta key, description).
_QUALITY = (
    ("align_residual_px", "align_residual_px", "RMS of matched stars about the alignment fit"),
    ("align_n_matched", "align_n_matched", "stars matched to the reference star pattern"),
    ("align_offset_px", "align_offset_px", "header WCS error absorbed by the alignment (px)"),
    ("sky_level", "sky_level", "median sky of the frame (ADU per pixel)"),
    ("sky_gradient", "sky_gradient", "range of the frame's background map (ADU)"),
    ("fwhm_px", "fwhm_px", "PSF FWHM (pixels)"),
    ("cr_hits", "cr_hits_target", "cosmic-ray pixels in the target's aperture"),
)

#: Instrumental magnitudes are ``DEFAULT_ZEROPOINT - 2.5 log10(normalised flux)``.
DEFAULT_ZEROPOINT = INSTRUMENTAL_ZEROPOINT


@dataclass
class LightCurve:
    """A target's light curve in one filter, with what it was made from.

    Attributes
    ----------
    table : astropy.table.Table
        ``time`` (BJD_TDB), ``mjd_utc`` (mid-exposure), ``flux``, ``flux_err`` (normalised
        ADU), ``mag``, ``mag_err`` (instrumental), ``frame``, ``flags``, then the frame's
        quality figures (``align_residual_px``, ``align_n_matched``, ``align_offset_px``,
        ``sky_level``, ``sky_gradient``, ``fwhm_px``, ``cr_hits``); sorted by time. The
        provenance is in ``table.meta``.
    target, filter : str
    rejected : dict
        Frame name -> reason for every frame left out.
    """

    table: object
    target: str
    filter: str
    rejected: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.table)


def lightcurve_paths(red_dir, target, filter):
    """The three output paths: ``(ecsv, csv, png)`` inside ``red_dir``.

    Target and filter become file-name parts by `pipekit.lco.slug`, the one name-to-file
    rule: ``lightcurve_paths(d, "OGLE-2026-BLG-0034", "ip")[0]`` is
    ``d / "OGLE-2026-BLG-0034_ip_lc.ecsv"``.
    """
    red_dir = Path(red_dir)
    stem = f"{lco.slug(target, default='target')}_{lco.slug(filter, default='target')}_lc"
    return red_dir / f"{stem}.ecsv", red_dir / f"{stem}.csv", red_dir / "lightcurve.png"


def _config_dict(config):
    """The validated reduction config (every setting, defaults included) as plain values.

    Keys the validator did not know (kept in ``extra`` fields) are left out: whatever
    was typed there, a password included, never reaches the light curve's provenance.
    """
    if dataclasses.is_dataclass(config):
        return scrub_value(plain(_known_settings(config)))
    return {}


def _known_settings(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _known_settings(getattr(value, f.name))
                for f in dataclasses.fields(value) if not f.metadata.get("extra")}
    if isinstance(value, dict):
        return {k: _known_settings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_known_settings(v) for v in value)
    return value


def build_lightcurve(red_dir, config=None, *, zeropoint=None):
    """Normalise a dataset's stored photometry into the target's light curve.

    Parameters
    ----------
    red_dir : str or Path
        The dataset folder; reads ``photometry/*.ecsv`` written by
        :func:`pipekit.photometry.measure_dataset`.
    config : pipekit.config.ReductionConfig, optional
        The dataset's config, already loaded (`pipekit.config.load_reduction_config`);
        None loads ``<red_dir>/reduction_config.yaml``.
    zeropoint : float, optional
        Force instrumental magnitudes with this zero point; None (the default) calibrates
        them (`pipekit.calibration.calibrate`: BANZAI's ``L1ZP``, else the catalogue named in
        the config, else instrumental with zero point `DEFAULT_ZEROPOINT`).

    Returns
    -------
    LightCurve

    Raises
    ------
    PipekitError
        When there is no photometry at all, or no frame survives.
    """
    from astropy.table import Table

    from . import __version__

    red_dir = Path(red_dir)
    config = load_dataset_config(red_dir, config)
    phot_dir = red_dir / "photometry"
    ref_path = phot_dir / REFERENCE_STARS
    if not ref_path.exists():
        raise PipekitError(f"{ref_path}: no reference star list; run the photometry step first")
    stars = read_frame_ecsv(ref_path)
    rejected = {}
    rej_path = phot_dir / REJECTED_FRAMES
    if rej_path.exists():
        rejected.update(json.loads(rej_path.read_text(encoding="utf-8")))
    # the summary holds what every per-frame file gave: only files it does not know are read
    summary = FrameSummary(phot_dir)
    # names sorted as text: no Path (nor directory entry object) per file
    names = [name for name in os.listdir(phot_dir) if name.endswith(".ecsv")
             and name[0] != "." and name != REFERENCE_STARS]
    names.sort()
    rows, failures = summary.refresh(names)
    measured = rows
    if failures:
        path, exc = failures[0]
        raise PipekitError(f"{path}: unreadable per-frame photometry ({exc}); delete it to "
                           "measure the frame again")
    ids = np.asarray(stars["id"])
    same = np.flatnonzero(rows.lengths == len(stars))
    matches = np.zeros(len(rows), bool)
    if len(same):
        matches[same] = (rows.take(same).stars("id") == ids).all(axis=1)
    mismatched = np.flatnonzero(~matches)
    frame_of, file_of = (rows.meta("frame"), rows.names) if len(mismatched) else ([], [])
    for i in mismatched:
        frame = frame_of[i] or Path(file_of[i]).stem
        rejected[frame] = (f"{phot_dir / file_of[i]}: measured with a different star list "
                           f"than {ref_path}; delete it to measure the frame again")
    rows = rows.take(np.flatnonzero(matches))
    summary.save()
    if not len(rows):
        raise PipekitError(f"{phot_dir}: no per-frame photometry to build a light curve from "
                           f"(rejected frames: {rejected or 'none'})")
    rows = rows.take(np.argsort(rows.numbers("bjd_tdb"), kind="stable"))
    F = rows.stars("flux").astype(float)
    E = rows.stars("flux_err").astype(float)
    G = rows.stars("flags").astype(int)
    min_stars = int(config.photometry.min_comparison_stars)
    ens = normalise_ensemble(F, E, G, exclude=(0,), min_stars=min_stars)
    keep = ~(G[:, 0] & OFF_FRAME).astype(bool) & np.isfinite(ens.zero_point)
    dropped = np.flatnonzero(~keep)
    for i, frame in zip(dropped, rows.take(dropped).meta("frame")):
        if G[i, 0] & OFF_FRAME:
            rejected[frame] = (f"{red_dir}: frame {frame}: target outside the frame (or the "
                               "WCS cannot place it)")
        else:
            rejected[frame] = (f"{red_dir}: frame {frame}: only {ens.n_comparison[i]} usable "
                               f"comparison stars (photometry.min_comparison_stars = "
                               f"{min_stars})")
    if not keep.any():
        raise PipekitError(f"{red_dir}: every measured frame was rejected: {rejected}")
    idx = np.flatnonzero(keep)
    flux = ens.flux[idx, 0]
    err = ens.flux_err[idx, 0]
    flags = G[idx, 0].copy()
    flags[~(flux > 0)] |= NON_POSITIVE
    kept = rows.take(idx)
    cal = _calibration(red_dir, config, kept, ens, idx, stars, zeropoint)
    zeropoint = cal.zeropoint
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(flux > 0, zeropoint - 2.5 * np.log10(flux), np.nan)
        mag_err = np.where(flux > 0, 2.5 / np.log(10) * err / flux, np.nan)
    filters = np.unique(kept.texts("filter")).tolist()
    filt = filters[0] if len(filters) == 1 else "+".join(filters)
    table = Table({
        "time": kept.numbers("bjd_tdb"),
        "mjd_utc": kept.numbers("mjd_mid_utc"),
        "flux": flux, "flux_err": err, "mag": mag, "mag_err": mag_err,
        "frame": kept.texts("frame"), "flags": flags.astype(np.int32),
    })
    # per-frame quality figures (NaN for files written before pipekit recorded them)
    for col, key, what in _QUALITY:
        table[col] = kept.numbers(key)
        table[col].description = what
    table["time"].unit = "d"
    table["time"].description = "mid-exposure BJD_TDB of the target (JD, TDB, barycentric)"
    table["mjd_utc"].unit = "d"
    table["mjd_utc"].description = "mid-exposure MJD (UTC) at the observatory"
    table["flux"].description = "target flux normalised by the comparison-star ensemble (ADU)"
    table["flux_err"].description = "1-sigma error of flux, ensemble uncertainty included"
    table["mag"].unit = "mag"
    table["mag"].description = _mag_description(cal)
    table["mag_err"].description = "1-sigma error of mag (the zero point's error zp_err apart)"
    _add_frame_columns(table, cal, ens, idx)
    table["mag_err"].unit = "mag"
    table["flags"].description = "bit flags: " + ", ".join(f"{b}={n}" for b, n in FLAGS.items())
    comp = np.flatnonzero(ens.comparison)
    table.meta = plain({
        "pipekit_version": __version__,
        "target": config.target.name, "ra_deg": config.target.ra, "dec_deg": config.target.dec,
        "filter": filt,
        "time_scale": "tdb", "time_reference": "solar system barycentre",
        "time_format": "jd", "time_position": "mid-exposure (DATE-OBS + EXPTIME / 2)",
        "reduction_config": _config_dict(config),
        "aperture_radius_px": float(np.median(kept.numbers("radius_px"))),
        "annulus_px": [float(kept.first("annulus_in_px")),
                       float(kept.first("annulus_out_px"))],
        "reference_frame": stars.meta.get("reference_frame"),
        "reference_reason": stars.meta.get("reference_reason"),
        "target_position": stars.meta.get("target_position"),
        "settings_hash": kept.first("settings_hash"),
        "zeropoint": zeropoint,
        "zp_err": None if not np.isfinite(cal.zp_err) else cal.zp_err,
        "mag_system": "calibrated" if cal.calibrated else "instrumental",
        "calibration": {"source": cal.source, "zeropoint": zeropoint,
                        "zp_err": None if not np.isfinite(cal.zp_err) else cal.zp_err,
                        **cal.details},
        "rejected_frame_mjd": _rejected_frame_mjd(red_dir, measured, rejected),
        "comparison_stars": [{"id": int(stars["id"][j]), "ra": float(stars["ra"][j]),
                              "dec": float(stars["dec"][j]),
                              "reference_flux": float(ens.reference_flux[j]),
                              "chi2": float(ens.chi2[j])} for j in comp],
        "rejected_frames": dict(sorted(rejected.items())),
        "flags": {int(b): n for b, n in FLAGS.items()},
    })
    log.info("%s: light curve of %s in %s: %d points (%d flagged), %d frames rejected",
             red_dir, config.target.name, filt, len(table), int((flags != 0).sum()), len(rejected))
    return LightCurve(table=table, target=config.target.name, filter=filt, rejected=rejected)


def _rejected_frame_mjd(red_dir, measured, rejected):
    """Frame -> mid-exposure MJD (UTC) of the ``rejected`` frames, sorted by name: from their
    photometry (frames the light curve rejects), else as the photometry step recorded it
    when it rejected them, else from their headers (`frame_facts`; frames whose file is
    gone are left out)."""
    found = {}
    if rejected:
        frames = measured.texts("frame")
        hit = np.flatnonzero(np.isin(frames, list(rejected)))
        found.update((name, mjd) for name, mjd in zip(
            frames[hit].tolist(), measured.take(hit).numbers("mjd_mid_utc").tolist())
            if np.isfinite(mjd))
        found.update((name, mjd) for name, mjd in rejected_frame_times(red_dir).items()
                     if name in rejected and name not in found)
        missing = sorted(set(rejected) - set(found))
        if missing:
            found.update((k, v.get("mjd_mid")) for k, v in frame_facts(red_dir, missing).items())
    return dict(sorted(found.items()))


def _calibration(red_dir, config, frames, ens, idx, stars, zeropoint):
    if zeropoint is None:
        return calibrate(red_dir, config, frames, ens, idx, stars)
    from .calibration import Calibration
    nan = np.full(len(idx), np.nan)
    exptime = frames.numbers("exptime")
    return Calibration("instrumental", float(zeropoint), np.nan,
                       zeropoint + 2.5 * np.log10(ens.zero_point[idx] / exptime), nan, nan,
                       {"not_used": {"all": "build_lightcurve(zeropoint=...) given"}})


def _mag_description(cal):
    if not cal.calibrated:
        return f"instrumental magnitude, {cal.zeropoint} - 2.5 log10(flux); NOT calibrated"
    return (f"calibrated magnitude ({cal.source}), zeropoint - 2.5 log10(flux) with zeropoint "
            f"{cal.zeropoint:.4f} +- {cal.zp_err:.4f} (zp_err in the metadata)")


def _add_frame_columns(table, cal, ens, idx):
    """Per-frame calibration figures for the quality figure."""
    for name, values, what in (
            ("frame_zp", cal.frame_zp, "zero point of the frame's counts per second implied "
             "by the light curve's (" + ("relative: instrumental" if not cal.calibrated else
                                         cal.source) + ")"),
            ("l1zp", cal.l1zp, "BANZAI's L1ZP of the frame (NaN: missing or failed)"),
            ("l1zperr", cal.l1zperr, "BANZAI's L1ZPERR of the frame"),
            ("n_comparison", ens.n_comparison[idx], "comparison stars used in the frame")):
        table[name] = values
        table[name].description = what


def magnitude_system(lc):
    """``"calibrated (banzai)"``, ``"calibrated (catalogue)"`` or ``"instrumental"``."""
    cal = lc.table.meta.get("calibration") or {}
    source = cal.get("source", "instrumental")
    return "instrumental" if source == "instrumental" else f"calibrated ({source})"


def tom_csv_text(lc):
    """The TOM Toolkit photometry CSV: ``time`` (MJD UTC), ``filter``, ``magnitude``, ``error``,
    ``magnitude_system``.

    ``magnitude_system`` says whether the magnitudes are calibrated (and from what) or
    instrumental. Only unflagged points with a finite magnitude go to the TOM: saturated,
    edge, sky-poor or non-positive points stay in the ECSV, marked, but are not published.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["time", "filter", "magnitude", "error", "magnitude_system"])
    system = magnitude_system(lc)
    t = lc.table
    mjd = np.asarray(t["mjd_utc"], float)
    mag = np.asarray(t["mag"], float)
    err = np.asarray(t["mag_err"], float)
    good = (np.asarray(t["flags"]) == 0) & np.isfinite(mag) & np.isfinite(err)
    # the words quoted by the csv module once, the numbers formatted row by row
    line = "{:.6f}," + _csv_field(lc.filter) + ",{:.5f},{:.5f}," + _csv_field(system) + "\n"
    buf.writelines(map(line.format, mjd[good].tolist(), mag[good].tolist(),
                       err[good].tolist()))
    return buf.getvalue()


def _csv_field(text):
    """``text`` as a field of a CSV row (quoted where the csv module quotes it in a row of
    several fields ending in a newline), braces escaped for `str.format`."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([text, ""])
    return out.getvalue()[:-2].replace("{", "{{").replace("}", "}}")   # without ",\n"


def plot_lightcurve(lc, path):
    """Plot magnitudes against BJD_TDB with error bars; flagged points marked. Writes a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .quality import PNG_OPTIONS

    t = lc.table
    time = np.asarray(t["time"], float)
    offset = np.floor(time.min()) if len(time) else 0.0
    mag = np.asarray(t["mag"], float)
    err = np.asarray(t["mag_err"], float)
    flagged = np.asarray(t["flags"]) != 0
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    good = ~flagged & np.isfinite(mag)
    ax.errorbar(time[good] - offset, mag[good], yerr=err[good], fmt="o", ms=3, color="k",
                ecolor="0.5", elinewidth=0.8, label=f"{lc.filter} ({good.sum()})")
    bad = flagged & np.isfinite(mag)
    if bad.any():
        ax.errorbar(time[bad] - offset, mag[bad], yerr=err[bad], fmt="x", ms=5, color="tab:red",
                    ecolor="tab:red", elinewidth=0.8, label=f"flagged ({bad.sum()})")
    ax.invert_yaxis()
    ax.set_xlabel(f"BJD_TDB - {offset:.0f}")
    ax.set_ylabel(magnitude_system(lc).replace("(", "magnitude (").replace(
        "instrumental", "instrumental magnitude"))
    ax.set_title(f"{lc.target}  {lc.filter}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs=PNG_OPTIONS)
    return write_bytes_atomic(path, buf.getvalue())


def write_lightcurve(lc, red_dir):
    """Write the ECSV, the TOM CSV, the plot and the quality figure into ``red_dir``, each
    atomically.

    Returns
    -------
    dict
        ``{"ecsv": Path, "csv": Path, "png": Path, "quality": Path}``.
    """
    from .quality import QUALITY_PNG, plot_quality

    ecsv, csv_path, png = lightcurve_paths(red_dir, lc.target, lc.filter)
    write_ecsv(lc.table, ecsv)
    write_text_atomic(csv_path, tom_csv_text(lc))
    plot_lightcurve(lc, png)
    quality = plot_quality(lc, Path(red_dir) / QUALITY_PNG)
    return {"ecsv": ecsv, "csv": csv_path, "png": png, "quality": quality}
