"""Write notebooks 02-04 of examples/notebooks from the cell texts below.

Edit the cells here, then run ``python examples/notebooks/make_notebooks.py``: the
notebooks are written with their outputs stripped and stable cell ids, ready to commit.
``tests/test_notebooks.py`` runs each one top to bottom.
"""

import hashlib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


NB02 = [
    md("""
# Reduce one dataset

Simulate a few nights of frames of a microlensing event, sort them into a dataset,
configure it, run its reduction pipeline, look at the light curve and check it against
the simulation's truth. Everything is written to a temporary folder; nothing touches the
network.
"""),
    code("""
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table
from IPython.display import Image

from pipekit.datasets import configure_dataset, sort_frames
from pipekit.testing.simulate import PaczynskiEvent, simulate_dataset
from pipekit.workflows import reduction_pipeline

work = Path(tempfile.mkdtemp(prefix="pipekit-nb02-"))
work
"""),
    md("""
## Simulate the frames
`simulate_dataset` writes LCO-like frames (tile-compressed `.fits.fz`, the header keys
pipekit reads, a slightly wrong WCS) and returns the truth, among it the target's flux in
every frame. The frames land in a download folder, as if just fetched from the archive.
"""),
    code("""
n_frames = 24
event = PaczynskiEvent(t0=61254.5, u0=0.2, tE=1.5)  # t0 in MJD: the middle of the series
truth = simulate_dataset(work / "downloads", n_frames=n_frames, shape=(384, 384), n_stars=80,
                         event=event, start="2026-08-01T00:00:00", cadence_hours=3.0, seed=7)
print(n_frames, "frames, the first is", truth.files[0].name)
"""),
    md("""
## Sort and configure
Sorting reads each frame's header and moves it to
the top of `<reduction>/<target>/<instrument class>/<filter>/` (the dataset folder). Configuring writes the dataset's
`reduction_config.yaml` from the headers (the target's name and position); pipekit never
overwrites it, so edit it freely. The nightly `download_pipeline` runs these same two steps
after downloading.
"""),
    code("""
sorted_ = sort_frames(work / "downloads", work / "reduction")
assert sorted_.n_sorted == n_frames and len(sorted_.new_datasets) == 1
red_dir = sorted_.new_datasets[0]
config_path = configure_dataset(red_dir)
print(sorted_.n_sorted, "frames sorted into", red_dir.relative_to(work))
print(config_path.read_text())
"""),
    md("""
## Reduce
`reduction_pipeline` is three tagged steps: `photometry`, `lightcurve` and `upload` (which
does nothing while `tom.upload` is false). The dataset is locked while it runs, and the
checkpoint `<red_dir>/logs/pipeline.p` is written before and after every step.
"""),
    code("""
pipe = reduction_pipeline(red_dir)
pipe.run()
phot = pipe.step("photometry").result
assert pipe.status == "success"
assert phot["n_measured"] == n_frames and phot["n_rejected"] == 0
print(f"{phot['n_measured']} frames measured, {phot['n_stars']} stars in each (the target is "
      f"star 0), field stars detected on {phot['reference_frame']}")
pipe
"""),
    md("""
## The light curve
An ECSV table (mid-exposure times in BJD_TDB, flux normalised by an ensemble of comparison
stars, magnitudes, flags), the same as CSV for a TOM, and a plot.
"""),
    code("""
lc_files = pipe.step("lightcurve").result
lc = Table.read(lc_files["ecsv"], format="ascii.ecsv")
assert len(lc) == n_frames
print("times:", lc.meta["time_scale"], lc.meta["time_format"], "-", lc.meta["time_position"])
print(len(lc.meta["comparison_stars"]), "comparison stars")
lc["time", "flux", "flux_err", "mag", "mag_err", "flags"][:5]
"""),
    code("""
Image(filename=lc_files["png"])
"""),
    md("""
## Compare with the truth
A normalised light curve is proportional to the target's true flux: fit that one scale
factor and look at what is left. A reduced chi² near 1 means the error bars describe the
scatter; the peak-to-baseline ratio checks the event's amplitude.
"""),
    code("""
row_of = {Path(f).name: i for i, f in enumerate(truth.files)}
rows = np.array([row_of[Path(str(name)).name] for name in lc["frame"]])
flux, err = np.asarray(lc["flux"], float), np.asarray(lc["flux_err"], float)
model = truth.target_flux[rows]
scale = np.sum(flux * model / err**2) / np.sum(model**2 / err**2)
reduced_chi2 = np.sum(((flux - scale * model) / err) ** 2) / (len(flux) - 1)
ratio_true = model.max() / model.min()
ratio_seen = flux[np.argmax(model)] / flux[np.argmin(model)]
print(f"reduced chi2 against the truth: {reduced_chi2:.2f} ({len(flux)} points)")
print(f"peak/baseline flux: {ratio_seen:.3f} measured, {ratio_true:.3f} true")
assert 0.3 < reduced_chi2 < 3.0
assert abs(ratio_seen / ratio_true - 1) < 0.05

fig, ax = plt.subplots(figsize=(7, 3.5))
t = np.asarray(lc["time"]) - 2461250
ax.errorbar(t, flux, err, fmt="o", ms=3, label="pipekit")
ax.plot(t, scale * model, "-", lw=1, label="truth (scaled)")
ax.set_xlabel("BJD_TDB - 2461250")
ax.set_ylabel("normalised flux")
ax.legend();
"""),
    md("""
## Run it again
A second run measures nothing twice: every frame's photometry is already on disk, so only
frames added since (say, tonight's) would be measured.
"""),
    code("""
again = reduction_pipeline(red_dir).run()
assert again.step("photometry").result["n_skipped"] == n_frames
assert again.step("photometry").result["n_measured"] == 0
again
"""),
    md("""
## Clean up
Everything above was written under `work`; remove it when you are done looking.
"""),
    code("""
import shutil

shutil.rmtree(work)
"""),
]


