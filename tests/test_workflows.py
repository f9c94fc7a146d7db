"""The ready pipelines: their steps and tags, and the dataset lock around a reduction."""

import pytest

from pipekit import PipelineError, load
from pipekit.errors import ConfigError, LockError
from pipekit.locks import DatasetLock, is_locked
from pipekit.testing.simulate import simulate_dataset
from pipekit.datasets import configure_dataset, sort_frames
from pipekit.workflows import download_pipeline, reduction_pipeline


@pytest.fixture
def dataset(tmp_path):
    """One small sorted and configured simulated dataset."""
    simulate_dataset(tmp_path / "downloads", n_frames=8, shape=(256, 256), n_stars=40, seed=3)
    result = sort_frames(tmp_path / "downloads", tmp_path / "reduction")
    (red_dir,) = result.sorted
    configure_dataset(red_dir)
    return red_dir


def test_download_pipeline_has_tagged_steps_and_validates_early(tmp_path):
    config = tmp_path / "data_download.yaml"
    config.write_text("archives:\n  local:\n    name: local\n    active: true\n"
                      f"    url: {tmp_path / 'archive'}\n    proposals: [P1]\n"
                      "log_dir: logs\nframe_list: logs/frames.txt\n"
                      "data_download_dir: downloads\ndata_reduction_dir: reduction\n"
                      "start_datetime: none\nend_datetime: none\n")
    pipe = download_pipeline(config)
    assert [(s.name, s.tags) for s in pipe.steps] == [
        ("download", ["download"]), ("sort", ["sort"]), ("configure", ["configure"])]
    assert pipe.checkpoint_path == tmp_path / "logs" / "pipeline.p"
    assert pipe.steps[0].retries > 0  # network steps retry
    config.write_text("archives: []\n")
    with pytest.raises(ConfigError, match="archives"):
        download_pipeline(config)


def test_reduction_pipeline_makes_a_light_curve_and_releases_the_lock(dataset):
    pipe = reduction_pipeline(dataset)
    assert [s.tags for s in pipe.steps] == [["photometry"], ["lightcurve"], ["upload"]]
    seen = {}
    original = pipe.steps[0].func

    def spy(**kwargs):
        seen["locked"] = is_locked(dataset)
        return original(**kwargs)

    pipe.steps[0].func = spy
    pipe.run()
    assert pipe.status == "success" and seen["locked"] is True
    assert not is_locked(dataset)
    assert len(list(dataset.glob("*_lc.ecsv"))) == 1
    assert load(dataset / "logs" / "pipeline.p").status == "success"


def test_reduction_releases_the_lock_when_a_step_fails(dataset):
    pipe = reduction_pipeline(dataset)
    pipe.steps[1].func = lambda red_dir: {"status": "error", "message": "no"}
    with pytest.raises(PipelineError):
        pipe.run()
    assert not is_locked(dataset)
    loaded = load(dataset / "logs")
    assert loaded.failed_step == "lightcurve" and loaded.run_step_idx == 1


def test_a_locked_dataset_is_not_reduced(dataset):
    with DatasetLock(dataset, pipeline_name="someone else"):
        with pytest.raises(LockError, match="someone else"):
            reduction_pipeline(dataset).run()
    assert not list(dataset.glob("photometry/*.ecsv"))


def test_reduction_pipeline_needs_a_config(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="reduction_config.yaml"):
        reduction_pipeline(tmp_path)
