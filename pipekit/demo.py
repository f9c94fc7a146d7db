"""``pipekit demo``: the whole chain on a simulated microlensing event.

A microlensing event observed by two instruments in two filters is simulated
into a local folder and served by a local archive server on 127.0.0.1 (the
same API as the LCO science archive). pipekit then downloads, sorts,
configures and reduces it (through the Manager), writes the light curves and
plots, and compares the recovered event with the truth.
"""

import concurrent.futures as cf
import multiprocessing
import os
import secrets
import time
from pathlib import Path

import numpy as np

from .atomic import write_text_atomic

__all__ = ["run_demo", "DEMO_DATASETS"]

#: BANZAI-style zero points (L1ZP, magnitude of 1 ADU/s) written into the simulated frames,
#: by instrument and filter. The 0.4 m camera needs twice the exposure for the same counts,
#: so its zero point is 2.5 log10(2) = 0.75 mag smaller: calibrated, both agree.
DEMO_ZEROPOINTS = {("fa15", "ip"): 23.55, ("fa15", "gp"): 24.10, ("sq34", "ip"): 22.80,
                   ("sq34", "gp"): 23.35}
DEMO_EXPTIME = {"fa15": 60.0, "sq34": 120.0}

#: (site, telescope, instrument, filter) of each simulated dataset.
DEMO_DATASETS = (
    ("lsc", "1m005", "fa15", "ip"),
    ("lsc", "1m005", "fa15", "gp"),
    ("coj", "0m409", "sq34", "ip"),
    ("coj", "0m409", "sq34", "gp"),
)
TARGET = "OGLE-2026-BLG-0034"
RA, DEC = 269.7596, -28.2094
PROPOSAL = "KEY2026B-001"
TOKEN_ENVVAR = "PIPEKIT_DEMO_ARCHIVE_TOKEN"


def _write_configs(root, server_url, start, end):
    download = root / "data_download.yaml"
    write_text_atomic(download, f"""\
# Written by `pipekit demo`: the local archive server stands in for the LCO archive.
archives:
  demo:
    name: demo
    active: true
    url: {server_url}
    token_envvar: {TOKEN_ENVVAR}
    proposals:
      - {PROPOSAL}
    reduction_level:
      image: 91
      spectrum: 0
log_dir: logs
frame_list: logs/frame_list.txt
data_download_dir: downloads
data_reduction_dir: reduction
start_datetime: '{start}'
end_datetime: '{end}'
default_red_config: none
""")
    manager = root / "reduction_manager_config.yaml"
    write_text_atomic(manager, """\
# Written by `pipekit demo`: reduce every dataset, two at a time.
log_dir: logs/manager
data_reduction_dir: reduction
instrument_list: [sinistro, qhy]
dataset_selection:
  group: all
max_parallel: 2
""")
    return download, manager


def _compare(lc_path, truths):
    """Scale the true target flux onto the recovered normalised flux.

    The light curve's frames say which simulated dataset (``truths``) it
    came from; returns None when fewer than three frames match.
    """
    from astropy.table import Table
    table = Table.read(lc_path, format="ascii.ecsv")
    frames = [Path(str(f)).name for f in table["frame"]]
    for truth in truths:
        index = {Path(f).name: i for i, f in enumerate(truth.files)}
        rows = [(index[f], k) for k, f in enumerate(frames) if f in index]
        if len(rows) >= 3:
            break
    else:
        return None
    ti, ki = np.array(rows).T
    flux = np.asarray(table["flux"], float)[ki]
    err = np.asarray(table["flux_err"], float)[ki]
    model = np.asarray(truth.target_flux, float)[ti]
    good = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    flux, err, model = flux[good], err[good], model[good]
    w = 1 / err**2
    scale = np.sum(w * flux * model) / np.sum(w * model**2)
    chi2 = np.sum(((flux - scale * model) / err) ** 2) / max(len(flux) - 1, 1)
    return {"n": len(flux), "reduced_chi2": chi2,
            "peak_to_base_true": model.max() / model.min(),
            "peak_to_base_recovered": flux[np.argmax(model)] / flux[np.argmin(model)]}


def _since(t0):
    return f"{time.monotonic() - t0:.1f} s"


def _simulate(folder, kwargs):
    from .testing.simulate import simulate_dataset
    return simulate_dataset(folder, **kwargs)


