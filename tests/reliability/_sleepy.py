"""Reduction steps that sleep, for the signal tests (imported by the CLI and its workers).

Importing this module replaces the reduction steps of `pipekit.steps` with these, so
``reduction_pipeline`` builds pipelines whose photometry sleeps ``$PIPEKIT_TEST_SLEEP``
seconds. The functions live here, importable by name, so pool workers load them.
"""

import os
import time
from pathlib import Path

from pipekit import steps


def sleepy_photometry(red_dir, pipeline=None):
    """Write ``started.<pid>``, sleep, write ``photometry.done``."""
    Path(red_dir, f"started.{os.getpid()}").write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("PIPEKIT_TEST_SLEEP", "0")))
    Path(red_dir, "photometry.done").write_text("done")
    return {"status": "success"}


def quick(red_dir, pipeline=None):
    """A step that succeeds at once."""
    return {"status": "success"}


steps.photometry = sleepy_photometry
steps.lightcurve = quick
steps.upload = quick
