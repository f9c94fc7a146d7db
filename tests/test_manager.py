"""The Manager: many pipelines on a process pool, any executor, or a Dask cluster."""

import datetime
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import _manager_steps as steps
from pipekit import Manager, Pipeline, PipelineError, load
from pipekit.config import write_reduction_config
from pipekit.errors import ConfigError
from pipekit.locks import DatasetLock
from pipekit.manager import Summary, run_checkpoint


def _make_pipelines(root, n=6, broken=3, crash=None, seconds=0.3):
    """``n`` two-step pipelines writing markers under ``root/out``; ``broken`` raises
    ZeroDivisionError in its second step, ``crash`` kills its worker process."""
    out = root / "out"
    out.mkdir(exist_ok=True)
    pipes = []
    for k in range(n):
        name = f"ds{k}"
        pipe = Pipeline(paths={"log": root / name / "logs"}, name=name)
        pipe.add_step(steps.write_marker, tags=["photometry"], out_dir=str(out), label=name,
                      seconds=seconds)
        if k == crash:
            pipe.add_step(steps.die_hard, tags=["lightcurve"])
        pipe.add_step(steps.divide, tags=["lightcurve"], numerator=1,
                      denominator=0 if k == broken else 1)
        pipe.add_step(steps.write_marker, tags=["lightcurve"], out_dir=str(out),
                      label=f"{name}_lc")
        pipes.append(pipe)
    return pipes, out


def _check_five_succeed_one_fails(mgr, summary, out):
    assert isinstance(summary, Summary) and len(summary) == 6
    by_name = {row["name"]: row for row in summary}
    assert [row["name"] for row in summary] == [f"ds{k}" for k in range(6)]  # order kept
    assert sorted(r["status"] for r in summary) == ["error"] + ["success"] * 5
    bad = by_name["ds3"]
    assert bad["failed_step"] == "divide"
    assert "ZeroDivisionError" in bad["error"] and "'ds3'" in bad["error"]
    assert summary.failed == [bad] and not summary.ok
    for k in range(6):
        assert (out / f"ds{k}.done").exists()
        assert (out / f"ds{k}_lc.done").exists() == (k != 3)
        assert by_name[f"ds{k}"]["duration"] >= 0.3 - 0.05  # the first step sleeps 0.3 s
    # the parent reloaded every checkpoint: the steps' outcomes are visible
    assert [p.status for p in mgr.pipelines] == ["success"] * 3 + ["error"] + ["success"] * 2
    assert [s.status for s in mgr.pipelines[3].steps] == ["success", "error", "not run"]
    assert "ZeroDivisionError" in mgr.pipelines[3].steps[1].error
    assert all(s.status == "success" for s in mgr.pipelines[0].steps)


def _fix_and_resume(checkpoint, out):
    before = (out / "ds3.done").stat().st_mtime_ns
    pipe = load(checkpoint)
    assert pipe.status == "error" and pipe.failed_step == "divide"
    pipe.step("divide").func_kwargs["denominator"] = 4
    pipe.run(resume=True)
    assert pipe.status == "success"
    assert pipe.step("divide").result["value"] == pytest.approx(0.25, abs=0)
    assert (out / "ds3_lc.done").exists()
    assert (out / "ds3.done").stat().st_mtime_ns == before  # step 1 was not run again
    assert load(checkpoint).status == "success"


def test_six_pipelines_two_workers_one_broken_five_succeed_and_fix_resumes(tmp_path):
    pipes, out = _make_pipelines(tmp_path)
    mgr = Manager(pipes, max_parallel=2, progress=False)
    summary = mgr.run()
    _check_five_succeed_one_fails(mgr, summary, out)
    pids = {int((out / f"ds{k}.done").read_text()) for k in range(6)}
    assert len(pids) <= 2 and os.getpid() not in pids  # two worker processes, not us
    assert all(mgr.pipelines[k] is not pipes[k] for k in range(6))
    _fix_and_resume(summary[3]["checkpoint"], out)


