"""How the Manager scales on real reductions: 2 pool workers against 1, and a Dask cluster.

Simulates three sets of datasets with `pipekit.testing.simulate` (sorted and
configured as the download pipeline leaves them), then reduces each set with
``Manager`` (photometry, light curve; upload off) on a process pool of 1 and
of 2 workers, side by side, and prints the speed-up of 2 workers over 1:

    (a) 4 datasets of 6 frames of 1024x1024
    (b) 8 datasets of 20 frames of 512x512
    (c) 40 datasets of 3 frames of 256x256

On (b) it also runs a 2-worker Dask ``LocalCluster`` and prints its wall time
against the 2-worker pool. The pool's fork server (which imports pipekit and
its science libraries once for every worker of this process) is started first
and its start-up printed, not counted, as the Dask cluster's is not. Each
configuration's line also says where its wall time went: each worker's time
inside pipelines, and the rest (worker start, checkpoints, the parent). Every run reduces fresh copies of the datasets (the
copy is not timed). Each configuration runs ``--repeat`` times, interleaved,
and the best wall time is kept: on a shared machine other processes can only
slow a run down. The target is a speed-up of at least 1.8 on 2 cores.

    python benchmarks/manager_reductions.py [--sets a b c] [--repeat 3] [--no-dask]
                                            [--default-cores]

Each pipeline gets one core (``PIPEKIT_CORES_PER_PIPELINE=1``), with 1 worker as with 2, so
that the figure is the Manager's own parallelism; ``--default-cores`` leaves the cores to
the Manager (a 1-worker Manager then measures its one dataset's frames on every core).
"""

import os
import sys

# One thread per worker: the point is process parallelism, not BLAS threads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# One core per pipeline, with 1 worker as with 2: what is measured is the Manager's own
# parallelism. A Manager of 1 worker gives its pipeline every core by default (photometry in
# one process per core): --default-cores measures that instead.
if "--default-cores" not in sys.argv:
    os.environ.setdefault("PIPEKIT_CORES_PER_PIPELINE", "1")

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipekit import Manager  # noqa: E402
from pipekit.datasets import configure_dataset, sort_frames  # noqa: E402
from pipekit.worker import pool_context  # noqa: E402
from pipekit.workflows import reduction_pipeline  # noqa: E402

SETS = {"a": dict(n_datasets=4, n_frames=6, shape=(1024, 1024), n_stars=150),
        "b": dict(n_datasets=8, n_frames=20, shape=(512, 512), n_stars=80),
        "c": dict(n_datasets=40, n_frames=3, shape=(256, 256), n_stars=100)}


def _simulate(downloads, k, n_frames, shape, n_stars):
    from pipekit.testing.simulate import simulate_dataset
    simulate_dataset(downloads, n_frames=n_frames, shape=shape, n_stars=n_stars, seed=100 + k,
                     target=f"BENCH-2026-BLG-{k:04d}", first_frame_number=1 + 100 * k)


def make_set(root, n_datasets, n_frames, shape, n_stars):
    """Simulate, sort and configure ``n_datasets`` datasets under ``root``; return their dirs."""
    downloads = root / "downloads"
    context = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
        list(pool.map(_simulate, [downloads] * n_datasets, range(n_datasets),
                      [n_frames] * n_datasets, [shape] * n_datasets, [n_stars] * n_datasets))
    result = sort_frames(downloads, root / "reduction")
    red_dirs = sorted(Path(d) for d in result.sorted)
    for red_dir in red_dirs:
        configure_dataset(red_dir)
        config = red_dir / "reduction_config.yaml"
        text = config.read_text()
        if "upload: true" in text:
            config.write_text(text.replace("upload: true", "upload: false"))
    if len(red_dirs) != n_datasets:
        raise SystemExit(f"expected {n_datasets} datasets, sorted {len(red_dirs)}")
    return red_dirs


