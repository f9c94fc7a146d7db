"""Tests of pipekit.calibration: BANZAI zero points, a reference catalogue, honest labels."""

import csv
import dataclasses

import numpy as np
import pytest
from astropy.table import Table

from pipekit import steps
from pipekit.calibration import robust_mean
from pipekit.config import load_reduction_config, write_reduction_config
from pipekit.frames import info_from_header
from pipekit.lightcurve import build_lightcurve, write_lightcurve
from pipekit.testing.simulate import simulate_dataset

ZP_1M = 23.50          # the 1 m camera: magnitude of 1 ADU/s
THROUGHPUT_04M = 0.3   # the 0.4 m camera collects 0.3 of the 1 m's counts ...
ZP_04M = ZP_1M + 2.5 * np.log10(THROUGHPUT_04M)   # ... so its zero point is 1.31 mag brighter
FAILED = (3, 11)       # frames whose BANZAI calibration failed (-99)
COMMON = dict(n_frames=18, shape=(320, 320), n_stars=90, start="2026-08-01T00:00:00",
              cadence_hours=2.0)


def _reduce(red, truth):
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"], truth.meta["ra"],
                           truth.meta["dec"])
    assert steps.photometry(red)["status"] == "success"
    return steps.lightcurve(red)


def _true_mag(truth, table, zeropoint):
    """True magnitudes of the target at the light curve's frames."""
    names = [f.name for f in truth.files]
    i = [names.index(f) for f in table["frame"]]
    return zeropoint - 2.5 * np.log10(truth.target_flux[i] / truth.exptime)


@pytest.fixture(scope="module")
def two_telescopes(tmp_path_factory):
    """One target seen by a 1 m and a 0.4 m camera at the same times, both with L1ZP."""
    root = tmp_path_factory.mktemp("cal")
    one = root / "T" / "sinistro" / "ip"
    t1 = simulate_dataset(one, seed=11, instrument="fa15", zeropoint=ZP_1M, zeropoint_err=0.03,
                          failed_zeropoints=FAILED, **COMMON)
    stars = dataclasses.replace(t1.stars, flux=t1.stars.flux * THROUGHPUT_04M)
    small = root / "T" / "qhy" / "ip"
    t2 = simulate_dataset(small, seed=12, instrument="sq34", site="coj", telescope="0m409",
                          stars=stars, event=t1.event, source_flux=3.0e4 * THROUGHPUT_04M,
                          zeropoint=ZP_04M, zeropoint_err=0.03, **COMMON)
    return (one, t1, _reduce(one, t1)), (small, t2, _reduce(small, t2))


@pytest.fixture(scope="module")
def no_l1zp(tmp_path_factory):
    """A dataset whose frames have no L1ZP, reduced without a catalogue."""
    red = tmp_path_factory.mktemp("cat") / "T" / "sinistro" / "ip"
    # a sparser field: catalogue stars are field stars, measured with their neighbours
    truth = simulate_dataset(red, seed=13, instrument="fa15", **{**COMMON, "n_stars": 45})
    return red, truth, _reduce(red, truth)


def test_banzai_zero_points_give_magnitudes_on_the_simulated_scale(two_telescopes):
    (red, truth, lc), _ = two_telescopes
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    cal = table.meta["calibration"]
    assert cal["source"] == "banzai" and table.meta["mag_system"] == "calibrated"
    # the -99 frames are not used, and say so
    assert cal["n_valid_l1zp"] == COMMON["n_frames"] - len(FAILED)
    assert np.isnan(table["l1zp"][list(table["frame"]).index(truth.files[FAILED[0]].name)])
    offset = np.median(table["mag"] - _true_mag(truth, table, ZP_1M))
    zp_err = table.meta["zp_err"]
    assert 0 < zp_err < 0.05
    assert abs(offset) < 3 * zp_err, (offset, zp_err)
    # the zero point's error stays apart from each point's
    expected = 2.5 / np.log(10) * table["flux_err"] / table["flux"]
    assert np.allclose(table["mag_err"], expected, rtol=1e-6)
    assert "calibrated magnitude (banzai)" in table["mag"].description


