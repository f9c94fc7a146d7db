"""The report page of a reduction folder: a static ``index.html`` that opens from disk.

One row per dataset (status, last frame, points, rejected frames with reasons, last error,
links to its light curve, quality figure and files) and one section per target with its
combined light curve (`pipekit.combined`). Safe to publish: every link is relative, no
absolute path appears, and every name is escaped (target names come from the archive).
"""

import html
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .atomic import write_text_atomic
from .checkpoint import CHECKPOINT_NAME
from .combined import read_dataset_curve, write_combined
from .lco import distinct_slug, slug
from .quality import without_paths as _public
from .worker import last_line

__all__ = ["write_report", "refresh_report", "DatasetRow", "REPORT_HTML", "REPORT_DIR"]

log = logging.getLogger("pipekit.report")

#: The page, at the top of the reduction folder.
REPORT_HTML = "index.html"
#: The page's own files (combined plots and tables), inside the reduction folder. A leading
#: underscore: no target's folder can be called so (`pipekit.lco.slug`), and dataset
#: searches pass it by.
REPORT_DIR = "_report"
_ROWS_SHOWN = 60


@dataclass
class DatasetRow:
    """What the page says about one dataset."""

    curve: object
    status: str = "not run"
    last_error: str = ""
    rejected: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)


def _esc(value):
    return html.escape(str(value), quote=True)


def _href(path, root):
    """A relative, URL-quoted link from the page (in ``root``) to ``path``."""
    rel = os.path.relpath(Path(path), root).replace(os.sep, "/")
    return _esc(quote(rel))


def _status(red_dir):
    """(status, last error) of the dataset's last run, from its checkpoint."""
    from .datasets import is_dataset_locked
    from .pipeline import load

    if is_dataset_locked(red_dir):
        return "running", ""
    checkpoint = Path(red_dir) / "logs" / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return "not run", ""
    try:
        pipe = load(checkpoint)
    except Exception as exc:  # a checkpoint from another version: say so, go on
        return "unknown", f"checkpoint unreadable: {type(exc).__name__}: {exc}"
    error = ""
    if pipe.failed_step:
        error = f"{pipe.failed_step}: {last_line(pipe.step(pipe.failed_step).error) or 'failed'}"
    return str(pipe.status), error


def _dataset_row(red_dir, root):
    from .config import load_reduction_config

    target = None
    error = ""
    try:
        target = load_reduction_config(red_dir / "reduction_config.yaml").target.name
    except Exception as exc:  # the row says why; the page is still written
        error = f"reduction_config.yaml: {exc}"
    curve = read_dataset_curve(red_dir, target)
    status, last_error = _status(red_dir)
    row = DatasetRow(curve=curve, status=status, last_error=last_error or error)
    if curve.table is not None:
        row.rejected = dict(curve.table.meta.get("rejected_frames") or {})
        row.files["ECSV"] = curve.ecsv
        csv = curve.ecsv.with_suffix(".csv")  # written beside it (lightcurve_paths)
        if csv.is_file():
            row.files["CSV"] = csv
    for name in ("lightcurve.png", "quality.png"):
        if (red_dir / name).is_file():
            row.files[name] = red_dir / name
    if (red_dir / "logs" / "pipeline.log").is_file():
        row.files["log"] = red_dir / "logs" / "pipeline.log"
    return row


def _last_time(table):
    if table is None or len(table) == 0:
        return ""
    from astropy.time import Time
    mjd = float(np.nanmax(np.asarray(table["mjd_utc"], float)))
    return Time(mjd, format="mjd", scale="utc").strftime("%Y-%m-%d %H:%M")


def _calibration_text(curve):
    cal = curve.calibration
    if curve.table is None:
        return ""
    if not curve.calibrated:
        return "instrumental"
    return f"{cal.get('source')}: zp {cal.get('zeropoint'):.3f} ± {cal.get('zp_err'):.3f}"


