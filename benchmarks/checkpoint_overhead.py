"""Per-step overhead of the step engine at 100, 500 and 2000 steps, in one run.

For each size N, runs the same 10 ms step N times in a bare loop and as an
N-step pipeline with a log path (checkpoints: a snapshot when the run starts and
ends, a record before and after each step), side by side, and prints the
overhead per step two ways: the pipeline's wall time minus the bare loop's, and
the pipeline's wall time minus its steps' own recorded durations (the time the
engine spends outside the step functions; steadier on a busy machine, where a
10 ms busy loop overshoots by a different amount in every run). Then the ratio
of the per-step overhead at the largest size to that at the smallest: flat is 1.0.
The results reference files, as real steps' do. Within the largest run, the
overhead of its first and last hundred steps is printed too (from the steps'
own start times), to show whether a step costs more late in a run.

    python benchmarks/checkpoint_overhead.py [--steps 100 500 2000] [--work-ms 10] [--repeat 2]

Each size runs ``--repeat`` times and the least overhead is kept: on a shared
machine other processes can only slow a run down.
"""

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from pipekit import Pipeline

WORK_S = 0.010


def work(index, folder):
    """About WORK_S of wall time, then a small result that references a file."""
    end = time.perf_counter() + WORK_S
    x = 0
    while time.perf_counter() < end:
        x += 1
    return {"status": "success", "output": str(Path(folder) / f"frame_{index:04d}.ecsv"),
            "n_stars": 380}


def measure(n):
    """(bare loop s, pipeline s, checkpoint bytes, pipeline) for n steps."""
    with tempfile.TemporaryDirectory(prefix="pipekit-bench-") as tmp:
        t0 = time.perf_counter()
        for i in range(n):
            work(index=i, folder=tmp)
        bare = time.perf_counter() - t0

        pipe = Pipeline(paths={"log": Path(tmp) / "log"}, name="bench")
        for i in range(n):
            pipe.add_step(work, tags=["bench"], index=i, folder=tmp)
        t0 = time.perf_counter()
        pipe.run()
        engine = time.perf_counter() - t0
        size = (Path(tmp) / "log" / "pipeline.p").stat().st_size
    return bare, engine, size, pipe


def block_overhead(steps):
    """Mean wall time from one step's start to the next's, minus the step's duration (s)."""
    starts = [dt.datetime.fromisoformat(s.started).timestamp() for s in steps]
    gaps = [b - a - s.duration for a, b, s in zip(starts, starts[1:], steps)]
    return sum(gaps) / len(gaps)


def main():
    global WORK_S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--work-ms", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    WORK_S = args.work_ms / 1000
    load = os.getloadavg()
    print(f"step work: {args.work_ms:.1f} ms; {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the start")
    print(f"{'steps':>6s} {'bare':>8s} {'pipeline':>9s} {'vs bare loop':>13s} "
          f"{'outside steps':>14s} {'x work':>7s} {'checkpoint':>11s}")
    per_step, last_pipe = {}, None
    for n in args.steps:
        best = None
        for _ in range(args.repeat):
            bare, engine, size, pipe = measure(n)
            outside = engine - sum(s.duration for s in pipe.steps)
            if best is None or outside < best[4]:
                best = (bare, engine, size, pipe, outside)
        bare, engine, size, last_pipe, outside = best
        per_step[n] = outside / n
        print(f"{n:6d} {bare:7.2f}s {engine:8.2f}s {(engine - bare) / n * 1000:10.2f} ms "
              f"{per_step[n] * 1000:11.2f} ms {per_step[n] / WORK_S:7.3f} "
              f"{size / 1024:8.1f} KiB")
    small, large = min(per_step), max(per_step)
    print(f"overhead per step (outside the steps) at {large} steps / at {small} steps: "
          f"{per_step[large] / per_step[small]:.2f} (flat: 1.0; target: <= 2 ms a step)")
    block = min(100, len(last_pipe.steps) // 2)
    first = block_overhead(last_pipe.steps[:block + 1])
    last = block_overhead(last_pipe.steps[-block - 1:])
    print(f"within the {large}-step run: first {block} steps {first * 1000:.2f} ms a step, "
          f"last {block} {last * 1000:.2f} ms (ratio {last / first:.2f})")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
