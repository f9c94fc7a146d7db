"""pipekit.frames: header normalisation on real LCO headers and files, quirks, errors."""

import json
import math

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import EarthLocation
from astropy.io import fits
from astropy.time import Time

from pipekit.errors import FrameError
from pipekit.frames import (FrameInfo, info_from_header, instrument_class, parse_dec, parse_ra,
                            read_frame, read_frame_info)


def hms(h, m, s):
    return (h + m / 60 + s / 3600) * 15.0


def dms(sign, d, m, s):
    return sign * (d + m / 60 + s / 3600)


# What each real archive record must parse to, read by eye from archive_headers.json:
# kind: (OBJECT, RA deg, Dec deg, FILTER, class, OBSTYPE, DATE-OBS, EXPTIME, GAIN, SATURATE,
#        SITEID, LATITUDE, usable for photometry)
ARCHIVE_EXPECTED = {
    "e00": ("zero_pointing", hms(1, 24, 11.435), dms(-1, 32, 22, 57.34), "ip", "sinistro",
            "EXPOSE", "2015-12-16T18:20:48.907", 15.0, 3.35, 47500.0, "cpt", -32.3829, True),
    "e90": ("GJ 3470", hms(7, 59, 9.126), dms(1, 15, 24, 46.84), "V", "sbig", "EXPOSE",
            "2015-11-10T08:01:07.021", 40.0, 1.4, 46000.0, "lsc", -30.1673833, True),
    "e10": ("zero_pointing", hms(1, 37, 31.248), dms(-1, 32, 22, 57.38), "ip", "sbig", "EXPOSE",
            "2015-12-19T18:22:15.269", 15.0, 1.4, 46000.0, "cpt", -32.3473417, True),
    "b00": (None, hms(23, 9, 14.613), dms(-1, 80, 6, 25.99), "rp", "sinistro", "BIAS",
            "2015-12-16T19:33:54.238", 0.0, (2.01 + 1.99 + 2.05 + 2.02) / 4, None, "coj",
            -31.2727986, False),
    "d00": (None, hms(23, 54, 7.750), dms(-1, 80, 6, 31.02), "rp", "sinistro", "DARK",
            "2015-12-16T20:18:17.605", 900.0, (2.01 + 1.99 + 2.05 + 2.02) / 4, None, "coj",
            -31.2727986, False),
    "f00": ("Flat", hms(1, 34, 34.674), dms(-1, 23, 52, 48.16), "Y", "sinistro", "SKYFLAT",
            "2015-12-16T17:37:56.532", 2.212, 3.35, 47500.0, "cpt", -32.3829, False),
    "s00": ("S82_01", hms(0, 42, 14.400), dms(1, 0, 21, 24.42), "I", "sinistro", "STANDARD",
            "2015-12-16T18:26:14.591", 60.0, 3.35, 47500.0, "cpt", -32.3829, True),
    "x00": ("auto_focus", hms(3, 58, 33.134), dms(-1, 22, 2, 29.93), "rp", "sinistro",
            "EXPERIMENTAL", "2015-12-16T11:48:39.307", 10.0, (2.01 + 1.99 + 2.05 + 2.02) / 4,
            None, "coj", -31.2727986, False),
    "t00": ("24936", hms(1, 25, 58.018), dms(-1, 4, 28, 41.67), "w", "sbig", "TRAILED",
            "2015-12-17T00:38:57.833", 3.285, 2.74, None, "tfn", 28.300308, False),
    "g00": ("20 Tau", hms(3, 45, 49.720), dms(1, 24, 22, 2.88), "BL", "sbig", "GUIDE",
            "2015-12-17T06:48:31.970", 10.0, 2.0, None, "sqa", 34.6914533, False),
    "cat": ("S82_01", hms(0, 42, 14.398), dms(1, 0, 21, 24.48), "ip", "sbig", "STANDARD",
            "2015-12-19T18:27:58.758", 60.0, 1.4, 46000.0, "cpt", -32.3473417, False),
    "2x2": ("Output from MAKECAL", hms(23, 40, 52.236), dms(-1, 80, 6, 30.66), "Y", "sbig",
            "DARK", "2015-12-22T04:18:10.527", 300.0, 1.4, 46000.0, "cpt", -32.3473417, False),
    "_ip": ("Flat field", hms(9, 48, 32.336), dms(-1, 27, 6, 18.34), "ip", "sbig", "SKYFLAT",
            "2015-12-22T02:59:20.541", 9.307, 1.4, 46000.0, "cpt", -32.3473417, False),
    "s10": ("S82_01", hms(0, 42, 14.398), dms(1, 0, 21, 24.48), "ip", "sbig", "STANDARD",
            "2015-12-19T18:27:58.758", 60.0, 1.4, 46000.0, "cpt", -32.3473417, True),
}


