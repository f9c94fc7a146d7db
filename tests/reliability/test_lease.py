"""Locks across hosts: a lease renewed by a heartbeat; an expired one is taken over from any host.

A Slurm job killed on node A (SIGKILL, node crash) leaves ``dataset.lock`` naming host A
and a checkpoint saying "running"; requeued on node B, ``pipekit manage`` must take the
lock over once its lease has expired (with a warning naming the old holder) and reduce
the dataset, instead of skipping it forever.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import _chain
from pipekit import locks
from pipekit.errors import LockError
from pipekit.locks import DatasetLock, is_stale, read_lock
from pipekit.pipeline import load
from test_signals import CLI, make_datasets, sleepy_env, wait_for


def write_foreign_lock(red_dir, age):
    path = red_dir / locks.LOCK_NAME
    path.write_text(json.dumps({"host": "node-a.cluster", "pid": 4242, "pipeline": "old-job",
                                "since": "2026-01-01T00:00:00+00:00", "token": "x" * 32}))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_foreign_lock_with_a_recent_heartbeat_is_respected(tmp_path):
    write_foreign_lock(tmp_path, age=5)
    with pytest.raises(LockError, match="node-a.cluster"):
        DatasetLock(tmp_path, "new", lease=60).acquire()


def test_foreign_lock_past_its_lease_is_taken_over_with_a_warning(tmp_path, caplog):
    write_foreign_lock(tmp_path, age=120)
    assert is_stale(read_lock(tmp_path), lease=60)
    with caplog.at_level(logging.WARNING, logger="pipekit.locks"):
        with DatasetLock(tmp_path, "new", lease=60):
            assert read_lock(tmp_path).pipeline == "new"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("old-job" in r.getMessage() and "node-a.cluster" in r.getMessage()
               for r in warnings), [r.getMessage() for r in warnings]
    assert not (tmp_path / locks.LOCK_NAME).exists()


def test_heartbeat_renews_the_lease_while_held(tmp_path):
    with DatasetLock(tmp_path, "holder", lease=0.5) as lock:
        time.sleep(1.5)
        info = read_lock(tmp_path)
        assert time.time() - info.mtime < 0.5
        assert not is_stale(info, lease=0.5)
        assert lock.held


def test_lease_from_the_environment(monkeypatch):
    monkeypatch.setenv(locks.LEASE_ENV, "12.5")
    assert locks.lease_seconds() == 12.5
    monkeypatch.setenv(locks.LEASE_ENV, "soon")
    with pytest.raises(LockError, match="PIPEKIT_LOCK_LEASE"):
        locks.lease_seconds()


def _unshare_works():
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    if os.geteuid() != 0:
        return "unshare -u needs root"
    probe = subprocess.run(["unshare", "-u", "true"], capture_output=True)
    return None if probe.returncode == 0 else f"unshare -u refused: {probe.stderr!r}"


@pytest.mark.timeout(240)
def test_requeued_job_on_another_host_takes_over_the_killed_run(tmp_path):
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    (red_dir,) = make_datasets(tmp_path, 1)
    env = sleepy_env(600)
    env[locks.LEASE_ENV] = "2"
    # "Node A": the same machine under another host name (a UTS namespace).
    script = f'hostname node-a-test && exec "{sys.executable}" "{CLI}" reduce "{red_dir}"'
    node_a = subprocess.Popen(["unshare", "-u", "sh", "-c", script], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for(lambda: list(red_dir.glob("started.*")), 90, "node A to start its step")
        assert read_lock(red_dir).host == "node-a-test"
    finally:
        os.killpg(node_a.pid, signal.SIGKILL)  # the node dies: no clean-up at all
        node_a.wait()
    assert load(red_dir / "logs" / "pipeline.p").status == "running"
    assert (red_dir / locks.LOCK_NAME).exists()

    config = _chain.write_manager_config(tmp_path)
    env = sleepy_env(0)
    env[locks.LEASE_ENV] = "2"
    time.sleep(2.5)  # the lease expires: nobody renews it
    proc = subprocess.run([sys.executable, str(CLI), "-v", "manage", str(config),
                           "--no-progress"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "took over the stale lock" in proc.stderr and "node-a-test" in proc.stderr
    assert load(red_dir / "logs" / "pipeline.p").status == "success"
    assert (red_dir / "photometry.done").exists()
    assert not (red_dir / locks.LOCK_NAME).exists()
