"""Tests of pipekit.lightcurve and the photometry/lightcurve steps: outputs and provenance."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from pipekit import steps
from pipekit.atomic import TMP_PREFIX
from pipekit.config import load_reduction_config, write_reduction_config
from pipekit.lightcurve import (LightCurve, build_lightcurve, lightcurve_paths, tom_csv_text,
                                write_lightcurve)
from pipekit.photometry import SATURATED
from pipekit.testing.simulate import simulate_dataset

from _frame_edits import strip_wcs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 frames, one truncated, one without WCS, one whose WCS points elsewhere; reduced."""
    red = tmp_path_factory.mktemp("lc") / "OGLE-2026-BLG-0034" / "sinistro" / "ip"
    truth = simulate_dataset(red / "data", n_frames=16, seed=41, shape=(320, 320), n_stars=90)
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"], truth.meta["ra"],
                           truth.meta["dec"])
    bad = {"corrupt": truth.files[2], "no_wcs": truth.files[9], "elsewhere": truth.files[12]}
    bad["corrupt"].write_bytes(bad["corrupt"].read_bytes()[:30000])
    strip_wcs(bad["no_wcs"])
    # a WCS pointing a degree away, on the frame with the best seeing (the reference candidate)
    with fits.open(bad["elsewhere"]) as hdul:
        hdr = hdul["SCI"].header.copy()
        data = hdul["SCI"].data
    hdr["CRVAL1"] += 1.0
    hdr["L1FWHM"] = 0.5
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr, name="SCI")]).writeto(
        bad["elsewhere"], overwrite=True)
    phot = steps.photometry(red)
    lc = steps.lightcurve(red)
    return red, truth, bad, phot, lc


def test_steps_report_counts_and_paths(dataset):
    red, truth, bad, phot, lc = dataset
    assert phot["status"] == "success"
    # the frame whose WCS points a degree away cannot be aligned: rejected by the photometry
    assert (phot["n_frames"], phot["n_measured"], phot["n_rejected"]) == (16, 13, 3)
    assert phot["reference_frame"] != bad["elsewhere"].name
    assert lc["status"] == "success" and lc["n_points"] == 13
    for key in ("ecsv", "csv", "png"):
        assert Path(lc[key]).is_file() and Path(lc[key]).parent == red
    assert Path(lc["ecsv"]).name == "OGLE-2026-BLG-0034_ip_lc.ecsv"
    assert Path(lc["csv"]).name == "OGLE-2026-BLG-0034_ip_lc.csv"
    assert Path(lc["png"]).name == "lightcurve.png"


def test_light_curve_is_made_despite_bad_frames_which_are_listed_with_reasons(dataset):
    red, truth, bad, phot, lc = dataset
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    assert len(table) == 13
    assert not {p.name for p in bad.values()} & set(table["frame"])
    rejected = table.meta["rejected_frames"]
    assert set(rejected) == {p.name for p in bad.values()}
    assert "cannot read" in rejected[bad["corrupt"].name]
    assert "WCS" in rejected[bad["no_wcs"].name]
    assert "target outside the frame" in rejected[bad["elsewhere"].name]
    assert lc["rejected"] == rejected


def test_rejected_frames_times_come_without_reading_their_headers_again(dataset, monkeypatch):
    import pipekit.frames
    from pipekit.frames import read_frame_info

    red, truth, bad, phot, lc = dataset
    reads = []
    real = pipekit.frames.read_frame_info
    monkeypatch.setattr(pipekit.frames, "read_frame_info",
                        lambda path: reads.append(Path(path).name) or real(path))
    (red / "calibration" / "frames.json").unlink(missing_ok=True)   # no cached header facts
    table = build_lightcurve(red).table
    times = table.meta["rejected_frame_mjd"]
    for kind in ("no_wcs", "elsewhere"):     # the photometry step recorded their times
        assert times[bad[kind].name] == pytest.approx(read_frame_info(bad[kind]).mjd_mid,
                                                      abs=1e-9), kind
    # only the truncated frame, which the photometry could not read, is read here (its
    # header is whole)
    assert reads == [bad["corrupt"].name]
    assert times[bad["corrupt"].name] == read_frame_info(bad["corrupt"]).mjd_mid


def test_recorded_rejection_times_are_trusted_only_for_unchanged_frame_files(tmp_path):
    import json
    import os

    from pipekit.photometry.dataset import REJECTED_STAMPS, rejected_frame_times
    from pipekit.photometry.store import done_stamp

    (tmp_path / "photometry").mkdir()
    (tmp_path / "data").mkdir()
    top, legacy = tmp_path / "a.fits", tmp_path / "data" / "b.fits"
    for path in (top, legacy):
        path.write_bytes(b"frame")
    frames = {"a.fits": {"reason": "r", "stamp": done_stamp(top), "mjd_mid": 61000.5},
              "b.fits": {"reason": "r", "stamp": done_stamp(legacy), "mjd_mid": 61001},
              "gone.fits": {"reason": "r", "stamp": [5, 1], "mjd_mid": 61002.5},
              "no_time.fits": {"reason": "r", "stamp": done_stamp(top)}}
    (tmp_path / "photometry" / REJECTED_STAMPS).write_text(
        json.dumps({"settings_hash": "x", "frames": frames}))
    assert rejected_frame_times(tmp_path) == {"a.fits": 61000.5, "b.fits": 61001.0}
    os.utime(top, ns=(1, 2))                  # the frame file replaced since
    assert rejected_frame_times(tmp_path) == {"b.fits": 61001.0}
    (tmp_path / "photometry" / REJECTED_STAMPS).write_text("not json")
    assert rejected_frame_times(tmp_path) == {}