@pytest.fixture(scope="module")
def archive_headers(lco_data):
    return json.loads((lco_data / "archive_headers.json").read_text())


def test_archive_headers_hold_the_fourteen_expected_kinds(archive_headers):
    assert set(archive_headers) == set(ARCHIVE_EXPECTED)


@pytest.mark.parametrize("kind", sorted(ARCHIVE_EXPECTED))
def test_every_archive_record_parses_to_the_values_in_its_header(archive_headers, kind):
    (target, ra, dec, filt, klass, obstype, date_obs, exptime, gain, saturate, site, lat,
     usable) = ARCHIVE_EXPECTED[kind]
    info = info_from_header(archive_headers[kind], path=f"frame-{kind}.fits.fz")
    assert info.target == target
    assert info.ra == pytest.approx(ra, abs=1e-9)
    assert info.dec == pytest.approx(dec, abs=1e-9)
    assert info.filter == filt
    assert info.instrument_class == klass
    assert info.obstype == obstype
    assert info.date_obs == date_obs
    assert info.exptime == pytest.approx(exptime)
    assert info.gain == pytest.approx(gain, rel=1e-12)
    assert info.saturate == (pytest.approx(saturate) if saturate is not None else None)
    assert info.site == site
    assert info.latitude == pytest.approx(lat)
    assert info.height is not None and info.longitude is not None
    assert info.usable is usable, info.problems
    # mjd_mid is DATE-OBS + EXPTIME/2. MJD-OBS (start) agrees with DATE-OBS to 1 ms in
    # pipeline-processed headers, but raw-frame headers carry an MJD-OBS up to 5 s off:
    # DATE-OBS is the authority.
    start_offset_s = (info.mjd_mid - exptime / 2 / 86400 - archive_headers[kind]["MJD-OBS"]) * 86400
    processed = "PIPEVER" in archive_headers[kind]
    assert abs(start_offset_s) < (1e-3 if processed else 6.0)


def test_archive_rlevel_comes_from_the_file_name_suffix(archive_headers):
    assert info_from_header(archive_headers["e90"], path="lsc1m005-kb78-20151109-0179-e90.fits"
                            ).rlevel == 90
    assert info_from_header(archive_headers["e00"], path="x-e91.fits.fz").rlevel == 91
    assert info_from_header({"RLEVEL": 91}, path="x-e00.fits").rlevel == 91
    assert info_from_header(archive_headers["e00"]).rlevel is None  # no path, no RLEVEL key


def test_list_valued_gain_is_the_mean_of_the_amplifiers(archive_headers):
    assert archive_headers["s00"]["GAIN"] == "[3.3,3.4,3.3,3.4]"
    assert info_from_header(archive_headers["s00"]).gain == pytest.approx(3.35, rel=1e-12)


def test_nan_catalogue_position_falls_back_to_pointing(archive_headers):
    record = archive_headers["b00"]
    assert record["CAT-RA"] == "NaN"
    info = info_from_header(record)
    assert info.cat_ra == info.ra == pytest.approx(hms(23, 9, 14.613))


