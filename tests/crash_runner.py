"""Run a small pipeline in a subprocess so a test can SIGKILL it anywhere.

Usage: python crash_runner.py WORKDIR N_STEPS [--slow-write]

Each step appends its name to WORKDIR/ran.txt (fsynced); the step named by
$HOLD_STEP then touches WORKDIR/running-<name> and sleeps, so the parent can
kill it while that step runs. With --slow-write every checkpoint write (a whole
snapshot, or a step's record after it) goes in slow chunks and WORKDIR/writing
marks one in progress. The step functions
live in __main__, so dill pickles them by value, as it does in a notebook.
"""

import os
import sys
import time
from pathlib import Path

from pipekit import Pipeline
import pipekit.atomic
import pipekit.checkpoint


def work(label, workdir):
    with open(Path(workdir) / "ran.txt", "a") as fh:
        fh.write(label + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if os.environ.get("HOLD_STEP") == label:
        (Path(workdir) / f"running-{label}").touch()
        time.sleep(60)
    return {"status": "success", "step": label}


def slow_write(path, data):
    marker = Path(path).parent.parent / "writing"
    with pipekit.atomic.atomic_write(path, "wb") as fh:
        marker.touch()
        for i in range(0, len(data), 64):
            fh.write(data[i:i + 64])
            fh.flush()
            time.sleep(0.002)
    marker.unlink()
    return Path(path)


def slow_pwrite(fd, data, offset):
    if len(data) > 4096:  # zeroed space for records: not a checkpoint being written
        return original_pwrite(fd, data, offset)
    marker = Path(WORKDIR) / "writing"
    marker.touch()
    for i in range(0, len(data), 16):
        os.pwrite(fd, data[i:i + 16], offset + i)
        time.sleep(0.002)
    marker.unlink()


original_pwrite = pipekit.checkpoint._pwrite
WORKDIR = None


def main():
    global WORKDIR
    workdir, n_steps = sys.argv[1], int(sys.argv[2])
    WORKDIR = workdir
    if "--slow-write" in sys.argv:
        pipekit.checkpoint.write_bytes_atomic = slow_write
        pipekit.checkpoint._pwrite = slow_pwrite
    pipe = Pipeline(paths={"log": Path(workdir) / "log"}, name="crash")
    for i in range(n_steps):
        pipe.add_step(work, tags=["all"], name=f"s{i}", label=f"s{i}", workdir=workdir)
    pipe.run()


if __name__ == "__main__":
    main()
