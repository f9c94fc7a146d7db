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
    with pytest.raises(ConfigError, match="reduction_config.yaml"):
        reduction_pipeline(tmp_path)


SEEN_APERTURES = []


def aperture_step(red_dir, pipeline=None):
    """A stand-in step: records the aperture of the config it was given."""
    from pipekit import steps
    SEEN_APERTURES.append(steps.reduction_config(red_dir, pipeline).photometry.aperture_arcsec)
    return {"status": "success"}


def test_the_reduction_config_is_read_once_per_run_shared_by_steps_and_reread_on_resume(
        tmp_path, monkeypatch):
    from pipekit import steps, workflows

    red_dir = tmp_path / "T" / "sinistro" / "ip"
    red_dir.mkdir(parents=True)
    config = red_dir / "reduction_config.yaml"
    config.write_text("target: {name: T, RA: 1, Dec: 2}\nphotometry: {aperture_arcsec: 3}\n")
    pipe = reduction_pipeline(red_dir)
    reads, fallbacks, seen = [], [], SEEN_APERTURES
    seen.clear()
    real = workflows.load_reduction_config
    monkeypatch.setattr(workflows, "load_reduction_config", lambda p: reads.append(p) or real(p))
    monkeypatch.setattr(steps, "load_reduction_config", lambda p: fallbacks.append(p) or real(p))
    for step in pipe.steps:
        step.func = aperture_step
    pipe.run()
    assert (len(reads), fallbacks, seen) == (1, [], [3.0, 3.0, 3.0])
    assert pipe.config is None  # only while running

    loaded = load(red_dir / "logs")
    assert loaded.config is None  # never frozen in the checkpoint
    config.write_text("target: {name: T, RA: 1, Dec: 2}\nphotometry: {aperture_arcsec: 4}\n")
    loaded.run(resume=True, start_idx=2)
    assert (len(reads), fallbacks, seen[-1]) == (2, [], 4.0)


def test_a_step_called_on_its_own_reads_the_config_and_reports_a_bad_one(tmp_path, caplog):
    from pipekit import steps

    (tmp_path / "reduction_config.yaml").write_text("target: {name: T, RA: 99:00:00, Dec: 2}\n")
    with caplog.at_level("ERROR", logger="pipekit.steps"):
        out = steps.photometry(tmp_path)
    assert out["status"] == "error" and "'target.RA'" in out["error"]
    assert out["red_dir"] == str(tmp_path)
    assert f"photometry {tmp_path}: " in caplog.text


def test_a_reprocessed_frame_is_replaced_remeasured_and_enters_the_rebuilt_light_curve(
        tmp_path):
    import numpy as np
    from astropy.io import fits
    from astropy.table import Table
    from astropy.wcs import WCS

    downloads, reduction = tmp_path / "downloads", tmp_path / "reduction"
    truth = simulate_dataset(downloads, n_frames=6, shape=(256, 256), n_stars=40, seed=7,
                             compress=False)
    (red_dir,) = sort_frames(downloads, reduction).sorted
    configure_dataset(red_dir)
    assert reduction_pipeline(red_dir).run().status == "success"
    name = truth.files[3].name
    stem = name[: -len(".fits")]
    phot = red_dir / "photometry" / f"{stem}.ecsv"
    lc_path = next(red_dir.glob("*_lc.ecsv"))
    before = Table.read(phot, format="ascii.ecsv")
    lc_before = Table.read(lc_path, format="ascii.ecsv")

    # The archive reprocessed the frame: same name, new bytes (here: more target flux).
    old_bytes = (red_dir / name).read_bytes()
    (downloads / name).write_bytes(old_bytes)
    with fits.open(downloads / name, mode="update") as hdul:
        image = next(h for h in hdul if h.data is not None)
        x, y = WCS(image.header).all_world2pix([truth.meta["ra"]], [truth.meta["dec"]], 0)
        x, y = int(round(x[0])), int(round(y[0]))
        image.data[y - 2:y + 3, x - 2:x + 3] += 2000.0

    sorted_again = sort_frames(downloads, reduction)
    assert [p.name for p, _ in sorted_again.replaced] == [name]
    assert (red_dir / "replaced" / name).read_bytes() == old_bytes   # nothing lost
    assert not phot.exists()                                          # stale

    pipe = reduction_pipeline(red_dir)
    pipe.run()
    assert pipe.status == "success"
    assert pipe.steps[0].result["n_measured"] == 1 and pipe.steps[0].result["n_skipped"] == 5
    after = Table.read(phot, format="ascii.ecsv")
    assert after["flux"][0] > before["flux"][0] + 20000      # the target, star 0, re-measured
    assert np.allclose(after["flux"][1:], before["flux"][1:], rtol=1e-6, equal_nan=True)
    lc_after = Table.read(lc_path, format="ascii.ecsv")
    row_before = lc_before[lc_before["frame"] == name]
    row_after = lc_after[lc_after["frame"] == name]
    assert row_after["flux"][0] > row_before["flux"][0] * 1.05
