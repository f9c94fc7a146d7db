"""The step engine: selection, flags, resume, checkpoints, crash safety."""

import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dill
import pytest

import pipekit.pipeline as pipeline_module
from pipekit import Pipeline, PipelineError, load

HERE = Path(__file__).resolve().parent


def ok(**kwargs):
    return {"status": "success", **kwargs}


def fails(**kwargs):
    return {"status": "error", "message": "bad frame"}


def boom():
    raise ValueError("kaput")


def make(tmp_path, **kwargs):
    return Pipeline(paths={"log": tmp_path / "log"}, name="p", **kwargs)


def names(steps):
    return [s.name for s in steps]


# -- building -----------------------------------------------------------------

def test_single_string_tag_is_one_tag(tmp_path):
    step = make(tmp_path).add_step(ok, tags="photometry")
    assert step.tags == ["photometry"]


def test_default_names_are_unique_and_stable(tmp_path):
    pipe = make(tmp_path)
    steps = [pipe.add_step(ok), pipe.add_step(ok), pipe.add_step(lambda: 1), pipe.add_step(ok)]
    assert names(steps) == ["ok", "ok_2", "lambda", "ok_3"]
    with pytest.raises(PipelineError, match="already has a step named 'ok_2'"):
        pipe.add_step(ok, name="ok_2")


def test_paths_created_refused_or_prompt_without_terminal(tmp_path, monkeypatch):
    Pipeline(paths={"log": tmp_path / "a" / "log"}, create_paths=True)
    assert (tmp_path / "a" / "log").is_dir()
    with pytest.raises(PipelineError, match="do not exist; create them or pass create_paths=True"):
        Pipeline(paths={"log": tmp_path / "b"}, create_paths=False)
    assert not (tmp_path / "b").exists()

    class NoTTY:
        def isatty(self):
            return False
    monkeypatch.setattr(sys, "stdin", NoTTY())
    with pytest.raises(PipelineError, match="there is no terminal to ask"):
        Pipeline(paths={"log": tmp_path / "c"}, create_paths="prompt")
    assert not (tmp_path / "c").exists()


def test_prompt_on_a_terminal_asks(tmp_path, monkeypatch):
    class TTY:
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stdin", TTY())
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    Pipeline(paths={"log": tmp_path / "yes"}, create_paths="prompt")
    assert (tmp_path / "yes").is_dir()
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(PipelineError, match="not created"):
        Pipeline(paths={"log": tmp_path / "no"}, create_paths="prompt")
    assert not (tmp_path / "no").exists()


def test_build_paths_is_astromatic_wrappers_name_for_create_paths(tmp_path):
    Pipeline({"log": tmp_path / "built"}, build_paths=True)
    assert (tmp_path / "built").is_dir()
    with pytest.raises(PipelineError, match="do not exist"):
        Pipeline({"log": tmp_path / "refused"}, build_paths=False)
    assert not (tmp_path / "refused").exists()
    Pipeline({"log": tmp_path / "both"}, build_paths=True, create_paths=True)
    with pytest.raises(TypeError, match="create_paths=False and its alias build_paths=True"):
        Pipeline({"log": tmp_path / "clash"}, build_paths=True, create_paths=False)


def test_extra_keywords_become_attributes_and_survive_checkpoint_and_load(tmp_path):
    pipe = Pipeline({"log": tmp_path / "log"}, build_paths=True, name="seed",
                    field="OGLE-2026-BLG-0034", aperture_radii=[3, 5], weather={"sky": "clear"})
    assert pipe.field == "OGLE-2026-BLG-0034" and pipe.aperture_radii == [3, 5]
    assert pipe.extra_attributes == ["aperture_radii", "field", "weather"]
    pipe.add_step(ok)
    pipe.run()
    back = load(tmp_path / "log" / "pipeline.p")
    assert (back.field, back.aperture_radii, back.weather) == (
        "OGLE-2026-BLG-0034", [3, 5], {"sky": "clear"})
    assert back.extra_attributes == ["aperture_radii", "field", "weather"]


