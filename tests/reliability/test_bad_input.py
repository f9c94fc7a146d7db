"""A corpus of bad input: each gets a specific message naming the file, the rest goes on.

Bad frames (truncated, no image, NaN-filled, no WCS, WCS pointing elsewhere, zero
exposure time, a duplicate) are mixed into a download folder of good frames and run
through sort, configure, photometry and light curve; bad configs (wrong types,
missing keys, unknown keys, a missing template) and an archive record whose file
name climbs out of the download folder are fed to the loaders and steps. Every input
file must still exist somewhere, byte-identical, at the end.
"""

import hashlib
import logging
import secrets
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

import _chain
from pipekit import steps
from pipekit.testing.archive_server import ArchiveServer
from pipekit.config import load_download_config, load_reduction_config
from pipekit.errors import ConfigError, PipelineError
from pipekit.workflows import download_pipeline, reduction_pipeline

N_GOOD = 10


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _all_md5(root):
    return {_md5(p) for p in Path(root).rglob("*") if p.is_file()}


def _derive(src, dest, change):
    """Write ``dest``: the frame ``src`` with ``change(sci_hdu)`` applied."""
    with fits.open(src) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    sci = hdul["SCI"]
    change(sci)
    hdul.writeto(dest)


def _no_wcs(sci):
    for key in list(sci.header):
        if key.startswith(("CTYPE", "CRVAL", "CRPIX", "CD1_", "CD2_", "CDELT", "CUNIT", "PC1_",
                           "PC2_", "WCS")):
            del sci.header[key]


def _elsewhere(sci):
    sci.header["CRVAL1"] = sci.header["CRVAL1"] + 1.0  # one degree away: target off the frame


def _nan(sci):
    sci.data = np.full(sci.data.shape, np.nan, dtype=np.float32)


def _zero_exptime(sci):
    sci.header["EXPTIME"] = 0.0