def test_a_rejected_measured_frame_without_a_recorded_time_is_asked_of_its_header(
        tmp_path, monkeypatch):
    import pipekit.lightcurve as lightcurve
    from pipekit.photometry.store import FrameSummary, ecsv_text

    phot = tmp_path / "photometry"
    phot.mkdir()
    for name, meta in (("a.ecsv", {"frame": "a.fits", "mjd_mid_utc": 61000.25}),
                       ("b.ecsv", {"frame": "b.fits"})):     # a file written elsewhere
        table = Table({"id": [0], "flux": [1.0], "flux_err": [0.1], "flags": [0]}, meta=meta)
        (phot / name).write_text(ecsv_text(table))
    rows, _ = FrameSummary(phot).refresh(["a.ecsv", "b.ecsv"])
    asked = []
    monkeypatch.setattr(lightcurve, "frame_facts", lambda red_dir, names: asked.extend(names)
                        or {n: {"mjd_mid": 61001.5} for n in names})
    rejected = {"a.fits": "why", "b.fits": "why"}
    assert lightcurve._rejected_frame_mjd(tmp_path, rows, rejected) == {
        "a.fits": 61000.25, "b.fits": 61001.5}
    assert asked == ["b.fits"]


def test_ecsv_columns_units_and_provenance(dataset):
    red, truth, bad, phot, lc = dataset
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    for col in ("time", "flux", "flux_err", "mag", "mag_err", "frame", "flags"):
        assert col in table.colnames
    assert str(table["time"].unit) == "d" and str(table["mag"].unit) == "mag"
    assert np.all(np.diff(table["time"]) > 0)
    meta = table.meta
    import pipekit
    assert meta["pipekit_version"] == pipekit.__version__
    assert meta["time_scale"] == "tdb"
    assert meta["reduction_config"]["target"]["name"] == "OGLE-2026-BLG-0034"
    assert meta["aperture_radius_px"] == pytest.approx(3.0 / 0.389, rel=1e-9)
    assert meta["annulus_px"] == pytest.approx([5.0 / 0.389, 8.0 / 0.389], rel=1e-9)
    assert len(meta["comparison_stars"]) >= 10
    assert {"id", "ra", "dec"} <= set(meta["comparison_stars"][0])
    # magnitudes and errors follow from fluxes
    assert np.allclose(table["mag"], 25 - 2.5 * np.log10(table["flux"]), rtol=0, atol=1e-9)
    assert np.allclose(table["mag_err"], 1.0857362 * table["flux_err"] / table["flux"], rtol=1e-6)


def test_light_curve_follows_the_simulated_event(dataset):
    red, truth, bad, phot, lc = dataset
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    names = [f.name for f in truth.files]
    idx = [names.index(f) for f in table["frame"]]
    true = truth.target_flux[idx]
    ratio = np.asarray(table["flux"]) / true
    # one common scale; residuals consistent with the errors
    pull = (ratio / np.median(ratio) - 1) / (table["flux_err"] / table["flux"])
    assert np.sqrt(np.mean(pull ** 2)) < 1.6
    assert np.ptp(true) / np.min(true) > 0.3      # the event really is in the data


