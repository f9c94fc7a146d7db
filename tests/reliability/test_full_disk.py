"""A full disk gives one line naming the path and the cause, and never a false success.

A tiny tmpfs (mounted in a private mount namespace, as root; skipped with the reason
otherwise) stands in for a full disk: under the reduction folder, sort cannot place
every frame and ``pipekit download`` exits 1 saying how many and why; under ``logs/``,
the run stops with one line naming the file. No traceback reaches the terminal.
"""

import os
import secrets
import subprocess
import sys

import pytest

import _chain
from pipekit.lco import list_frames
from pipekit.testing.archive_server import ArchiveServer
from pipekit.workflows import download_pipeline


def _can_mount_tmpfs(tmp_path):
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True)
    probe.rmdir()
    return None if result.returncode == 0 else f"cannot mount a tmpfs: {result.stderr!r}"


@pytest.fixture
def downloaded(tmp_path, monkeypatch):
    reason = _can_mount_tmpfs(tmp_path)
    if reason:
        pytest.skip(reason)
    _chain.simulate_archive(tmp_path / "archive", n_frames=6, shape=(128, 128))
    token = secrets.token_hex(12)
    monkeypatch.setenv(_chain.TOKEN_VAR, token)
    root = tmp_path / "work"
    root.mkdir()
    with ArchiveServer(tmp_path / "archive", token=token) as server:
        config = _chain.write_download_config(root, server.url)
        download_pipeline(config).run(["download"])
    assert len(list_frames(root / "downloads")) == 12
    return root, config, _chain.chain_env(**{_chain.TOKEN_VAR: token})


def run_on_full_tmpfs(folder, size, command, cwd, env, fill=False):
    folder.mkdir(parents=True, exist_ok=True)
    filler = f" && (dd if=/dev/zero of={folder}/filler bs=1k 2>/dev/null || true)" if fill else ""
    script = (f"mount -t tmpfs -o size={size} tmpfs {folder}{filler} && exec "
              + " ".join(f'"{part}"' for part in command))
    return subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_sort_onto_a_full_disk_exits_non_zero_naming_the_count_and_cause(downloaded):
    root, config, env = downloaded
    proc = run_on_full_tmpfs(root / "reduction", "160k",
                             [sys.executable, "-m", "pipekit.cli", "download", str(config),
                              "--tags", "sort"], root, env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "could not place" in lines[0] and "of 12 frames" in lines[0], lines[0]
    assert "No space left on device" in lines[0], lines[0]
    left = len(list_frames(root / "downloads"))
    assert 0 < left < 12
    assert f"could not place {left} of 12" in lines[0]


@pytest.mark.timeout(180)
def test_full_log_folder_gives_one_line_naming_the_file(downloaded):
    root, config, env = downloaded
    proc = run_on_full_tmpfs(root / "logs", "64k",
                             [sys.executable, "-m", "pipekit.cli", "download", str(config),
                              "--tags", "sort"], root, env, fill=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(root / "logs") in lines[0] and "No space left on device" in lines[0], lines[0]