BAD = {  # frame number -> (what, how, words the message must hold)
    901: ("truncated", None, ["truncated"]),
    902: ("no image", None, ["no image"]),
    903: ("NaN-filled", _nan, ["nan"]),
    904: ("no WCS", _no_wcs, ["no celestial wcs"]),
    905: ("WCS elsewhere", _elsewhere, ["outside the frame"]),
    906: ("zero exposure time", _zero_exptime, ["exptime", "not positive"]),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good and bad frames sorted, configured and reduced; returns what the test needs."""
    base = tmp_path_factory.mktemp("bad_input")
    downloads = base / "downloads"
    truth = _chain.simulate_archive(downloads, n_frames=N_GOOD, datasets=_chain.DATASETS[:1])[0]
    good = list(truth.files)
    first = good[0]
    names = {}
    for number, (what, how, _) in BAD.items():
        name = first.name.replace("-0001-", f"-{number:04d}-")
        dest = downloads / name
        if what == "truncated":
            data = first.read_bytes()
            dest.write_bytes(data[: len(data) // 3])
        elif what == "no image":
            dest = dest.with_name(dest.name.replace(".fits.fz", ".fits"))
            header = fits.getheader(first, "SCI")
            hdu = fits.PrimaryHDU()
            for card in header.cards:
                if card.keyword not in hdu.header and card.keyword not in (
                        "XTENSION", "PCOUNT", "GCOUNT", "NAXIS1", "NAXIS2", "EXTNAME", ""):
                    hdu.header.append(card)
            hdu.writeto(dest)
        else:
            _derive(first, dest, how)
        names[what] = dest.name
    # The same frame twice: once compressed (as good[1]) and once as plain FITS.
    with fits.open(good[1]) as hdul:
        dup = downloads / good[1].name.replace(".fits.fz", ".fits")
        fits.HDUList([fits.PrimaryHDU(data=hdul["SCI"].data, header=hdul["SCI"].header)]) \
            .writeto(dup)
    names["duplicate"] = dup.name
    inputs = {p.name: _md5(p) for p in downloads.iterdir()}

    reduction = base / "reduction"
    sorted_ = steps.sort(downloads, reduction)
    configured = steps.configure(reduction)
    red_dir = Path(sorted_["datasets"][0])
    pipe = reduction_pipeline(red_dir)
    pipe.run(run_tags=["photometry", "lightcurve"])
    return {"base": base, "names": names, "inputs": inputs, "sort": sorted_,
            "configure": configured, "pipe": pipe, "red_dir": red_dir, "good": good}


def _messages(corpus):
    """{file name: every message pipekit gave about it} from the sort, photometry, light curve."""
    out = {}
    log = corpus["base"] / "reduction" / "_set_aside" / "set_aside.log"
    if log.exists():
        for line in log.read_text().splitlines():
            _, reason, rel, detail = line.split("\t", 3)
            out.setdefault(Path(rel).name, []).append(f"{reason}: {detail}")
    for step in ("photometry", "lightcurve"):
        for name, why in (corpus["pipe"].step(step).result or {}).get("rejected", {}).items():
            out.setdefault(name, []).append(why)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(BAD))
def test_each_bad_frame_gets_a_specific_message_naming_it(corpus, number):
    what, _, words = BAD[number]
    name = corpus["names"][what]
    messages = _messages(corpus).get(name)
    assert messages, f"{what}: nothing says what happened to {name}: {_messages(corpus)}"
    text = " ".join(messages).lower()
    assert all(w in text for w in words), f"{what}: {messages}"
    # The message itself names the file (not just the key it is filed under).
    assert any(name in m or name.split(".")[0] in m for m in messages), messages


@pytest.mark.slow
def test_good_frames_still_make_the_light_curve_and_the_duplicate_counts_once(corpus):
    pipe = corpus["pipe"]
    assert pipe.status == "success", pipe
    lc = Table.read(pipe.step("lightcurve").result["ecsv"], format="ascii.ecsv")
    frames = [Path(str(f)).name.split(".")[0] for f in lc["frame"]]
    good = {p.name.split(".")[0] for p in corpus["good"]}
    assert set(frames) == good, sorted(set(frames) ^ good)
    assert len(frames) == N_GOOD  # the same exposure under two names is one point
    assert len(set(np.round(np.asarray(lc["bjd_tdb"] if "bjd_tdb" in lc.colnames
                                       else lc[lc.colnames[0]], float), 8))) == N_GOOD
    # One of the two names of the duplicated frame was not measured, saying why.
    dup = corpus["names"]["duplicate"]
    said = [m for name in (dup, dup + ".fz") for m in _messages(corpus).get(name, [])]
    assert len(set(said)) == 1 and "the same frame as" in said[0] and "measured once" in said[0], said


@pytest.mark.slow
def test_no_input_frame_is_lost_or_changed(corpus):
    present = _all_md5(corpus["base"])
    lost = [name for name, md5 in corpus["inputs"].items() if md5 not in present]
    assert not lost, f"lost or altered: {lost}"


def test_empty_dataset_fails_photometry_clearly_and_touches_nothing(tmp_path):
    red_dir = tmp_path / "reduction" / "T1" / "sinistro" / "ip"
    red_dir.mkdir(parents=True)
    (red_dir / "reduction_config.yaml").write_text("target: {name: T1, RA: 10.0, Dec: -5.0}\n")
    pipe = reduction_pipeline(red_dir)
    with pytest.raises(PipelineError) as err:
        pipe.run()
    message = str(err.value)
    assert "photometry" in message and str(red_dir) in message and "no frame" in message
    assert pipe.step("lightcurve").status == "not run"
    assert sorted(p.name for p in red_dir.iterdir()) == ["logs", "photometry",
                                                         "reduction_config.yaml"]


@pytest.mark.parametrize("text, key, expected", [
    ("target: {name: T, RA: 10.0, Dec: -5.0}\nphotometry: {aperture_arcsec: big}\n",
     "photometry.aperture_arcsec", "number"),
    ("target: {name: T, RA: 10.0, Dec: -5.0}\nphotometry: [1, 2]\n", "photometry", "mapping"),
    ("target: {name: T, RA: 10.0, Dec: -5.0}\ntom: {upload: maybe}\n", "tom.upload", "true"),
    ("target: {name: T, Dec: -5.0}\n", "target.RA", ""),
    ("photometry: {aperture_arcsec: 3}\n", "target", ""),
])
def test_reduction_config_with_wrong_types_or_missing_keys_names_file_and_key(tmp_path, text,
                                                                               key, expected):
    path = tmp_path / "reduction_config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_reduction_config(path)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message, message
    assert expected in message.lower(), message


def test_unparseable_yaml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target:\n  name: T\n  RA: [10.0\n  Dec: -5.0\n")
    with pytest.raises(ConfigError) as err:
        load_reduction_config(path)
    message = str(err.value)
    assert str(path) in message and "line" in message, message


@pytest.mark.parametrize("drop, key", [("data_reduction_dir", "data_reduction_dir"),
                                       ("log_dir", "log_dir"), ("archives", "archives")])
def test_download_config_missing_a_key_names_file_and_key(tmp_path, drop, key):
    path = _chain.write_download_config(tmp_path, "http://127.0.0.1:9/")
    lines = path.read_text().splitlines(keepends=True)
    if drop == "archives":
        lines = [l for l in lines if not l.startswith(("archives", "  ", "    "))]
    else:
        lines = [l for l in lines if not l.startswith(drop + ":")]
    path.write_text("".join(lines))
    with pytest.raises(ConfigError) as err:
        load_download_config(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value), str(err.value)


def test_unknown_keys_are_named_in_a_warning_and_the_rest_loads(tmp_path, caplog):
    path = tmp_path / "reduction_config.yaml"
    path.write_text("target: {name: T, RA: 10.0, Dec: -5.0, colour: red}\n"
                    "photometry: {aperture_arcsec: 4.0, apperture: 9}\nextra: 1\n")
    with caplog.at_level(logging.WARNING, logger="pipekit"):
        config = load_reduction_config(path)
    assert config.photometry.aperture_arcsec == 4.0 and config.target.ra == 10.0
    text = caplog.text
    for key in ("target.colour", "photometry.apperture", "extra"):
        assert f"'{key}'" in text, text
    assert str(path) in text


def test_missing_template_fails_configure_clearly_and_sort_still_keeps_the_frames(tmp_path):
    downloads = tmp_path / "downloads"
    truth = _chain.simulate_archive(downloads, n_frames=3, datasets=_chain.DATASETS[:1])[0]
    inputs = {_md5(p) for p in truth.files}
    missing = tmp_path / "nowhere" / "my_template.yaml"
    sorted_ = steps.sort(downloads, tmp_path / "reduction")
    result = steps.configure(tmp_path / "reduction", template=str(missing))
    assert sorted_["n_sorted"] == 3
    assert result["status"] == "error" and str(missing) in result["error"]
    assert "not found" in result["error"]
    assert inputs <= _all_md5(tmp_path / "reduction")
    assert not list((tmp_path / "reduction").glob("*/*/*/reduction_config.yaml"))


def test_archive_record_with_a_path_traversal_name_is_refused_and_the_rest_downloads(
        tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    _chain.simulate_archive(archive, n_frames=4, datasets=_chain.DATASETS[:1])
    token = secrets.token_hex(8)
    monkeypatch.setenv(_chain.TOKEN_VAR, token)
    root = tmp_path / "work"
    root.mkdir()
    evil = "../../../pwned-e91.fits.fz"
    with ArchiveServer(archive, token=token) as server:
        original = server._record

        def record(frame):
            rec = original(frame)
            if frame.path.name.endswith("-0002-e91.fits.fz"):
                rec["filename"] = evil
                rec["basename"] = "../../../pwned-e91"
            return rec

        monkeypatch.setattr(server, "_record", record)
        _chain.write_download_config(root, server.url)
        pipe = download_pipeline(root / "data_download.yaml")
        pipe.run()
    # The bad record is refused, named, and does not hold back the three good frames.
    assert pipe.status == "success"
    result = pipe.step("download").result
    assert result["n_downloaded"] == 3 and result["n_failed"] == 0
    (name, reason), = result["refused"]
    assert name == evil and "leave the download folder" in reason, result["refused"]
    assert not list(tmp_path.rglob("pwned*"))
    assert pipe.step("sort").result["n_sorted"] == 3
    assert len(list((root / "reduction").glob("*/*/*/*.fits.fz"))) == 3