NB03 = [
    md("""
# Resume a crashed run

A long reduction dies: the node reboots, the batch job hits its wall time, the OOM killer
strikes. Here one is killed for real, part way through its photometry. We then load its
checkpoint and resume it: the frames already measured are not measured again.
"""),
    code("""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipekit import load
from pipekit.datasets import configure_dataset, sort_frames
from pipekit.locks import is_stale, read_lock
from pipekit.testing.simulate import simulate_dataset

work = Path(tempfile.mkdtemp(prefix="pipekit-nb03-"))
n_frames = 30
simulate_dataset(work / "downloads", n_frames=n_frames, shape=(384, 384), n_stars=80, seed=3)
red_dir = sort_frames(work / "downloads", work / "reduction").new_datasets[0]
configure_dataset(red_dir)
red_dir
"""),
    md("""
## Start the reduction in another process, and kill it
A separate Python process runs the dataset's reduction pipeline, as a batch job would. As
soon as a few frames are measured we kill it without warning (`Popen.kill`: SIGKILL on
Linux), so nothing gets a chance to clean up.
"""),
    code("""
job_script = ("from pipekit.workflows import reduction_pipeline; "
              f"reduction_pipeline({str(red_dir)!r}).run()")
phot_dir = red_dir / "photometry"

def measured_frames():
    # one ECSV file per measured frame, named after the frame
    return sorted(phot_dir.glob("*-e91.ecsv"))

with open(work / "job.log", "w") as job_log:
    job = subprocess.Popen([sys.executable, "-c", job_script], stdout=job_log, stderr=job_log)
    deadline = time.monotonic() + 120
    while len(measured_frames()) < 6 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.kill()
    job.wait()

before = {p.name: p.stat().st_mtime_ns for p in measured_frames()}
print(f"killed after {len(before)} of {n_frames} frames were measured")
assert 0 < len(before) < n_frames
"""),
    md("""
## What the crash left behind
The checkpoint was written just before the photometry step began, so it says that step is
`running`. Every file pipekit writes is written to a temporary name and renamed when
complete, so there is no half-written photometry file to mistake for a finished one. The
dataset lock is still there too, naming a process that no longer exists: it is stale, and
the next run takes it over. A lock held by a live process would stop that run with a
`LockError` instead.
"""),
    code("""
checkpoint = red_dir / "logs" / "pipeline.p"
pipe = load(checkpoint)
holder = read_lock(red_dir)
print("lock:", holder.describe(), "- stale:", is_stale(holder))
assert pipe.step("photometry").status == "running" and is_stale(holder)
pipe
"""),
    md("""
## Fix, then resume
After a kill there is nothing to fix. Had a step raised, you would correct the cause here
(the dataset's `reduction_config.yaml`, or a step's arguments in
`pipe.step(name).func_kwargs`, as in notebook 01) before resuming. `run(resume=True)`
starts again at the step that did not finish; the photometry step finds which frames are
already measured from the files on disk.
"""),
    code("""
pipe.run(resume=True)
phot = pipe.step("photometry").result
after = {name: (phot_dir / name).stat().st_mtime_ns for name in before}
print(f"resumed: {phot['n_skipped']} frames already measured, {phot['n_measured']} measured now")
assert pipe.status == "success"
assert phot["n_skipped"] == len(before) and phot["n_measured"] == n_frames - len(before)
assert after == before, "a frame measured before the crash was measured again"
assert not (red_dir / "dataset.lock").exists()
pipe
"""),
    md("""
The frames measured before the crash kept their files (and modification times); the light
curve holds every frame. The pipeline's log tells the story of both runs.
"""),
    code("""
lc = pipe.step("lightcurve").result
assert lc["n_points"] == n_frames and Path(lc["ecsv"]).is_file()
print(lc["n_points"], "points in", Path(lc["ecsv"]).name)
print((red_dir / "logs" / "pipeline.log").read_text())
"""),
    md("""
## Clean up
Everything above was written under `work`; remove it when you are done looking.
"""),
    code("""
import shutil

shutil.rmtree(work)
"""),
]


