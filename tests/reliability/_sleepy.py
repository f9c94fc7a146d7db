"""Reduction steps that sleep, for the signal tests (used by the CLI and its workers).

`install` replaces the reduction steps of `pipekit.steps` with these, so
``reduction_pipeline`` builds pipelines whose photometry sleeps ``$PIPEKIT_TEST_SLEEP``
seconds (and fails while ``<red_dir>/fail`` exists). The functions live here,
importable by name, so pool workers load them.
"""

import os
import signal
import time
from pathlib import Path

from pipekit import steps


def sleepy_photometry(red_dir, pipeline=None):
    """Write ``started.<pid>``, sleep, write ``photometry.done`` (fail while ``fail`` exists)."""
    if Path(red_dir, "fail").exists():
        return {"status": "error", "error": f"{red_dir}/fail exists"}
    if os.environ.get("PIPEKIT_TEST_IGNORE_TERM"):  # a stubborn step: only SIGKILL stops it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(red_dir, f"started.{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("PIPEKIT_TEST_SLEEP", "0")))
    Path(red_dir, "photometry.done").write_text("done")
    return {"status": "success"}


def quick(red_dir, pipeline=None):
    """A step that succeeds at once."""
    return {"status": "success"}


def install(patch=None):
    """Make `pipekit.steps` use these steps (``patch``: a pytest monkeypatch, undone after)."""
    setattr_ = patch.setattr if patch is not None else setattr
    setattr_(steps, "photometry", sleepy_photometry)
    setattr_(steps, "lightcurve", quick)
    setattr_(steps, "upload", quick)