@pytest.mark.parametrize("key", ["run", "steps", "status", "checkpoint", "run_step_idx",
                                 "extra_attributes", "_warned"])
def test_extra_keyword_may_not_shadow_the_pipelines_own_names(tmp_path, key):
    with pytest.raises(TypeError, match=f"keyword '{key}' would shadow"):
        Pipeline({"log": tmp_path / "log"}, **{key: 1})


# -- selection ----------------------------------------------------------------

def tagged(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(ok, tags=["download"], name="a")
    pipe.add_step(ok, tags=["sort", "slow"], name="b")
    pipe.add_step(ok, tags=["photometry", "slow"], name="c")
    pipe.add_step(ok, tags=["photometry"], name="d")
    return pipe


def test_run_tags_select_and_ignore_tags_take_precedence(tmp_path):
    pipe = tagged(tmp_path)
    pipe.run(["photometry"])
    assert names(pipe.run_steps) == ["c", "d"]
    assert [s.status for s in pipe.steps] == ["not run", "not run", "success", "success"]
    pipe.run(run_tags=["photometry", "sort"], ignore_tags=["slow"])
    assert names(pipe.run_steps) == ["d"]
    pipe.run(ignore_tags="slow")
    assert names(pipe.run_steps) == ["a", "d"]


def test_explicit_run_steps_by_object_or_name(tmp_path):
    pipe = tagged(tmp_path)
    pipe.run(run_steps=[pipe.steps[3], "a"])
    assert names(pipe.run_steps) == ["d", "a"]
    other = make(tmp_path).add_step(ok)
    with pytest.raises(PipelineError, match="does not belong"):
        pipe.run(run_steps=[other])
    with pytest.raises(PipelineError, match="not both"):
        pipe.run(run_tags=["sort"], run_steps=["a"])


# -- statuses and flags ---------------------------------------------------------

def test_non_dict_return_is_unknown_and_does_not_stop(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(lambda: 42)
    pipe.add_step(lambda: {"no": "status"})
    pipe.add_step(ok)
    pipe.run()
    assert [s.status for s in pipe.steps] == ["unknown", "unknown", "success"]
    assert pipe.steps[0].result == 42
    assert pipe.status == "success"


def test_error_status_raises_and_leaves_index_on_failed_step(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(ok, name="first")
    pipe.add_step(fails, name="bad")
    pipe.add_step(ok, name="never")
    with pytest.raises(PipelineError, match="step 'bad' of pipeline 'p' returned status 'error': bad frame"):
        pipe.run()
    assert pipe.run_step_idx == 1 and pipe.failed_step == "bad" and pipe.status == "error"
    assert pipe.steps[2].status == "not run"
    saved = load(tmp_path / "log" / "pipeline.p")
    assert saved.run_step_idx == 1 and saved.steps[1].status == "error"


def test_step_level_ignore_errors_lets_the_run_continue(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(fails, name="bad", ignore_errors=True)
    pipe.add_step(ok, name="after")
    pipe.run()
    assert [s.status for s in pipe.steps] == ["error", "success"]
    assert pipe.failed_step == "bad"


def test_exception_is_chained_and_ignore_exceptions_goes_on(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(boom, name="boom")
    pipe.add_step(ok, name="after")
    with pytest.raises(PipelineError, match="step 'boom' of pipeline 'p' raised ValueError: kaput") as info:
        pipe.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert "ValueError: kaput" in pipe.steps[0].error and pipe.steps[1].status == "not run"

    pipe.steps[0].ignore_exceptions = True
    pipe.run()
    assert [s.status for s in pipe.steps] == ["error", "success"]


def test_run_level_flags_override_step_flags_for_one_run(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(fails, name="bad", ignore_errors=True)
    pipe.add_step(boom, name="boom")
    pipe.add_step(ok, name="after")
    pipe.run(ignore_exceptions=True)
    assert [s.status for s in pipe.steps] == ["error", "error", "success"]
    with pytest.raises(PipelineError, match="'bad'"):
        pipe.run(ignore_errors=False, ignore_exceptions=True)
    # The override lasted one run: the step flags are back.
    with pytest.raises(PipelineError, match="'boom'"):
        pipe.run()


def test_retries_rerun_a_raising_step_with_backoff(tmp_path):
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("archive down")
        return {"status": "success"}

    pipe = make(tmp_path)
    pipe.retry_backoff = 0.05
    step = pipe.add_step(flaky, retries=2)
    pipe.run()
    assert step.status == "success" and step.attempts == 3
    assert calls[2] - calls[1] >= 0.09  # the second wait is twice the first

    calls.clear()
    pipe2 = make(tmp_path / "2")
    pipe2.retry_backoff = 0
    pipe2.add_step(flaky, retries=1)
    with pytest.raises(PipelineError, match="ConnectionError"):
        pipe2.run()
    assert pipe2.steps[0].attempts == 2


def test_step_records_times_and_duration(tmp_path):
    pipe = make(tmp_path)
    step = pipe.add_step(lambda: (time.sleep(0.05), {"status": "success"})[1])
    pipe.run()
    assert step.duration >= 0.05 and step.attempts == 1
    assert step.started < step.finished and step.started.endswith("+00:00")


def test_pipeline_and_step_parameters_are_injected(tmp_path):
    seen = {}

    def inspect_me(value, pipeline, step):
        seen.update(pipeline=pipeline, step=step, value=value)
        return ok()

    pipe = make(tmp_path)
    step = pipe.add_step(inspect_me, value=3)
    pipe.run()
    assert seen == {"pipeline": pipe, "step": step, "value": 3}


def test_kwargs_are_deep_copied_per_call(tmp_path):
    def mutate(items):
        items.append("x")
        return ok(n=len(items))

    pipe = make(tmp_path)
    step = pipe.add_step(mutate, items=[])
    pipe.run()
    pipe.run()
    assert step.func_kwargs == {"items": []} and step.result["n"] == 1


# -- resume -------------------------------------------------------------------

def test_resume_with_no_earlier_run_starts_fresh(tmp_path):
    pipe = tagged(tmp_path)
    pipe.run(resume=True)
    assert [s.status for s in pipe.steps] == ["success"] * 4


def test_start_idx_without_and_with_resume(tmp_path):
    pipe = tagged(tmp_path)
    pipe.run(["photometry", "sort"], start_idx=1)
    assert names(pipe.run_steps) == ["b", "c", "d"]
    assert [s.status for s in pipe.steps] == ["not run", "not run", "success", "success"]

    pipe = tagged(tmp_path / "2")
    pipe.steps[2].func = fails
    with pytest.raises(PipelineError):
        pipe.run()
    pipe.steps[2].func = ok
    pipe.run(resume=True, start_idx=3)  # skip the failed step
    assert [s.status for s in pipe.steps] == ["success", "success", "error", "success"]


def test_resume_keeps_selection_and_picks_up_edited_kwargs(tmp_path):
    def needs(threshold):
        return ok() if threshold > 1 else {"status": "error", "message": "threshold too low"}

    pipe = make(tmp_path)
    pipe.add_step(ok, tags=["a"], name="one")
    pipe.add_step(needs, tags=["a"], name="two", threshold=0)
    pipe.add_step(ok, tags=["b"], name="not-selected")
    with pytest.raises(PipelineError, match="threshold too low"):
        pipe.run(["a"])
    loaded = load(tmp_path / "log" / "pipeline.p")
    loaded.steps[1].func_kwargs["threshold"] = 5
    first_finished = loaded.steps[0].finished
    loaded.run(resume=True)
    assert [s.status for s in loaded.steps] == ["success", "success", "not run"]
    assert loaded.steps[0].finished == first_finished  # not re-run


# -- checkpoints --------------------------------------------------------------

def test_checkpoint_round_trips_lambdas_and_local_functions(tmp_path):
    offset = 10

    def local(x):
        return ok(value=x + offset)

    pipe = make(tmp_path)
    pipe.add_step(lambda: ok(value=1), name="lam")
    pipe.add_step(local, name="loc", x=5)
    pipe.run()
    again = load(tmp_path / "log")
    again.run()
    assert [s.result["value"] for s in again.steps] == [1, 15]
    with open(tmp_path / "log" / "pipeline.p", "rb") as fh:
        assert isinstance(dill.load(fh), Pipeline)
    assert isinstance(Pipeline.load(tmp_path / "log" / "pipeline.p"), Pipeline)


def test_checkpoint_written_before_each_step(tmp_path):
    seen = []

    def look(pipeline, step):
        saved = load(pipeline.checkpoint_path)
        seen.append((saved.run_step_idx, saved.step(step.name).status))
        return ok()

    pipe = make(tmp_path)
    pipe.add_step(look)
    pipe.add_step(look)
    pipe.run()
    assert seen == [(0, "running"), (1, "running")]


def test_incompatible_format_is_refused_clearly(tmp_path, monkeypatch):
    pipe = make(tmp_path)
    pipe.add_step(ok)
    pipe.run()
    written = pipeline_module.CHECKPOINT_FORMAT
    monkeypatch.setattr(pipeline_module, "CHECKPOINT_FORMAT", 99)
    with pytest.raises(PipelineError, match=f"format {written} but this pipekit reads format 99"):
        load(tmp_path / "log" / "pipeline.p")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(PipelineError, match="no checkpoint at"):
        load(tmp_path / "missing.p")
    bad = tmp_path / "bad.p"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(PipelineError, match=f"cannot load {bad}: not a readable"):
        load(bad)
    other = tmp_path / "other.p"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(PipelineError, match="holds a dict, not a pipekit Pipeline"):
        load(other)


def test_unpicklable_result_keeps_previous_checkpoint_and_warns_once(tmp_path, caplog):
    pipe = make(tmp_path)
    pipe.add_step(ok, name="good", n=1)
    pipe.add_step(lambda: ok(handle=(i for i in range(3))), name="holds_generator")
    pipe.add_step(ok, name="later")
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        pipe.run()
    warnings = [r.getMessage() for r in caplog.records if "not updated" in r.getMessage()]
    assert len(warnings) == 1
    assert "step 'holds_generator' result" in warnings[0] and "['handle']" in warnings[0]
    assert "generator" in warnings[0]
    saved = load(tmp_path / "log")
    assert saved.steps[0].status == "success" and saved.steps[1].status == "running"


def test_large_result_warns(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(pipeline_module, "LARGE_RESULT_BYTES", 1000)
    pipe = make(tmp_path)
    pipe.add_step(lambda: ok(data=b"x" * 5000), name="big")
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        pipe.run()
    assert any("step big returned a result of" in r.getMessage() for r in caplog.records)


def test_log_file_has_time_level_step_status_duration(tmp_path):
    pipe = make(tmp_path)
    pipe.add_step(ok, tags="t", name="first")
    pipe.add_step(fails, name="second", ignore_errors=True)
    pipe.run()
    text = (tmp_path / "log" / "pipeline.log").read_text()
    assert "INFO pipekit.pipeline: step first [t]: success in" in text
    assert "ERROR pipekit.pipeline: step second []: error in" in text
    assert text[:4].isdigit()  # starts with the date


def test_repr_and_html_show_the_step_table(tmp_path):
    pipe = tagged(tmp_path)
    pipe.run(["sort"])
    text = repr(pipe)
    assert "1  b     sort, slow        success" in text and "not run" in text
    page = pipe._repr_html_()
    assert page.count("<tr") == 5 and "<td>sort, slow</td>" in page


# -- crash safety (subprocess + SIGKILL) -----------------------------------------

def _spawn(workdir, n_steps, hold=None, slow_write=False):
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), HOLD_STEP=hold or "")
    args = [sys.executable, str(HERE / "crash_runner.py"), str(workdir), str(n_steps)]
    if slow_write:
        args.append("--slow-write")
    return subprocess.Popen(args, env=env)


def _wait_for(predicate, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the subprocess")


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [0, 2, 4])
def test_sigkill_during_a_step_then_resume_runs_each_step_once(tmp_path, kill_at):
    proc = _spawn(tmp_path, 5, hold=f"s{kill_at}")
    try:
        _wait_for(lambda: (tmp_path / f"running-s{kill_at}").exists())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pipe = load(tmp_path / "log" / "pipeline.p")
    assert pipe.run_step_idx == kill_at and pipe.steps[kill_at].status == "running"
    pipe.run(resume=True)
    ran = (tmp_path / "ran.txt").read_text().split()
    expected = [f"s{i}" for i in range(kill_at)] + [f"s{kill_at}"] * 2 + \
        [f"s{i}" for i in range(kill_at + 1, 5)]
    assert ran == expected
    assert load(tmp_path / "log").status == "success"


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_leaves_it_unreadable(tmp_path):
    rng = random.Random(1234)
    killed_mid_write = 0
    for trial in range(6):
        workdir = tmp_path / f"t{trial}"
        workdir.mkdir()
        proc = _spawn(workdir, 8, slow_write=True)
        checkpoint = workdir / "log" / "pipeline.p"
        try:
            # Let a few checkpoints land, then kill inside a write.
            _wait_for(lambda: checkpoint.exists())
            time.sleep(rng.uniform(0, 0.5))
            _wait_for(lambda: (workdir / "writing").exists() or proc.poll() is not None)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        # a kill inside a snapshot leaves only a temporary file beside the checkpoint;
        # one inside a step's record leaves a torn record, which load() leaves out
        killed_mid_write += (workdir / "writing").exists()
        pipe = load(checkpoint)  # always readable
        pipe.run(resume=True)
        ran = (workdir / "ran.txt").read_text().split()
        assert sorted(set(ran)) == sorted(f"s{i}" for i in range(8))
        # at most the step that was running when killed ran twice
        assert len(ran) - len(set(ran)) <= 1
    assert killed_mid_write >= 4


def test_pipelines_run_in_threads_keep_their_own_logs(tmp_path):
    import concurrent.futures as cf

    def talk(who):
        for i in range(20):
            logging.getLogger("pipekit.test").info("message from %s %d", who, i)
            time.sleep(0.001)
        return ok()

    pipes = []
    for who in ("alpha", "beta"):
        pipe = Pipeline(paths={"log": tmp_path / who}, name=who)
        pipe.add_step(talk, who=who)
        pipes.append(pipe)
    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: p.run(), pipes))
    alpha = (tmp_path / "alpha" / "pipeline.log").read_text()
    beta = (tmp_path / "beta" / "pipeline.log").read_text()
    assert alpha.count("message from alpha") == 20 and "message from beta" not in alpha
    assert beta.count("message from beta") == 20 and "message from alpha" not in beta


def test_a_run_removes_temporary_checkpoints_left_by_a_killed_writer(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    old = log_dir / ".pipekit-tmp-pipeline.p.abc123"
    fresh = log_dir / ".pipekit-tmp-pipeline.p.def456"
    old.write_bytes(b"half a pickle")
    fresh.write_bytes(b"being written right now")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    pipe = make(tmp_path)
    pipe.add_step(ok)
    pipe.run()
    assert not old.exists() and fresh.exists()
