"""Run the whole chain in one process: download, sort, configure, reduce every dataset.

Usage: python _chain_runner.py ROOT   (ROOT holds data_download.yaml)

Each pipeline resumes from its checkpoint when one exists
(``load(checkpoint).run(resume=True)``, or ``pipekit resume CHECKPOINT`` when
``$PIPEKIT_RESUME_WITH_CLI`` is set), so running this again after a SIGKILL
carries on where the killed run stopped. Exit code 0 when everything succeeded.
"""

import os
import sys
from pathlib import Path

from pipekit.datasets import list_datasets
from pipekit.pipeline import load
from pipekit.workflows import download_pipeline, reduction_pipeline


def run(build, checkpoint):
    if checkpoint.exists():
        if os.environ.get("PIPEKIT_RESUME_WITH_CLI"):  # as a user would: `pipekit resume`
            from pipekit.cli import main as pipekit
            return pipekit(["resume", str(checkpoint)]) == 0
        pipe = load(checkpoint)
        pipe.run(resume=True)
    else:
        pipe = build()
        pipe.run()
    return pipe.status == "success"


def main():
    root = Path(sys.argv[1]).resolve()
    ok = run(lambda: download_pipeline(root / "data_download.yaml"), root / "logs" / "pipeline.p")
    for red_dir in list_datasets(root / "reduction"):
        red_dir = Path(red_dir)
        ok = run(lambda: reduction_pipeline(red_dir), red_dir / "logs" / "pipeline.p") and ok
    print("CHAIN OK" if ok else "CHAIN FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