def test_six_pipelines_on_dask_local_cluster_one_broken_five_succeed(tmp_path):
    distributed = pytest.importorskip("distributed")
    pipes, out = _make_pipelines(tmp_path)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=":0", host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        mgr = Manager(pipes, executor=client, progress=False)
        summary = mgr.run()
        worker_pids = set(client.run(os.getpid).values())
    _check_five_succeed_one_fails(mgr, summary, out)
    pids = {int((out / f"ds{k}.done").read_text()) for k in range(6)}
    assert pids <= worker_pids and os.getpid() not in pids  # ran on the Dask workers
    _fix_and_resume(summary[3]["checkpoint"], out)


def test_dask_retry_after_a_worker_death_resumes_instead_of_restarting(tmp_path):
    distributed = pytest.importorskip("distributed")
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="fragile")
    pipe.add_step(steps.write_marker, out_dir=str(tmp_path), label="first")
    pipe.add_step(steps.die_once, marker=str(tmp_path / "died"))
    pipe.add_step(steps.write_marker, out_dir=str(tmp_path), label="last")
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address=":0", host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        summary = Manager([pipe], executor=client, progress=False).run()
    assert summary.ok, summary
    dead = int((tmp_path / "died").read_text())
    assert int((tmp_path / "first.done").read_text()) == dead  # not re-run after the death
    assert int((tmp_path / "last.done").read_text()) != dead  # a new worker finished it


def test_thread_pool_executor_runs_every_pipeline(tmp_path):
    pipes, out = _make_pipelines(tmp_path, seconds=0.05)
    with ThreadPoolExecutor(max_workers=3) as pool:
        summary = Manager(pipes, executor=pool, progress=False).run()
    assert [r["status"] for r in summary] == ["success"] * 3 + ["error"] + ["success"] * 2
    assert {int((out / f"ds{k}.done").read_text()) for k in range(6)} == {os.getpid()}


def test_worker_killed_mid_step_is_reported_for_that_pipeline_only(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=4, broken=None, crash=1, seconds=0.2)
    summary = Manager(pipes, max_parallel=2, progress=False).run()  # must not raise
    assert [r["status"] for r in summary] == ["success", "error", "success", "success"]
    assert summary[1]["failed_step"] == "die_hard"
    assert "worker process died" in summary[1]["error"]
    for k in (0, 2, 3):
        assert (out / f"ds{k}_lc.done").exists()
    crashed = load(summary[1]["checkpoint"])
    assert crashed.status == "error" and crashed.failed_step == "die_hard"
    assert crashed.step("die_hard").status == "error"
    assert crashed.steps[0].status == "success"


