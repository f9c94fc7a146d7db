"""SIGTERM (Slurm at walltime, ``kill``) and SIGINT stop pipekit cleanly, with real processes.

The running step is recorded "interrupted", the checkpoint written, the lock released, the
exit status is 143 (SIGTERM) with one line saying how to resume; ``pipekit manage`` passes
the signal on to its pool workers and leaves no process behind; a later run finishes.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _chain
from pipekit.config import write_reduction_config
from pipekit.pipeline import load

HERE = Path(__file__).resolve().parent
CLI = HERE / "_sleepy_cli.py"


def make_datasets(root, n):
    red_dirs = []
    for k in range(n):
        red_dir = Path(root) / "reduction" / f"T{k}" / "sinistro" / "ip"
        red_dir.mkdir(parents=True)
        write_reduction_config(red_dir / "reduction_config.yaml", f"T{k}", "17:59:02.304",
                               "-28:00:00.0")
        red_dirs.append(red_dir)
    return red_dirs


def sleepy_env(seconds):
    env = _chain.chain_env(PIPEKIT_TEST_SLEEP=seconds)
    env["PYTHONPATH"] = f"{HERE}{os.pathsep}{env['PYTHONPATH']}"
    return env


def start(args, root, seconds):
    return subprocess.Popen([sys.executable, str(CLI), *map(str, args)], cwd=root,
                            env=sleepy_env(seconds), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid):
    """Pids of every live descendant of ``pid`` (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:].split()[0] != b"Z"


@pytest.mark.timeout(180)
def test_sigterm_to_reduce_records_interrupted_releases_lock_and_says_how_to_resume(tmp_path):
    (red_dir,) = make_datasets(tmp_path, 1)
    proc = start(["reduce", red_dir], tmp_path, 60)
    wait_for(lambda: list(red_dir.glob("started.*")), 60, "the step to start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pipekit resume" in lines[0] and "SIGTERM" in lines[0], err
    assert not (red_dir / "dataset.lock").exists()
    pipe = load(red_dir / "logs" / "pipeline.p")
    assert pipe.status == "interrupted"
    assert pipe.step("sleepy_photometry").status == "interrupted"

    proc = start(["resume", red_dir], tmp_path, 0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert load(red_dir / "logs" / "pipeline.p").status == "success"


@pytest.mark.timeout(240)
def test_sigterm_to_manage_stops_workers_promptly_and_a_later_run_finishes(tmp_path):
    red_dirs = make_datasets(tmp_path, 3)
    config = _chain.write_manager_config(tmp_path, max_parallel=2)
    proc = start(["manage", config, "--no-progress"], tmp_path, 120)
    wait_for(lambda: sum(bool(list(d.glob("started.*"))) for d in red_dirs) >= 2, 120,
             "two datasets to start")
    workers = descendants(proc.pid)
    assert workers
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert elapsed < 10, f"manage took {elapsed:.1f} s to stop"
    assert "pipekit manage" in err.splitlines()[-1]
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)], "worker processes left behind"
    assert not list(tmp_path.glob("reduction/*/*/*/dataset.lock"))
    statuses = {}
    for red_dir in red_dirs:
        checkpoint = red_dir / "logs" / "pipeline.p"
        statuses[red_dir.parts[-3]] = load(checkpoint).status if checkpoint.exists() else None
    started = [d.parts[-3] for d in red_dirs if list(d.glob("started.*"))]
    assert all(statuses[name] == "interrupted" for name in started), statuses
    assert "running" not in statuses.values(), statuses

    proc = start(["manage", config, "--no-progress"], tmp_path, 0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    for red_dir in red_dirs:
        assert (red_dir / "photometry.done").exists()
        assert load(red_dir / "logs" / "pipeline.p").status == "success"


@pytest.mark.timeout(120)
def test_sigint_to_reduce_exits_130(tmp_path):
    (red_dir,) = make_datasets(tmp_path, 1)
    proc = start(["reduce", red_dir], tmp_path, 60)
    wait_for(lambda: list(red_dir.glob("started.*")), 60, "the step to start")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "SIGINT" in err and "pipekit resume" in err
    assert not (red_dir / "dataset.lock").exists()
    assert load(red_dir / "logs" / "pipeline.p").status == "interrupted"


def _send_sigterm_to_self():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the signal arrives first
    return {"status": "success"}


def test_pipeline_run_turns_sigterm_into_terminated_and_restores_the_handler(tmp_path):
    from pipekit import Pipeline
    from pipekit.signals import Terminated

    before = signal.getsignal(signal.SIGTERM)
    assert before == signal.SIG_DFL  # pytest leaves SIGTERM at its default
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="p")
    pipe.add_step(_send_sigterm_to_self, tags=["x"])
    with pytest.raises(Terminated):
        pipe.run()
    assert signal.getsignal(signal.SIGTERM) == before
    saved = load(tmp_path / "logs" / "pipeline.p")
    assert saved.status == "interrupted" and saved.steps[0].status == "interrupted"


@pytest.mark.timeout(180)
def test_a_second_sigterm_stops_manage_at_once_even_with_stubborn_workers(tmp_path):
    red_dirs = make_datasets(tmp_path, 2)
    config = _chain.write_manager_config(tmp_path, max_parallel=2)
    env = sleepy_env(120)
    env["PIPEKIT_TEST_IGNORE_TERM"] = "1"
    proc = subprocess.Popen([sys.executable, str(CLI), "manage", str(config), "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: all(list(d.glob("started.*")) for d in red_dirs), 120, "both to start")
    workers = descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None  # waiting for its workers, which ignore SIGTERM
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    # "at once": well before the 120 s the stubborn workers would take (a loaded CI
    # machine needs a few seconds to reap them)
    assert time.monotonic() - t0 < 15, "the second signal did not stop at once"
    assert proc.returncode == 143, err
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)], "worker processes left behind"
    for red_dir in red_dirs:
        assert load(red_dir / "logs" / "pipeline.p").status == "interrupted"
