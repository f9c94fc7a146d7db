"""Step functions for tests/test_manager.py.

They live in an importable module because spawned pool workers and Dask
workers load checkpoints that refer to them by module and name.
"""

import os
import time
from pathlib import Path


def write_marker(out_dir, label, seconds=0.0):
    """Sleep, then write ``<out_dir>/<label>.done`` holding this process's pid."""
    time.sleep(seconds)
    path = Path(out_dir) / f"{label}.done"
    path.write_text(str(os.getpid()))
    return {"status": "success", "path": str(path)}


def divide(numerator, denominator):
    """A step that raises ZeroDivisionError until its arguments are fixed."""
    return {"status": "success", "value": numerator / denominator}


def report_error(reason):
    """A step that returns status 'error'."""
    return {"status": "error", "message": reason}


def die_hard(code=13):
    """Kill the worker process outright, as a segfault or the OOM killer would."""
    os._exit(code)


def record_pipeline_name(out_dir, pipeline):
    """Write the running pipeline's name, showing the worker got the real pipeline."""
    path = Path(out_dir) / f"{pipeline.name}.name"
    path.write_text(pipeline.name)
    return {"status": "success"}


def die_once(marker):
    """Kill the worker the first time (leaving ``marker``), succeed when run again."""
    marker = Path(marker)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(13)
    return {"status": "success"}


def modules_loaded(names):
    """Which of ``names`` the worker had imported when the step ran."""
    import sys
    return {"status": "success", "loaded": [name for name in names if name in sys.modules]}


def cores_given():
    """The cores the Manager gave this pipeline (``PIPEKIT_CORES_PER_PIPELINE``)."""
    return {"status": "success", "cores": os.environ.get("PIPEKIT_CORES_PER_PIPELINE")}


def freed_memory_kept(out_dir, label, megabytes=16):
    """Fill and free one array; write how much of it (MB) this process still holds (its
    resident size after minus before) to ``<out_dir>/<label>.kept``."""
    import numpy as np

    def resident():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    a = np.ones(megabytes << 18, np.float32)
    del a
    kept = (resident() - before) / (1 << 20)
    (Path(out_dir) / f"{label}.kept").write_text(f"{kept:.1f}")
    return {"status": "success", "kept_mb": kept}


def gc_frozen(out_dir, label):
    """Write how many objects this process keeps out of its garbage collector's passes."""
    import gc

    (Path(out_dir) / f"{label}.frozen").write_text(str(gc.get_freeze_count()))
    return {"status": "success"}
