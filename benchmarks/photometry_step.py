"""The whole photometry step against the time of reading the same frames, side by side.

For each case (frames x size x stars) it simulates a dataset (`pipekit.testing.simulate`),
then, in a fresh process per case, times reading every frame (`pipekit.frames.read_frame`)
and the whole step as ``reduction_pipeline(red_dir).run(["photometry"])`` runs it
(reference frame and star list, alignment, cosmic rays, BJD_TDB, files, checkpoint) with
its default processes (`pipekit.photometry.workers`: one per core), best of ``--repeat``
runs each, interleaved, and prints the ratio, the step's phases, and where its work goes:
ms per frame per part, exclusive of the parts inside it, from one more run in one process
(``photometry.processes`` 1), so that every part is timed where it runs.

Run from the repository root:

    python benchmarks/photometry_step.py [--cases 8x2048x400,24x2048x400,8x4096x2000]
                                         [--repeat 2] [--keep DIR]

``--keep DIR`` keeps the simulated frames in DIR and reuses them on the next run.
"""

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (module, attribute, part): functions timed exclusively (minus timed parts inside them).
#: The profile runs the step in one process (``photometry.processes`` 1), so that every part
#: is timed where it runs; the timed step itself runs with the default processes.
PARTS = [
    ("pipekit.frames", "read_frame", "read + decompress"),
    ("pipekit.photometry.dataset", "select_reference_stars", "reference choice (rest)"),
    ("pipekit.photometry.reference", "field_depth", "reference: depth of candidates"),
    ("pipekit.photometry.detection", "dao_sources", "reference: star search (DAOStarFinder)"),
    ("pipekit.photometry.detection", "detection_threshold",
     "reference: star search (DAOStarFinder)"),
    ("pipekit.photometry.detection", "band_residual", "reference: star search (DAOStarFinder)"),
    ("pipekit.photometry.reference", "wcs_target_estimate", "reference: target from the WCS"),
    ("pipekit.photometry.reference", "background_map", "background map"),
    ("pipekit.photometry.dataset", "background_map", "background map"),
    ("pipekit.photometry.detection", "background_map", "background map"),
    ("pipekit.photometry.reference", "bright_sources", "bright sources"),
    ("pipekit.photometry.dataset", "bright_sources", "bright sources"),
    ("pipekit.photometry.dataset", "match_stars", "alignment (pattern match, centroid)"),
    ("pipekit.photometry.dataset", "annulus_sky", "alignment (pattern match, centroid)"),
    ("pipekit.photometry.dataset", "centroid_shift", "alignment (pattern match, centroid)"),
    ("pipekit.photometry.dataset", "measure_frame", "aperture photometry"),
    ("pipekit.photometry.dataset", "cosmic_ray_hits", "cosmic rays"),
    ("pipekit.photometry.dataset", "sharp_sources", "cosmic rays"),
    ("pipekit.photometry.dataset", "bjd_tdb_many", "BJD_TDB"),
    ("pipekit.photometry.dataset", "bjd_tdb", "BJD_TDB"),
    ("pipekit.photometry.dataset", "write_ecsv", "write per-frame files"),
    ("pipekit.photometry.dataset", "measure_frame_data", "per-frame rest (WCS, header, table)"),
    ("pipekit.photometry.dataset", "measure_frame_file", "per-frame rest (WCS, header, table)"),
    ("pipekit.steps", "measure_dataset", "dataset rest (listing, done checks)"),
]
#: The phases of the timed step, as its own process sees them (workers run inside them).
PHASES = [
    ("pipekit.photometry.dataset", "select_reference_stars",
     "reference choice (candidates examined, stars searched)"),
    ("pipekit.photometry.dataset", "_measure_frames", "measuring (and writing) the frames"),
]


