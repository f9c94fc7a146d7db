"""A nightly increment: what re-reducing a dataset of N frames costs after 10 new frames.

For N = 50, 200, 800, 2000 (small 256x256 frames, simulated once into a pool and
hard-linked into each dataset) it reduces the N frames (photometry and light curve, in a
child process whose peak memory is reported), adds 10 new frames and re-runs
``reduction_pipeline(red_dir).run(["photometry", "lightcurve"])`` in a fresh process, as a
nightly job would. In that same process, afterwards (warm), it times measuring the 10 new
frames alone (`measure_frame_file` and the file write, no reference choice), and prints the
increment against it, and the light-curve step against it (target: the increment costs the
10 frames' measuring plus a light-curve rebuild under 10 % of that, at N = 2000).

    python benchmarks/nightly_increment.py [--sizes 50,200,800,2000] [--keep DIR]

Peak memory is ``ru_maxrss`` of the child that reduced the dataset (target < 1 GB at 2000).
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
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_increment(red_dir, new_frames):
    """Re-run after the new frames arrived; then time measuring those frames alone."""
    from astropy.table import Table

    from pipekit.errors import FrameError
    from pipekit.photometry import measure_frame_file, write_ecsv
    from pipekit.photometry.dataset import _bright_rows, load_dataset_config
    from pipekit.workflows import reduction_pipeline

    red_dir = Path(red_dir)
    pipe = reduction_pipeline(red_dir)
    t0 = time.perf_counter()
    pipe.run(["photometry"])
    t_phot = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.run(["lightcurve"])
    t_lc = time.perf_counter() - t0
    assert pipe.status == "success", pipe.status
    phot = pipe.steps[0].result or {}
    config = load_dataset_config(red_dir)
    stars = Table.read(red_dir / "photometry" / "reference_stars.ecsv", format="ascii.ecsv")
    bright = _bright_rows(stars)
    scratch = Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    try:
        t0 = time.perf_counter()
        n_new = 0
        for f in new_frames:
            try:  # a frame the pipeline rejected is rejected here too, at the same cost
                table = measure_frame_file(f, stars, config, bright)
            except FrameError:
                continue
            write_ecsv(table, scratch / (f.name + ".ecsv"))
            n_new += 1
        t_new = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"photometry": t_phot, "lightcurve": t_lc, "measure_new": t_new,
                      "n_measured": phot.get("n_measured"), "n_skipped": phot.get("n_skipped"),
                      "n_new_measured": n_new}))


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
    args = parser.parse_args()
    if args.child_full:
        return child_full(args.child_full)
    if args.child_increment:
        return child_increment(args.child_increment, [Path(p) for p in args.new])

    from pipekit import lco
    from pipekit.config import write_reduction_config
    from pipekit.testing.simulate import simulate_dataset

    sizes = [int(v) for v in args.sizes.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    pool = root / "pool"
    rows = []
    try:
        need = max(sizes) + NEW
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
            inc = run_child("--child-increment", str(red_dir), "--new", *map(str, new))
            assert inc["n_measured"] == inc["n_new_measured"], inc
            rows.append((n, full, inc))
            print(f"N = {n}: {json.dumps(full)} {json.dumps(inc)}", flush=True)
            shutil.rmtree(red_dir.parents[2], ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.shape}x{args.shape} frames, {args.stars} simulated stars; increment = "
          f"{NEW} new frames (those the alignment rejects are rejected in both columns), "
          "photometry + light-curve steps in a fresh process\n")
    print(f"{'N':>5s} {'full (s)':>9s} {'peak MB':>8s} {'measure 10':>11s} {'photometry':>11s} "
          f"{'lightcurve':>11s} {'increment':>10s} {'inc/meas':>9s} {'lc/meas':>8s}")
    for n, full, inc in rows:
        total = inc["photometry"] + inc["lightcurve"]
        print(f"{n:5d} {full['seconds']:9.1f} {full['maxrss_mb']:8.0f} "
              f"{inc['measure_new']:11.3f} {inc['photometry']:11.3f} {inc['lightcurve']:11.3f} "
              f"{total:10.3f} {total / inc['measure_new']:9.2f} "
              f"{inc['lightcurve'] / inc['measure_new']:8.2f}")
    print("\ninc/meas: the increment over measuring the 10 frames alone (target <= 1.1); "
          "lc/meas: the light-curve step over it (target < 0.10 at N = 2000)")


if __name__ == "__main__":
    main()
