"""pipekit.datasets and the sort/configure steps: frames land in the right dataset, odd
frames are set aside with their reason, locked datasets wait, nothing is lost or overwritten."""

import logging
import shutil

import numpy as np
import pytest
from astropy.io import fits

import pipekit.datasets as datasets
from pipekit.config import load_reduction_config
from pipekit.datasets import (SET_ASIDE_DIR, configure_dataset, dataset_dir, list_datasets,
                              safe_name, sort_frames)
from pipekit.errors import FrameError
from pipekit.frames import FrameInfo
from pipekit.lco import name_hash

TARGET = "OGLE-2024-BLG-0034"


def make_frame(folder, name, *, obstype="EXPOSE", instrume="fa15", target=TARGET,
               filt="ip", value=1.0, compress=True, **keys):
    """A small LCO-like frame; ``value`` fills the image so contents can differ."""
    header = fits.Header()
    cards = {"OBJECT": target, "RA": "17:59:27.05", "DEC": "-28:36:10.2",
             "CAT-RA": "17:59:27.000", "CAT-DEC": "-28:36:10.00", "FILTER": filt,
             "INSTRUME": instrume, "OBSTYPE": obstype, "DATE-OBS": "2024-06-01T03:00:00.000",
             "EXPTIME": 60.0, "PIXSCALE": 0.389, "GAIN": 1.0, "RDNOISE": 7.0, "SITEID": "lsc",
             "LATITUDE": -30.1673833, "LONGITUD": -70.8047889, "HEIGHT": 2201.0}
    cards.update(keys)
    for key, val in cards.items():
        if val is not None:
            header[key] = val
    # Noise from a fixed seed, and a fixed dither seed: the same ``value`` gives the same
    # bytes on every call. (A constant tile would be gzipped, and gzip stamps the clock.)
    noise = np.random.default_rng(0).normal(0.0, 5.0, (16, 16))
    data = (100.0 * value + noise).astype(np.float32)
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    if compress:
        fits.HDUList([fits.PrimaryHDU(),
                      fits.CompImageHDU(data, header=header, name="SCI",
                                        dither_seed=1)]).writeto(path)
    else:
        fits.PrimaryHDU(data, header=header).writeto(path)
    return path


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def dirs(tmp_path):
    download = tmp_path / "downloads"
    reduction = tmp_path / "reduction"
    download.mkdir()
    return download, reduction


# ---- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("OGLE-2024-BLG-0034", "OGLE-2024-BLG-0034"),
    ("GJ 3470", "GJ_3470"),
    ("20 Tau", "20_Tau"),
    ("a/b\\c:d*e?", "a_b_c_d_e"),
    ("../../etc", "etc"),
    ("  .hidden  ", "hidden"),
    ("Gaia24abc (peak)", "Gaia24abc_peak"),
    ("", "unnamed"),
    ("///", "unnamed"),
    ("x" * 300, "x" * 91 + "-" + name_hash("x" * 300)),
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_dataset_dir_is_target_class_filter(tmp_path):
    info = FrameInfo(target="GJ 3470", instrument="kb78", instrument_class="sbig", filter="V")
    assert dataset_dir(tmp_path, info) == tmp_path / "GJ_3470" / "sbig" / "V"


def test_dataset_dir_names_missing_keys():
    with pytest.raises(FrameError, match="a.fits.*OBJECT.*FILTER"):
        dataset_dir("/r", FrameInfo(path="a.fits", instrument_class="sbig"))


# ---- sorting real frames ----------------------------------------------------------------

