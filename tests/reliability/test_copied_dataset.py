"""A checkpoint knows where it lives: resuming a copied dataset never writes into the original.

``cp -r`` a dataset whose run stopped, edit the copy's config, ``pipekit resume COPY``:
the copy is reduced with its own config; the original's files stay byte-identical.
A step whose ``red_dir`` is not its pipeline's dataset is refused.
"""

import hashlib
import logging
import shutil
import subprocess
import sys

import pytest

import _sleepy
from pipekit.errors import PipelineError
from pipekit.pipeline import load
from pipekit.workflows import reduction_pipeline
from test_signals import CLI, make_datasets, sleepy_env


def snapshot(folder):
    return {p.relative_to(folder): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def stopped_dataset(tmp_path, monkeypatch):
    _sleepy.install(monkeypatch)
    (red_dir,) = make_datasets(tmp_path, 1)
    (red_dir / "fail").write_text("the first run fails at photometry")
    with pytest.raises(PipelineError):
        reduction_pipeline(red_dir).run()
    assert load(red_dir / "logs" / "pipeline.p").failed_step == "sleepy_photometry"
    return red_dir


@pytest.mark.timeout(120)
def test_resume_of_a_copy_works_on_the_copy_and_leaves_the_original_untouched(
        stopped_dataset, tmp_path):
    original = stopped_dataset
    copy = tmp_path / "reduction" / "T0-copy" / "sinistro" / "ip"
    shutil.copytree(original, copy)
    (copy / "fail").unlink()
    config = copy / "reduction_config.yaml"
    config.write_text(config.read_text() + "\n# edited: a wider aperture\n")
    before = snapshot(original)

    proc = subprocess.run([sys.executable, str(CLI), "resume", str(copy)], cwd=tmp_path,
                          env=sleepy_env(0), capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert snapshot(original) == before, "the original dataset was written to"
    assert (copy / "photometry.done").exists()
    resumed = load(copy / "logs" / "pipeline.p")
    assert resumed.status == "success"
    assert resumed.red_dir == copy.resolve()
    assert resumed.name.startswith("T0-copy/")
    assert all(s.func_kwargs["red_dir"] == str(copy.resolve()) for s in resumed.steps)


def test_loading_a_copy_says_so(stopped_dataset, tmp_path, caplog):
    copy = tmp_path / "elsewhere" / "T0" / "sinistro" / "ip"
    shutil.copytree(stopped_dataset, copy)
    with caplog.at_level(logging.WARNING):
        pipe = load(copy / "logs" / "pipeline.p")
    assert pipe.red_dir == copy.resolve()
    assert any("was written for dataset" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_away_from_any_dataset_is_refused(stopped_dataset, tmp_path):
    loose = tmp_path / "loose.p"
    shutil.copy(stopped_dataset / "logs" / "pipeline.p", loose)
    before = snapshot(stopped_dataset)
    pipe = load(loose)
    with pytest.raises(PipelineError, match="refusing to run"):
        pipe.run(resume=True)
    assert snapshot(stopped_dataset) == before


def test_a_step_working_on_another_dataset_is_refused(tmp_path, monkeypatch):
    _sleepy.install(monkeypatch)
    mine, other = make_datasets(tmp_path, 2)
    pipe = reduction_pipeline(mine)
    pipe.steps[1].func_kwargs["red_dir"] = str(other)
    with pytest.raises(PipelineError, match="not on the pipeline's dataset"):
        pipe.run()
    assert not (mine / "logs" / "pipeline.p").exists()
    assert not list(other.rglob("*.done"))