def run_demo(folder="pipekit-demo", n_frames=40, seed=2026, out=print):
    """Run the demo in ``folder`` and return a summary dict.

    Parameters
    ----------
    folder : str or os.PathLike
        Where everything goes (created; an earlier demo there is reused and
        resumed: frames already downloaded are not fetched again).
    n_frames : int
        Frames per dataset.
    seed : int
        Seed of the simulation.
    out : callable
        Where progress lines go (``print`` for the command line).

    Returns
    -------
    dict
        ``ok``, ``light_curves`` (paths), ``plots``, ``comparison`` per dataset,
        ``summary`` (the Manager's), ``report`` (the report page, None when not written),
        ``seconds``.
    """
    from .testing.archive_server import ArchiveServer
    from .manager import Manager
    from .testing.simulate import PaczynskiEvent, make_star_field
    from .workflows import download_pipeline

    t_start = time.monotonic()
    root = Path(folder).resolve()
    archive_dir = root / "archive"
    archive_dir.mkdir(parents=True, exist_ok=True)

    out(f"pipekit demo in {root}")
    start = "2026-08-01T00:00:00"
    cadence_hours = 4.0
    from astropy.time import Time
    t0 = Time(start, scale="utc").mjd + n_frames * cadence_hours / 24 / 2  # mid-series
    event = PaczynskiEvent(t0=t0, u0=0.15, tE=2.5)
    stars = make_star_field(RA, DEC, n_stars=120, seed=seed)
    # Writing .fits.fz files dominates the demo outside the science (astropy's
    # tile compression), so the four datasets are simulated two at a time.
    jobs = [dict(n_frames=n_frames, target=TARGET, ra=RA, dec=DEC, instrument=instrument,
                 filter=filt, site=site, telescope=telescope, event=event, stars=stars,
                 seed=seed + k, start=start, cadence_hours=cadence_hours,
                 first_frame_number=1 + 1000 * k, exptime=DEMO_EXPTIME[instrument],
                 zeropoint=DEMO_ZEROPOINTS[instrument, filt], failed_zeropoints=(3, 17))
            for k, (site, telescope, instrument, filt) in enumerate(DEMO_DATASETS)]
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        truths = list(pool.map(_simulate, [archive_dir] * len(jobs), jobs))
    out(f"1. simulated {n_frames * len(DEMO_DATASETS)} frames of {TARGET} "
        f"(t0 = MJD {event.t0:.2f}, u0 = {event.u0}, tE = {event.tE} d) in "
        f"{_since(t_start)}: {archive_dir}")
    t_phase = time.monotonic()

    os.environ[TOKEN_ENVVAR] = secrets.token_hex(16)
    with ArchiveServer(archive_dir, token=os.environ[TOKEN_ENVVAR], page_size=50) as server:
        out(f"2. local archive server at {server.url}")
        download_cfg, manager_cfg = _write_configs(root, server.url, "2026-07-30 00:00",
                                                   "2026-08-30 00:00")
        pipe = download_pipeline(download_cfg)
        pipe.run()
    found = pipe.step("download").result
    sorted_ = pipe.step("sort").result
    out(f"3. downloaded {found.get('n_downloaded')} new frames "
        f"({found.get('n_skipped', 0)} already there), sorted into "
        f"{len(sorted_.get('datasets', []))} datasets under {root / 'reduction'} "
        f"in {_since(t_phase)}")
    t_phase = time.monotonic()

    manager = Manager.from_config(manager_cfg, progress=False)
    summary = manager.run()
    out(f"4. reduced with the Manager (2 processes) in {_since(t_phase)}:")
    for row in summary:
        out(f"   {row['name']}: {row['status']}"
            + (f" ({row['error']})" if row.get("error") else ""))

    result = {"ok": all(r["status"] == "success" for r in summary), "light_curves": [],
              "plots": [], "comparison": {}, "summary": list(summary)}
    out("5. light curves against the truth:")
    for pipe in manager.pipelines:
        red_dir = Path(pipe.red_dir)
        lcs = sorted(red_dir.glob("*_lc.ecsv"))
        result["light_curves"] += [str(p) for p in lcs]
        result["plots"] += [str(p) for p in red_dir.glob("lightcurve.png")]
        if not lcs:
            continue
        cmp = _compare(lcs[0], truths)
        result["comparison"][str(red_dir)] = cmp
        if cmp:
            out(f"   {lcs[0]}\n     {cmp['n']} points, reduced chi2 against the true "
                f"light curve {cmp['reduced_chi2']:.2f}; peak/baseline flux "
                f"{cmp['peak_to_base_recovered']:.2f} recovered, "
                f"{cmp['peak_to_base_true']:.2f} true")
    from .report import refresh_report
    report = refresh_report(root / "reduction")
    result["report"] = str(report) if report else None
    result["seconds"] = time.monotonic() - t_start
    out(f"plots: {', '.join(result['plots'])}")
    out(f"report: {report}" if report else "report: not written (see the warning above)")
    out(f"done in {result['seconds']:.0f} s")
    return result