def _dataset_table(rows, root):
    head = ("dataset", "target", "status", "last frame (UTC)", "points", "magnitudes",
            "rejected frames", "last error", "files")
    out = ["<table class='datasets'>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for row in rows:
        c = row.curve
        rel = os.path.relpath(c.red_dir, root).replace(os.sep, "/")
        rejected = ""
        if row.rejected:
            items = "".join(f"<li><code>{_esc(k)}</code>: {_esc(_public(v, root))}</li>"
                            for k, v in sorted(row.rejected.items()))
            rejected = (f"<details><summary>{len(row.rejected)}</summary><ul>{items}</ul>"
                        "</details>")
        else:
            rejected = "0" if c.table is not None else ""
        links = " ".join(f"<a href='{_href(p, root)}'>{_esc(name)}</a>"
                         for name, p in row.files.items())
        thumbs = "".join(f"<a href='{_href(row.files[n], root)}'><img class='thumb' "
                         f"src='{_href(row.files[n], root)}' alt='{_esc(n)} of {_esc(rel)}'>"
                         "</a>" for n in ("lightcurve.png", "quality.png") if n in row.files)
        cells = (_esc(rel), _esc(c.target), f"<span class='{_esc(row.status)}'>"
                 f"{_esc(row.status)}</span>", _esc(_last_time(c.table)),
                 _esc(len(c.table) if c.table is not None else 0), _esc(_calibration_text(c)),
                 rejected, _esc(_public(row.last_error, root)), links + "<br>" + thumbs)
        out.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _points_table(table):
    cols = ("mjd_utc", "mag", "mag_err", "zp_err", "magnitude_system", "dataset", "frame",
            "flags")
    shown = table[-_ROWS_SHOWN:] if len(table) > _ROWS_SHOWN else table
    out = ["<table class='points'>", "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for r in shown:
        cells = [f"{r['mjd_utc']:.5f}", f"{r['mag']:.4f}", f"{r['mag_err']:.4f}",
                 "" if not np.isfinite(r["zp_err"]) else f"{r['zp_err']:.4f}",
                 r["magnitude_system"], r["dataset"], r["frame"], str(r["flags"])]
        out.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;
vertical-align:top;font-size:.9em}th{background:#eee}.thumb{height:90px;margin:2px}
.success{color:#070}.error{color:#b00;font-weight:bold}.running{color:#a60}
img.combined{max-width:100%}code{font-size:.85em}"""


def write_report(reduction_dir, title=None):
    """Write ``<reduction_dir>/index.html`` and the combined light curve of every target.

    Parameters
    ----------
    reduction_dir : str or Path
        The reduction folder (``data_reduction_dir``): every dataset under it gets a row,
        every target a section with a combined plot (``_report/<target>.png``) and table
        (``_report/<target>.ecsv`` and ``.csv``).
    title : str, optional
        The page's title (default: the folder's name; never its full path).

    Returns
    -------
    pathlib.Path
        The page, written atomically.
    """
    from .datasets import list_datasets

    root = Path(reduction_dir)
    if not root.is_dir():
        from .errors import PipekitError
        raise PipekitError(f"{root}: no such reduction folder; nothing to report")
    rows = [_dataset_row(d, root) for d in list_datasets(root)]
    by_target = {}
    for row in rows:
        by_target.setdefault(row.curve.target, []).append(row.curve)
    sections, taken, toc = [], {}, []
    for target in sorted(by_target):
        curves = by_target[target]
        stem = distinct_slug(target, taken.get(slug(target)))
        taken.setdefault(slug(target), target)
        taken[stem] = target
        anchor = f"target-{stem}"
        toc.append(f"<a href='#{_esc(anchor)}'>{_esc(target)}</a>")
        files = write_combined(target, curves, root / REPORT_DIR, stem)
        table = files["table"]
        systems = sorted(set(table["magnitude_system"])) if len(table) else []
        sections.append(
            f"<section id='{_esc(anchor)}'><h2>{_esc(target)}</h2>"
            f"<p>{len(curves)} datasets, {len(table)} points; magnitudes: "
            f"{_esc(', '.join(systems) or 'none yet')}. Files: "
            f"<a href='{_href(files['ecsv'], root)}'>combined ECSV</a> "
            f"<a href='{_href(files['csv'], root)}'>combined CSV</a></p>"
            f"<img class='combined' src='{_href(files['png'], root)}' "
            f"alt='combined light curve of {_esc(target)}'>"
            + (f"<p>The latest {_ROWS_SHOWN} points:</p>" if len(table) > _ROWS_SHOWN else "")
            + _points_table(table) + "</section>")
    title = title or f"pipekit report: {root.resolve().name}"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    toc = " ".join(toc)
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{_esc(title)}</h1><p>Written {now} by pipekit: {len(rows)} datasets, "
            f"{len(by_target)} targets. {toc}</p>\n<h2>Datasets</h2>\n"
            + _dataset_table(rows, root) + "\n" + "\n".join(sections) + "\n</body></html>\n")
    path = write_text_atomic(root / REPORT_HTML, page)
    log.info("%s: report of %d datasets, %d targets", path, len(rows), len(by_target))
    return path


def refresh_report(reduction_dir):
    """`write_report`, for the end of a run: a failure is a WARNING naming its cause.

    The report is a by-product of a reduction run: nothing about it may sink the run.

    Returns
    -------
    pathlib.Path or None
        The page, or None when it could not be written.
    """
    try:
        return write_report(reduction_dir)
    except Exception as exc:  # any cause, named in the warning; the run's outcome stands
        log.warning("report of %s not written: %s: %s", reduction_dir, type(exc).__name__, exc)
        return None