def test_a_rebuild_reads_l1zp_from_the_photometry_files_not_the_frame_headers(
        two_telescopes, tmp_path, monkeypatch):
    import shutil

    from pipekit import frames
    from pipekit.photometry.store import SUMMARY_NAME, ecsv_text, read_frame_ecsv

    (red, _, lc), _ = two_telescopes
    first = Table.read(lc["ecsv"], format="ascii.ecsv").meta
    copy = tmp_path / "T" / "sinistro" / "ip"
    shutil.copytree(red, copy)

    def no_headers(path):
        raise AssertionError(f"{path}: header read")

    with monkeypatch.context() as m:
        m.setattr(frames, "read_frame_info", no_headers)
        again = build_lightcurve(copy).table.meta
    assert (again["zeropoint"], again["zp_err"]) == (first["zeropoint"], first["zp_err"])
    # photometry files of an earlier pipekit, without l1zp: the headers are read instead
    written = sorted((copy / "photometry").glob("*e91.ecsv"))
    assert len(written) == COMMON["n_frames"]
    for path in written:
        table = read_frame_ecsv(path)
        del table.meta["l1zp"], table.meta["l1zperr"]
        path.write_text(ecsv_text(table))
    (copy / "photometry" / SUMMARY_NAME).unlink()
    shutil.rmtree(copy / "calibration")
    old = build_lightcurve(copy).table.meta
    assert old["zeropoint"] == pytest.approx(first["zeropoint"], abs=1e-12)
    assert old["calibration"]["n_valid_l1zp"] == first["calibration"]["n_valid_l1zp"]


def test_two_telescopes_of_one_target_agree_within_their_zero_point_errors(two_telescopes):
    (_, _, lc1), (_, _, lc2) = two_telescopes
    a = Table.read(lc1["ecsv"], format="ascii.ecsv")
    b = Table.read(lc2["ecsv"], format="ascii.ecsv")
    assert b.meta["calibration"]["source"] == "banzai"
    # same times: compare frame by frame
    common = np.intersect1d(np.round(a["mjd_utc"], 4), np.round(b["mjd_utc"], 4))
    assert len(common) >= 12
    ma = {round(m, 4): v for m, v in zip(a["mjd_utc"], a["mag"])}
    mb = {round(m, 4): v for m, v in zip(b["mjd_utc"], b["mag"])}
    diff = np.median([ma[t] - mb[t] for t in common])
    allowed = 3 * np.hypot(a.meta["zp_err"], b.meta["zp_err"])
    assert abs(diff) < allowed, (diff, allowed)
    # their instrumental magnitudes would differ by about the 1.3 mag throughput gap
    assert a.meta["zeropoint"] - b.meta["zeropoint"] > 1.0