NB04 = [
    md("""
# Many datasets: the Manager, locally and on Dask

A night brings frames of one target from several instruments and filters: one dataset each.
The `Manager` reduces them side by side, and one failure stops no other. It runs on a pool
of local processes by default, or on a Dask cluster: here a `LocalCluster` on this machine,
in practice one spread over a cluster's nodes (see the docs, "Running on a cluster").
"""),
    code("""
import os
import tempfile
from pathlib import Path

import numpy as np
from astropy.table import Table

from pipekit import Manager, load
from pipekit.datasets import configure_dataset, sort_frames
from pipekit.testing.simulate import make_star_field, simulate_dataset

work = Path(tempfile.mkdtemp(prefix="pipekit-nb04-"))
work
"""),
    md("""
## Four datasets
One star field seen by a Sinistro (`fa15`) and a QHY (`sq34`) camera, each in two filters,
16 small frames each. Sorting makes one dataset per instrument class and filter.
"""),
    code("""
ra, dec = 269.7596, -28.2094
stars = make_star_field(ra, dec, n_stars=150, size_arcsec=200, seed=11)
cameras = [("lsc", "1m005", "fa15", "ip"), ("lsc", "1m005", "fa15", "gp"),
           ("coj", "0m409", "sq34", "ip"), ("coj", "0m409", "sq34", "gp")]
for k, (site, telescope, instrument, filt) in enumerate(cameras):
    simulate_dataset(work / "downloads", n_frames=16, shape=(256, 256), ra=ra, dec=dec,
                     stars=stars, site=site, telescope=telescope, instrument=instrument,
                     filter=filt, seed=100 + k, first_frame_number=1 + 1000 * k)
result = sort_frames(work / "downloads", work / "reduction")
for red_dir in result.new_datasets:
    configure_dataset(red_dir)
red_dirs = sorted(result.new_datasets)
assert len(red_dirs) == 4 and result.n_sorted == 64
[str(d.relative_to(work / "reduction")) for d in red_dirs]
"""),
    md("""
To see a failure handled, break one dataset's configuration: a mistyped declination puts
the target off every frame, so its photometry has no reference frame to work on.
"""),
    code("""
broken = work / "reduction" / "OGLE-2026-BLG-0034" / "qhy" / "gp"
config_file = broken / "reduction_config.yaml"
good_config = config_file.read_text()
config_file.write_text(good_config.replace('Dec: "-28:', 'Dec: "-29:'))
print([line for line in config_file.read_text().splitlines() if "Dec:" in line][0])
"""),
    md("""
## The Manager on local processes
A `reduction_manager_config.yaml` says which datasets to reduce (`group: all`; also
`date`, `recent` or a `file` listing them) from which instrument classes, and how many at
once. `Manager.from_config` builds one reduction pipeline per dataset (from Python,
`Manager([reduction_pipeline(d) for d in red_dirs], max_parallel=2)` does the same);
`run()` sends each to a worker process, as the path of its checkpoint, and returns a
summary.
"""),
    code("""
manager_config = work / "reduction_manager_config.yaml"
manager_config.write_text(\"\"\"\\
log_dir: logs/manager
data_reduction_dir: reduction
instrument_list: [sinistro, qhy]
dataset_selection:
  group: all
max_parallel: 2
\"\"\")
mgr = Manager.from_config(manager_config, progress=False)
summary = mgr.run()
summary
"""),
    code("""
assert len(summary) == 4 and len(summary.failed) == 1
failed = summary.failed[0]
assert failed["name"].endswith("qhy/gp") and failed["failed_step"] == "photometry"
assert all(row["pid"] != os.getpid() for row in summary)  # each ran in a worker process
print(failed["name"], "failed in", failed["failed_step"], "-", failed["error"])
"""),
    md("""
After `run()`, `mgr.pipelines` holds every pipeline as its worker left it, reloaded from its
checkpoint: the failed one can be inspected (its step table, the error's traceback in
`step.error`) and resumed.
"""),
    code("""
failed_pipe = next(p for p in mgr.pipelines if p.status == "error")
failed_pipe
"""),
    md("""
## The same on a Dask cluster
Fix the configuration and run the selection again, now on a Dask `LocalCluster` of two
worker processes: pass its `Client` as `executor=`. On a real cluster you would connect
to its scheduler instead (`Client("tcp://scheduler:8786")`, or `pipekit manage CONFIG
--scheduler ADDRESS`); the datasets must then sit on a filesystem every worker sees.

Each pipeline measures only what is missing: the three good datasets find their frames
already measured, and the fixed one is reduced from the start.
"""),
    code("""
from dask.distributed import Client, LocalCluster

config_file.write_text(good_config)
lc_before = {d: Table.read(next(d.glob("*_lc.ecsv")), format="ascii.ecsv")
             for d in red_dirs if d != broken}

cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                       dashboard_address=None)
client = Client(cluster)
try:
    summary_dask = Manager.from_config(manager_config, executor=client, progress=False).run()
    dask_pids = set(client.run(os.getpid).values())  # the worker processes
finally:
    client.close()
    cluster.close()
summary_dask
"""),
    code("""
assert summary_dask.ok and len(summary_dask) == 4
assert {row["pid"] for row in summary_dask} <= dask_pids  # every pipeline ran on a Dask worker
for red_dir in red_dirs:
    pipe = load(red_dir / "logs" / "pipeline.p")
    phot = pipe.step("photometry").result
    assert phot["n_measured"] == (16 if red_dir == broken else 0), red_dir
    lc = Table.read(next(red_dir.glob("*_lc.ecsv")), format="ascii.ecsv")
    assert len(lc) == 16
    if red_dir in lc_before:  # the same light curve, wherever it was computed
        assert np.allclose(lc["flux"], lc_before[red_dir]["flux"], rtol=1e-12, atol=0)
    print(f"{red_dir.relative_to(work / 'reduction')}: {phot['n_measured']:2d} frames "
          f"measured now, {phot['n_skipped']:2d} already done; {len(lc)} points")
"""),
    md("""
## Clean up
Everything above was written under `work`; remove it when you are done looking.
"""),
    code("""
import shutil

shutil.rmtree(work)
"""),
]


NOTEBOOKS = {
    "02_reduce_one_dataset.ipynb": NB02,
    "03_resume_a_crashed_run.ipynb": NB03,
    "04_many_datasets_manager_and_dask.ipynb": NB04,
}


def build(name, cells):
    """A notebook of ``cells`` with stable cell ids and no outputs."""
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]
    nbformat.validate(nb)
    return nb


def main():
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        nbformat.write(build(name, cells), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