def test_resume_through_manager_runs_only_what_is_left(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=2, broken=1, seconds=0.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        mgr = Manager(pipes, executor=pool, progress=False)
        assert [r["status"] for r in mgr.run()] == ["success", "error"]
        mgr.pipelines[1].step("divide").func_kwargs["denominator"] = 2
        (out / "ds0.done").unlink()
        (out / "ds1.done").unlink()
        summary = mgr.run(resume=True)
    assert [r["status"] for r in summary] == ["success", "success"]
    assert not (out / "ds0.done").exists() and not (out / "ds1.done").exists()
    assert (out / "ds1_lc.done").exists()


def test_run_tags_are_passed_to_every_pipeline(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=2, broken=None, seconds=0.0)
    with ThreadPoolExecutor(max_workers=2) as pool:
        summary = Manager(pipes, executor=pool, progress=False).run(run_tags=["photometry"])
    assert summary.ok
    assert (out / "ds0.done").exists() and not (out / "ds0_lc.done").exists()


def test_pipeline_without_log_path_gets_one_under_log_dir(tmp_path):
    pipe = Pipeline(name="no log/here")
    pipe.add_step(steps.write_marker, out_dir=str(tmp_path), label="x")
    with ThreadPoolExecutor(max_workers=1) as pool:
        mgr = Manager([pipe], executor=pool, progress=False, log_dir=tmp_path / "mlogs")
        summary = mgr.run()
    assert summary.ok
    checkpoint = tmp_path / "mlogs" / "000-no_log_here" / "pipeline.p"
    assert summary[0]["checkpoint"] == str(checkpoint) and checkpoint.exists()
    assert load(checkpoint).steps[0].status == "success"


def test_checkpoint_paths_are_accepted_in_place_of_pipelines(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=2, broken=None, seconds=0.0)
    paths = [p.checkpoint() for p in pipes]
    with ThreadPoolExecutor(max_workers=2) as pool:
        mgr = Manager([paths[0], paths[1].parent], executor=pool, progress=False)
        assert [p.name for p in mgr.pipelines] == ["ds0", "ds1"]
        assert mgr.run().ok


def test_unpicklable_pipeline_is_reported_and_others_still_run(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=2, broken=None, seconds=0.0)
    pipes[0].add_step(steps.divide, numerator=(x for x in [1]), denominator=1, name="bad")
    with ThreadPoolExecutor(max_workers=2) as pool:
        summary = Manager(pipes, executor=pool, progress=False).run()
    assert summary[0]["status"] == "error"
    assert "cannot be sent to a worker" in summary[0]["error"] and "'bad'" in summary[0]["error"]
    assert summary[1]["status"] == "success" and (out / "ds1_lc.done").exists()


def test_two_pipelines_sharing_a_checkpoint_are_refused(tmp_path):
    a = Pipeline(paths={"log": tmp_path}, name="a")
    b = Pipeline(paths={"log": tmp_path}, name="b")
    with pytest.raises(PipelineError, match="share the checkpoint"):
        Manager([a, b], progress=False).run()


def test_locally_defined_step_travels_by_value_to_spawn_worker(tmp_path):
    factor = 7  # a closure, as a notebook cell would define it

    def scaled(value):
        return {"status": "success", "value": value * factor, "pid": os.getpid()}

    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="local")
    pipe.add_step(scaled, value=6)
    pipe.add_step(steps.record_pipeline_name, out_dir=str(tmp_path))
    mgr = Manager([pipe], max_parallel=1, progress=False)
    assert mgr.run().ok
    result = mgr.pipelines[0].steps[0].result
    assert result["value"] == 42 and result["pid"] != os.getpid()
    assert (tmp_path / "local.name").read_text() == "local"


def test_worker_function_summarises_a_run_from_a_checkpoint_path(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=1, broken=0, seconds=0.0)
    row = run_checkpoint(str(pipes[0].checkpoint()))
    assert row["status"] == "error" and row["failed_step"] == "divide"
    assert row["pid"] == os.getpid() and row["duration"] >= 0
    assert load(row["checkpoint"]).failed_step == "divide"


def test_retried_task_resumes_where_its_dead_attempt_stopped(tmp_path):
    pipes, out = _make_pipelines(tmp_path, n=1, broken=0, seconds=0.0)
    path = str(pipes[0].checkpoint())
    stamp = pipes[0].started  # what the parent saw when it submitted the task
    assert run_checkpoint(path, {}, stamp)["status"] == "error"  # the first attempt
    first = (out / "ds0.done").stat().st_mtime_ns
    pipe = load(path)
    pipe.step("divide").func_kwargs["denominator"] = 2
    pipe.checkpoint()
    row = run_checkpoint(path, {}, stamp)  # the same task again, as Dask retries it
    assert row["status"] == "success"
    assert (out / "ds0.done").stat().st_mtime_ns == first  # resumed, not restarted
    assert (out / "ds0_lc.done").exists()


def test_summary_shows_a_table_in_text_and_html():
    summary = Summary([
        {"name": "ds0", "status": "success", "failed_step": None, "duration": 1.25,
         "error": None},
        {"name": "ds1", "status": "error", "failed_step": "divide", "duration": 0.5,
         "error": "step 'divide' raised ZeroDivisionError: " + "x" * 200},
    ])
    text = repr(summary)
    assert text.splitlines()[0] == "2 pipelines: 1 success, 1 error"
    assert "ds1" in text and "divide" in text and "1.2 s" in text
    assert max(len(line) for line in text.splitlines()) < 150  # long errors are cut
    page = summary._repr_html_()
    assert page.count("<tr") == 3 and "#f8d7da" in page


