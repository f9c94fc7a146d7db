"""Two managers at once on one reduction folder: every dataset reduced exactly once.

Two ``pipekit manage`` processes (each with a pool of workers) start together on
the same ``reduction_manager_config.yaml``; every per-frame photometry write in
any process is logged (``_writecount/sitecustomize.py``), and each frame must be
measured exactly once, each dataset end with its light curve.
"""

import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import _chain
from pipekit.testing.archive_server import ArchiveServer
from pipekit.workflows import download_pipeline

HERE = Path(__file__).resolve().parent
FOUR = _chain.DATASETS + (("lsc", "1m005", "fa15", "gp"), ("coj", "0m409", "sq34", "ip"))
EXCLUDED = {"reference_stars.ecsv", "rejected_frames.json", "rejected_frames_stamps.json"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_managers_started_together_measure_every_frame_exactly_once(tmp_path, monkeypatch):
    truths = _chain.simulate_archive(tmp_path / "archive", n_frames=10, datasets=FOUR)
    token = secrets.token_hex(12)
    monkeypatch.setenv(_chain.TOKEN_VAR, token)
    root = tmp_path / "work"
    root.mkdir()
    with ArchiveServer(tmp_path / "archive", token=token) as server:
        _chain.write_download_config(root, server.url)
        pipe = download_pipeline(root / "data_download.yaml")
        pipe.run()
    config = _chain.write_manager_config(root, max_parallel=2)
    datasets = sorted((root / "reduction").glob("*/*/*/reduction_config.yaml"))
    assert len(datasets) == 4

    write_log = tmp_path / "writes.log"
    env = _chain.chain_env(PIPEKIT_WRITE_LOG=write_log)
    env["PYTHONPATH"] = f"{HERE / '_writecount'}:{env['PYTHONPATH']}"
    procs = [subprocess.Popen([sys.executable, "-m", "pipekit.cli", "manage", str(config),
                               "--no-progress"], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    codes = [p.returncode for p in procs]

    # No process is killed here: every write that began also ended; count the ends.
    writes = Counter(Path(line.split(" ", 2)[2]) for line in write_log.read_text().splitlines()
                     if line.startswith("end "))
    per_frame = {p: n for p, n in writes.items() if p.name not in EXCLUDED}
    n_frames = sum(len(t.files) for t in truths)
    assert len(per_frame) == n_frames, f"{len(per_frame)} frames measured of {n_frames}"
    twice = {p.name: n for p, n in per_frame.items() if n != 1}
    assert not twice, f"measured more than once: {twice}\n" + "\n".join(outputs)
    references = {p: n for p, n in writes.items() if p.name == "reference_stars.ecsv"}
    assert len(references) == 4 and set(references.values()) == {1}, references
    from pipekit.pipeline import load
    for cfg in datasets:
        assert list(cfg.parent.glob("*_lc.ecsv")), f"{cfg.parent}: no light curve"
        assert not (cfg.parent / "dataset.lock").exists()
        saved = load(cfg.parent / "logs" / "pipeline.p")
        assert saved.status == "success" and saved.step("lightcurve").status == "success"
    # Each manager either reduced a dataset or said clearly that the other one held it.
    assert 0 in codes or all("locked" in out for out in outputs), outputs
    for out, code in zip(outputs, codes):
        if code != 0:
            assert "locked" in out.lower(), out