def timed_run(pristine, scratch, **manager_kwargs):
    """(wall time, summary rows) of one Manager run over fresh copies of ``pristine``."""
    work = scratch / "run"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine / "reduction", work)
    red_dirs = sorted(p.parent for p in work.glob("*/*/*/reduction_config.yaml"))
    t0 = time.perf_counter()
    mgr = Manager([reduction_pipeline(d) for d in red_dirs], progress=False, **manager_kwargs)
    summary = mgr.run()
    elapsed = time.perf_counter() - t0
    if not summary.ok:
        raise SystemExit(f"reductions failed:\n{summary!r}")
    return elapsed, list(summary)


def where_it_goes(elapsed, rows):
    """The wall time split: each worker's time inside pipelines, and the rest."""
    per_worker = {}
    for row in rows:
        key = (row["host"], row["pid"])
        per_worker[key] = per_worker.get(key, 0.0) + row["duration"]
    busiest = max(per_worker.values())
    inside = " + ".join(f"{t:.1f}" for t in sorted(per_worker.values(), reverse=True))
    return (f"in pipelines per worker {inside} s; outside the busiest worker's pipelines "
            f"(worker start and imports, checkpoints, the parent) {elapsed - busiest:.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask cluster on (b)")
    parser.add_argument("--default-cores", action="store_true",
                        help="leave the cores per pipeline to the Manager (every core with 1 "
                             "worker) instead of one core per pipeline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # Dask resets its loggers to INFO
    logging.getLogger("distributed").setLevel(logging.WARNING)

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          "at the start")
    t0 = time.perf_counter()
    context = pool_context()
    with cf.ProcessPoolExecutor(1, mp_context=context) as pool:
        pool.submit(int).result()
    print(f"{context.get_start_method()} pool: start-up with its imports "
          f"{time.perf_counter() - t0:.1f} s (once per process, not counted)", flush=True)
    cluster = client = None
    results = {}
    with tempfile.TemporaryDirectory(prefix="pipekit-bench-") as tmp:
        for name in args.sets:
            spec = SETS[name]
            pristine = Path(tmp) / name
            t0 = time.perf_counter()
            make_set(pristine, **spec)
            print(f"({name}) {spec['n_datasets']} datasets of {spec['n_frames']} frames of "
                  f"{spec['shape'][0]}x{spec['shape'][1]}, simulated in "
                  f"{time.perf_counter() - t0:.0f} s (not counted)", flush=True)
            configs = {"pool, 1 worker": dict(max_parallel=1),
                       "pool, 2 workers": dict(max_parallel=2)}
            if name == "b" and not args.no_dask:
                from distributed import Client, LocalCluster
                cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None, host="127.0.0.1",
                                       silence_logs=logging.WARNING)
                client = Client(cluster)
                configs["dask LocalCluster, 2 workers"] = dict(executor=client)
            best = {label: (float("inf"), None) for label in configs}
            for _ in range(args.repeat):
                for label, kwargs in configs.items():
                    best[label] = min(best[label], timed_run(pristine, Path(tmp), **kwargs),
                                      key=lambda pair: pair[0])
            if client is not None:
                client.close()
                cluster.close()
                client = cluster = None
            best = results[name] = {label: pair for label, pair in best.items()}
            one = best["pool, 1 worker"][0]
            for label, (elapsed, rows) in best.items():
                print(f"    {label:30s} {elapsed:7.2f} s  speed-up {one / elapsed:5.2f}x\n"
                      f"        {where_it_goes(elapsed, rows)}", flush=True)
            if "dask LocalCluster, 2 workers" in best:
                ratio = best["dask LocalCluster, 2 workers"][0] / best["pool, 2 workers"][0]
                print(f"    dask / pool with 2 workers: {ratio:.2f} (target <= 1.10)")
    print("speed-up of 2 pool workers over 1 (target >= 1.8): " + ", ".join(
        f"({name}) {r['pool, 1 worker'][0] / r['pool, 2 workers'][0]:.2f}"
        for name, r in results.items()))
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