def test_progress_bar_counts_pipelines_on_stderr(tmp_path, capsys):
    pipes, out = _make_pipelines(tmp_path, n=3, broken=None, seconds=0.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert Manager(pipes, executor=pool).run().ok
    err = capsys.readouterr().err
    assert "pipelines" in err and "3/3" in err


def test_manager_with_no_pipelines_returns_an_empty_summary():
    summary = Manager([], progress=False).run()
    assert summary == [] and summary.ok


def test_bad_arguments_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(PipelineError, match="max_parallel"):
        Manager([], max_parallel=0)
    with pytest.raises(PipelineError, match="executor must be"):
        Manager([], executor="localhost:8786")
    with pytest.raises(ConfigError, match="reduction_manager_config.yaml"):
        Manager.from_config(tmp_path / "reduction_manager_config.yaml")  # missing


# ---- Manager.from_config: dataset selection, locked and broken datasets ----------

TODAY = datetime.date.today()
OLD_DAY = datetime.date(2026, 7, 30)


def _dataset(red, target, klass, filt, camera, day, config=True):
    red_dir = red / target / klass / filt
    red_dir.mkdir(parents=True)
    # Selection reads only names (camera, DAY-OBS) and folders, never pixels.
    (red_dir / f"lsc1m005-{camera}-{day:%Y%m%d}-0101-e91.fits.fz").write_bytes(b"")
    if config is True:
        write_reduction_config(red_dir / "reduction_config.yaml", target, 270.0, -30.0)
    elif config:
        (red_dir / "reduction_config.yaml").write_text(config)
    return red_dir


@pytest.fixture
def reduction_tree(tmp_path):
    red = tmp_path / "reduction"
    dirs = {
        "old_sinistro": _dataset(red, "OGLE-1", "sinistro", "ip", "fa15", OLD_DAY),
        "new_sbig": _dataset(red, "OGLE-1", "sbig", "gp", "kb27", TODAY),
        "new_sinistro": _dataset(red, "OGLE-2", "sinistro", "ip", "fa03", TODAY),
        "floyds": _dataset(red, "OGLE-2", "floyds", "none", "en06", TODAY),
    }
    return tmp_path, red, dirs


def _manager_config(root, red, selection, instruments=("sinistro", "sbig")):
    lines = [f"log_dir: {root / 'mlogs'}", f"data_reduction_dir: {red}",
             "instrument_list: [" + ", ".join(instruments) + "]",
             "dataset_selection:"] + [f"  {k}: {v}" for k, v in selection.items()]
    lines.append("max_parallel: 3")
    path = root / "reduction_manager_config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _red_dirs(mgr):
    return sorted(str(p.red_dir) for p in mgr.pipelines)


@pytest.mark.parametrize("selection, expected", [
    ({"group": "all"}, ["new_sbig", "new_sinistro", "old_sinistro"]),
    ({"group": "recent", "ndays": 2}, ["new_sbig", "new_sinistro"]),
    ({"group": "date", "start_date": "2026-07-29", "end_date": "2026-07-31"},
     ["old_sinistro"]),
    ({"group": "file", "file": "LIST"}, ["new_sinistro", "old_sinistro"]),
], ids=["all", "recent", "date", "file"])
def test_from_config_builds_one_reduction_pipeline_per_selected_dataset(reduction_tree,
                                                                        selection, expected):
    root, red, dirs = reduction_tree
    if selection.get("file") == "LIST":
        listing = root / "datasets.txt"
        listing.write_text("# tonight\nOGLE-2/sinistro/ip\nOGLE-1/sinistro/ip\n"
                           "OGLE-2/floyds/none\n")  # floyds: not in instrument_list
        selection = {"group": "file", "file": str(listing)}
    mgr = Manager.from_config(_manager_config(root, red, selection), progress=False)
    assert _red_dirs(mgr) == sorted(str(dirs[k].resolve()) for k in expected)
    assert mgr.max_parallel == 3 and mgr.log_dir == root / "mlogs"
    assert mgr.config.dataset_selection.group == selection["group"]
    for pipe in mgr.pipelines:
        assert pipe.checkpoint_path == pipe.red_dir / "logs" / "pipeline.p"
        assert [s.tags for s in pipe.steps] == [["photometry"], ["lightcurve"], ["upload"]]


def test_from_config_skips_locked_datasets_and_reports_broken_configs(reduction_tree):
    root, red, dirs = reduction_tree
    broken = _dataset(red, "OGLE-3", "sinistro", "rp", "fa15", TODAY,
                      config="target:\n  name: OGLE-3\n  RA: nowhere\n  Dec: -30.0\n")
    lock = DatasetLock(dirs["new_sinistro"], "someone-else").acquire()
    try:
        mgr = Manager.from_config(_manager_config(root, red, {"group": "all"}),
                                  max_parallel=1, progress=False)
        assert mgr.max_parallel == 1  # a keyword wins over the config
        assert _red_dirs(mgr) == sorted(str(dirs[k].resolve())
                                        for k in ("new_sbig", "old_sinistro"))
        # run no step at all: the summary still lists every dataset with its fate
        summary = mgr.run(run_tags=["nothing-has-this-tag"])
    finally:
        lock.release()
    by_dir = {row.get("red_dir") or row["checkpoint"]: row for row in summary}
    assert len(summary) == 4 and [r["status"] for r in summary[:2]] == ["success"] * 2
    locked = by_dir[str(dirs["new_sinistro"])]
    assert locked["status"] == "skipped" and "'someone-else'" in locked["error"]
    bad = by_dir[str(broken)]
    assert bad["status"] == "error" and "RA" in bad["error"]
    assert summary.ok is False and summary.failed == [bad]
    assert (root / "mlogs" / "manager.log").read_text().count("skipped") >= 1


def test_dataset_locked_after_selection_is_skipped_at_run_time(reduction_tree):
    root, red, dirs = reduction_tree
    mgr = Manager.from_config(_manager_config(root, red, {"group": "all"}),
                              executor=ThreadPoolExecutor(max_workers=1), progress=False)
    with DatasetLock(dirs["old_sinistro"], "night-run"):
        summary = mgr.run(run_tags=["nothing-has-this-tag"])
    mgr.executor.shutdown()
    rows = {row["name"]: row for row in summary}
    late = rows["OGLE-1/sinistro/ip"]
    assert late["status"] == "skipped" and "'night-run'" in late["error"]
    assert rows["OGLE-1/sbig/gp"]["status"] == "success"
    assert summary.ok  # skipped is not a failure


def test_manager_never_overwrites_the_checkpoint_of_a_dataset_another_run_holds(tmp_path):
    from pipekit.workflows import DatasetPipeline
    red_dir = tmp_path / "dataset"
    red_dir.mkdir()
    pipe = DatasetPipeline(red_dir, paths={"log": red_dir / "logs"}, name="dataset")
    pipe.add_step(steps.write_marker, out_dir=str(tmp_path), label="ran")
    record = red_dir / "logs" / "pipeline.p"
    record.write_bytes(b"the record of the run that holds the lock")
    with DatasetLock(red_dir, "the other manager"):
        summary = Manager([pipe], executor=ThreadPoolExecutor(1), progress=False).run()
    assert summary[0]["status"] == "skipped" and "the other manager" in summary[0]["error"]
    assert record.read_bytes() == b"the record of the run that holds the lock"
    assert not list(tmp_path.glob("ran*"))


def test_pool_workers_import_the_step_modules_when_they_start(tmp_path):
    from pipekit.worker import warm_up

    warm_up(["json", "no_such_module_for_pipekit"])  # a bad name is left for the run to report
    pipe = Pipeline(paths={"log": tmp_path / "log"}, name="warm")
    # "pipekit.steps" brings what pipekit's reduction steps import on first use
    pipe.add_step(steps.modules_loaded, names=["_manager_steps", "photutils.detection",
                                               "matplotlib.figure"])
    stand_in = lambda: None  # noqa: E731 - travels by value; its module name is all that counts
    stand_in.__module__ = "pipekit.steps"  # as if one of pipekit's reduction steps
    pipe.add_step(stand_in, name="reduction_stand_in")
    summary = Manager([pipe], max_parallel=1, progress=False).run()
    assert summary.ok
    loaded = load(tmp_path / "log").step("modules_loaded").result["loaded"]
    assert loaded == ["_manager_steps", "photutils.detection", "matplotlib.figure"]


def test_pool_workers_share_the_cores_between_their_pipelines(tmp_path, monkeypatch):
    from pipekit.worker import CORES_ENV, usable_cores

    monkeypatch.delenv(CORES_ENV, raising=False)
    pipes = []
    for i in range(2):
        pipe = Pipeline(paths={"log": tmp_path / f"log{i}"}, name=f"p{i}")
        pipe.add_step(steps.cores_given)
        pipes.append(pipe)
    for workers in (1, 2):
        assert Manager(pipes, max_parallel=workers, progress=False).run().ok
        given = {load(tmp_path / f"log{i}").step("cores_given").result["cores"] for i in range(2)}
        assert given == {str(max(1, usable_cores() // workers))}, workers
    monkeypatch.setenv(CORES_ENV, "1")   # the user's own setting wins
    assert Manager(pipes, max_parallel=1, progress=False).run().ok
    assert load(tmp_path / "log0").step("cores_given").result["cores"] == "1"


_GLIBC = platform.libc_ver()[0] == "glibc" and os.path.exists("/proc/self/statm")


def _kept(path):
    return float(path.read_text())


@pytest.mark.skipif(not _GLIBC, reason="malloc tuning is glibc's (mallopt)")
def test_reuse_freed_memory_keeps_a_freed_array_for_the_next(tmp_path):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_, which makes glibc map every array over
    128 kB afresh and return it when freed (the next frame faults it in again); after
    `reuse_freed_memory` a freed 64 MB array stays in the process for reuse."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from _manager_steps import "
            "freed_memory_kept as k; from pipekit.worker import reuse_freed_memory as r; "
            "k(sys.argv[2], 'before'); print(r()); k(sys.argv[2], 'after')")
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert _kept(tmp_path / "before.kept") < 4
    assert _kept(tmp_path / "after.kept") > 12


@pytest.mark.skipif(not _GLIBC, reason="malloc tuning is glibc's (mallopt)")
def test_pipelines_on_dask_workers_reuse_freed_memory(tmp_path):
    distributed = pytest.importorskip("distributed")
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="kept")
    pipe.add_step(steps.freed_memory_kept, out_dir=str(tmp_path), label="dask")
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1,
                                  dashboard_address=":0", host="127.0.0.1") as cluster, \
            distributed.Client(cluster) as client:
        summary = Manager([pipe], executor=client, progress=False).run()
        trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert summary.ok, summary
    assert set(trim.values()) == {"65536"}  # what the nanny sets, which pipekit undoes
    assert _kept(tmp_path / "dask.kept") > 12


def test_dask_workers_in_the_users_process_leave_its_malloc_alone(tmp_path, monkeypatch):
    """A Dask worker in threads of this process (``processes=False``) is the user's process:
    `reuse_freed_memory` is not called there."""
    distributed = pytest.importorskip("distributed")
    import pipekit.worker

    calls = []
    monkeypatch.setattr(pipekit.worker, "reuse_freed_memory", lambda: calls.append(1))
    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="threads")
    pipe.add_step(steps.write_marker, out_dir=str(tmp_path), label="here")
    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        summary = Manager([pipe], executor=client, progress=False).run()
    assert summary.ok and calls == []
    assert int((tmp_path / "here.done").read_text()) == os.getpid()


@pytest.mark.skipif(not _GLIBC, reason="malloc tuning is glibc's (mallopt)")
def test_pool_workers_reuse_freed_memory_and_keep_their_imports_frozen(tmp_path):
    """The Manager's pool workers (processes of their own) are set up by
    `start_pool_worker`; `warm_up` alone, which anyone may call, changes nothing."""
    import gc

    from pipekit.worker import warm_up

    pipe = Pipeline(paths={"log": tmp_path / "logs"}, name="pool")
    pipe.add_step(steps.freed_memory_kept, out_dir=str(tmp_path), label="pool")
    pipe.add_step(steps.gc_frozen, out_dir=str(tmp_path), label="pool")
    summary = Manager([pipe], max_parallel=1, progress=False).run()
    assert summary.ok, summary
    assert _kept(tmp_path / "pool.kept") > 12
    assert int((tmp_path / "pool.frozen").read_text()) > 1000
    frozen = gc.get_freeze_count()
    warm_up(["json"])
    assert gc.get_freeze_count() == frozen
