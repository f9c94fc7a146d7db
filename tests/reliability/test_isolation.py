"""One bad dataset stops nothing: it becomes one error row; the others run; exit status 1.

Bad datasets: a read-only folder (a read-only bind mount in a private mount namespace,
as root; skipped with the reason otherwise), a non-UTF-8 byte in reduction_config.yaml,
a lock that cannot be read (a folder where the lock file should be). And a ``group:
file`` list that selects nothing says so.
"""

import os
import subprocess
import sys

import pytest

import _chain
from pipekit.manager import Manager
from test_signals import CLI, make_datasets, sleepy_env


def _can_bind_read_only(tmp_path):
    if os.geteuid() != 0:
        return "a read-only bind mount needs root"
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "-m", "sh", "-c",
                             f"mount --bind {probe} {probe} && "
                             f"mount -o remount,bind,ro {probe}"], capture_output=True)
    probe.rmdir()
    return None if result.returncode == 0 else f"cannot mount read-only: {result.stderr!r}"


@pytest.mark.timeout(180)
def test_bad_datasets_become_error_rows_and_the_others_run(tmp_path):
    reason = _can_bind_read_only(tmp_path)
    if reason:
        pytest.skip(reason)
    good, read_only, bad_bytes, bad_lock, good2 = make_datasets(tmp_path, 5)
    config_file = bad_bytes / "reduction_config.yaml"
    config_file.write_bytes(config_file.read_bytes().replace(b"name:", b"name: \xff", 1))
    (bad_lock / "dataset.lock").mkdir()
    config = _chain.write_manager_config(tmp_path, max_parallel=2)
    script = (f"mount --bind {read_only} {read_only} && "
              f"mount -o remount,bind,ro {read_only} && "
              f'exec "{sys.executable}" "{CLI}" manage "{config}" --no-progress')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path,
                          env=sleepy_env(0), capture_output=True, text=True, timeout=150)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for red_dir in (good, good2):
        assert (red_dir / "photometry.done").exists(), out + proc.stderr
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("T")}
    assert "success" in rows["T0/sinistro/ip"] and "success" in rows["T4/sinistro/ip"], out
    assert "error" in rows["T1/sinistro/ip"] and "Read-only file system" in rows["T1/sinistro/ip"]
    assert "error" in rows["T2/sinistro/ip"] and "reduction_config.yaml" in rows["T2/sinistro/ip"]
    assert "error" in rows["T3/sinistro/ip"] and "dataset.lock" in rows["T3/sinistro/ip"], out
    assert "5 pipelines: " in out and "3 error" in out, out


def test_a_file_list_that_selects_nothing_says_so(tmp_path, caplog):
    make_datasets(tmp_path, 1)
    listing = tmp_path / "datasets.txt"
    listing.write_text("# nothing yet\nno/such/dataset\n")
    config = tmp_path / "reduction_manager_config.yaml"
    config.write_text(f"log_dir: logs/manager\ndata_reduction_dir: {tmp_path / 'reduction'}\n"
                      f"dataset_selection:\n  group: file\n  file: {listing}\nmax_parallel: 1\n")
    mgr = Manager.from_config(config, progress=False)
    summary = mgr.run()
    assert not summary.ok
    assert summary[0]["status"] == "error" and "selects no dataset" in summary[0]["error"]
    assert any(r.levelname == "WARNING" and "selects no dataset" in r.getMessage()
               for r in caplog.records)
