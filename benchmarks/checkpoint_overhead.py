"""Per-step overhead of the step engine (bookkeeping + two checkpoints a step).

Runs the same 10 ms step N times bare and as an N-step pipeline with a log
path, side by side, and prints the overhead per step and its ratio to the
step's own work. With --steps 500 the results reference files, and the
overhead of the first and last hundred steps is printed to show whether it
grows with the number of steps.

    python benchmarks/checkpoint_overhead.py [--steps 100] [--work-ms 10]
"""

import argparse
import tempfile
import time
from pathlib import Path

from pipekit import Pipeline

WORK_S = 0.010


def work(index, folder):
    """About WORK_S of CPU work, then a small result that references a file."""
    end = time.perf_counter() + WORK_S
    x = 0
    while time.perf_counter() < end:
        x += 1
    return {"status": "success", "output": str(Path(folder) / f"frame_{index:04d}.ecsv"),
            "n_stars": 380}


def main():
    global WORK_S
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--work-ms", type=float, default=10.0)
    args = parser.parse_args()
    WORK_S = args.work_ms / 1000
    n = args.steps

    with tempfile.TemporaryDirectory() as tmp:
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

    per_step = (engine - bare) / n
    print(f"steps: {n}, step work: {args.work_ms:.1f} ms, checkpoint size: {size / 1024:.1f} KiB")
    print(f"bare loop: {bare:.3f} s, pipeline: {engine:.3f} s")
    print(f"engine overhead per step: {per_step * 1000:.2f} ms "
          f"= {per_step / WORK_S:.3f} x the step's own work")
    if n >= 200:
        # Wall time from one step's first checkpoint to the next step's, minus
        # the step's own duration, is the engine's share for that step.
        block = 100
        pipe2 = Pipeline(paths={"log": Path(tempfile.mkdtemp()) / "log"}, name="bench2")
        for i in range(n):
            pipe2.add_step(work, tags=["bench"], index=i, folder="/tmp")
        marks = []
        original = Pipeline.checkpoint

        def timed_checkpoint(self, path=None):
            marks.append(time.perf_counter())
            return original(self, path)
        Pipeline.checkpoint = timed_checkpoint
        pipe2.run()
        Pipeline.checkpoint = original
        durations = [s.duration for s in pipe2.steps]
        # two checkpoints per step (+1 at the end); step k starts after mark 2k
        step_walls = [marks[2 * k + 2] - marks[2 * k] for k in range(n)]
        first = sum(step_walls[:block]) / block - sum(durations[:block]) / block
        last = sum(step_walls[-block:]) / block - sum(durations[-block:]) / block
        print(f"overhead per step, first {block} steps: {first * 1000:.2f} ms; "
              f"last {block}: {last * 1000:.2f} ms; ratio last/first: {last / first:.2f}")


if __name__ == "__main__":
    main()