def test_sort_and_configure_the_real_lco_frames(lco_data, dirs):
    download, reduction = dirs
    names = sorted(p.name for p in lco_data.iterdir() if ".fits" in p.name)
    for name in names:
        shutil.copy(lco_data / name, download / name)
    result = sort_frames(download, reduction)
    m84 = reduction / "M84" / "sbig" / "V"
    kb70 = reduction / "zero_pointing" / "sbig" / "ip"
    fl10 = reduction / "zero_pointing" / "sinistro" / "ip"
    assert set(result.sorted) == {m84, kb70, fl10}
    assert sorted(result.new_datasets) == sorted([m84, kb70, fl10])
    assert result.n_sorted == 4 and result.n_set_aside == 0
    # the existing pipeline's layout: frames at the top of the dataset folder
    assert sorted(p.name for p in m84.iterdir()) == [
        "coj1m011-kb05-20150219-0125-e90.fits", "coj1m011-kb05-20150219-0125-e90.fits.fz"]
    assert list(download.iterdir()) == []
    for name in names:  # moved, byte for byte
        moved = next(reduction.rglob(name))
        assert moved.read_bytes() == (lco_data / name).read_bytes()

    config = configure_dataset(m84)
    cfg = load_reduction_config(config)
    # CAT-RA = 12:25:03.840, CAT-DEC = +12:53:13.20 in the M84 header.
    assert cfg.target.name == "M84"
    assert cfg.target.ra == pytest.approx((12 + 25 / 60 + 3.84 / 3600) * 15, abs=1e-6)
    assert cfg.target.dec == pytest.approx(12 + 53 / 60 + 13.2 / 3600, abs=1e-6)
    assert list_datasets(reduction) == sorted([m84, kb70, fl10])


# ---- setting aside ----------------------------------------------------------------------

def test_calibration_unknown_instrument_and_unreadable_frames_are_set_aside(dirs, caplog):
    download, reduction = dirs
    make_frame(download, "sci-0001-e91.fits.fz")
    make_frame(download, "bias-0002-b00.fits.fz", obstype="BIAS", target="N/A")
    make_frame(download, "flat-0003-f00.fits.fz", obstype="SKYFLAT")
    make_frame(download, "odd-0004-e91.fits.fz", instrume="zz01")
    make_frame(download, "std-0005-e91.fits.fz", obstype="STANDARD")
    make_frame(download, "noobj-0006-e91.fits.fz", target="UNKNOWN")
    (download / "broken-0007-e91.fits.fz").write_bytes(b"\0" * 5000)
    with caplog.at_level(logging.WARNING, logger="pipekit.datasets"):
        result = sort_frames(download, reduction)
    reasons = {path.name: reason for path, reason in result.set_aside}
    assert reasons == {
        "bias-0002-b00.fits.fz": "calibration",
        "flat-0003-f00.fits.fz": "calibration",
        "odd-0004-e91.fits.fz": "unknown_instrument",
        "std-0005-e91.fits.fz": "not_science",
        "noobj-0006-e91.fits.fz": "incomplete_header",
        "broken-0007-e91.fits.fz": "unreadable",
    }
    for path, reason in result.set_aside:
        assert path.parent == reduction / SET_ASIDE_DIR / reason and path.exists()
    assert result.n_sorted == 1
    assert (reduction / TARGET / "sinistro" / "ip" / "sci-0001-e91.fits.fz").exists()
    assert list(download.iterdir()) == []
    # Each is logged with its reason, and recorded for the observer.
    assert "BIAS" in caplog.text and "'zz01' is not a known LCO camera" in caplog.text
    assert "broken-0007-e91.fits.fz" in caplog.text
    record = (reduction / SET_ASIDE_DIR / "set_aside.log").read_text().splitlines()
    assert len(record) == 6
    assert any("unreadable\t_set_aside/unreadable/broken-0007-e91.fits.fz\t" in line
               for line in record)
    # _set_aside is not a dataset.
    assert list_datasets(reduction) == [reduction / TARGET / "sinistro" / "ip"]


def test_frames_of_a_locked_dataset_stay_for_the_next_run(dirs):
    from pipekit.locks import DatasetLock

    download, reduction = dirs
    locked_dir = reduction / TARGET / "sinistro" / "ip"
    locked_dir.mkdir(parents=True)
    make_frame(download, "a-0001-e91.fits.fz")
    make_frame(download, "b-0002-e91.fits.fz", filt="gp")  # another dataset, not locked
    with DatasetLock(locked_dir, pipeline_name="reduce-test"):
        result = sort_frames(download, reduction)
        assert result.left_for_later == [download / "a-0001-e91.fits.fz"]
        assert (download / "a-0001-e91.fits.fz").exists()
        assert not (locked_dir / "a-0001-e91.fits.fz").exists()
        assert result.n_sorted == 1  # the gp frame went in
    # Released: the next run sorts it.
    again = sort_frames(download, reduction)
    assert again.n_sorted == 1 and again.left_for_later == []
    assert (locked_dir / "a-0001-e91.fits.fz").exists()


