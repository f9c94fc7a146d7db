"""A nightly increment: what re-reducing a dataset of N frames costs after 10 new frames.

For N = 50, 200, 800, 2000 (small 256x256 frames, simulated once into a pool and
hard-linked into each dataset) it reduces the N frames (photometry and light curve, in a
child process whose peak memory is reported), adds 10 new frames and re-runs the
photometry and light-curve steps of ``reduction_pipeline(red_dir)`` in a fresh process, as
a nightly ``pipekit reduce`` would ("cold"), then adds 10 more and runs them again in that
same process ("warm": its imports done, as in a Manager worker, which imports them once for
all its pipelines, or a notebook). Afterwards it times measuring those last 10 frames alone,
one by one (`measure_frame_file` and the file write, no reference choice), and prints the
increment against it, and the light curve (and its figures, apart) against it (target: the
increment costs the 10 frames' measuring plus a light-curve rebuild under 10 % of that, at
N = 2000).

    python benchmarks/nightly_increment.py [--sizes 50,200,800,2000] [--keep DIR]

Peak memory: ``ru_maxrss`` of the process that reduced the dataset and of its largest worker
process (target: their sum < 1 GB at 2000).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NEW = 10


def child_full(red_dir):
    """Reduce the dataset (photometry, light curve); print the peak memory."""
    from pipekit.workflows import reduction_pipeline

    t0 = time.perf_counter()
    pipe = reduction_pipeline(red_dir)
    pipe.run(["photometry", "lightcurve"])
    assert pipe.status == "success", pipe.status
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "worker_maxrss_mb":
                          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


#: (module, attribute, part) timed inside the light-curve step: where a rebuild goes.
LC_PARTS = [
    ("pipekit.lightcurve", "plot_lightcurve", "figures"),
    ("pipekit.quality", "plot_quality", "figures"),
    ("pipekit.photometry.store", "FrameSummary._load", "summary: load"),
    ("pipekit.photometry.store", "FrameSummary.refresh", "summary: stat every file"),
    ("pipekit.lightcurve", "normalise_ensemble", "ensemble normalisation"),
    ("pipekit.lightcurve", "calibrate", "calibration"),
    ("pipekit.lightcurve", "write_ecsv", "light-curve ECSV"),
    ("pipekit.lightcurve", "tom_csv_text", "TOM CSV"),
]


def _resolve(module, attribute):
    """``(owner, name)`` of ``module.attribute`` (``attribute`` may be ``Class.method``)."""
    import importlib

    owner = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _timed_increment(red_dir):
    """Run photometry then the light curve; time each, and the parts of the latter
    (`LC_PARTS`: the figures, the summary, the ensemble, the files)."""
    from pipekit.workflows import reduction_pipeline

    spent = {}

    def timed(func, part):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - t0
        return run

    patched = [_resolve(module, attribute) for module, attribute, _ in LC_PARTS]
    originals = [getattr(owner, name) for owner, name in patched]
    pipe = reduction_pipeline(red_dir)
    t0 = time.perf_counter()
    pipe.run(["photometry"])
    t_phot = time.perf_counter() - t0
    for (owner, name), func, (_, _, part) in zip(patched, originals, LC_PARTS):
        setattr(owner, name, timed(func, part))
    try:
        t0 = time.perf_counter()
        pipe.run(["lightcurve"])
        t_lc = time.perf_counter() - t0
    finally:
        for (owner, name), func in zip(patched, originals):
            setattr(owner, name, func)
    assert pipe.status == "success", pipe.status
    phot = pipe.steps[0].result or {}
    figures = spent.pop("figures", 0.0)
    parts = dict(spent, rest=t_lc - figures - sum(spent.values()))
    return {"photometry": t_phot, "lightcurve": t_lc - figures, "figures": figures,
            "n_measured": phot.get("n_measured"), "lightcurve_parts": parts}


def child_increment(red_dir, new_frames, second_frames):
    """Re-run after the new frames arrived (this process fresh: "cold"), then again after 10
    more (its imports done: "warm"); then time measuring those 10 frames alone, warm."""
    from astropy.table import Table

    from pipekit.config import load_reduction_config
    from pipekit.errors import FrameError
    from pipekit.photometry import measure_frame_file, workers, write_ecsv
    from pipekit.photometry.dataset import bright_rows

    red_dir = Path(red_dir)
    cold = _timed_increment(red_dir)
    for f in second_frames:
        os.link(f, red_dir / f.name)
    warm = _timed_increment(red_dir)
    config = load_reduction_config(red_dir / "reduction_config.yaml")
    stars = Table.read(red_dir / "photometry" / "reference_stars.ecsv", format="ascii.ecsv")
    bright = bright_rows(stars)
    scratch = Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    try:
        t0 = time.perf_counter()
        n_new = 0
        for f in second_frames:
            try:  # a frame the pipeline rejected is rejected here too, at the same cost
                table = measure_frame_file(red_dir / f.name, stars, config, bright)
            except FrameError:
                continue
            write_ecsv(table, scratch / (f.name + ".ecsv"))
            n_new += 1
        t_new = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"cold": cold, "warm": warm, "measure_new": t_new,
                      "n_new_measured": n_new,
                      "processes": workers.photometry_processes(config, len(second_frames))}))


def run_child(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode:
        print(res.stdout[-3000:], res.stderr[-3000:])
        raise SystemExit(f"child {args[:2]} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,800,2000")
    parser.add_argument("--shape", type=int, default=256)
    parser.add_argument("--stars", type=int, default=60)
    parser.add_argument("--keep", help="keep (and reuse) the simulated pool in this folder")
    parser.add_argument("--child-full", help=argparse.SUPPRESS)
    parser.add_argument("--child-increment", help=argparse.SUPPRESS)
    parser.add_argument("--new", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--second", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_full:
        return child_full(args.child_full)
    if args.child_increment:
        return child_increment(args.child_increment, [Path(p) for p in args.new],
                               [Path(p) for p in args.second])

    from pipekit import lco
    from pipekit.config import write_reduction_config
    from pipekit.testing.simulate import simulate_dataset

    sizes = [int(v) for v in args.sizes.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    pool = root / "pool"
    rows = []
    try:
        need = max(sizes) + 2 * NEW
        if len(lco.list_frames(pool)) < need:
            shutil.rmtree(pool, ignore_errors=True)
            t0 = time.perf_counter()
            truth = simulate_dataset(pool, n_frames=need, shape=(args.shape, args.shape),
                                     n_stars=args.stars, seed=2, cadence_hours=0.25)
            (pool / "target.json").write_text(json.dumps(truth.meta, default=str))
            print(f"simulated {need} frames of {args.shape}x{args.shape} in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        meta = json.loads((pool / "target.json").read_text())
        frames = lco.list_frames(pool)
        for n in sizes:
            red_dir = root / f"n{n}" / "TARGET" / "sinistro" / "ip"
            shutil.rmtree(red_dir.parents[2], ignore_errors=True)
            red_dir.mkdir(parents=True)
            write_reduction_config(red_dir / "reduction_config.yaml", meta["target"],
                                   meta["ra"], meta["dec"])
            for f in frames[:n]:
                os.link(f, red_dir / f.name)
            full = run_child("--child-full", str(red_dir))
            new = [red_dir / f.name for f in frames[n:n + NEW]]
            for f, dst in zip(frames[n:n + NEW], new):
                os.link(f, dst)
            second = frames[n + NEW:n + 2 * NEW]   # linked by the child, after its first run
            inc = run_child("--child-increment", str(red_dir), "--new", *map(str, new),
                            "--second", *map(str, second))
            assert inc["warm"]["n_measured"] == inc["n_new_measured"], inc
            rows.append((n, full, inc))
            print(f"N = {n}: {json.dumps(full)} {json.dumps(inc)}", flush=True)
            shutil.rmtree(red_dir.parents[2], ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.shape}x{args.shape} frames, {args.stars} simulated stars; an increment = "
          f"{NEW} new frames: photometry and light-curve steps, in a fresh process (cold) and "
          f"again for {NEW} more in the same process (warm: imports done, as in a Manager "
          "worker or a notebook); measure 10 = measuring the second 10 frames one by one in "
          "that process, warm; the light-curve step is split into the light curve (table, "
          "ECSV, TOM CSV) and its two figures\n")
    print(f"{'N':>5s} {'full (s)':>9s} {'peak MB':>11s} {'measure 10':>10s} "
          f"{'cold: phot':>10s} {'lc':>6s} {'figs':>6s} {'warm: phot':>10s} {'lc':>6s} "
          f"{'figs':>6s} {'inc/meas':>8s} {'lc/meas':>8s} {'+figs':>6s}")
    for n, full, inc in rows:
        c, w, m = inc["cold"], inc["warm"], inc["measure_new"]
        total = w["photometry"] + w["lightcurve"]
        peak = f"{full['maxrss_mb']:.0f}+{full['worker_maxrss_mb']:.0f}"
        print(f"{n:5d} {full['seconds']:9.1f} {peak:>11s} {m:10.3f} "
              f"{c['photometry']:10.3f} {c['lightcurve']:6.3f} {c['figures']:6.3f} "
              f"{w['photometry']:10.3f} {w['lightcurve']:6.3f} {w['figures']:6.3f} "
              f"{total / m:8.2f} {w['lightcurve'] / m:8.2f} "
              f"{(total + w['figures']) / m:6.2f}")
    print("\nwhere the warm light curve goes (ms; the figures apart): " +
          "; ".join(f"N = {n}: " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in
                                             inc["warm"]["lightcurve_parts"].items())
                    for n, _, inc in rows))
    print(f"\nphotometry in {rows[-1][2]['processes']} processes. inc/meas: the warm "
          "increment (photometry + light curve) over measuring the 10 frames alone (target "
          "<= 1.1); lc/meas: the light curve over it (target < 0.10 at N = 2000); +figs: the "
          "increment with the figures, over it")


if __name__ == "__main__":
    main()
