"""One download at a time per config: overlapping nightly runs never fetch a frame twice.

Two ``pipekit download`` processes start together on one ``data_download.yaml``
against the local archive server: the second stops at once with a clear message
(the first holds ``<log_dir>/download.lock``), every frame is served once and the
frame list has no duplicate line.
"""

import secrets
import subprocess
import sys
from collections import Counter

import pytest

import _chain
from pipekit.testing.archive_server import ArchiveServer


@pytest.mark.timeout(240)
def test_two_downloads_on_one_config_fetch_every_frame_once(tmp_path, monkeypatch):
    truths = _chain.simulate_archive(tmp_path / "archive", n_frames=6, shape=(128, 128))
    token = secrets.token_hex(12)
    root = tmp_path / "work"
    root.mkdir()
    env = _chain.chain_env(**{_chain.TOKEN_VAR: token})
    # Slow enough that the two runs overlap.
    with ArchiveServer(tmp_path / "archive", token=token, bandwidth=200_000) as server:
        config = _chain.write_download_config(root, server.url)
        procs = [subprocess.Popen([sys.executable, "-m", "pipekit.cli", "download", str(config),
                                   "--tags", "download"], cwd=root, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outputs = [p.communicate(timeout=200) for p in procs]
        served = dict(server.served)
    codes = sorted(p.returncode for p in procs)
    n_frames = sum(len(t.files) for t in truths)
    assert codes[0] == 0, outputs
    for proc, (out, err) in zip(procs, outputs):
        if proc.returncode != 0:
            assert proc.returncode == 1
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "another download with this config is running" in lines[0]
    assert len(served) == n_frames and set(served.values()) == {1}, served
    listed = [line for line in (root / "logs" / "frame_list.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert len(listed) == len(set(listed)) == n_frames, Counter(listed).most_common(3)
    assert not (root / "logs" / "download.lock").exists()