def test_identical_copy_is_dropped_and_reprocessed_version_replaces_keeping_the_old(dirs,
                                                                                   caplog):
    download, reduction = dirs
    make_frame(download, "f-0001-e91.fits.fz", value=1.0)
    sort_frames(download, reduction)
    red_dir = reduction / TARGET / "sinistro" / "ip"
    in_place = red_dir / "f-0001-e91.fits.fz"
    original = in_place.read_bytes()

    make_frame(download, "f-0001-e91.fits.fz", value=1.0)   # same bytes again
    result = sort_frames(download, reduction)
    assert result.dropped_duplicates == [download / "f-0001-e91.fits.fz"]
    assert not (download / "f-0001-e91.fits.fz").exists()

    make_frame(download, "f-0001-e91.fits.fz", value=2.0)   # reprocessed: same name, new bytes
    second = (download / "f-0001-e91.fits.fz").read_bytes()
    (red_dir / "photometry").mkdir()
    (red_dir / "photometry" / "f-0001-e91.ecsv").write_text("old measurement")
    with caplog.at_level(logging.INFO, logger="pipekit"):
        result = sort_frames(download, reduction)
    assert result.set_aside == [] and not (download / "f-0001-e91.fits.fz").exists()
    assert result.replaced == [(in_place, red_dir / "replaced" / "f-0001-e91.fits.fz")]
    assert in_place.read_bytes() == second                           # the new version
    assert (red_dir / "replaced" / "f-0001-e91.fits.fz").read_bytes() == original  # kept
    assert not (red_dir / "photometry" / "f-0001-e91.ecsv").exists()  # stale: measured again
    assert "reprocessed frame replaced" in caplog.text
    assert datasets.dataset_frames(red_dir) == [in_place]  # replaced/ holds no dataset frame

    make_frame(download, "f-0001-e91.fits.fz", value=3.0)   # and a third version
    result = sort_frames(download, reduction)
    assert result.replaced[0][1].name == "f-0001-e91.1.fits.fz"
    assert sorted(p.read_bytes() for p in (red_dir / "replaced").iterdir()) == sorted(
        [original, second])
    assert not any(red_dir.glob(".pipekit-tmp-*"))


def test_reprocessed_frame_of_an_old_layout_dataset_is_replaced_in_data(dirs):
    download, reduction = dirs
    red_dir = reduction / TARGET / "sinistro" / "ip"
    old = make_frame(red_dir / "data", "f-0001-e91.fits.fz", value=1.0)
    make_frame(download, "f-0001-e91.fits.fz", value=1.0)
    assert sort_frames(download, reduction).dropped_duplicates      # found in data/
    make_frame(download, "f-0001-e91.fits.fz", value=5.0)
    result = sort_frames(download, reduction)
    assert result.replaced == [(old, red_dir / "replaced" / "f-0001-e91.fits.fz")]
    assert not (red_dir / "f-0001-e91.fits.fz").exists()            # one copy, in place
    assert datasets.dataset_frames(red_dir) == [old]


# ---- selecting datasets for a reduction manager ---------------------------------------

@pytest.fixture
def three_datasets(tmp_path):
    """ip (sinistro fa15, frames of 2024-05-01 and 05-03), gp (sinistro fa03, 04-20),
    V (sbig kb70, a non-LCO file name observed 2024-05-02)."""
    red = tmp_path / "red"
    ip = red / TARGET / "sinistro" / "ip"
    gp = red / TARGET / "sinistro" / "gp"
    v = red / "M84" / "sbig" / "V"
    make_frame(ip, "lsc1m005-fa15-20240501-0001-e91.fits.fz")
    make_frame(ip, "lsc1m005-fa15-20240503-0002-e91.fits.fz")
    make_frame(gp, "coj1m003-fa03-20240420-0001-e91.fits.fz", filt="gp")
    # sorted by an earlier pipekit: frames in data/
    make_frame(v / "data", "m84_image.fits", instrume="kb70", filt="V", target="M84",
               **{"DATE-OBS": "2024-05-02T23:59:59.000"})
    return red, ip, gp, v


