"""Shared fixtures: where the real LCO data lives, and skip rules for it."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# One real TOM Toolkit server for the whole session (tests/tom_server/fixture.py).
pytest_plugins = ["tom_server.fixture"]


def shared_data_dir():
    """The real LCO test data: ``$PIPEKIT_SHARED_DATA`` or ``../shared/data/lco``."""
    env = os.environ.get("PIPEKIT_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data" / "lco"


@pytest.fixture(scope="session")
def lco_data():
    """Path to ``../shared/data/lco``; the test is skipped when it is absent."""
    folder = shared_data_dir()
    if not (folder / "archive_headers.json").exists():
        pytest.skip(f"real LCO data not found at {folder} (needs ../shared beside the repo)")
    return folder
