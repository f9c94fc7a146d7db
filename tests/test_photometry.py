"""Tests of pipekit.photometry: exact sums, clipped skies, honest errors, times, datasets."""

import json
import socket
import warnings
from pathlib import Path

import astropy
import numpy as np
import pytest
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.stats import sigma_clip
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from pipekit.config import load_reduction_config, write_reduction_config
from pipekit.errors import PipekitError
from pipekit.lco import frame_stem
from pipekit.photometry import (EDGE, OFF_FRAME, REFERENCE_STARS, REJECTED_FRAMES, SATURATED,
                                annulus_sky, aperture_sums, bjd_tdb, circular_overlap,
                                describe_flags, measure_dataset, measure_frame,
                                normalise_ensemble)
from pipekit.testing.simulate import simulate_dataset

from _frame_edits import strip_wcs

M13 = Path(astropy.__file__).parent / "io/fits/hdu/compressed/tests/data/m13.fits"


def make_dataset(red_dir, n_frames, seed, **kw):
    truth = simulate_dataset(Path(red_dir), n_frames=n_frames, seed=seed, **kw)
    write_reduction_config(Path(red_dir) / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    return truth


# ---- pure functions -----------------------------------------------------------------

def test_circular_overlap_gives_exact_areas_of_whole_half_and_quarter_circles():
    r = 3.7
    assert circular_overlap(-10, 10, -10, 10, r) == pytest.approx(np.pi * r * r, rel=1e-13)
    assert circular_overlap(0, 10, -10, 10, r) == pytest.approx(np.pi * r * r / 2, rel=1e-13)
    assert circular_overlap(0, 10, 0, 10, r) == pytest.approx(np.pi * r * r / 4, rel=1e-13)
    # a unit pixel deep inside, and one wholly outside
    assert circular_overlap(-0.5, 0.5, -0.5, 0.5, r) == pytest.approx(1.0, abs=1e-14)
    assert circular_overlap(4.0, 5.0, 4.0, 5.0, r) == 0.0


@pytest.mark.skipif(not M13.exists(), reason="astropy's m13.fits test image not installed")
def test_aperture_sums_at_wcs_positions_of_a_real_image_agree_with_sep_to_1e6():
    sep = pytest.importorskip("sep")
    with fits.open(M13) as hdul:
        data = hdul[0].data.astype(np.float64)
        wcs = WCS(hdul[0].header)
    # sky positions spread over M13's image, carried to pixels by the WCS
    rng = np.random.default_rng(42)
    centre = SkyCoord(250.4226, 36.4602, unit="deg")
    ra = centre.ra.deg + rng.uniform(-0.035, 0.035, 300) / np.cos(np.radians(36.46))
    dec = centre.dec.deg + rng.uniform(-0.035, 0.035, 300)
    x, y = wcs.all_world2pix(ra, dec, 0)
    inside = (x > 8) & (x < 291) & (y > 8) & (y < 291)
    x, y = x[inside], y[inside]
    assert len(x) > 200
    for r in (2.3, 4.0, 6.55):
        ours, area, flags = aperture_sums(data, x, y, r)
        theirs, _, _ = sep.sum_circle(data, x, y, r, subpix=0)
        assert np.all(flags == 0)
        assert np.max(np.abs(ours / theirs - 1)) < 1e-6
        assert np.allclose(area, np.pi * r * r, rtol=1e-12)


def test_annulus_sky_equals_astropy_sigma_clip_for_every_star():
    rng = np.random.default_rng(3)
    data = rng.normal(500, 20, (200, 200))
    data[rng.integers(0, 200, 300), rng.integers(0, 200, 300)] += 5000   # outliers to clip
    x = rng.uniform(30, 170, 12)
    y = rng.uniform(30, 170, 12)
    sky, std, n = annulus_sky(data, x, y, 9.3, 17.1, sigma=3.0, maxiters=10)
    yy, xx = np.mgrid[:200, :200]
    for i in range(len(x)):
        d = np.hypot(xx - x[i], yy - y[i])
        clipped = sigma_clip(data[(d >= 9.3) & (d < 17.1)], sigma=3, maxiters=10,
                             cenfunc="median", stdfunc="std")
        assert sky[i] == pytest.approx(np.ma.median(clipped), rel=1e-12)
        assert std[i] == pytest.approx(clipped.std(), rel=1e-9)
        assert n[i] == clipped.count()


def test_measure_frame_flags_off_frame_edge_and_saturated_stars():
    data = np.full((100, 100), 200.0)
    data[50, 50] = 70000.0                     # a saturated pixel
    pos = [(50.2, 49.8), (2.0, 40.0), (150.0, 20.0), (30.0, 30.0)]
    t = measure_frame(data, pos, 5.0, 8.0, 12.0, gain=2.0, rdnoise=5.0, saturate=60000.0,
                      edge_margin=6.0)
    assert t["flags"][0] & SATURATED and not t["flags"][0] & EDGE
    assert t["flags"][1] & EDGE
    assert t["flags"][2] == OFF_FRAME and np.isnan(t["flux"][2])
    assert t["flags"][3] == 0
    assert t["flux"][3] == pytest.approx(0.0, abs=1e-9)
    assert describe_flags(int(t["flags"][0])) == ["saturated"]


def test_measure_frame_works_on_plain_numpy_arrays_with_no_files(tmp_path, monkeypatch):
    from pipekit.photometry.frame import measure_frame as measure_frame_from_arrays

    monkeypatch.chdir(tmp_path)
    yy, xx = np.mgrid[:64, :64]
    data = 300.0 + 5000.0 * np.exp(-((xx - 30.4) ** 2 + (yy - 33.1) ** 2) / 2.0) / (2 * np.pi)
    positions = np.array([[30.4, 33.1], [10.0, 10.0]])
    t = measure_frame_from_arrays(data, positions, 5.0, 9.0, 14.0, gain=1.5, rdnoise=4.0)
    assert measure_frame_from_arrays is measure_frame
    assert list(t["x"]) == [30.4, 10.0] and np.all(t["flags"] == 0)
    assert t["sky"][0] == pytest.approx(300.0, rel=1e-6)
    assert t["flux"][0] == pytest.approx(5000.0 * (1 - np.exp(-12.5)), rel=1e-3)
    assert t["flux"][1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(t["flux_err"] > 0)
    assert list(tmp_path.iterdir()) == []


def test_reported_errors_match_the_scatter_of_repeated_noisy_measurements():
    rng = np.random.default_rng(5)
    gain, rdnoise, sky_level = 1.6, 7.5, 600.0
    yy, xx = np.mgrid[:80, :80]
    star = 20000.0 * np.exp(-((xx - 40.3) ** 2 + (yy - 39.6) ** 2) / (2 * 2.0 ** 2)) / (
        2 * np.pi * 2.0 ** 2)
    fluxes, errors = [], []
    for _ in range(400):
        e = rng.poisson((star + sky_level) * gain) + rng.normal(0, rdnoise, star.shape)
        t = measure_frame(e / gain, [(40.3, 39.6)], 6.0, 12.0, 20.0, gain, rdnoise)
        fluxes.append(t["flux"][0])
        errors.append(t["flux_err"][0])
    # 400 trials: the scatter is known to ~3.5 %; the aperture holds 98.9 % of the flux
    assert np.std(fluxes, ddof=1) == pytest.approx(np.mean(errors), rel=0.12)
    assert np.mean(fluxes) == pytest.approx(20000 * (1 - np.exp(-36 / 8)), rel=0.01)


def test_bjd_tdb_agrees_with_astropy_offline_and_is_mid_exposure(monkeypatch):
    from astropy.utils import iers

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(iers.conf, "auto_download", True)      # the library must turn it off
    monkeypatch.setattr(iers.IERS_Auto, "iers_table", None)    # and not fetch a fresh table
    site = EarthLocation.from_geodetic(lon=-70.8047889, lat=-30.1673833, height=2198.0)
    ra, dec = 269.7596, -28.2094
    start = Time("2026-08-01T03:17:42.125", scale="utc")
    exptime = 300.0
    mid = start + exptime / 2 * astropy.units.s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = bjd_tdb(mid, ra, dec, site)
    assert not [w for w in caught if "IERS" in str(w.message) or "download" in str(w.message)]
    # astropy's own answer, offline too (an older astropy tries the network otherwise)
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None):
        t = Time(start.isot, scale="utc", location=site) + exptime / 2 * astropy.units.s
        ltt = t.light_travel_time(SkyCoord(ra, dec, unit="deg"), kind="barycentric")
        reference = (t.tdb + ltt).jd
    assert abs(ours.jd - reference) * 86400 < 0.1
    assert ours.scale == "tdb"
    # mid-exposure: the start is 150 s earlier (the light travel time changes by ~10 ms meanwhile)
    at_start = bjd_tdb(start, ra, dec, site)
    assert (ours.jd - at_start.jd) * 86400 == pytest.approx(150.0, abs=0.05)
    # the barycentric correction is at most ~8.3 min; TT - UTC is 69.184 s
    assert abs((ours.jd - mid.jd) * 86400 - 69.184) < 500


def test_normalise_ensemble_drops_a_variable_star_and_its_errors_are_honest():
    rng = np.random.default_rng(9)
    n_frames, n_stars = 80, 30
    base = np.geomspace(2e4, 4e5, n_stars)
    base[0] = 5e4                                          # the target
    transparency = rng.uniform(0.5, 1.0, n_frames)
    true = transparency[:, None] * base[None, :]
    true[:, 7] *= 1 + 0.3 * np.sin(np.arange(n_frames) / 5)   # a variable field star
    err = np.sqrt(true / 1.6 + 200.0)
    flux = true + rng.normal(0, 1, true.shape) * err
    flags = np.zeros(flux.shape, int)
    flags[5, 3] = SATURATED
    ens = normalise_ensemble(flux, err, flags)
    assert not ens.comparison[0] and not ens.comparison[7]
    assert ens.comparison.sum() == n_stars - 2
    assert np.all(ens.n_comparison >= n_stars - 3)
    # the zero point tracks the transparency up to one common scale
    scale = np.median(ens.zero_point / transparency)
    assert np.allclose(ens.zero_point / transparency / scale, 1, atol=4 * ens.zero_point_err.max())
    # target and constant stars: normalised errors explain the scatter
    pulls = []
    for j in [0] + list(range(1, n_stars)):
        if j == 7:
            continue
        norm = ens.flux[:, j] / (base[j] / scale)
        pulls.append((norm - 1) / (ens.flux_err[:, j] / (base[j] / scale)))
    pulls = np.concatenate(pulls)
    assert np.std(pulls) == pytest.approx(1.0, abs=0.08)


# ---- datasets -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    red = tmp_path_factory.mktemp("phot") / "OGLE-2026-BLG-0034" / "sinistro" / "ip"
    truth = make_dataset(red, 60, seed=3)
    result = measure_dataset(red)
    return red, truth, result


def _stack(red, truth):
    tables = [Table.read(red / "photometry" / (frame_stem(f) + ".ecsv")) for f in truth.files]
    F = np.array([np.asarray(t["flux"]) for t in tables])
    E = np.array([np.asarray(t["flux_err"]) for t in tables])
    G = np.array([np.asarray(t["flags"]) for t in tables])
    return tables, F, E, G


def test_normalise_ensemble_degenerate_inputs_give_nan_not_an_exception():
    # no comparison star at all, even with min_stars 0
    ens = normalise_ensemble([[1.0], [2.0], [3.0]], [[0.1]] * 3, np.zeros((3, 1), int),
                             min_stars=0)
    assert np.isnan(ens.zero_point).all() and (ens.n_comparison == 0).all()
    # the target's error too small to square (it is no comparison): the zero points stand
    flux = np.full((3, 4), 100.0) * np.array([[1.0], [1.001], [0.999]])
    err = 0.01 * flux
    err[:, 0] = 1e-160
    ens = normalise_ensemble(flux, err, np.zeros((3, 4), int))
    assert np.allclose(ens.zero_point / ens.zero_point[0], [1.0, 1.001, 0.999])
    # a star flagged in every frame has no reference flux and is never a comparison
    flags = np.zeros((3, 4), int)
    flags[:, 2] = SATURATED
    ens = normalise_ensemble(flux, 0.01 * flux, flags, min_stars=2)
    assert np.isnan(ens.reference_flux[2]) and not ens.comparison[2]
    assert (ens.n_comparison == 2).all() and np.isfinite(ens.zero_point).all()


@pytest.mark.slow
def test_simulated_event_is_recovered_with_reduced_chi2_near_one(measured):
    red, truth, result = measured
    assert len(result.measured) == 60 and not result.rejected
    tables, F, E, G = _stack(red, truth)
    ens = normalise_ensemble(F, E, G)
    f, e = ens.flux[:, 0], ens.flux_err[:, 0]
    assert np.all(G[:, 0] == 0)
    # normalised flux is the truth times one unknown scale (the reference conditions)
    w = 1 / e ** 2
    scale = np.sum(w * f * truth.target_flux) / np.sum(w * truth.target_flux ** 2)
    chi2 = np.sum(((f - scale * truth.target_flux) / e) ** 2) / (len(f) - 1)
    assert 0.7 <= chi2 <= 1.5


@pytest.mark.slow
def test_constant_field_stars_errors_are_within_20_percent_of_their_scatter(measured):
    red, truth, result = measured
    stars = Table.read(red / "photometry" / REFERENCE_STARS)
    tables, F, E, G = _stack(red, truth)
    ens = normalise_ensemble(F, E, G)
    sky_true = SkyCoord(truth.stars.ra, truth.stars.dec, unit="deg")
    idx, sep, _ = SkyCoord(stars["ra"], stars["dec"], unit="deg").match_to_catalog_sky(sky_true)
    assert sep.arcsec.max() < 0.5
    ratios = []
    for j in range(1, len(stars)):
        if truth.stars.variable[idx[j]] or (G[:, j] != 0).any():
            continue
        ratios.append(np.std(ens.flux[:, j], ddof=1) / np.sqrt(np.mean(ens.flux_err[:, j] ** 2)))
    ratios = np.array(ratios)
    assert len(ratios) >= 20
    assert 0.8 <= np.median(ratios) <= 1.2
    # each star's scatter from 60 frames is itself uncertain by ~9 %: most lie within 20 %
    assert np.mean(np.abs(ratios - 1) < 0.2) >= 0.85


@pytest.mark.slow
def test_wcs_positions_with_centroid_shift_land_on_the_true_star_centres(measured):
    red, truth, result = measured
    stars = Table.read(red / "photometry" / REFERENCE_STARS)
    tables, F, E, G = _stack(red, truth)
    sky_true = SkyCoord(truth.stars.ra, truth.stars.dec, unit="deg")
    idx, _, _ = SkyCoord(stars["ra"], stars["dec"], unit="deg").match_to_catalog_sky(sky_true)
    dx = np.array([np.asarray(t["x"]) - truth.x[i, idx] for i, t in enumerate(tables)])
    dy = np.array([np.asarray(t["y"]) - truth.y[i, idx] for i, t in enumerate(tables)])
    # Each header WCS is off by 0.3 px rms. After the common centroid shift every frame agrees
    # with the reference frame to < 0.1 px; what remains is the reference frame's own WCS
    # error, the same in every frame (the target's RA/Dec are taken as given).
    assert np.std(dx[:, 0]) < 0.1 and np.std(dy[:, 0]) < 0.1
    assert np.hypot(np.mean(dx[:, 0]), np.mean(dy[:, 0])) < 1.0
    rel = np.hypot(dx[:, 1:] - dx[:, 1:].mean(axis=0), dy[:, 1:] - dy[:, 1:].mean(axis=0))
    assert np.median(rel) < 0.1


@pytest.mark.slow
def test_per_frame_files_carry_times_and_settings(measured):
    red, truth, result = measured
    t = Table.read(red / "photometry" / (frame_stem(truth.files[10]) + ".ecsv"))
    assert t.meta["mjd_mid_utc"] == pytest.approx(truth.mjd_mid[10], abs=1e-8)
    assert t.meta["radius_px"] == pytest.approx(3.0 / 0.389, rel=1e-9)
    assert t.meta["annulus_in_px"] == pytest.approx(5.0 / 0.389, rel=1e-9)
    assert 2400000 < t.meta["bjd_tdb"] - 61000 < 2500000
    assert not any(p.name.startswith(".pipekit-tmp") for p in (red / "photometry").iterdir())


def test_resume_measures_only_frames_not_yet_done(tmp_path):
    red = tmp_path / "ds"
    truth = make_dataset(red, 6, seed=21, shape=(256, 256), n_stars=60)
    first = measure_dataset(red)
    assert len(first.measured) == 6 and first.skipped == []
    done = {p: p.stat().st_mtime_ns for p in (red / "photometry").glob("*-e91.ecsv")}
    # three new frames of the same field arrive
    simulate_dataset(red, n_frames=3, seed=22, shape=(256, 256), stars=truth.stars,
                     first_frame_number=7, start="2026-08-02T00:00:00")
    second = measure_dataset(red)
    assert sorted(second.skipped) == sorted(f.name for f in truth.files)
    assert len(second.measured) == 3
    assert all(p.stat().st_mtime_ns == m for p, m in done.items())
    third = measure_dataset(red)
    assert third.measured == [] and len(third.skipped) == 9


def test_corrupt_and_wcsless_frames_are_rejected_with_reasons_and_the_rest_measured(tmp_path):
    red = tmp_path / "ds"
    truth = make_dataset(red, 6, seed=31, shape=(256, 256), n_stars=60)
    corrupt, no_wcs = truth.files[1], truth.files[4]
    corrupt.write_bytes(corrupt.read_bytes()[:20000])
    strip_wcs(no_wcs)
    result = measure_dataset(red, load_reduction_config(red / "reduction_config.yaml"))
    assert len(result.measured) == 4
    assert set(result.rejected) == {corrupt.name, no_wcs.name}
    assert str(corrupt) in result.rejected[corrupt.name]
    assert "WCS" in result.rejected[no_wcs.name]
    on_disk = (red / "photometry" / REJECTED_FRAMES).read_text()
    assert corrupt.name in on_disk and no_wcs.name in on_disk
    assert not (red / "photometry" / (frame_stem(corrupt) + ".ecsv")).exists()


def test_target_outside_every_frame_says_so_and_names_the_config_to_check(tmp_path):
    red = tmp_path / "far"
    truth = simulate_dataset(red, n_frames=4, seed=5, shape=(200, 200), n_stars=30)
    config_path = red / "reduction_config.yaml"
    ra, dec = truth.meta["ra"] + 3.0, truth.meta["dec"]   # a typo'd RA: 12 arcmin frames miss it
    write_reduction_config(config_path, truth.meta["target"], ra, dec)
    with pytest.raises(PipekitError) as err:
        measure_dataset(red)
    message = str(err.value)
    assert f"target at RA {ra:.5f} deg, Dec {dec:+.5f} deg falls outside all 4 frames" in message
    assert f"check target.RA/target.Dec in {config_path}" in message
    assert "no usable reference frame" not in message
    reasons = json.loads((red / "photometry" / REJECTED_FRAMES).read_text())
    assert sorted(reasons) == sorted(f.name for f in truth.files)
    assert all("falls outside this frame" in why for why in reasons.values())


def test_target_outside_the_frames_a_corrupt_frame_aside_lists_that_frame_too(tmp_path):
    red = tmp_path / "far"
    truth = simulate_dataset(red, n_frames=3, seed=6, shape=(200, 200), n_stars=30)
    corrupt = truth.files[0]
    corrupt.write_bytes(corrupt.read_bytes()[:5000])
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"] + 3.0, truth.meta["dec"])
    with pytest.raises(PipekitError) as err:
        measure_dataset(red)
    message = str(err.value)
    assert "falls outside all 2 readable frames (the other 1 rejected:" in message
    assert corrupt.name in message
    reasons = json.loads((red / "photometry" / REJECTED_FRAMES).read_text())
    assert sorted(reasons) == sorted(f.name for f in truth.files)


def test_empty_dataset_measures_nothing_without_crashing(tmp_path):
    red = tmp_path / "empty"
    red.mkdir(parents=True)
    write_reduction_config(red / "reduction_config.yaml", "X", 10.0, -5.0)
    result = measure_dataset(red)
    assert result.n_frames == 0 and result.measured == [] and result.rejected == {}


def test_frames_of_every_suffix_are_measured_or_rejected_none_vanishes(tmp_path):
    import gzip

    plain = simulate_dataset(tmp_path / "plain", n_frames=4, seed=51, shape=(200, 200),
                             n_stars=40, compress=False)
    packed = simulate_dataset(tmp_path / "packed", n_frames=4, seed=51, shape=(200, 200),
                              n_stars=40, compress=True)
    red = tmp_path / "ds"
    data = red
    data.mkdir(parents=True)
    (data / "a.fits.gz").write_bytes(gzip.compress(plain.files[0].read_bytes()))
    (data / "b.FITS").write_bytes(plain.files[1].read_bytes())
    (data / "c.fits.fz").write_bytes(packed.files[2].read_bytes())
    (data / "d.fit").write_bytes(plain.files[3].read_bytes())
    write_reduction_config(red / "reduction_config.yaml", plain.meta["target"],
                           plain.meta["ra"], plain.meta["dec"])
    names = {"a.fits.gz", "b.FITS", "c.fits.fz", "d.fit"}
    result = measure_dataset(red)
    assert result.n_frames == 4
    assert set(result.measured) | set(result.rejected) == names
    assert all(result.rejected.values())             # a rejected frame says why
    assert set(result.measured) == names             # every one of them is readable
    for stem in "abcd":
        assert (red / "photometry" / f"{stem}.ecsv").is_file()
    on_disk = json.loads((red / "photometry" / REJECTED_FRAMES).read_text())
    assert on_disk == result.rejected


def test_a_config_passed_in_is_used_and_the_file_is_not_read(tmp_path):
    red = tmp_path / "ds"
    make_dataset(red, 3, seed=61, shape=(200, 200), n_stars=40)
    config = load_reduction_config(red / "reduction_config.yaml")
    (red / "reduction_config.yaml").unlink()
    result = measure_dataset(red, config)
    assert len(result.measured) == 3


# ---- the seed's layout, older pipekit layouts, the seed's reference_image ----------------

def _set_reference_image(red, name):
    config = red / "reduction_config.yaml"
    text = config.read_text()
    assert "reference_image: null" in text
    config.write_text(text.replace("reference_image: null", f"reference_image: '{name}'"))


def test_reference_image_names_the_frame_field_stars_are_detected_on(tmp_path):
    red = tmp_path / "ds"
    truth = make_dataset(red, 4, seed=61, shape=(200, 200), n_stars=30)
    chosen = truth.files[2]
    # the seed funpacks frames, so its config says 'x.fits' for pipekit's 'x.fits.fz'
    _set_reference_image(red, frame_stem(chosen) + ".fits")
    result = measure_dataset(red)
    assert result.reference_frame == chosen.name and len(result.measured) == 4
    stars = Table.read(red / "photometry" / REFERENCE_STARS, format="ascii.ecsv")
    assert stars.meta["reference_frame"] == chosen.name


def test_reference_image_absent_from_the_dataset_is_an_error_naming_it(tmp_path):
    from pipekit.errors import ConfigError

    red = tmp_path / "ds"
    make_dataset(red, 2, seed=62, shape=(200, 200), n_stars=30)
    _set_reference_image(red, "name_of_image.fits")
    with pytest.raises(ConfigError) as err:
        measure_dataset(red)
    message = str(err.value)
    assert "'photometry.reference_image' = 'name_of_image.fits'" in message
    assert str(red / "reduction_config.yaml") in message and "names no frame" in message
    assert not list((red / "photometry").glob("*-e91.ecsv"))


def test_a_dataset_sorted_by_an_earlier_pipekit_reduces_from_data(tmp_path, caplog):
    import logging

    red = tmp_path / "ds"
    truth = simulate_dataset(red / "data", n_frames=3, seed=63, shape=(320, 320), n_stars=80)
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    with caplog.at_level(logging.INFO, logger="pipekit.datasets"):
        result = measure_dataset(red)
    assert result.n_frames == 3 and len(result.measured) == 3
    assert "3 in data/ (layout of earlier pipekit versions" in caplog.text
    assert sorted(p.name for p in (red / "data").iterdir()) == sorted(
        f.name for f in truth.files)                     # nothing moved


def test_a_mixed_dataset_counts_each_frame_once_from_the_top(tmp_path, caplog):
    import logging
    import shutil

    red = tmp_path / "ds"
    truth = simulate_dataset(red / "data", n_frames=4, seed=64, shape=(200, 200), n_stars=30)
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    for f in truth.files[:2]:                            # two frames in both places
        shutil.copy(f, red / f.name)
    simulate_dataset(red, n_frames=1, seed=65, shape=(200, 200), stars=truth.stars,
                     first_frame_number=9, start="2026-08-03T00:00:00")  # one new, at the top
    with caplog.at_level(logging.INFO, logger="pipekit.datasets"):
        result = measure_dataset(red)
    assert result.n_frames == 5 and len(result.measured) == 5 and result.rejected == {}
    assert len(list((red / "photometry").glob("*-e91.ecsv"))) == 5
    assert "2 frame(s) in both places, the copies at the top used" in caplog.text


def test_ensemble_of_no_frames_is_empty_not_an_error():
    from pipekit.photometry.ensemble import normalise_ensemble

    ens = normalise_ensemble(np.ones((0, 5)), np.ones((0, 5)), np.zeros((0, 5), int))
    assert ens.flux.shape == (0, 5) and np.isnan(ens.reference_flux).all()
