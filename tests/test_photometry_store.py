"""Per-frame files, the photometry summary, batched BJD_TDB and the read-ahead: same
results as the straightforward way, less work."""

import io
import os

import numpy as np
import pytest
from astropy.table import Table

from pipekit.photometry import measure_dataset
from pipekit.photometry.detection import _local_maxima, _smoothed
from pipekit.photometry.arrayfile import pack_arrays, unpack_arrays
from pipekit.photometry.store import SUMMARY_NAME, FrameSummary, ecsv_text, float_words
from pipekit.photometry.times import bjd_tdb, bjd_tdb_many
from pipekit.testing.simulate import simulate_dataset


def _table():
    rng = np.random.default_rng(4)
    n = 30
    t = Table({"id": np.arange(n), "x": rng.normal(100, 30, n), "flux": rng.lognormal(8, 1, n),
               "n_sky": rng.integers(0, 500, n), "flags": np.zeros(n, np.int32),
               "ok": rng.random(n) > 0.5})
    t["flux"][3] = np.nan
    t["flux"][4] = -np.inf
    t["x"].unit = "pix"
    t["x"].description = "column: x, 'quoted' # hash"
    t.meta = {"frame": "a-e91.fits.fz", "date_obs": "2026-08-01T00:00:00.000", "exptime": 60.0,
              "bjd_tdb": 2461253.512345678912, "wcserr": 0, "shift_px": [0.25, -1e-17],
              "filter": None, "settings_hash": "0123456789abcdef", "sky_level": np.float32(3.5),
              "nested": {"a": [1, 2], "b": "yes"}, "nan": float("nan")}
    return t


def test_fast_ecsv_reads_back_as_astropys_own_file_does():
    t = _table()
    ours = Table.read(io.StringIO(ecsv_text(t)).getvalue(), format="ascii.ecsv")
    buf = io.StringIO()
    t.write(buf, format="ascii.ecsv")
    theirs = Table.read(buf.getvalue(), format="ascii.ecsv")
    assert ours.colnames == theirs.colnames
    for c in t.colnames:
        assert ours[c].dtype == theirs[c].dtype, c
        assert np.array_equal(np.asarray(ours[c]), np.asarray(theirs[c]), equal_nan=True), c
        assert ours[c].unit == theirs[c].unit and ours[c].description == theirs[c].description
    meta_ours, meta_theirs = dict(ours.meta), dict(theirs.meta)
    assert np.isnan(meta_ours.pop("nan")) and np.isnan(meta_theirs.pop("nan"))
    assert meta_ours == meta_theirs
    assert meta_ours["bjd_tdb"] == t.meta["bjd_tdb"]  # bit for bit


def test_fast_ecsv_reader_gives_what_astropys_reader_gives(tmp_path):
    from pipekit.photometry import store

    t = _table()
    words = Table({"frame": ["a.fits", "b.fits"], "v": [1.5, np.nan], "ok": [True, False]})
    spaced = Table({"frame": ["a b", "c"], "v": [1.0, 2.0]})      # quoted: astropy's writer
    empty = Table({"id": np.zeros(0, int), "flux": np.zeros(0)})
    astropy_written = tmp_path / "astropy.ecsv"
    t.write(astropy_written, format="ascii.ecsv")                  # !!omap meta: astropy's
    cases = []
    for name, table in (("t", t), ("words", words), ("spaced", spaced), ("empty", empty)):
        path = tmp_path / f"{name}.ecsv"
        path.write_text(ecsv_text(table))
        cases.append(path)
    fast = [store._parse_plain_ecsv(p.read_text()) is not None for p in cases]
    assert fast == [True, True, False, True]
    # astropy's own file: parsed here when plain (astropy < 7 writes plain meta), else by it
    for path in cases + [astropy_written]:
        ours, theirs = store.read_frame_ecsv(path), Table.read(path, format="ascii.ecsv")
        assert ours.colnames == theirs.colnames, path
        for c in theirs.colnames:
            assert ours[c].dtype == theirs[c].dtype, (path, c)
            assert ours[c].unit == theirs[c].unit, (path, c)
            assert ours[c].description == theirs[c].description, (path, c)
            if ours[c].dtype.kind == "f":
                assert np.array_equal(np.asarray(ours[c]), np.asarray(theirs[c]), equal_nan=True)
            else:
                assert list(ours[c]) == list(theirs[c]), (path, c)
        a, b = dict(ours.meta), dict(theirs.meta)
        if "nan" in a:
            assert np.isnan(a.pop("nan")) and np.isnan(b.pop("nan"))
        assert a == b, path
    meta, columns = store.read_frame_columns(cases[0], ("id", "flux"))
    assert meta["bjd_tdb"] == t.meta["bjd_tdb"] and list(columns) == ["id", "flux"]
    with pytest.raises(KeyError, match="missing"):
        store.read_frame_columns(cases[0], ("id", "flux_err"))


