"""Dataset locks: atomic creation, the holder named, stale takeover, races."""

import json
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipekit import locks
from pipekit.errors import LockError, PipekitError
from pipekit.locks import (LOCK_NAME, DatasetLock, break_lock, is_locked, is_stale,
                           lock_path, read_lock)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _slow_judge(info, grace=locks.PARTIAL_GRACE, lease=None, _judge=locks.is_stale):
    stale = _judge(info, grace, lease)
    if stale:
        time.sleep(0.2)
    return stale


def _race_for_lock(red_dir, barrier, results, hold_s, slow_judge):
    """One racer (a spawned process): wait for all, then try to lock and 'reduce'."""
    if slow_judge:
        # Widen the window between judging a lock stale and removing it, so
        # every racer judges the dead holder's lock before any removes it. A
        # naive "unlink and retry" then lets several racers run.
        locks.is_stale = _slow_judge
    barrier.wait()
    try:
        with DatasetLock(red_dir, pipeline_name=f"racer-{os.getpid()}"):
            results.put(("ran", os.getpid(), ""))
            time.sleep(hold_s)  # hold it while the others try
    except LockError as exc:
        results.put(("locked", os.getpid(), str(exc)))
    except Exception as exc:  # anything else is a bug the test must see
        results.put(("crashed", os.getpid(), repr(exc)))


def _race(red_dir, n, hold_s=1.0, slow_judge=False):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_for_lock,
                         args=(str(red_dir), barrier, results, hold_s, slow_judge))
             for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    return outcomes


def _kill_while_holding(red_dir):
    """Start a process that takes the lock, SIGKILL it, return its pid."""
    code = ("import sys, time; from pipekit.locks import DatasetLock; "
            "DatasetLock(sys.argv[1], 'doomed').acquire(); print('held', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(red_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    return proc.pid


def test_lock_file_is_json_naming_holder_and_removed_on_release(tmp_path):
    lock = DatasetLock(tmp_path, pipeline_name="ogle-0034")
    with lock:
        assert lock.held
        data = json.loads((tmp_path / LOCK_NAME).read_text())
        assert data["host"] == socket.gethostname()
        assert data["pid"] == os.getpid()
        assert data["pipeline"] == "ogle-0034"
        assert data["since"].endswith("+00:00")
        assert is_locked(tmp_path)
        info = read_lock(tmp_path)
        assert (info.pid, info.pipeline, info.complete) == (os.getpid(), "ogle-0034", True)
    assert not lock.held
    assert not (tmp_path / LOCK_NAME).exists()
    assert not is_locked(tmp_path)
    assert read_lock(tmp_path) is None


def test_second_holder_gets_lock_error_naming_the_first(tmp_path):
    with DatasetLock(tmp_path, pipeline_name="first"):
        with pytest.raises(LockError) as err:
            DatasetLock(tmp_path, pipeline_name="second").acquire()
    msg = str(err.value)
    assert "'first'" in msg and f"pid {os.getpid()}" in msg
    assert socket.gethostname() in msg and str(lock_path(tmp_path)) in msg
    assert isinstance(err.value, PipekitError)


def test_release_in_finally_frees_the_dataset_after_an_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetLock(tmp_path, "crashy"):
            raise RuntimeError("step failed")
    assert not is_locked(tmp_path)
    DatasetLock(tmp_path).acquire().release()


def test_missing_folder_is_a_lock_error_naming_it(tmp_path):
    with pytest.raises(LockError, match="does not exist"):
        DatasetLock(tmp_path / "nope").acquire()


def test_release_leaves_a_lock_that_was_replaced_by_someone_else(tmp_path, caplog):
    lock = DatasetLock(tmp_path, "mine").acquire()
    break_lock(tmp_path)
    other = DatasetLock(tmp_path, "theirs").acquire()
    with caplog.at_level(logging.WARNING, logger="pipekit.locks"):
        lock.release()
    assert read_lock(tmp_path).pipeline == "theirs"
    assert "removed or replaced" in caplog.text
    other.release()


def test_pickled_lock_copy_does_not_hold_or_release(tmp_path):
    lock = DatasetLock(tmp_path, "orig").acquire()
    copy = pickle.loads(pickle.dumps(lock))
    assert not copy.held
    copy.release()
    assert is_locked(tmp_path)
    lock.release()


def test_lock_left_by_killed_process_is_taken_over_with_warning(tmp_path, caplog):
    dead_pid = _kill_while_holding(tmp_path)
    info = read_lock(tmp_path)
    assert info.pid == dead_pid and info.pipeline == "doomed"
    assert is_stale(info)
    assert not is_locked(tmp_path)  # stale counts as unlocked
    with caplog.at_level(logging.WARNING, logger="pipekit.locks"):
        with DatasetLock(tmp_path, "next-run"):
            assert read_lock(tmp_path).pid == os.getpid()
    assert "took over the stale lock" in caplog.text and f"pid {dead_pid}" in caplog.text


def test_lock_from_another_host_is_never_stale(tmp_path):
    lock_path(tmp_path).write_text(json.dumps(
        {"host": "some-other-node", "pid": 999999999, "pipeline": "remote",
         "since": "2026-01-01T00:00:00+00:00"}))
    assert is_locked(tmp_path)
    with pytest.raises(LockError, match="some-other-node"):
        DatasetLock(tmp_path).acquire()
    assert break_lock(tmp_path).host == "some-other-node"
    assert not lock_path(tmp_path).exists()


def test_reused_pid_makes_lock_stale(tmp_path):
    # pid 1 is alive, but it did not start at the recorded time: the holder is gone.
    lock_path(tmp_path).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": 1, "pipeline": "old", "since": "x",
         "pid_start": "-1"}))
    if not os.path.exists("/proc/1/stat"):
        pytest.skip("no /proc: process start times are not available")
    assert is_stale(read_lock(tmp_path))
    DatasetLock(tmp_path).acquire().release()


def test_unfinished_lock_file_counts_as_locked_until_grace_expires(tmp_path):
    path = lock_path(tmp_path)
    path.write_bytes(b'{"host": "')  # a racing writer, caught mid-write
    info = read_lock(tmp_path)
    assert not info.complete
    assert is_locked(tmp_path)
    with pytest.raises(LockError, match="unfinished lock file"):
        DatasetLock(tmp_path).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # its writer died long ago
    assert not is_locked(tmp_path)
    with DatasetLock(tmp_path, "after"):
        assert read_lock(tmp_path).pipeline == "after"


def test_sixteen_processes_race_for_one_dataset_exactly_one_runs(tmp_path):
    outcomes = _race(tmp_path, 16)
    kinds = sorted(kind for kind, _, _ in outcomes)
    assert kinds == ["locked"] * 15 + ["ran"], outcomes
    winner = next(pid for kind, pid, _ in outcomes if kind == "ran")
    for kind, _, msg in outcomes:
        if kind == "locked":  # the message names the holder, or its unfinished file
            assert f"pid {winner}" in msg or "unfinished lock file" in msg, msg
    assert not lock_path(tmp_path).exists()


def test_sixteen_processes_race_to_take_over_a_stale_lock_exactly_one_runs(tmp_path):
    _kill_while_holding(tmp_path)
    outcomes = _race(tmp_path, 16, slow_judge=True)
    kinds = sorted(kind for kind, _, _ in outcomes)
    assert kinds == ["locked"] * 15 + ["ran"], outcomes
    assert not lock_path(tmp_path).exists()
