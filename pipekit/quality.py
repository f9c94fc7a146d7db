"""The quality figure of a dataset (``quality.png``): what to check before trusting a night.

Per frame against time: seeing (FWHM), sky level, zero point (or relative transparency), the
alignment residual and the comparison stars used, with flagged points and rejected frames
marked and the reasons for rejection listed under the panels.
"""

import io
import logging
import os
import re
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic

__all__ = ["plot_quality", "without_paths", "QUALITY_PNG", "PNG_OPTIONS"]

log = logging.getLogger("pipekit.quality")

#: The figure's file name, beside ``lightcurve.png`` in the dataset folder.
QUALITY_PNG = "quality.png"
#: How pipekit's figures are encoded (PIL's PNG options): zlib level 1 writes a figure of
#: thousands of points several times faster than the default 6, for files about a third
#: larger.
PNG_OPTIONS = {"compress_level": 1}

#: (column, axis label) of each panel, top to bottom; the zero point's label depends on
#: the calibration.
_PANELS = (
    ("fwhm_px", "FWHM (px)"),
    ("sky_level", "sky (ADU/px)"),
    ("frame_zp", None),
    ("align_residual_px", "alignment\nresidual (px)"),
    ("n_comparison", "comparison\nstars used"),
)
_MAX_REASONS = 8


_ABSOLUTE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\:'\"<>]+[/\\])+")


def without_paths(text, root):
    """``text`` without absolute paths: those inside ``root`` become relative, others go
    (down to the file name), so a message can be shown or published.

    Examples
    --------
    >>> without_paths("/data/red/T/ip/x.fits: no WCS; see /home/u/y.yaml", "/data/red")
    'T/ip/x.fits: no WCS; see y.yaml'
    """
    text = str(text)
    for prefix in sorted({str(Path(root).resolve()), str(Path(root).absolute()), str(root)},
                         key=len, reverse=True):
        text = text.replace(prefix + os.sep, "").replace(prefix, ".")
    return _ABSOLUTE.sub("", text)


def _short(text, width=135):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_quality(lc, path, red_dir=None):
    """Write the quality figure of light curve ``lc`` to ``path`` (PNG, atomically).

    Parameters
    ----------
    lc : pipekit.lightcurve.LightCurve
        Its table holds the per-frame columns (``fwhm_px``, ``sky_level``, ``frame_zp``,
        ``align_residual_px``, ``n_comparison``; a missing one leaves its panel empty) and
        its metadata the rejected frames (``rejected_frames``) and their mid-exposure MJD
        (``rejected_frame_mjd``).
    path : str or Path
    red_dir : str or Path, optional
        The dataset folder: paths inside it are shown relative in the reasons (default: the
        folder of ``path``).

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    red_dir = Path(path).parent if red_dir is None else Path(red_dir)
    t = lc.table
    meta = t.meta
    mjd = np.asarray(t["mjd_utc"], float)
    flagged = np.asarray(t["flags"]) != 0
    rejected = dict(meta.get("rejected_frames") or lc.rejected or {})
    rej_mjd = {k: v for k, v in (meta.get("rejected_frame_mjd") or {}).items()
               if v is not None and k in rejected}
    times = np.concatenate([mjd, np.array(list(rej_mjd.values()), float)])
    offset = np.floor(np.nanmin(times)) if times.size and np.isfinite(times).any() else 0.0
    cal = meta.get("calibration") or {}
    calibrated = cal.get("source", "instrumental") != "instrumental"
    n_text = min(len(rejected), _MAX_REASONS) + (len(rejected) > _MAX_REASONS) + bool(rejected)
    height = 8.2 + 0.14 * n_text
    fig = Figure(figsize=(8, height), dpi=90)
    FigureCanvasAgg(fig)
    bottom = (0.6 + 0.14 * n_text) / height
    axes = fig.subplots(len(_PANELS), 1, sharex=True,
                        gridspec_kw={"hspace": 0.08, "bottom": bottom + 0.05, "top": 0.96,
                                     "left": 0.13, "right": 0.97})
    for ax, (col, label) in zip(axes, _PANELS):
        if col == "frame_zp":
            label = ("zero point (mag of\n1 ADU/s in aperture)" if calibrated
                     else "relative zero point\n(instrumental)")
        ax.set_ylabel(label, fontsize="small")
        if col not in t.colnames:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center",
                    color="0.5")
            continue
        y = np.asarray(t[col], float)
        ax.plot(mjd[~flagged] - offset, y[~flagged], "o", ms=3, color="k")
        if flagged.any():
            ax.plot(mjd[flagged] - offset, y[flagged], "x", ms=5, color="tab:orange",
                    label=f"flagged point ({int(flagged.sum())})")
        if col == "frame_zp" and "l1zp" in t.colnames:
            l1 = np.asarray(t["l1zp"], float)
            ok = np.isfinite(l1)
            if ok.any():
                ax.errorbar(mjd[ok] - offset, l1[ok], yerr=np.asarray(t["l1zperr"], float)[ok],
                            fmt="s", ms=3, mfc="none", color="tab:blue", elinewidth=0.7,
                            label="BANZAI L1ZP")
        if rej_mjd:  # one artist for all of them: a line each costs a unit check each
            ax.vlines(np.array(list(rej_mjd.values()), float) - offset, 0, 1,
                      transform=ax.get_xaxis_transform(), color="tab:red", lw=0.8, ls="--",
                      label="rejected frame" if ax is axes[0] else None)
        ax.tick_params(labelsize="small")
        if col == "n_comparison":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="x-small")
    axes[-1].set_xlabel(f"MJD (UTC) - {offset:.0f}")
    zp = cal.get("zeropoint")
    zp_text = (f"zero point {zp:.3f} ± {cal.get('zp_err'):.3f} ({cal.get('source')})"
               if calibrated and zp is not None else "instrumental magnitudes")
    axes[0].set_title(f"{lc.target}  {lc.filter}: {len(t)} points, {int(flagged.sum())} "
                      f"flagged, {len(rejected)} frames rejected; {zp_text}", fontsize="small")
    lines = []
    for name, reason in list(sorted(rejected.items()))[:_MAX_REASONS]:
        when = rej_mjd.get(name)
        at = f"MJD {when:.4f}" if when is not None else "time unknown"
        reason = without_paths(reason, red_dir).replace(f"{name}: ", "")
        lines.append(_short(f"{name} ({at}): {reason}"))
    if len(rejected) > _MAX_REASONS:
        lines.append(f"... and {len(rejected) - _MAX_REASONS} more (see the ECSV's "
                     "rejected_frames)")
    if lines:
        fig.text(0.02, bottom - 0.01, "rejected frames:\n" + "\n".join(lines), fontsize=6.5, va="top", family="monospace",
                 color="tab:red")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", pil_kwargs=PNG_OPTIONS)
    return write_bytes_atomic(path, buf.getvalue())
