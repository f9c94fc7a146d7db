"""Photometry on frames as LCO really delivers them (issue 11): header WCS errors, pointing-only
WCS (``WCSERR = 4``), moonlight gradients, cosmic rays, bad columns, clouds; star-pattern
alignment; settings as part of "done"."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from pipekit.config import load_reduction_config, write_reduction_config
from pipekit.errors import PipekitError
from pipekit.lightcurve import build_lightcurve, tom_csv_text
from pipekit.lco import frame_stem
from pipekit.photometry import (BAD_PIXELS, COSMIC_RAY, Similarity, background_map,
                                cosmic_ray_hits, match_stars, measure_dataset,
                                normalise_ensemble)
from pipekit.testing.simulate import simulate_dataset

N_FRAMES = 30
SHAPE = (384, 384)


def make_dataset(red, seed, n_frames=N_FRAMES, settings=None, **kw):
    kw.setdefault("n_stars", 100)
    truth = simulate_dataset(Path(red) / "data", n_frames=n_frames, seed=seed, shape=SHAPE, **kw)
    path = Path(red) / "reduction_config.yaml"
    write_reduction_config(path, truth.meta["target"], truth.meta["ra"], truth.meta["dec"])
    for key, value in (settings or {}).items():  # photometry.<key>: value
        text = re.sub(rf"(?m)^  {key}:.*$", f"  {key}: {value}", path.read_text())
        path.write_text(text)
    return truth


def _frame_tables(red):
    """The per-frame photometry tables by frame name (the step's own output)."""
    from astropy.table import Table
    tables = {}
    for path in sorted((Path(red) / "photometry").glob("*.ecsv")):
        if path.name != "reference_stars.ecsv":
            t = Table.read(path, format="ascii.ecsv")
            tables[t.meta["frame"]] = t
    return tables


def _photon_err(t, row):
    """Photon-noise error (ADU) of one star in one frame: the Poisson noise of its aperture
    flux and of the sky and read noise in the aperture, plus that of the annulus mean sky."""
    g, rn = t.meta["gain"], t.meta["rdnoise"]
    area, n_sky = float(t["area"][row]), max(int(t["n_sky"][row]), 1)
    pix = max(float(t["sky"][row]), 0.0) / g + (rn / g) ** 2
    return np.sqrt(max(float(t["flux"][row]), 0.0) / g + area * pix * (1 + area / n_sky))


def _scaled_residuals(f, e, true):
    w = 1 / e ** 2
    scale = np.sum(w * f * true) / np.sum(w * true ** 2)
    return f - scale * true


def figures(lc, truth, red=None):
    """The issue's figures on the target's unflagged points.

    Returns a dict: ``unflagged`` (fraction of all frames), ``chi2`` (reduced, against the
    true light curve scaled by one factor), ``scatter_err`` (rms of residual / reported
    error), ``scatter_photon`` (rms of residual / photon-noise error, when ``red`` is given)
    and, over the constant field stars normalised with the same ensemble,
    ``field_chi2`` and ``field_scatter_photon`` (medians over the stars).
    """
    t = lc.table
    names = [f.name for f in truth.files]
    idx = np.array([names.index(f) for f in t["frame"]])
    good = np.asarray(t["flags"]) == 0
    f = np.asarray(t["flux"], float)[good]
    e = np.asarray(t["flux_err"], float)[good]
    res = _scaled_residuals(f, e, truth.target_flux[idx][good])
    out = {"unflagged": good.sum() / len(truth.files),
           "chi2": np.sum((res / e) ** 2) / (len(f) - 1),
           "scatter_err": np.sqrt(np.mean((res / e) ** 2))}
    if red is None:
        return out
    tables = _frame_tables(red)
    frames = [str(n) for n in np.asarray(t["frame"])[good]]
    raw = np.array([tables[n]["flux"][0] for n in frames], float)
    ph = np.array([_photon_err(tables[n], 0) for n in frames]) * f / raw
    out["scatter_photon"] = np.sqrt(np.mean((res / ph) ** 2))
    out.update(_field_figures(tables, truth, names))
    return out


def _field_figures(tables, truth, names):
    """Median reduced chi2 and scatter / photon noise of the constant field stars."""
    from astropy.table import Table
    stars = Table.read(truth.folder.parent / "photometry" / "reference_stars.ecsv")
    frames = list(tables)
    idx = np.array([names.index(n) for n in frames])
    F = np.array([np.asarray(tables[n]["flux"], float) for n in frames])
    E = np.array([np.asarray(tables[n]["flux_err"], float) for n in frames])
    G = np.array([np.asarray(tables[n]["flags"], int) for n in frames])
    ens = normalise_ensemble(F, E, G, exclude=(0,))
    cosd = np.cos(np.radians(truth.meta["dec"]))
    throughput = np.asarray(truth.meta.get("throughput", 1.0), float) * np.ones(len(names))
    chi2, ratio = [], []
    for k, (ra, dec) in enumerate(zip(stars["ra"], stars["dec"])):
        j = int(np.argmin(np.hypot((truth.stars.ra - ra) * cosd, truth.stars.dec - dec)))
        ok = (G[:, k] == 0) & np.isfinite(ens.flux[:, k]) & np.isfinite(ens.zero_point)
        if k == 0 or truth.stars.variable[j] or ok.sum() < 0.8 * len(frames):
            continue
        f, e = ens.flux[ok, k], ens.flux_err[ok, k]
        true = truth.star_flux[idx[ok], j] / (truth.transparency * throughput)[idx[ok]]
        res = _scaled_residuals(f, e, true)
        ph = np.array([_photon_err(tables[frames[i]], k) for i in np.flatnonzero(ok)]) \
            * f / F[ok, k]
        chi2.append(np.sum((res / e) ** 2) / (len(f) - 1))
        ratio.append(np.sqrt(np.mean((res / ph) ** 2)))
    return {"field_chi2": float(np.median(chi2)), "field_scatter_photon": float(np.median(ratio)),
            "field_stars": len(chi2)}


def reduce(red, truth):
    """Measure and build the light curve; assert the issue's figures; print them."""
    result = measure_dataset(red)
    lc = build_lightcurve(red)
    fig = figures(lc, truth, red)
    print("figures:", {k: round(float(v), 3) for k, v in fig.items()},
          "rejected:", {**result.rejected, **lc.rejected})
    assert fig["unflagged"] >= 0.8, (fig, lc.rejected)
    assert fig["chi2"] <= 1.5, fig
    assert fig["scatter_err"] <= 1.2, fig
    # honest errors, neither inflated nor too small: tested on the many constant stars,
    # whose statistics are tight (the target's ~20 points alone allow chi2 0.4-1.7)
    assert 0.8 <= fig["field_chi2"] <= 1.25, fig
    assert fig["field_scatter_photon"] <= 1.2, fig
    return result, lc


# ---- each condition -------------------------------------------------------------------------

@pytest.mark.slow
def test_header_wcs_off_by_2_to_30_px_and_rotated_to_1_5_deg_is_absorbed(tmp_path):
    truth = make_dataset(tmp_path, 11, header_offset_px=(2.0, 30.0), header_rotation_deg=1.5)
    result, lc = reduce(tmp_path, truth)
    assert not result.rejected and not lc.rejected
    offsets = np.asarray(lc.table["align_offset_px"])
    assert offsets.max() > 10  # the header errors were really there, and absorbed
    assert np.all(np.asarray(lc.table["align_residual_px"]) < 1.0)  # faint stars included


@pytest.mark.slow
def test_pointing_only_frames_are_matched_over_a_wide_search_and_never_the_reference(tmp_path):
    pointing = (2, 7, 11)
    truth = make_dataset(tmp_path, 12, pointing_only=pointing)
    result, lc = reduce(tmp_path, truth)
    names = {truth.files[i].name for i in pointing}
    assert result.reference_frame not in names
    # measured at the right place: their target points are good, not +335 %
    for name in names:
        if name in lc.rejected:
            assert "alignment failed" in lc.rejected[name]
        else:
            row = lc.table[list(lc.table["frame"]).index(name)]
            assert row["align_offset_px"] > 90


@pytest.mark.slow
def test_a_moonlight_gradient_of_4000_adu_leaves_stars_and_sky_right(tmp_path):
    truth = make_dataset(tmp_path, 13, sky_gradient=4000.0)
    result, lc = reduce(tmp_path, truth)
    assert result.n_stars >= 15
    assert np.median(lc.table["sky_gradient"]) > 2000


@pytest.mark.slow
def test_cosmic_rays_on_the_target_are_flagged_and_leave_the_tom_csv(tmp_path):
    truth = make_dataset(tmp_path, 14, cosmic_rays=15, target_hits=(3, 14))
    result, lc = reduce(tmp_path, truth)
    names = [f.name for f in truth.files]
    radius = 3.0 / truth.pixscale
    for row in lc.table:
        near = truth.meta["cr_near_target_px"][names.index(row["frame"])]
        if any(d < radius - 1.5 for d in near):       # clearly inside the aperture
            assert row["flags"] & COSMIC_RAY and row["cr_hits"] > 0
        if row["flags"] & COSMIC_RAY:                 # never without a hit in or at the rim
            assert any(d < radius + 1.5 for d in near)
    assert sum(bool(g & COSMIC_RAY) for g in lc.table["flags"]) >= 2
    csv_rows = tom_csv_text(lc).count("\n") - 1
    assert csv_rows == int((np.asarray(lc.table["flags"]) == 0).sum())


@pytest.mark.slow
def test_bad_columns_and_nan_pixels_flag_only_what_they_touch(tmp_path):
    truth = make_dataset(tmp_path, 15, bad_columns=3, nan_pixels=150)
    result, lc = reduce(tmp_path, truth)
    for g in lc.table["flags"]:
        assert g == 0 or g & BAD_PIXELS


@pytest.mark.slow
def test_clouds_down_to_5_percent_transparency(tmp_path):
    truth = make_dataset(tmp_path, 16, transparency_range=(0.05, 1.0))
    result, lc = reduce(tmp_path, truth)
    ref = truth.files.index(next(f for f in truth.files if f.name == result.reference_frame))
    assert truth.transparency[ref] > 0.5     # depth, not seeing alone, picks the reference
    for name, why in lc.rejected.items():
        assert "alignment failed" in why or "comparison stars" in why


@pytest.mark.slow
def test_everything_at_once(tmp_path):
    truth = make_dataset(tmp_path, 17, n_frames=30, header_offset_px=(2.0, 30.0),
                         header_rotation_deg=1.5, pointing_only=(4, 19), sky_gradient=3000.0,
                         cosmic_rays=15, target_hits=(6, 22), bad_columns=2, nan_pixels=10,
                         transparency_range=(0.05, 1.0))
    result, lc = reduce(tmp_path, truth)
    assert result.reference_frame not in {truth.files[i].name for i in (4, 19)}


def make_mixed_dataset(red, seed, n_frames, settings=None, **kw):
    """A 1 m (0.389"/px) and a 0.4 m (0.571"/px, a sixth of the light per second, exposing
    2.5 times longer, camera turned 90 degrees) observing one field into one folder,
    interleaved in time."""
    from pipekit.testing.simulate import PaczynskiEvent, make_star_field
    from pipekit.testing.truths import combine_truths

    data = Path(red) / "data"
    n1 = n_frames - n_frames // 3
    t0 = 61253.0 + (n_frames // 2) * 2.0 / 24
    event = PaczynskiEvent(t0=t0, u0=0.2, tE=3.0)
    stars = make_star_field(269.7596, -28.2094, 300, size_arcsec=1.15 * max(SHAPE) * 0.571,
                            target_flux=3.5e4, seed=seed)
    big = simulate_dataset(data, n_frames=n1, seed=seed, shape=SHAPE, stars=stars, event=event,
                           start="2026-08-01T00:00:00", cadence_hours=3.0, **kw)
    kw = {k: v for k, v in kw.items() if k not in ("pointing_only", "target_hits")}
    small = simulate_dataset(data, n_frames=n_frames - n1, seed=seed + 1000, shape=SHAPE,
                             stars=stars, event=event, start="2026-08-01T01:30:00",
                             cadence_hours=6.0, instrument="kb98", telescope="0m414",
                             site="cpt", throughput=2.5 / 6.25, exptime=150.0,
                             orientation_deg=90.0,
                             first_frame_number=500, **kw)
    truth = combine_truths([big, small])
    path = Path(red) / "reduction_config.yaml"
    write_reduction_config(path, truth.meta["target"], truth.meta["ra"], truth.meta["dec"])
    for key, value in (settings or {}).items():
        path.write_text(re.sub(rf"(?m)^  {key}:.*$", f"  {key}: {value}", path.read_text()))
    return truth


@pytest.mark.slow
def test_two_telescopes_with_different_scales_and_orientations_make_one_light_curve(tmp_path):
    truth = make_mixed_dataset(tmp_path, 21, N_FRAMES)
    result, lc = reduce(tmp_path, truth)
    assert result.reference_frame.startswith("lsc1m")     # depth favours the 1 m
    instruments = {str(n).split("-")[1] for n in lc.table["frame"]}
    assert instruments == {"fa15", "kb98"}
    scale = dict(zip((f.name for f in truth.files), truth.meta["pixscale"]))
    rows = {str(r["frame"]): r for r in lc.table}
    assert all(abs(rows[n]["align_residual_px"]) < 1.0 for n in rows)
    assert any(scale[n] > 0.5 for n in rows)


@pytest.mark.slow
def test_a_60_frame_season_with_every_condition_at_once(tmp_path):
    truth = make_mixed_dataset(
        tmp_path, 22, 60, header_offset_px=(2.0, 30.0), header_rotation_deg=1.5,
        pointing_only=(4, 19, 33), sky_gradient=3000.0, cosmic_rays=15, target_hits=(6, 22, 35),
        bad_columns=2, nan_pixels=60, transparency_range=(0.05, 1.0))
    result, lc = reduce(tmp_path, truth)
    names = [f.name for f in truth.files]
    pointing = {names[i] for i, w in enumerate(truth.meta["wcserr"]) if w}
    assert len(pointing) == 3 and result.reference_frame not in pointing
    assert result.reference_frame.startswith("lsc1m")
    rejected = {**result.rejected, **lc.rejected}
    light = dict(zip(names, truth.transparency * np.asarray(truth.meta["throughput"])))
    for name, why in rejected.items():           # every rejection names its real cause:
        assert "alignment failed" in why or "comparison stars" in why, (name, why)
        assert light[name] < 0.1, (name, why)    # too few stars left to match a pattern
    for row in lc.table:                         # every flag has its reason in the frame
        g = int(row["flags"])
        i = names.index(row["frame"])
        if g & COSMIC_RAY:
            assert row["cr_hits"] > 0
            assert any(d < 3.0 / truth.meta["pixscale"][i] + 1.5
                       for d in truth.meta["cr_near_target_px"][i])
        assert g & ~(COSMIC_RAY | BAD_PIXELS) == 0, (row["frame"], g)
    for i in truth.meta["target_hits"]:           # the hits on the target are all caught
        if names[i] in rows_of(lc):
            assert rows_of(lc)[names[i]]["flags"] & COSMIC_RAY


def rows_of(lc):
    return {str(r["frame"]): r for r in lc.table}


# ---- pieces -----------------------------------------------------------------------------------

def test_match_stars_recovers_a_30_px_shift_and_1_5_degree_rotation_despite_strangers():
    rng = np.random.default_rng(7)
    src = rng.uniform(0, 512, (50, 2))
    true = Similarity(1.002, 1.5, 30.0, -21.0)
    dst = np.column_stack(true.apply(src[:, 0], src[:, 1])) + rng.normal(0, 0.1, (50, 2))
    dst = np.vstack([dst[8:], rng.uniform(0, 512, (10, 2))])   # 8 lost, 10 strangers
    m = match_stars(src, rng.permutation(dst), tolerance=1.5, max_shift=60,
                    centre=(256, 256))
    assert m is not None and m.n_matched >= 38
    assert m.transform.rotation_deg == pytest.approx(1.5, abs=0.02)
    x, y = m.transform.apply(256.0, 256.0)
    tx, ty = true.apply(256.0, 256.0)
    assert np.hypot(x - tx, y - ty) < 0.1
    back = m.transform.inverse().apply(x, y)
    assert np.allclose(back, (256.0, 256.0))


def test_match_stars_refuses_an_unrelated_field_and_a_shift_beyond_the_bound():
    rng = np.random.default_rng(8)
    src = rng.uniform(0, 512, (40, 2))
    assert match_stars(src, rng.uniform(0, 512, (40, 2)), tolerance=1.0) is None
    far = src + [200.0, 0.0]
    assert match_stars(src, far, tolerance=1.0, max_shift=50, centre=(256, 256)) is None
    assert match_stars(src, far, tolerance=1.0, max_shift=None) is not None


def test_background_map_follows_a_gradient_to_the_edges():
    rng = np.random.default_rng(9)
    gy, gx = np.mgrid[0:300, 0:400]
    sky = 500 + 8.0 * gx + 3.0 * gy
    bkg = background_map(sky + rng.normal(0, 10, sky.shape))
    # within the noise of one pixel everywhere, far better on average
    assert np.abs(bkg.map - sky).max() < 10 and np.median(np.abs(bkg.map - sky)) < 2
    assert bkg.rms == pytest.approx(10, rel=0.1)


def test_cosmic_ray_test_flags_a_sharp_hit_not_a_bright_star():
    y, x = np.mgrid[0:64, 0:64]
    s = 3.3 / 2.355
    star = 2e5 / (2 * np.pi * s * s) * np.exp(-((x - 20.3) ** 2 + (y - 30.6) ** 2) / (2 * s * s))
    img = 300 + star + np.random.default_rng(1).normal(0, 10, star.shape)
    img[40, 45] += 3000     # a hit on blank sky, inside the second aperture
    hits = cosmic_ray_hits(img, np.array([20.3, 44.0]), np.array([30.6, 40.0]), 6.0, 3.3, 1.0,
                           7.0, np.array([300.0, 300.0]))
    assert list(hits) == [0, 1]


def test_too_few_stars_warns_with_the_count_and_frame_and_fails_with_that_cause(tmp_path, caplog):
    truth = make_dataset(tmp_path, 18, n_frames=3, settings={"min_field_stars": 150})
    with caplog.at_level(logging.WARNING, logger="pipekit.photometry"):
        with pytest.raises(PipekitError, match=r"only \d+ field stars detected on the reference"):
            measure_dataset(tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("field stars detected" in m and "e91.fits.fz" in m for m in warned)
    assert truth.files


def test_changed_aperture_remeasures_every_frame_and_unchanged_settings_skip(tmp_path):
    truth = make_dataset(tmp_path, 19, n_frames=4)
    first = measure_dataset(tmp_path)
    assert len(first.measured) == 4
    again = measure_dataset(tmp_path)
    assert again.measured == [] and len(again.skipped) == 4
    path = tmp_path / "reduction_config.yaml"
    path.write_text(path.read_text().replace("aperture_arcsec: 3.0", "aperture_arcsec: 2.5"))
    changed = measure_dataset(tmp_path)
    assert sorted(changed.measured) == sorted(f.name for f in truth.files)
    from astropy.table import Table
    t = Table.read(tmp_path / "photometry" / (frame_stem(truth.files[0]) + ".ecsv"))
    assert t.meta["radius_px"] == pytest.approx(2.5 / 0.389)


def test_target_xy_pins_the_target_on_the_reference_frame(tmp_path):
    make_dataset(tmp_path, 20, n_frames=3, settings={"target_xy": "[190.0, 191.5]"})
    config = load_reduction_config(tmp_path / "reduction_config.yaml")
    assert config.photometry.target_xy == [190.0, 191.5]
    measure_dataset(tmp_path, config)
    from astropy.table import Table
    stars = Table.read(tmp_path / "photometry" / "reference_stars.ecsv")
    assert (stars["x_ref"][0], stars["y_ref"][0]) == (190.0, 191.5)
    assert "target_xy" in stars.meta["target_position"]


def test_a_masked_column_through_a_star_s_wing_is_filled_and_one_through_its_core_flags_it():
    from pipekit.photometry import aperture_sums, measure_frame, repair_bad_pixels
    from pipekit.testing.simulate import _render_moffat

    r = 3.0 / 0.389
    x0, y0 = 32.37, 31.71
    img = _render_moffat((64, 64), np.array([x0]), np.array([y0]), np.array([1e5]), 3.4)
    true, _, _ = aperture_sums(img, [x0], [y0], r)
    wing = img.copy()
    wing[:, 37] = np.nan                          # 4.6 px from the centre
    n_filled, filled = repair_bad_pixels(wing, np.array([x0]), np.array([y0]), r)
    total, _, flags = aperture_sums(wing, [x0], [y0], r)
    assert n_filled[0] > 10 and flags[0] == 0
    assert total[0] == pytest.approx(true[0], rel=1e-3)
    core = img.copy()
    core[:, 32] = np.nan                          # through the centre: its mirror is masked
    n_filled, _ = repair_bad_pixels(core, np.array([x0]), np.array([y0]), r)
    assert n_filled[0] == 0
    assert aperture_sums(core, [x0], [y0], r)[2][0] & BAD_PIXELS
    # the repaired star's error grows by the filled pixels' noise; the caller's frame is kept
    noisy = 100.0 + img + np.random.default_rng(3).normal(0, 10, img.shape)
    noisy[:, 37] = np.nan
    before = noisy.copy()
    t = measure_frame(noisy, [(x0, y0)], r, 5 / 0.389, 8 / 0.389, gain=1.0, rdnoise=10.0)
    clean = measure_frame(np.where(np.isfinite(noisy), noisy, 100.0 + img), [(x0, y0)], r,
                          5 / 0.389, 8 / 0.389, gain=1.0, rdnoise=10.0)
    assert t["flags"][0] == 0 and t["n_filled"][0] > 10
    assert t["flux_err"][0] > clean["flux_err"][0]
    assert np.array_equal(np.isnan(noisy), np.isnan(before))


def test_sharp_sources_are_cosmic_rays_not_stars():
    from pipekit.photometry import sharp_sources
    from pipekit.testing.simulate import _render_moffat

    img = 300 + _render_moffat((64, 64), np.array([20.3, 44.0]), np.array([30.6, 20.0]),
                               np.array([2e4, 2e4]), 3.5)
    img += np.random.default_rng(2).normal(0, 10, img.shape)
    img[45, 40] += 5000
    sharp = sharp_sources(img, np.array([20.3, 44.0, 40.0]), np.array([30.6, 20.0, 45.0]), 3.5,
                          1.0, 7.0, np.full(img.shape, 300.0))
    assert list(sharp) == [False, False, True]


def test_combine_truths_joins_two_telescopes_in_time_order(tmp_path):
    from pipekit.testing.simulate import PaczynskiEvent, make_star_field
    from pipekit.testing.truths import combine_truths

    stars = make_star_field(269.7596, -28.2094, 20, seed=1)
    event = PaczynskiEvent(61253.2, 0.2, 3.0)
    a = simulate_dataset(tmp_path, n_frames=2, seed=1, shape=(64, 64), stars=stars, event=event,
                         target_hits=(1,), cadence_hours=2.0)
    b = simulate_dataset(tmp_path, n_frames=2, seed=2, shape=(64, 64), stars=stars, event=event,
                         instrument="kb98", telescope="0m414", throughput=0.4,
                         start="2026-08-01T01:00:00", cadence_hours=2.0, first_frame_number=50)
    t = combine_truths([a, b])
    assert t.files == [a.files[0], b.files[0], a.files[1], b.files[1]]
    assert t.meta["pixscale"] == [0.389, 0.571, 0.389, 0.571]
    assert t.meta["throughput"] == [1.0, 0.4, 1.0, 0.4]
    assert t.meta["target_hits"] == [2]
    assert np.allclose(t.target_flux[1], b.target_flux[0])
    with pytest.raises(ValueError, match="share one StarField"):
        combine_truths([a, simulate_dataset(tmp_path / "c", n_frames=1, seed=3, shape=(64, 64))])