def test_missing_pointing_falls_back_to_catalogue_position(archive_headers):
    record = dict(archive_headers["e90"], RA="N/A", DEC="UNKNOWN")
    info = info_from_header(record)
    assert info.ra == pytest.approx(hms(7, 59, 9.120), abs=1e-9)
    assert info.dec == pytest.approx(dms(1, 15, 24, 46.80), abs=1e-9)


def test_problems_name_what_stops_photometry(archive_headers):
    bias = info_from_header(archive_headers["b00"])
    assert any("BIAS" in p for p in bias.problems)
    assert any("EXPTIME" in p for p in bias.problems)
    catalogue = info_from_header(archive_headers["cat"])
    assert any("WCS" in p for p in catalogue.problems)
    assert any("NAXIS=0" in p for p in catalogue.problems)


# ---- quirks ------------------------------------------------------------------------

def test_no_value_markers_become_none():
    header = {"OBJECT": "N/A", "RA": "NaN", "DEC": "UNKNOWN", "FILTER": "", "INSTRUME": "UNKNOWN",
              "GAIN": "NaN", "RDNOISE": "N/A", "SATURATE": 0, "MAXLIN": 0.0, "EXPTIME": "UNKNOWN",
              "PIXSCALE": "", "DATE-OBS": "N/A", "SITEID": "UNKNOWN", "LATITUDE": "NaN",
              "LONGITUD": "N/A", "HEIGHT": "", "OBSTYPE": "N/A"}
    info = info_from_header(header)
    for name in ("target", "ra", "dec", "filter", "instrument", "instrument_class", "gain",
                 "rdnoise", "saturate", "exptime", "pixscale", "date_obs", "mjd_mid", "site",
                 "latitude", "longitude", "height", "obstype"):
        assert getattr(info, name) is None, name
    assert not info.usable


def test_empty_header_gives_all_none_and_reasons():
    info = info_from_header({})
    assert info == FrameInfo(problems=info.problems)
    assert len(info.problems) >= 5


def test_float_nan_and_string_numbers_are_handled():
    info = info_from_header({"GAIN": float("nan"), "RDNOISE": "7.5", "EXPTIME": "30",
                             "RA": 269.5, "DEC": "-28.5"})
    assert info.gain is None
    assert info.rdnoise == 7.5 and info.exptime == 30.0
    assert info.ra == 269.5 and info.dec == -28.5


def test_saturate_zero_falls_back_to_maxlin_then_none():
    assert info_from_header({"SATURATE": 0, "MAXLIN": 40000.0}).saturate == 40000.0
    assert info_from_header({"SATURATE": 0.0, "MAXLIN": 0}).saturate is None
    assert info_from_header({}).saturate is None


def test_filter_falls_back_to_the_wheel_that_holds_a_filter():
    info = info_from_header({"FILTER": "NOTPRESENT", "FILTER1": "air", "FILTER2": "gp",
                             "FILTER3": "air"})
    assert info.filter == "gp"


def test_pixscale_from_cd_matrix_when_pixscale_missing():
    cd = 0.389 / 3600
    info = info_from_header({"PIXSCALE": "N/A", "CD1_1": -cd, "CD1_2": 0.0, "CD2_1": 0.0,
                             "CD2_2": cd})
    assert info.pixscale == pytest.approx(0.389, rel=1e-9)