def test_float_words_are_pythons_repr_for_floats_of_every_magnitude():
    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.random(20000) * 10.0 ** rng.integers(-320, 300, 20000),
        -rng.random(2000) * 10.0 ** rng.integers(-12, 20, 2000),
        np.geomspace(1e-7, 1e-3, 2000), np.geomspace(1e14, 1e18, 2000),
        2461274 + rng.random(2000), np.round(rng.random(500) * 100),
        rng.random(500).astype(np.float32),
        [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e16, 1e16 - 2, 1e22, 5e-324,
         1.7976931348623157e308, np.nan, np.inf, -np.inf]])
    assert float_words(values) == [repr(v) for v in values.tolist()]
    assert float_words(np.zeros(0)) == [] and float_words([0.5]) == ["0.5"]
    # a float32 column is written as its values read as float64, as before
    assert float_words(np.float32([0.1])) == [repr(float(np.float32(0.1)))]
    # and so are a table's rows, float columns between words and integers
    cut = values[: len(values) // 4 * 4].reshape(4, -1)
    table = Table({"a": cut[0], "b": cut[1], "word": ["w"] * cut.shape[1],
                   "n": np.arange(cut.shape[1]), "c": cut[2], "d": cut[3]})
    rows = ecsv_text(table).splitlines()[-cut.shape[1]:]
    assert rows == [" ".join([repr(a), repr(b), "w", str(n), repr(c), repr(d)])
                    for n, (a, b, c, d) in enumerate(cut.T.tolist())]


def test_fast_ecsv_string_columns_read_back():
    t = Table({"frame": ["a", "b c"], "v": [1.0, 2.0]})
    back = Table.read(ecsv_text(t), format="ascii.ecsv")
    assert list(back["frame"]) == ["a", "b c"]


def test_bjd_for_many_frames_in_one_call_equals_frame_by_frame():
    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

    sites = [(-70.8047889, -30.1673833, 2198.0), (20.8101, -32.3806, 1460.0)]
    times = [Time("2026-08-01T03:17:42.125", scale="utc") + k * 0.0137 * u.day for k in range(7)]
    which = [0, 1, 0, 0, 1, 1, 0]
    many = bjd_tdb_many(times, 269.7596, -28.2094, [sites[w] for w in which])
    for t, w, value in zip(times, which, many):
        lon, lat, height = sites[w]
        one = bjd_tdb(t, 269.7596, -28.2094, EarthLocation.from_geodetic(lon, lat, height)).jd
        assert abs(value - one) * 86400 < 1e-6   # identical up to float rounding (< 1 µs)
    mjd = bjd_tdb_many([t.mjd for t in times], 269.7596, -28.2094, [sites[0]] * 7)
    assert np.all(np.abs(mjd - bjd_tdb_many(times, 269.7596, -28.2094, [sites[0]] * 7))
                  * 86400 < 1e-5)


def test_local_maxima_are_the_maximum_filter_peaks_and_smoothing_is_scipys():
    from scipy.ndimage import gaussian_filter, maximum_filter

    rng = np.random.default_rng(1)
    img = rng.normal(0, 1, (97, 131)).astype(np.float32)
    img[40:43, 50:53] += 30
    img[0, 0] += 25          # peaks on the edge and in a corner
    img[96, 60] += 25
    for hb in (1, 2, 3):
        iy, ix = np.nonzero((img == maximum_filter(img, size=2 * hb + 1)) & (img > 2.5))
        jy, jx = _local_maxima(img, 2.5, hb)
        assert np.array_equal(iy, jy) and np.array_equal(ix, jx)
    for sigma in (0.5, 1.1, 2.4):
        ref = gaussian_filter(img, sigma, truncate=3.0)
        assert np.allclose(_smoothed(img, sigma), ref, rtol=0, atol=1e-5 * np.abs(img).max())


@pytest.fixture
def small_dataset(tmp_path):
    from pipekit.config import write_reduction_config

    red = tmp_path / "T" / "sinistro" / "ip"
    truth = simulate_dataset(red, n_frames=6, shape=(256, 256), n_stars=40, seed=5)
    write_reduction_config(red / "reduction_config.yaml", truth.meta["target"],
                           truth.meta["ra"], truth.meta["dec"])
    return red, truth


def test_light_curve_rebuild_reads_only_new_per_frame_files(small_dataset, monkeypatch):
    from pipekit.lightcurve import build_lightcurve
    from pipekit.photometry import store

    red, truth = small_dataset
    result = measure_dataset(red)
    assert len(result.measured) == 6
    first = build_lightcurve(red)
    assert (red / "photometry" / SUMMARY_NAME).exists()
    # a new frame arrives: the photometry step summarises it, the rebuild parses no file
    simulate_dataset(red, n_frames=1, shape=(256, 256), n_stars=40, seed=5,
                     start="2026-08-01T12:00:00", first_frame_number=7, stars=truth.stars)
    again = measure_dataset(red)
    assert len(again.measured) == 1 and len(again.skipped) == 6
    reads = []
    original = store.read_frame_columns
    monkeypatch.setattr(store, "read_frame_columns",
                        lambda p, names: reads.append(os.path.basename(p)) or original(p, names))
    second = build_lightcurve(red)
    assert reads == [] and len(second) == len(first) + 1
    # the same light curve as from the files themselves (summary deleted)
    (red / "photometry" / SUMMARY_NAME).unlink()
    reads.clear()
    third = build_lightcurve(red)
    assert len(reads) == 7
    for col in ("time", "flux", "flux_err", "flags"):
        assert np.array_equal(np.asarray(third.table[col]), np.asarray(second.table[col]))


def test_per_frame_files_written_by_astropy_are_done_and_read(small_dataset):
    """Files of an earlier pipekit (astropy's own ECSV writer) are neither re-measured
    nor misread; a file replaced behind the summary's back is read again."""
    from pipekit.lightcurve import build_lightcurve

    red, _ = small_dataset
    measure_dataset(red)
    ref = build_lightcurve(red)
    phot = red / "photometry"
    (phot / SUMMARY_NAME).unlink()
    for path in sorted(phot.glob("*-e91.ecsv")):
        t = Table.read(path, format="ascii.ecsv")
        t.write(path, format="ascii.ecsv", overwrite=True)
    again = measure_dataset(red)
    assert again.measured == [] and len(again.skipped) == 6
    lc = build_lightcurve(red)
    assert np.array_equal(np.asarray(lc.table["flux"]), np.asarray(ref.table["flux"]))
    # one file edited (a new measurement of that frame): the summary notices
    path = sorted(phot.glob("*-e91.ecsv"))[0]
    t = Table.read(path, format="ascii.ecsv")
    t["flux"] *= 2
    t.write(path, format="ascii.ecsv", overwrite=True)
    os.utime(path, ns=(1, 1))
    rows, failures = FrameSummary(phot).refresh([path.name])
    assert failures == [] and rows.names == [path.name]
    assert np.array_equal(rows.stars("flux")[0], np.asarray(t["flux"]))


def test_fast_ecsv_writes_plain_words_itself_and_quotes_through_astropy():
    t = Table({"frame": ["lsc1m005-fa15-20260731-0001-e91", "b.fits"], "v": [1.0, 2.5]})
    text = ecsv_text(t)
    assert "b.fits 2.5" in text
    back = Table.read(text, format="ascii.ecsv")
    assert list(back["frame"]) == list(t["frame"]) and back["frame"].dtype.kind == "U"
    odd = Table({"frame": ["a b", 'say "x"', "nan"], "v": [1.0, 2.0, 3.0]})
    back = Table.read(ecsv_text(odd), format="ascii.ecsv")
    assert list(back["frame"]) == ["a b", 'say "x"', "nan"]




def _summarised(tmp_path, name, meta, n=4, flux=1.0):
    t = Table({"id": np.arange(n), "flux": np.full(n, flux), "flux_err": np.ones(n),
               "flags": np.zeros(n, np.int32)}, meta=meta)
    path = tmp_path / name
    path.write_text(ecsv_text(t))
    return path, t


def test_summary_keeps_every_kind_of_metadata_value_through_save_and_load(tmp_path):
    """Each key is stored as one column over frames: values of every type, None, keys some
    frames lack, mixed types and integers beyond int64 come back as they went in."""
    metas = [
        {"frame": "a", "exptime": 60.0, "wcserr": 0, "ok": True, "l1zp": None,
         "shift_px": [0.25, -1e-17], "nested": {"a": [1, 2]}, "mixed": 1, "big": 2 ** 70,
         "nul": "x\0", "nan": float("nan")},
        {"frame": "b", "exptime": 30.5, "wcserr": 7, "ok": False, "l1zp": 23.25,
         "shift_px": [1.0, 2.0], "mixed": 2.5, "big": 1, "nul": "y", "nan": 1.0,
         "only_here": "z"},
    ]
    paths = [_summarised(tmp_path, f"{m['frame']}.ecsv", m)[0] for m in metas]
    (tmp_path / "frames_summary.npz").write_bytes(b"an earlier version's summary")
    first = FrameSummary(tmp_path)
    first.refresh([p.name for p in paths])
    assert first.save() == tmp_path / SUMMARY_NAME
    assert not (tmp_path / "frames_summary.npz").exists()   # replaced, not left behind
    again = FrameSummary(tmp_path)
    for path, meta in zip(paths, metas):
        for key in {k for m in metas for k in m}:
            got = again.meta_value(path.name, key, default="<none>")
            want = meta.get(key, "<none>")
            if isinstance(want, float) and np.isnan(want):
                assert isinstance(got, float) and np.isnan(got), key
            else:
                assert got == want and type(got) is type(want), (key, got, want)
    rows, failures = again.refresh([p.name for p in paths])
    assert failures == [] and rows.has("only_here") == [False, True]
    assert rows.meta("l1zp") == [None, 23.25] and rows.meta("only_here") == [None, "z"]
    assert np.array_equal(rows.stars("id"), [np.arange(4)] * 2)


def test_summary_follows_frames_added_replaced_and_removed(tmp_path):
    a, _ = _summarised(tmp_path, "a.ecsv", {"frame": "a", "bjd_tdb": 1.0})
    b, _ = _summarised(tmp_path, "b.ecsv", {"frame": "b", "bjd_tdb": 2.0})
    summary = FrameSummary(tmp_path)
    summary.refresh(["a.ecsv", "b.ecsv"])
    summary.save()
    # the photometry step adds a frame it has just written: no file read for it
    c, table = _summarised(tmp_path, "c.ecsv", {"frame": "c", "bjd_tdb": 3.0}, n=5, flux=3.0)
    summary = FrameSummary(tmp_path)
    summary.add(c, table)
    summary.save()
    # one file replaced behind the summary's back, one deleted
    _summarised(tmp_path, "a.ecsv", {"frame": "a", "bjd_tdb": 1.5}, flux=2.0)
    os.utime(a, ns=(1, 1))
    b.unlink()
    summary = FrameSummary(tmp_path)
    assert summary.stamp("c.ecsv") == [c.stat().st_size, c.stat().st_mtime_ns]
    rows, failures = summary.refresh(["a.ecsv", "b.ecsv", "c.ecsv"])
    assert failures == [] and rows.names == ["a.ecsv", "c.ecsv"]
    assert rows.meta("bjd_tdb") == [1.5, 3.0] and list(rows.lengths) == [4, 5]
    assert np.array_equal(rows.take([1]).stars("flux"), [np.full(5, 3.0)])
    with pytest.raises(ValueError, match="different numbers of stars"):
        rows.stars("flux")
    summary.save()
    assert FrameSummary(tmp_path).refresh(["a.ecsv", "c.ecsv"])[0].meta("bjd_tdb") == [1.5, 3.0]
    # a key only removed frames had is not kept
    d, table = _summarised(tmp_path, "d.ecsv", {"frame": "d", "bjd_tdb": 4.0, "only_d": 1})
    summary = FrameSummary(tmp_path)
    summary.add(d, table)
    summary.save()
    d.unlink()
    summary = FrameSummary(tmp_path)
    summary.refresh(["a.ecsv", "c.ecsv"])
    summary.save()
    stored = unpack_arrays((tmp_path / SUMMARY_NAME).read_bytes())
    assert "only_d" not in stored["meta_keys"].tolist()
    # a summary it cannot read (cut short, or not one) is rebuilt from the files, not trusted
    whole = (tmp_path / SUMMARY_NAME).read_bytes()
    for broken in (whole[:-7], b"not a summary"):
        (tmp_path / SUMMARY_NAME).write_bytes(broken)
        rows, _ = FrameSummary(tmp_path).refresh(["a.ecsv", "c.ecsv"])
        assert rows.meta("frame") == ["a", "c"]


def test_array_file_gives_back_every_array_and_names_what_is_wrong():
    arrays = {"format": np.array(3), "names": np.array(["a.ecsv", "bé.ecsv"]),
              "stamps": np.arange(6, dtype=np.int64).reshape(3, 2),
              "flux": np.array([1.5, np.nan, -np.inf]), "flags": np.array([1, 2], np.int32),
              "ok": np.array([True, False]), "empty": np.zeros((0, 4)),
              "column": np.arange(12.0).reshape(3, 4)[:, 1]}    # not contiguous
    data = pack_arrays(arrays)
    back = unpack_arrays(data)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert np.array_equal(back[name], value, equal_nan=value.dtype.kind == "f"), name
    assert not back["flux"].flags.writeable and not back["empty"].flags.writeable
    for bad in (np.array([{}], object), np.zeros(2, [("a", "f8"), ("b", "i4")])):
        with pytest.raises(TypeError, match="'bad': .* arrays are not stored"):
            pack_arrays({"bad": bad})
    with pytest.raises(ValueError, match="not a pipekit arrays file"):
        unpack_arrays(b"PK\x03\x04 a zip")
    with pytest.raises(ValueError, match="damaged or cut short"):
        unpack_arrays(data[:-1])
    flipped = bytearray(data)
    flipped[-3] ^= 1
    with pytest.raises(ValueError, match="damaged or cut short"):
        unpack_arrays(bytes(flipped))
    with pytest.raises(ValueError, match="cut short inside its header"):
        unpack_arrays(data[:40])

    def with_header(entries):   # a file whose CRC is right but whose header lies
        import json
        import struct
        import zlib
        body = json.dumps({"arrays": entries}).encode() + b" " * 64
        return b"\x93PIPEKIT-ARRAYS\n" + struct.pack("<QI", len(body), zlib.crc32(body)) + body

    for entries, why in (([["x", "<f8", [-1], 0, -8]], "shape \\[-1\\]"),
                         ([["x", "|O8", [1], 0, 8]], "arrays are refused"),
                         ([["x", "<f8", [4], 0, 32]], "cut short inside array 'x'"),
                         ([["x", "nonsense", [1], 0, 8]], "does not describe"),
                         (5, "does not describe")):
        with pytest.raises(ValueError, match=why):
            unpack_arrays(with_header(entries))


def test_summary_saved_again_with_added_frames_keeps_old_and_new_values(tmp_path):
    """Frames added to a loaded summary are merged into its stored columns, also when a
    value does not fit a key's stored kind (an int where floats were, None, a new key)."""
    first = {"frame": "a", "exptime": 60.0, "n": 3, "name": "x", "l1zp": 23.0, "ok": True}
    path, _ = _summarised(tmp_path, "a.ecsv", first)
    summary = FrameSummary(tmp_path)
    summary.refresh(["a.ecsv"])
    summary.save()
    added = [{"frame": "b", "exptime": 30.0, "n": 4, "name": "longer name", "l1zp": None,
              "ok": False},
             {"frame": "c", "exptime": 15, "n": 5.5, "name": "z", "ok": True, "new": [1]}]
    summary = FrameSummary(tmp_path)
    for meta in added:
        p, table = _summarised(tmp_path, meta["frame"] + ".ecsv", meta)
        summary.add(p, table)
    summary.save()
    again = FrameSummary(tmp_path)
    for meta in [first] + added:
        for key in ("frame", "exptime", "n", "name", "l1zp", "ok", "new"):
            got = again.meta_value(meta["frame"] + ".ecsv", key, default="<none>")
            want = meta.get(key, "<none>")
            assert got == want and type(got) is type(want), (meta["frame"], key, got, want)
