"""The checkpoint file: a snapshot, then fsync'd step records; torn records, old formats."""

import shutil
from pathlib import Path

import dill
import pytest

import pipekit.checkpoint as checkpoint_module
from pipekit import Pipeline, PipelineError, load
from pipekit.checkpoint import RECORD_MAGIC, read_checkpoint

HERE = Path(__file__).resolve().parent


def ok(**kwargs):
    return {"status": "success", **kwargs}


def make(tmp_path, n_steps=0, **kwargs):
    pipe = Pipeline(paths={"log": tmp_path / "log"}, name="p", **kwargs)
    for i in range(n_steps):
        pipe.add_step(ok, name=f"s{i}", i=i)
    return pipe


def count_snapshots(monkeypatch):
    written = []
    original = checkpoint_module.write_bytes_atomic

    def counting(path, data):
        written.append(len(data))
        return original(path, data)
    monkeypatch.setattr(checkpoint_module, "write_bytes_atomic", counting)
    return written


@pytest.mark.parametrize("n_steps", [3, 60])
def test_a_run_writes_two_snapshots_whatever_its_length(tmp_path, monkeypatch, n_steps):
    written = count_snapshots(monkeypatch)
    make(tmp_path, n_steps).run()
    assert len(written) == 2  # when the run starts and when it ends; steps are records
    saved = load(tmp_path / "log")
    assert [s.status for s in saved.steps] == ["success"] * n_steps
    assert [s.result["i"] for s in saved.steps] == list(range(n_steps))


def test_the_end_of_a_run_folds_its_records_into_one_snapshot(tmp_path):
    make(tmp_path, 5).run()
    path = tmp_path / "log" / "pipeline.p"
    with open(path, "rb") as fh:
        pipe = dill.load(fh)  # the snapshot alone holds the whole outcome
        assert fh.read() == b""  # no records or zeroed space left after it
    assert pipe.status == "success" and [s.status for s in pipe.steps] == ["success"] * 5


def test_records_during_a_run_are_replayed_by_load(tmp_path):
    seen = []

    def look(pipeline, step):
        saved = load(pipeline.checkpoint_path)
        seen.append((saved.run_step_idx, [s.status for s in saved.steps]))
        with open(pipeline.checkpoint_path, "rb") as fh:
            seen.append(("snapshot", [s.status for s in dill.load(fh).steps]))
        return ok()

    pipe = make(tmp_path, 2)
    pipe.add_step(look)
    pipe.run()
    assert seen == [(2, ["success", "success", "running"]),
                    ("snapshot", ["not run", "not run", "not run"])]


def test_a_torn_record_ends_the_replay_at_the_record_before(tmp_path):
    hold = []

    def stop_here(pipeline):
        hold.append(pipeline.checkpoint_path.read_bytes())
        return ok()

    pipe = make(tmp_path, 2)
    pipe.add_step(stop_here, name="third")
    pipe.run()
    data = hold[0]  # the file as a kill inside step "third" would leave it
    starts = [i for i in range(len(data)) if data.startswith(RECORD_MAGIC, i)]
    assert len(starts) == 5  # s0 before/after, s1 before/after, third before
    for cut, expected in [(starts[-1] + 20, ["success", "success", "not run"]),
                          (len(data), ["success", "success", "running"])]:
        torn = bytearray(data)
        torn[cut:cut + 4] = b"\xff\xff\xff\xff"  # a record half on disk after a power cut
        path = tmp_path / "torn" / "pipeline.p"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes(torn))
        _, saved = read_checkpoint(path)
        assert [s.status for s in saved.steps] == expected


def test_a_run_that_adds_steps_falls_back_to_whole_snapshots(tmp_path, monkeypatch):
    def grow(pipeline):
        pipeline.add_step(ok, name="added")
        return ok()

    pipe = make(tmp_path, 1)
    pipe.add_step(grow)
    pipe.add_step(ok, name="last")
    pipe.run()
    saved = load(tmp_path / "log")
    assert [s.name for s in saved.steps] == ["s0", "grow", "last", "added"]
    assert [s.status for s in saved.steps] == ["success", "success", "success", "not run"]


def test_records_that_outgrow_the_snapshot_are_folded_in(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "COMPACT_BYTES", 2000)
    monkeypatch.setattr(checkpoint_module, "RECORD_SPACE", 1000)
    written = count_snapshots(monkeypatch)
    pipe = make(tmp_path, 40)
    pipe.run()
    assert len(written) > 2  # compactions mid-run
    assert all(s.status == "success" for s in load(tmp_path / "log").steps)


def test_a_checkpoint_of_format_1_loads_and_resumes(tmp_path):
    """A checkpoint written by pipekit before the step records (format 1) still works."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    shutil.copy(HERE / "data" / "checkpoint_format1.p", log_dir / "pipeline.p")
    pipe = load(log_dir)
    assert pipe.name == "written-by-format-1" and pipe.field == "M84"
    assert [s.status for s in pipe.steps] == ["success", "error", "not run"]
    assert pipe.failed_step == "two" and pipe.run_step_idx == 1
    pipe.paths["log"] = log_dir
    pipe.steps[1].func_kwargs["threshold"] = 5
    pipe.run(resume=True)
    again = load(log_dir)
    assert [s.status for s in again.steps] == ["success", "success", "not run"]
    assert again.status == "success"


def test_garbage_after_a_snapshot_is_no_record(tmp_path):
    make(tmp_path, 2).run()
    path = tmp_path / "log" / "pipeline.p"
    with open(path, "ab") as fh:
        fh.write(RECORD_MAGIC + b"\x10\x00\x00\x00" + b"\x00" * 4 + b"not a pickle....")
    assert load(path).status == "success"  # its CRC does not match: left out
    path.write_bytes(b"not a pickle")
    with pytest.raises(PipelineError, match="not a readable pipekit checkpoint"):
        load(path)