def test_tom_csv_has_mjd_utc_times_filter_magnitude_error(dataset):
    red, truth, bad, phot, lc = dataset
    table = Table.read(lc["ecsv"], format="ascii.ecsv")
    with open(lc["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["time", "filter", "magnitude", "error", "magnitude_system"]
    good = table[table["flags"] == 0]
    assert len(rows) == len(good)
    names = [f.name for f in truth.files]
    for row, src in zip(rows, good):
        assert row["filter"] == "ip"
        assert row["magnitude_system"] == "instrumental"     # the frames have no L1ZP
        mjd = float(row["time"])
        # the TOM gets mid-exposure MJD in UTC (not BJD, not the start)
        assert mjd == pytest.approx(truth.mjd_mid[names.index(src["frame"])], abs=2e-6)
        assert float(row["magnitude"]) == pytest.approx(src["mag"], abs=1e-5)
        assert float(row["error"]) == pytest.approx(src["mag_err"], abs=1e-5)


def test_png_is_a_real_png_and_no_temporary_file_is_left(dataset):
    red, truth, bad, phot, lc = dataset
    data = Path(lc["png"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    leftovers = [p for p in red.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert leftovers == []


def test_flagged_points_stay_in_the_ecsv_but_not_in_the_tom_csv(tmp_path):
    table = Table({"time": [2461253.5, 2461253.6], "mjd_utc": [61253.0, 61253.1],
                   "flux": [1e4, 2e4], "flux_err": [10.0, 20.0], "mag": [15.0, 14.25],
                   "mag_err": [0.001, 0.001], "frame": ["a", "b"],
                   "flags": np.array([0, SATURATED], np.int32)})
    lc = LightCurve(table=table, target="T 1", filter="gp")
    text = tom_csv_text(lc)
    assert text.splitlines() == ["time,filter,magnitude,error,magnitude_system",
                                 "61253.000000,gp,15.00000,0.00100,instrumental"]
    paths = write_lightcurve(lc, tmp_path)
    assert paths["ecsv"].name == "T_1_gp_lc.ecsv"
    assert paths["quality"].read_bytes()[:4] == b"\x89PNG"   # panels without data say so
    assert len(Table.read(paths["ecsv"], format="ascii.ecsv")) == 2


def test_rebuilding_is_idempotent(dataset):
    red, truth, bad, phot, lc = dataset
    before = Path(lc["ecsv"]).read_text()
    again = steps.lightcurve(red)
    assert again["status"] == "success"
    assert Path(again["ecsv"]).read_text() == before
    phot2 = steps.photometry(red)
    assert phot2["n_measured"] == 0 and phot2["n_skipped"] == 13 and phot2["n_rejected"] == 3


def test_steps_say_error_for_a_dataset_without_frames(tmp_path):
    red = tmp_path / "empty"
    (red / "data").mkdir(parents=True)
    write_reduction_config(red / "reduction_config.yaml", "X", 10.0, -5.0)
    phot = steps.photometry(red)
    assert phot["status"] == "error" and "no frame" in phot["error"]
    lc = steps.lightcurve(red)
    assert lc["status"] == "error" and "photometry" in lc["error"]


def test_build_lightcurve_without_photometry_raises_a_pipekit_error(tmp_path):
    from pipekit.errors import PipekitError

    red = tmp_path / "nophot"
    red.mkdir()
    write_reduction_config(red / "reduction_config.yaml", "X", 10.0, -5.0)
    with pytest.raises(PipekitError, match="reference star list"):
        build_lightcurve(red)


@pytest.mark.parametrize("target, filt, stem", [
    ("OGLE-2026-BLG-0034", "ip", "OGLE-2026-BLG-0034_ip_lc"),
    ("GJ 3470", "rp", "GJ_3470_rp_lc"),
    ("KMT-2024-BLG-1234/B", "gp+rp", "KMT-2024-BLG-1234_B_gp+rp_lc"),
    ("_M31 V1_", "V", "M31_V1_V_lc"),
])
def test_light_curve_file_names_follow_the_one_slug_rule(tmp_path, target, filt, stem):
    ecsv, csv_path, png = lightcurve_paths(tmp_path, target, filt)
    assert (ecsv.name, csv_path.name, png.name) == (f"{stem}.ecsv", f"{stem}.csv",
                                                    "lightcurve.png")


def test_build_lightcurve_uses_the_config_given_and_reads_no_file(dataset, tmp_path):
    red, truth, bad, phot, lc = dataset
    config = load_reduction_config(red / "reduction_config.yaml")
    config.target.name = "given-not-read"
    again = build_lightcurve(red, config)
    assert again.target == "given-not-read"
    assert again.table.meta["reduction_config"]["target"]["name"] == "given-not-read"
    assert again.table.meta["reduction_config"]["source"] == str(red / "reduction_config.yaml")


def test_unknown_config_keys_never_reach_the_provenance(dataset):
    red, truth, bad, phot, lc = dataset
    config = load_reduction_config(red / "reduction_config.yaml")
    config.photometry.extra = {"tom_pw": "hunter2-typed-here"}  # an unknown key, kept aside
    again = build_lightcurve(red, config)
    provenance = again.table.meta["reduction_config"]
    assert "extra" not in provenance["photometry"]
    assert "hunter2" not in repr(provenance)
    assert provenance["photometry"]["aperture_arcsec"] == config.photometry.aperture_arcsec


@pytest.mark.parametrize("filt", ["ip", "", "i,{p}\"x", "a\nb", "gp+rp"])
def test_tom_csv_rows_are_what_the_csv_module_writes(filt):
    """The TOM CSV is formatted in one pass; each row is what ``csv.writer`` writes for it,
    quoting included (an empty word, a comma, a quote, a newline, braces)."""
    t = Table({"mjd_utc": [61253.000347222, 61253.5], "mag": [13.998887, np.nan],
               "mag_err": [0.025724, 0.1], "flags": [0, 0]})
    t.meta = {"calibration": {"source": "banzai"}}
    lc = LightCurve(table=t, target="T", filter=filt)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "filter", "magnitude", "error", "magnitude_system"])
    writer.writerow(["61253.000347", filt, "13.99889", "0.02572", "calibrated (banzai)"])
    assert tom_csv_text(lc) == out.getvalue()