class PartTimer:
    """Exclusive wall time per part, per thread (the read-ahead thread is kept apart)."""

    def __init__(self):
        self.main = {}
        self.background = {}
        self.local = threading.local()

    def wrap(self, func, part):
        @functools.wraps(func)
        def timed(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = stack.pop()
                if stack:
                    stack[-1] += elapsed
                main = threading.current_thread() is threading.main_thread()
                book = self.main if main else self.background
                book[part] = book.get(part, 0.0) + elapsed - inner
        return timed

    def install(self, parts):
        self.installed = []
        for module, attr, part in parts:
            mod = importlib.import_module(module)
            if hasattr(mod, attr):
                original = getattr(mod, attr)
                self.installed.append((mod, attr, original))
                setattr(mod, attr, self.wrap(original, part))

    def uninstall(self):
        for mod, attr, original in reversed(self.installed):
            setattr(mod, attr, original)


def child(red_dir, repeat, profile):
    """Time the reads and the step in this process; print one JSON line."""
    from pipekit import lco
    from pipekit.config import load_reduction_config
    from pipekit.frames import read_frame
    from pipekit.photometry import workers
    from pipekit.workflows import reduction_pipeline
    import pipekit.photometry.dataset  # noqa: F401 - imported before the clock starts

    red_dir = Path(red_dir)
    frames = lco.list_frames(red_dir)
    config = load_reduction_config(red_dir / "reduction_config.yaml")
    reads, steps = [], []
    phases = PartTimer()
    phases.install(PHASES)
    for _ in range(repeat):
        shutil.rmtree(red_dir / "photometry", ignore_errors=True)
        shutil.rmtree(red_dir / "logs", ignore_errors=True)
        t0 = time.perf_counter()
        for f in frames:
            read_frame(f)
        reads.append(time.perf_counter() - t0)
        phases.main.clear()
        t0 = time.perf_counter()
        pipe = reduction_pipeline(red_dir)
        pipe.run(["photometry"])
        steps.append(time.perf_counter() - t0)
        assert pipe.status == "success", pipe.status
        if steps[-1] == min(steps):
            timeline = dict(phases.main)
    out = {"n": len(frames), "read": min(reads), "step": min(steps), "reads": reads,
           "steps": steps, "processes": workers.photometry_processes(config, len(frames)),
           "phases": timeline}
    if profile:
        phases.uninstall()
        timer = PartTimer()
        timer.install(PARTS)
        workers.photometry_processes = lambda *args: 1  # every part timed where it runs
        shutil.rmtree(red_dir / "photometry", ignore_errors=True)
        shutil.rmtree(red_dir / "logs", ignore_errors=True)
        t0 = time.perf_counter()
        reduction_pipeline(red_dir).run(["photometry"])
        total = time.perf_counter() - t0
        out["profile"] = {"total": total, "main": timer.main, "background": timer.background}
    print(json.dumps(out))


def simulate(root, n_frames, size, n_stars):
    """A configured dataset folder of ``n_frames`` frames (reused when already there)."""
    from pipekit.config import write_reduction_config
    from pipekit.testing.simulate import simulate_dataset

    red_dir = Path(root) / f"{n_frames}x{size}x{n_stars}" / "TARGET" / "sinistro" / "ip"
    if (red_dir / "reduction_config.yaml").exists():
        return red_dir
    shutil.rmtree(red_dir, ignore_errors=True)
    # the field is ~1.3x the frame's area: ask for more stars so ~n_stars land on the detector
    truth = simulate_dataset(red_dir, n_frames=n_frames, shape=(size, size),
                             n_stars=int(n_stars * 1.35), seed=1, cadence_hours=0.5)
    write_reduction_config(red_dir / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    return red_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="8x2048x400,24x2048x400,8x4096x2000",
                        help="frames x size x stars, comma separated")
    parser.add_argument("--repeat", type=int, default=2, help="runs per case, best kept")
    parser.add_argument("--keep", help="keep (and reuse) the simulated frames in this folder")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-part profile")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.repeat, not args.no_profile)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pipekit-bench-"))
    rows = []
    try:
        for case in args.cases.split(","):
            n, size, stars = (int(v) for v in case.lower().split("x"))
            t0 = time.perf_counter()
            red_dir = simulate(root, n, size, stars)
            print(f"{case}: dataset ready in {time.perf_counter() - t0:.1f} s ({red_dir})",
                  flush=True)
            cmd = [sys.executable, __file__, "--child", str(red_dir), "--repeat", str(args.repeat)]
            if args.no_profile:
                cmd.append("--no-profile")
            env = dict(os.environ, PYTHONPATH=str(REPO))
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if res.returncode:
                print(res.stdout, res.stderr)
                raise SystemExit(f"{case}: the timing process failed")
            rows.append((case, json.loads(res.stdout.strip().splitlines()[-1])))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'case':16s} {'frames':>6s} {'processes':>9s} {'read (s)':>9s} {'step (s)':>9s} "
          f"{'step/read':>9s}  (target <= 1.5)")
    for case, r in rows:
        print(f"{case:16s} {r['n']:6d} {r['processes']:9d} {r['read']:9.2f} {r['step']:9.2f} "
              f"{r['step'] / r['read']:9.2f}   runs: step "
              + ", ".join(f"{v:.2f}" for v in r["steps"]) + "; read "
              + ", ".join(f"{v:.2f}" for v in r["reads"]))
    for case, r in rows:
        parts = ", ".join(f"{name} {sec:.2f} s" for name, sec in r["phases"].items())
        print(f"  {case}: the fastest step's phases: {parts}")
    for case, r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        n = r["n"]
        print(f"\nwhere the step's time goes, {case} (ms per frame, in one process: "
              f"photometry.processes 1; one profiled run of {prof['total']:.2f} s; read "
              f"alone {1000 * r['read'] / n:.0f} ms per frame)")
        main_parts = dict(prof["main"])
        counted = sum(main_parts.values())
        main_parts["pipeline engine, imports, rest"] = prof["total"] - counted
        for part, sec in sorted(main_parts.items(), key=lambda kv: -kv[1]):
            print(f"  {part:40s} {1000 * sec / n:8.1f}")


if __name__ == "__main__":
    main()