def test_location_from_obsgeo_when_geodetic_keys_missing(archive_headers):
    record = archive_headers["2x2"]
    geocentric = {k: record[k] for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")}
    info = info_from_header(geocentric)
    # OBSGEO and LATITUDE/LONGITUD/HEIGHT of this real header describe the same site.
    assert info.latitude == pytest.approx(record["LATITUDE"], abs=1e-4)
    assert info.longitude == pytest.approx(record["LONGITUD"], abs=1e-4)
    assert info.height == pytest.approx(record["HEIGHT"], abs=20)


def test_date_obs_without_time_uses_utstart():
    info = info_from_header({"DATE-OBS": "2015-12-16", "UTSTART": "18:20:48.907", "EXPTIME": 15})
    assert info.date_obs == "2015-12-16T18:20:48.907"


@pytest.mark.parametrize("text,expected", [
    ("01:24:11.435", hms(1, 24, 11.435)),
    ("01 24 11.435", hms(1, 24, 11.435)),
    ("17h59m27.05s", hms(17, 59, 27.05)),
    (269.5, 269.5),
    ("269.5", 269.5),
    ("NaN", None),
    ("N/A", None),
    ("25:00:00", None),
    ("12:61:00", None),
    (None, None),
    (True, None),
])
def test_parse_ra(text, expected):
    result = parse_ra(text)
    assert result == (pytest.approx(expected, abs=1e-12) if expected is not None else None)


@pytest.mark.parametrize("text,expected", [
    ("-32:22:57.34", dms(-1, 32, 22, 57.34)),
    ("+00:21:24.42", dms(1, 0, 21, 24.42)),
    ("-00:30:00", -0.5),
    ("-32 22 57.34", dms(-1, 32, 22, 57.34)),
    (-28.5, -28.5),
    ("91:00:00", None),
    ("UNKNOWN", None),
])
def test_parse_dec(text, expected):
    result = parse_dec(text)
    assert result == (pytest.approx(expected, abs=1e-12) if expected is not None else None)


@pytest.mark.parametrize("name,expected", [
    ("fa15", "sinistro"), ("fl10", "sinistro"), ("kb70", "sbig"), ("KB05", "sbig"),
    ("sq31", "qhy"), ("ep02", "muscat"), ("fs01", "spectral"), ("en06", "floyds"),
    ("xx01", None), ("", None), ("UNKNOWN", None), (None, None),
])
def test_instrument_class(name, expected):
    assert instrument_class(name) == expected


# ---- times and places --------------------------------------------------------------------

def test_mid_time_is_start_plus_half_exposure_in_utc(archive_headers):
    info = info_from_header(archive_headers["e90"])
    mid = info.mid_time()
    assert mid.scale == "utc"
    expected = Time("2015-11-10T08:01:07.021", scale="utc") + 20 * u.s
    assert abs((mid - expected).to_value(u.s)) < 1e-6
    assert abs(mid.mjd - info.mjd_mid) * 86400 < 1e-4   # same instant, within 0.1 ms


def test_mid_time_without_exptime_raises_frame_error():
    with pytest.raises(FrameError, match="EXPTIME"):
        info_from_header({"DATE-OBS": "2015-11-10T08:01:07.021"}, path="a.fits").mid_time()


def test_location_matches_the_headers_geocentric_position(archive_headers):
    record = archive_headers["e90"]
    loc = info_from_header(record).location()
    expected = EarthLocation.from_geocentric(record["OBSGEO-X"], record["OBSGEO-Y"],
                                             record["OBSGEO-Z"], unit=u.m)
    separation = math.dist([c.to_value(u.m) for c in loc.geocentric],
                           [c.to_value(u.m) for c in expected.geocentric])
    assert separation < 20.0  # metres: the header's two descriptions of the site agree


def test_location_without_site_raises_frame_error():
    with pytest.raises(FrameError, match="LATITUDE"):
        info_from_header({}, path="a.fits").location()


# ---- real files ------------------------------------------------------------------------

REAL_FILES = {
    # file: (shape, OBJECT, INSTRUME, class, FILTER, rlevel, GAIN, DATE-OBS, EXPTIME)
    "coj1m011-kb05-20150219-0125-e90.fits": ((5, 2027), "M84", "kb05", "sbig", "V", 90, 1.4,
                                             "2015-02-19T13:56:05.261", 10.0),
    "coj1m011-kb05-20150219-0125-e90.fits.fz": ((5, 2027), "M84", "kb05", "sbig", "V", 90, 1.4,
                                                "2015-02-19T13:56:05.261", 10.0),
    "cpt1m010-kb70-20151219-0073-e10.fits.fz": ((1, 2027), "zero_pointing", "kb70", "sbig", "ip",
                                                10, 1.4, "2015-12-19T18:22:15.269", 15.0),
    "cpt1m012-fl10-20151216-0073-e00.fits.fz": ((1024, 1040), "zero_pointing", "fl10",
                                                "sinistro", "ip", 0, 3.35,
                                                "2015-12-16T18:20:48.907", 15.0),
}


def test_every_real_file_is_covered(lco_data):
    on_disk = {p.name for p in lco_data.iterdir() if ".fits" in p.name}
    assert on_disk == set(REAL_FILES)


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_read_frame_on_every_real_file(lco_data, name):
    shape, target, instrume, klass, filt, rlevel, gain, date_obs, exptime = REAL_FILES[name]
    frame = read_frame(lco_data / name)
    assert frame.data.shape == shape
    assert frame.data.dtype == np.float32
    assert np.isfinite(frame.data).all()
    info = frame.info
    assert (info.target, info.instrument, info.instrument_class, info.filter, info.rlevel) == \
        (target, instrume, klass, filt, rlevel)
    assert info.gain == pytest.approx(gain, rel=1e-12)
    assert info.date_obs == date_obs and info.exptime == exptime
    assert info.usable, info.problems
    # The WCS maps its reference pixel to its reference sky position.
    header = frame.header
    sky = frame.wcs.pixel_to_world(header["CRPIX1"] - 1, header["CRPIX2"] - 1)
    assert sky.ra.deg == pytest.approx(header["CRVAL1"], abs=1e-9)
    assert sky.dec.deg == pytest.approx(header["CRVAL2"], abs=1e-9)
    # The header-only reader agrees with the full reader.
    assert read_frame_info(lco_data / name) == info


def test_sinistro_third_axis_is_squeezed_and_pixels_match_astropy(lco_data):
    path = lco_data / "cpt1m012-fl10-20151216-0073-e00.fits.fz"
    raw = fits.getdata(path, 1)
    assert raw.shape == (1, 1024, 1040)
    frame = read_frame(path)
    np.testing.assert_array_equal(frame.data, raw[0])


def test_fits_and_fz_of_the_same_frame_agree(lco_data):
    plain = read_frame(lco_data / "coj1m011-kb05-20150219-0125-e90.fits")
    packed = read_frame(lco_data / "coj1m011-kb05-20150219-0125-e90.fits.fz")
    # fpack quantises floats; the cut-down rows still agree to the quantisation level.
    np.testing.assert_allclose(packed.data, plain.data, rtol=0, atol=np.std(plain.data) / 4 + 1)
    strip = ("path", "filename")
    a = {k: v for k, v in vars(plain.info).items() if k not in strip}
    b = {k: v for k, v in vars(packed.info).items() if k not in strip}
    assert a == b


# ---- synthetic files: layouts and failures -----------------------------------------------

def _header(**extra):
    header = fits.Header()
    header.update({"OBJECT": "OGLE-2024-BLG-0034", "RA": "17:59:27.05", "DEC": "-28:36:10.2",
                   "FILTER": "ip", "INSTRUME": "fa15", "OBSTYPE": "EXPOSE",
                   "DATE-OBS": "2024-06-01T03:00:00.000", "EXPTIME": 100.0, "PIXSCALE": 0.389,
                   "GAIN": 1.0, "RDNOISE": 7.0, "SATURATE": 120000.0, "SITEID": "lsc",
                   "LATITUDE": -30.1673833, "LONGITUD": -70.8047889, "HEIGHT": 2201.0,
                   "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 269.8627,
                   "CRVAL2": -28.6028, "CRPIX1": 16.0, "CRPIX2": 16.0, "CD1_1": -0.389 / 3600,
                   "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.389 / 3600})
    header.update(extra)
    return header


def test_sci_extension_is_preferred_and_primary_keys_are_merged(tmp_path):
    primary = fits.PrimaryHDU(header=fits.Header({"OBJECT": "from-primary", "ORIGIN": "LCOGT"}))
    decoy = fits.ImageHDU(np.zeros((8, 8), np.float32), name="BPM")
    header = _header()
    del header["OBJECT"]
    sci = fits.CompImageHDU(np.full((32, 32), 5.0, np.float32), header=header, name="SCI")
    path = tmp_path / "frame-e91.fits.fz"
    fits.HDUList([primary, decoy, sci]).writeto(path)
    frame = read_frame(path)
    assert frame.data.shape == (32, 32) and float(frame.data.mean()) == 5.0
    assert frame.info.target == "from-primary"
    assert frame.info.rlevel == 91
    assert frame.header["ORIGIN"] == "LCOGT"
    assert frame.info.usable, frame.info.problems


def test_frame_without_wcs_reads_but_lists_the_problem(tmp_path):
    header = _header()
    for key in ("CTYPE1", "CTYPE2"):
        del header[key]
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(np.zeros((16, 16), np.float32), header=header).writeto(path)
    frame = read_frame(path)
    assert frame.wcs is None
    assert not frame.info.usable
    assert any("WCS" in p for p in frame.info.problems)


def test_not_fits_raises_frame_error_naming_the_file(tmp_path):
    path = tmp_path / "junk-e91.fits.fz"
    path.write_bytes(b"this is not a FITS file at all" * 100)
    with pytest.raises(FrameError, match="junk-e91.fits.fz"):
        read_frame_info(path)
    with pytest.raises(FrameError, match="junk-e91.fits.fz"):
        read_frame(path)


def test_missing_file_raises_frame_error(tmp_path):
    with pytest.raises(FrameError, match="no such frame"):
        read_frame(tmp_path / "absent.fits")


def test_table_only_file_has_no_image(tmp_path):
    path = tmp_path / "table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(FrameError, match="no image HDU"):
        read_frame_info(path)


def test_truncated_file_raises_frame_error_on_read(tmp_path, lco_data):
    data = (lco_data / "cpt1m012-fl10-20151216-0073-e00.fits.fz").read_bytes()
    path = tmp_path / "cut-e00.fits.fz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrameError, match="cut-e00.fits.fz"):
        read_frame(path)


def test_cube_with_real_third_axis_is_refused(tmp_path):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 8, 8), np.float32), header=_header()).writeto(path)
    with pytest.raises(FrameError, match=r"\(3, 8, 8\)"):
        read_frame(path)


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_wcs_from_the_wcs_keys_equals_wcs_from_the_full_header(lco_data):
    from astropy.wcs import WCS

    for name in REAL_FILES:
        frame = read_frame(lco_data / name)
        full = WCS(frame.header, naxis=2)
        x, y = np.meshgrid(np.linspace(0, 2000, 5), np.linspace(0, 2000, 5))
        np.testing.assert_array_equal(frame.wcs.all_pix2world(x, y, 0),
                                      full.all_pix2world(x, y, 0))


def test_sip_distortion_survives_the_wcs_key_filter(tmp_path):
    from astropy.wcs import WCS

    header = _header(CTYPE1="RA---TAN-SIP", CTYPE2="DEC--TAN-SIP", A_ORDER=2, B_ORDER=2,
                     A_0_2=2e-5, A_2_0=-1e-5, B_1_1=3e-5, B_0_2=1e-5)
    path = tmp_path / "sip.fits"
    fits.PrimaryHDU(np.zeros((32, 32), np.float32), header=header).writeto(path)
    frame = read_frame(path)
    assert frame.wcs.sip is not None
    full = WCS(fits.getheader(path), naxis=2)
    corner = frame.wcs.all_pix2world([[31.0, 31.0]], 0)
    np.testing.assert_array_equal(corner, full.all_pix2world([[31.0, 31.0]], 0))
    # and the distortion is really applied: it moves the corner by more than 1e-6 deg
    plain = WCS(fits.getheader(path), naxis=2)
    plain.sip = None
    assert np.abs(corner - plain.all_pix2world([[31.0, 31.0]], 0)).max() > 1e-6