def test_tom_csv_says_the_magnitudes_are_calibrated(two_telescopes):
    (red, truth, lc), _ = two_telescopes
    with open(lc["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["magnitude_system"] for r in rows} == {"calibrated (banzai)"}


def test_a_catalogue_file_calibrates_a_dataset_without_l1zp(no_l1zp, tmp_path):
    red, truth, _ = no_l1zp
    zp_cat = 24.0
    rng = np.random.default_rng(3)
    stars = truth.stars
    mags = zp_cat - 2.5 * np.log10(stars.flux[1:] / truth.exptime)
    mags = mags + rng.normal(0, 0.02, len(mags))
    catalogue = tmp_path / "refcat.csv"
    Table({"RAJ2000": stars.ra[1:], "DEJ2000": stars.dec[1:], "imag": mags,
           "e_imag": np.full(len(mags), 0.02)}).write(catalogue, format="ascii.csv")
    config = load_reduction_config(red / "reduction_config.yaml")
    config.calibration = dataclasses.replace(
        config.calibration, catalogue=catalogue, ra_column="RAJ2000", dec_column="DEJ2000",
        mag_column="imag", mag_err_column="e_imag")
    lc = build_lightcurve(red, config)
    cal = lc.table.meta["calibration"]
    assert cal["source"] == "catalogue" and cal["catalogue"] == "refcat.csv"
    assert cal["n_matched"] >= 5
    assert "valid L1ZP" in cal["not_used"]["banzai"]
    offset = np.median(lc.table["mag"] - _true_mag(truth, lc.table, zp_cat))
    assert abs(offset) < 3 * lc.table.meta["zp_err"] + 0.005, (offset, lc.table.meta["zp_err"])
    # no absolute path of the user's disk in the provenance
    assert str(tmp_path) not in str(cal)


def test_without_l1zp_or_catalogue_magnitudes_are_labelled_instrumental(no_l1zp):
    red, truth, lc = no_l1zp
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    assert table.meta["mag_system"] == "instrumental"
    assert table.meta["calibration"]["source"] == "instrumental"
    assert table.meta["zp_err"] is None and table.meta["zeropoint"] == 25.0
    assert table["mag"].description.startswith("instrumental magnitude")
    assert "NOT calibrated" in table["mag"].description
    with open(lc["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["magnitude_system"] for r in rows} == {"instrumental"}


def test_a_catalogue_that_matches_no_star_leaves_magnitudes_instrumental(no_l1zp, tmp_path,
                                                                          caplog):
    red, truth, _ = no_l1zp
    catalogue = tmp_path / "elsewhere.csv"
    Table({"ra": [10.0, 10.1, 10.2], "dec": [5.0, 5.1, 5.2],
           "mag": [15.0, 16.0, 17.0]}).write(catalogue, format="ascii.csv")
    config = load_reduction_config(red / "reduction_config.yaml")
    config.calibration.catalogue = catalogue
    with caplog.at_level("WARNING", logger="pipekit.calibration"):
        lc = build_lightcurve(red, config)
    assert lc.table.meta["calibration"]["source"] == "instrumental"
    assert "0 comparison stars matched" in lc.table.meta["calibration"]["not_used"]["catalogue"]
    assert "magnitudes are instrumental" in caplog.text
    paths = write_lightcurve(lc, tmp_path)
    assert "instrumental" in paths["csv"].read_text().splitlines()[1]


def test_a_catalogue_without_the_named_column_is_a_config_error(no_l1zp, tmp_path):
    from pipekit.errors import ConfigError
    red, truth, _ = no_l1zp
    catalogue = tmp_path / "cat.csv"
    Table({"ra": [1.0], "dec": [2.0], "Vmag": [3.0]}).write(catalogue, format="ascii.csv")
    config = load_reduction_config(red / "reduction_config.yaml")
    config.calibration.catalogue = catalogue
    with pytest.raises(ConfigError, match=r"calibration.mag_column' = 'mag': no such column"):
        build_lightcurve(red, config)


def test_robust_mean_clips_an_outlier_and_scales_its_error_by_the_scatter():
    values = [20.00, 20.01, 19.99, 20.02, 19.98, 21.0]
    mean, err, used, scatter = robust_mean(values, [0.001] * 6)
    assert mean == pytest.approx(20.0, abs=1e-9) and not used[-1] and used[:5].all()
    # errors of 0.001 cannot explain a scatter of 0.016: the mean's error grows with it
    assert err == pytest.approx(np.std(values[:5], ddof=1) / np.sqrt(5), rel=0.05)


def test_real_headers_with_failed_zero_points_give_none(lco_data):
    import json
    records = json.loads((lco_data / "archive_headers.json").read_text())
    failed = [r for r in records.values() if str(r.get("L1ZP")) in ("-99", "-99.0")]
    assert failed, "the real headers hold BANZAI's -99"
    for record in records.values():
        info = info_from_header(record)
        assert info.l1zp is None and info.l1zperr is None


def test_calibration_keys_are_validated(tmp_path):
    from pipekit.errors import ConfigError
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target: {name: T, RA: 10.0, Dec: -5.0}\n"
                    "calibration: {match_arcsec: 0, catalogue: refs.fits}\n")
    with pytest.raises(ConfigError, match=r"calibration.match_arcsec' = 0: expected a number"):
        load_reduction_config(path)
    path.write_text("target: {name: T, RA: 10.0, Dec: -5.0}\n"
                    "calibration: {catalogue: refs.fits, use_banzai_zeropoints: no}\n")
    config = load_reduction_config(path)
    assert config.calibration.catalogue == tmp_path / "refs.fits"
    assert config.calibration.use_banzai_zeropoints is False


def test_frames_whose_banzai_calibration_failed_leave_magnitudes_instrumental(tmp_path):
    red = tmp_path / "T" / "sinistro" / "ip"
    truth = simulate_dataset(red, n_frames=8, shape=(256, 256), n_stars=50, seed=14,
                             zeropoint=ZP_1M, failed_zeropoints=range(8))
    lc = _reduce(red, truth)
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    assert table.meta["mag_system"] == "instrumental"
    assert "0 of 8 frames have a valid L1ZP" in table.meta["calibration"]["not_used"]["banzai"]
    assert np.isnan(table["l1zp"]).all()
    with open(lc["csv"], newline="") as fh:
        assert {r["magnitude_system"] for r in csv.DictReader(fh)} == {"instrumental"}
