"""One light curve per target across instruments and filters: a combined table and plot.

Every dataset of a target (``<target>/<instrument class>/<filter>/``) contributes its light
curve; each instrument and filter gets its own colour, calibrated magnitudes where the
dataset has them, instrumental ones marked as such.
"""

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import write_bytes_atomic, write_text_atomic

__all__ = ["DatasetCurve", "read_dataset_curve", "combine_curves", "plot_combined",
           "write_combined"]

log = logging.getLogger("pipekit.combined")


@dataclass
class DatasetCurve:
    """One dataset's light curve as the report uses it.

    Attributes
    ----------
    red_dir : Path
    label : str
        ``<instrument class> <filter>`` (the dataset's folders).
    target : str
        The target's name from the light curve (else the folder's).
    table : astropy.table.Table or None
        The light-curve ECSV, None when there is none yet.
    ecsv : Path or None
    calibration : dict
        ``source``, ``zeropoint``, ``zp_err`` ... from the ECSV's metadata.
    """

    red_dir: Path
    label: str
    target: str
    table: object = None
    ecsv: Path | None = None
    calibration: dict = field(default_factory=dict)

    @property
    def calibrated(self):
        """True when the magnitudes are calibrated (not instrumental)."""
        return self.calibration.get("source", "instrumental") != "instrumental"


def read_dataset_curve(red_dir, target=None):
    """The dataset's light curve (its newest ``*_lc.ecsv``), or a `DatasetCurve` without one."""
    from astropy.table import Table

    red_dir = Path(red_dir)
    label = f"{red_dir.parent.name} {red_dir.name}"
    found = sorted((p for p in red_dir.glob("*_lc.ecsv") if not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime)
    curve = DatasetCurve(red_dir=red_dir, label=label, target=target or red_dir.parent.parent.name)
    if not found:
        return curve
    curve.ecsv = found[-1]
    curve.table = Table.read(curve.ecsv, format="ascii.ecsv")
    curve.target = target or str(curve.table.meta.get("target") or curve.target)
    curve.calibration = dict(curve.table.meta.get("calibration") or {"source": "instrumental"})
    return curve


def combine_curves(curves):
    """All points of ``curves`` in one table sorted by time, with the dataset of each.

    Columns: ``time`` (BJD_TDB), ``mjd_utc``, ``mag``, ``mag_err``, ``zp_err`` (the dataset's
    zero-point error, NaN for instrumental), ``magnitude_system``, ``dataset``, ``frame``,
    ``flags``.
    """
    from astropy.table import Table, vstack

    parts = []
    for c in curves:
        if c.table is None or len(c.table) == 0:
            continue
        t = c.table
        zp_err = c.calibration.get("zp_err")
        system = (f"calibrated ({c.calibration.get('source')})" if c.calibrated
                  else "instrumental")
        parts.append(Table({
            "time": np.asarray(t["time"], float), "mjd_utc": np.asarray(t["mjd_utc"], float),
            "mag": np.asarray(t["mag"], float), "mag_err": np.asarray(t["mag_err"], float),
            "zp_err": np.full(len(t), np.nan if zp_err is None else float(zp_err)),
            "magnitude_system": [system] * len(t), "dataset": [c.label] * len(t),
            "frame": [str(f) for f in t["frame"]], "flags": np.asarray(t["flags"], int)}))
    if not parts:
        return Table(names=("time", "mjd_utc", "mag", "mag_err", "zp_err", "magnitude_system",
                            "dataset", "frame", "flags"),
                     dtype=(float, float, float, float, float, str, str, str, int))
    table = vstack(parts, metadata_conflicts="silent")
    table.sort("time")
    table["time"].description = "mid-exposure BJD_TDB"
    table["mjd_utc"].description = "mid-exposure MJD (UTC)"
    table["zp_err"].description = "the dataset's zero-point error, common to its points"
    return table


def plot_combined(target, curves, path):
    """Plot every dataset of ``target`` in its own colour; writes a PNG atomically.

    Calibrated datasets share the top panel; instrumental ones (an arbitrary zero point each)
    get a panel of their own below, labelled so, when there are any.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    shown = [(c, colours[k % len(colours)]) for k, c in enumerate(curves)
             if c.table is not None and len(c.table)]
    groups = [g for g in ([x for x in shown if x[0].calibrated],
                          [x for x in shown if not x[0].calibrated]) if g] or [[]]
    fig = Figure(figsize=(8, 4.5 if len(groups) == 1 else 7), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    times = [np.asarray(c.table["time"], float) for c, _ in shown]
    offset = np.floor(min(float(np.nanmin(t)) for t in times)) if times else 0.0
    for ax, group in zip(axes, groups):
        for c, colour in group:
            t = c.table
            good = (np.asarray(t["flags"]) == 0) & np.isfinite(np.asarray(t["mag"], float))
            label = c.label
            zp_err = c.calibration.get("zp_err")
            if c.calibrated and zp_err is not None:
                label += f" (zero point ± {zp_err:.3f})"
            ax.errorbar(np.asarray(t["time"], float)[good] - offset,
                        np.asarray(t["mag"], float)[good],
                        yerr=np.asarray(t["mag_err"], float)[good], fmt="o", ms=3,
                        color=colour, mfc=colour if c.calibrated else "none", elinewidth=0.7,
                        label=f"{label}: {int(good.sum())}")
        calibrated = bool(group) and group[0][0].calibrated
        ax.invert_yaxis()
        ax.set_ylabel("calibrated magnitude" if calibrated or not group
                      else "instrumental magnitude\n(arbitrary zero point)")
        if group:
            ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel(f"BJD_TDB - {offset:.0f}")
    axes[0].set_title(f"{target}: {sum(len(c.table) for c, _ in shown)} points from "
                      f"{len(shown)} datasets", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def write_combined(target, curves, folder, stem):
    """Write ``<stem>.png``, ``<stem>.ecsv`` and ``<stem>.csv`` into ``folder``.

    Returns
    -------
    dict
        ``{"png", "ecsv", "csv": Path, "table": astropy.table.Table}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = combine_curves(curves)
    table.meta = {"target": str(target),
                  "datasets": {c.label: {"calibration": c.calibration.get("source"),
                                         "zeropoint": c.calibration.get("zeropoint"),
                                         "zp_err": c.calibration.get("zp_err")}
                               for c in curves if c.table is not None}}
    buf = io.StringIO()
    table.write(buf, format="ascii.ecsv")
    ecsv = write_text_atomic(folder / f"{stem}.ecsv", buf.getvalue())
    buf = io.StringIO()
    table.write(buf, format="ascii.csv")
    csv_path = write_text_atomic(folder / f"{stem}.csv", buf.getvalue())
    png = plot_combined(target, curves, folder / f"{stem}.png")
    return {"png": png, "ecsv": ecsv, "csv": csv_path, "table": table}
