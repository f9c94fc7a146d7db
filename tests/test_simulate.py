"""Tests of pipekit.testing.simulate: truthful, LCO-like, reproducible synthetic frames."""

import re

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from pipekit.frames import read_frame
from pipekit.testing.simulate import PaczynskiEvent, simulate_dataset

LCO_KEYS = ["OBJECT", "RA", "DEC", "FILTER", "INSTRUME", "DATE-OBS", "EXPTIME", "PIXSCALE", "GAIN",
            "RDNOISE", "SATURATE", "SITEID", "LATITUDE", "LONGITUD", "HEIGHT", "OBSTYPE", "RLEVEL",
            "TELESCOP", "MJD-OBS", "DAY-OBS"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim") / "data"
    return simulate_dataset(folder, n_frames=4, seed=11, shape=(256, 256), n_stars=60)


def test_paczynski_magnification_peaks_at_t0_with_the_point_lens_formula():
    ev = PaczynskiEvent(t0=61253.0, u0=0.1, tE=5.0)
    u = 0.1
    assert ev.magnification(61253.0) == pytest.approx((u * u + 2) / (u * np.sqrt(u * u + 4)),
                                                      rel=1e-12)
    t = np.array([61243.0, 61248.0, 61253.0, 61258.0, 61263.0])
    a = ev.magnification(t)
    assert a[2] == a.max()
    assert a[0] == pytest.approx(a[4], rel=1e-12) and a[1] == pytest.approx(a[3], rel=1e-12)
    u2 = np.hypot(0.1, 2.0)   # two Einstein times away
    assert a[0] == pytest.approx((u2 ** 2 + 2) / (u2 * np.sqrt(u2 ** 2 + 4)), rel=1e-12)


def test_frames_carry_lco_keys_names_and_read_cleanly_with_pipekit_frames(small):
    pattern = re.compile(r"^lsc1m005-fa15-\d{8}-\d{4}-e91\.fits\.fz$")
    for path in small.files:
        assert pattern.match(path.name), path.name
        frame = read_frame(path)
        assert frame.info.problems == []
        assert frame.wcs is not None and frame.data.shape == (256, 256)
        assert frame.info.instrument_class == "sinistro"
        assert frame.info.obstype == "EXPOSE" and frame.info.rlevel == 91
        for key in LCO_KEYS:
            assert key in frame.header, key
        assert re.match(r"^\d\d:\d\d:\d\d\.\d+$", frame.header["RA"])
        assert re.match(r"^[+-]\d\d:\d\d:\d\d\.\d+$", frame.header["DEC"])
    with fits.open(small.files[0]) as hdul:
        assert isinstance(hdul["SCI"], fits.CompImageHDU)


def test_mid_exposure_times_and_target_truth_follow_the_event(small):
    assert np.allclose(small.mjd_mid - small.mjd_start, small.exptime / 2 / 86400, atol=1e-12)
    expected = small.source_flux * small.event.magnification(small.mjd_mid) + \
        small.meta["blend_flux"]
    assert np.allclose(small.target_flux, expected, rtol=1e-12)
    frame = read_frame(small.files[1])
    assert frame.info.mjd_mid == pytest.approx(small.mjd_mid[1], abs=1e-8)


def test_header_wcs_is_close_to_the_truth_and_pointing_jitters(small):
    offsets = []
    for i, path in enumerate(small.files):
        w = WCS(fits.getheader(path, "SCI"))
        x, y = w.all_world2pix(small.stars.ra, small.stars.dec, 0)
        offsets.append(np.median(np.hypot(x - small.x[i], y - small.y[i])))
    # header WCS errs by ~0.3 px rms (for the centroid refinement to find), never by pixels
    assert max(offsets) < 2.0
    assert np.ptp(small.x[:, 0]) > 0.5    # the target moves on the detector frame to frame


def test_sky_noise_is_poisson_plus_read_noise_after_compression(small):
    frame = read_frame(small.files[2])
    d = frame.data.astype(float)
    # a star-free patch, well away from the target (field stars avoid its surroundings)
    x0, y0 = np.rint(small.x[2, 0]).astype(int), np.rint(small.y[2, 0]).astype(int)
    # 24-34 px from the target: no field star within 14" (36 px), the target's wings < 1 ADU
    side = 1 if x0 + 34 < 256 else -1
    xs = sorted([x0 + side * 24, x0 + side * 34])
    patch = d[y0 - 8:y0 + 9, xs[0]:xs[1]]
    sky = small.sky[2]
    expected = sky / small.gain + (small.rdnoise / small.gain) ** 2
    assert patch.mean() == pytest.approx(sky, abs=4 * np.sqrt(expected / patch.size) + 1)
    # 170 pixels: the variance is known to ~11 % (1 sigma); Moffat wings add a little
    assert patch.var(ddof=1) == pytest.approx(expected, rel=0.4)


def test_brightest_stars_saturate_and_nothing_exceeds_full_well(tmp_path):
    truth = simulate_dataset(tmp_path, n_frames=1, seed=2, shape=(256, 256), n_stars=80,
                             compress=False)
    data = fits.getdata(truth.files[0], "SCI")
    assert truth.files[0].name.endswith(".fits")
    assert data.max() <= truth.saturate * 1.02 + 1e-3
    assert (data >= truth.saturate).sum() > 0


def test_same_seed_gives_identical_frames(tmp_path):
    a = simulate_dataset(tmp_path / "a", n_frames=2, seed=7, shape=(128, 128), n_stars=20)
    b = simulate_dataset(tmp_path / "b", n_frames=2, seed=7, shape=(128, 128), n_stars=20)
    for fa, fb in zip(a.files, b.files):
        assert np.array_equal(fits.getdata(fa, "SCI"), fits.getdata(fb, "SCI"))
    assert np.array_equal(a.star_flux, b.star_flux)