def test_select_all_and_by_instrument(three_datasets):
    from pipekit.config import DatasetSelection
    from pipekit.selection import select_datasets

    red, ip, gp, v = three_datasets
    assert select_datasets(red) == sorted([ip, gp, v])
    assert select_datasets(red, DatasetSelection("all"), ["SBIG"]) == [v]
    assert select_datasets(red, None, ["fa03"]) == [gp]           # by camera name
    assert select_datasets(red, None, ["sinistro"]) == sorted([ip, gp])


def test_select_by_date_range_inclusive_and_recent(three_datasets):
    from datetime import datetime, timezone

    from pipekit.config import DatasetSelection
    from pipekit.selection import frame_day, select_datasets

    red, ip, gp, v = three_datasets
    assert str(frame_day(v / "data" / "m84_image.fits")) == "2024-05-02"   # from DATE-OBS
    utc = timezone.utc
    may2 = DatasetSelection("date", start_date=datetime(2024, 5, 2, tzinfo=utc),
                            end_date=datetime(2024, 5, 3, tzinfo=utc))
    assert select_datasets(red, may2) == sorted([ip, v])
    only_may2 = DatasetSelection("date", start_date=datetime(2024, 5, 2, tzinfo=utc),
                                 end_date=datetime(2024, 5, 2, tzinfo=utc))
    assert select_datasets(red, only_may2) == [v]
    open_end = DatasetSelection("date", start_date=datetime(2024, 4, 1, tzinfo=utc))
    now = datetime(2024, 4, 25, 12, tzinfo=utc)
    assert select_datasets(red, open_end, now=now) == [gp]       # May frames are after "now"
    recent = DatasetSelection("recent", ndays=2)
    assert select_datasets(red, recent, now=datetime(2024, 5, 4, 6, tzinfo=utc)) == \
        sorted([ip, v])
    assert select_datasets(red, recent, now=datetime(2024, 6, 1, tzinfo=utc)) == []


def test_select_from_a_file_keeps_its_order_and_skips_non_datasets(three_datasets, caplog):
    from pipekit.config import DatasetSelection
    from pipekit.selection import select_datasets
    from pipekit.errors import ConfigError

    red, ip, gp, v = three_datasets
    listing = red.parent / "todo.txt"
    listing.write_text(f"# tonight\nM84/sbig/V\n\n{ip}\nnot/a/dataset\nM84/sbig/V\n")
    with caplog.at_level(logging.WARNING, logger="pipekit.datasets"):
        chosen = select_datasets(red, DatasetSelection("file", file=listing))
    assert chosen == [v, ip]
    assert "not/a/dataset" in caplog.text
    with pytest.raises(ConfigError, match="absent.txt"):
        select_datasets(red, DatasetSelection("file", file=red / "absent.txt"))


def _sort_in_child(download, reduction):
    result = sort_frames(download, reduction)
    return [str(p) for frames in result.sorted.values() for p in frames], \
        [str(p) for p, _ in result.set_aside], [str(p) for p, _ in result.failed]


def test_two_concurrent_sorts_lose_and_duplicate_nothing(dirs):
    from concurrent.futures import ProcessPoolExecutor

    download, reduction = dirs
    for i in range(30):
        make_frame(download, f"lsc1m005-fa15-20240501-{i:04d}-e91.fits.fz",
                   filt=["ip", "gp", "V"][i % 3], value=i)
    before = {p.name: p.read_bytes() for p in download.iterdir()}
    with ProcessPoolExecutor(2) as pool:
        outcomes = list(pool.map(_sort_in_child, [download] * 2, [reduction] * 2))
    after = {p.name: p.read_bytes() for p in reduction.rglob("*.fits.fz")}
    assert after == before                     # every frame once, byte for byte
    assert list(download.iterdir()) == []
    assert [(set_aside, failed) for _, set_aside, failed in outcomes] == [([], [])] * 2
    assert not list(reduction.rglob(".pipekit-tmp-*"))
