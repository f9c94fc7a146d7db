"""Archive clients over loopback: pagination, retries under faults, md5, atomic landing, secrets."""

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import dill
import numpy as np
import pytest
import requests
from astropy.io import fits

from pipekit.archive import (ArchiveRecord, DownloadResult, FrameList, LCOArchive, LocalArchive,
                             archive_from_config, download_frames, safe_destination)
from pipekit.atomic import TMP_PREFIX, AtomicFile
from pipekit.errors import ArchiveAuthError, ArchiveError, ConfigError
from pipekit.testing.archive_server import ArchiveServer, Faults

REPO = Path(__file__).resolve().parents[1]

TOKEN = "tok-5f0c9e1d-very-secret-archive-token"
ENVVAR = "PIPEKIT_TEST_ARCHIVE_TOKEN"
PROPOSALS = ("KEY2024A-001", "LCO2024A-017", "TOM2024A-042")
START, END = "2024-05-01 00:00", "2024-05-11 00:00"
N_FRAMES = 250
PAGE = 40


def make_frame(path, date_obs, proposal, rlevel=91, value=0, target="OGLE-2024-BLG-0034"):
    """A tiny LCO-like frame (8x8 pixels, a few KB); ``.fits.fz`` when the name says so."""
    header = fits.Header()
    header["OBJECT"] = target
    header["DATE-OBS"] = date_obs
    header["DAY-OBS"] = date_obs[:10].replace("-", "")
    header["PROPID"] = proposal
    header["RLEVEL"] = rlevel
    header["FILTER"] = "ip"
    header["INSTRUME"] = "fa15"
    header["SITEID"] = "cpt"
    header["TELID"] = "1m0a"
    header["EXPTIME"] = 60.0
    header["OBSTYPE"] = "EXPOSE"
    data = np.full((8, 8), value, dtype=np.int16)
    if str(path).endswith(".fz"):
        fits.HDUList([fits.PrimaryHDU(),
                      fits.CompImageHDU(data, header=header, name="SCI")]).writeto(path)
    else:
        fits.PrimaryHDU(data, header=header).writeto(path)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """250 reduced frames in the window across 3 proposals, plus raw and out-of-window ones."""
    folder = tmp_path_factory.mktemp("archive")
    expected = {}
    for i in range(N_FRAMES):
        day = 1 + i % 10
        date_obs = f"2024-05-{day:02d}T{i % 24:02d}:{i % 60:02d}:07.250"
        name = f"cpt1m010-fa15-202405{day:02d}-{i:04d}-e91.fits" + (".fz" if i % 3 == 0 else "")
        make_frame(folder / name, date_obs, PROPOSALS[i % 3], value=i)
        expected[name] = PROPOSALS[i % 3]
    for i in range(8):  # raw frames: level 0, not asked for
        make_frame(folder / f"cpt1m010-fa15-20240503-{900 + i:04d}-e00.fits",
                   f"2024-05-03T05:{i:02d}:00", PROPOSALS[0], rlevel=0)
    for i in range(6):  # outside the window
        make_frame(folder / f"cpt1m010-fa15-20240620-{950 + i:04d}-e91.fits",
                   f"2024-06-20T05:{i:02d}:00", PROPOSALS[1])
    (folder / "notes.txt").write_text("not a frame")
    return folder, expected


@pytest.fixture(scope="module")
def server(frames_dir):
    with ArchiveServer(frames_dir[0], token=TOKEN, page_size=PAGE) as srv:
        yield srv


@pytest.fixture
def live(server):
    """The shared server with faults off and counters at zero."""
    server.faults = Faults()
    server.stats.clear()
    server.served.clear()
    server.download_auth_headers = 0
    yield server
    server.faults = Faults()


@pytest.fixture
def archive(live, monkeypatch):
    monkeypatch.setenv(ENVVAR, TOKEN)
    return LCOArchive(live.url, token_envvar=ENVVAR, timeout=(2, 5), retries=5, backoff=0.005,
                      max_backoff=0.05)


def query_all(archive, **kwargs):
    records = []
    for proposal in PROPOSALS:
        records.extend(archive.query(proposal, START, END, limit=PAGE, **kwargs))
    return records


def md5_of(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def landed(folder):
    """Frames under a final name in ``folder`` (no temporary files, no frame list)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name.endswith((".fits", ".fits.fz")) and not p.name.startswith(TMP_PREFIX))


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

def test_record_reads_lowercase_names_then_legacy_aliases():
    rec = ArchiveRecord.from_api({
        "id": 11, "basename": "ogg2m001-ep04-20240501-0001-e91",
        "filename": "ogg2m001-ep04-20240501-0001-e91.fits.fz", "url": "https://s3/x?sig=1",
        "version_set": [{"md5": "A" * 32, "extension": ".fits.fz"}],
        "observation_date": "2024-05-01T03:04:05.000Z", "DATE_OBS": "1999-01-01T00:00:00",
        "target_name": "", "OBJECT": "OGLE-2024-BLG-0034",
        "primary_optical_element": None, "FILTER": "gp",
        "INSTRUME": "ep04", "RLEVEL": 91, "OBSTYPE": "EXPOSE", "PROPID": "KEY2024A-001",
        "EXPTIME": "120.5", "SITEID": "ogg", "TELID": "2m0a", "DAY_OBS": "2024-04-30",
        "reduction_level": "N/A",
    })
    assert rec.observation_date == "2024-05-01T03:04:05.000Z"  # lower-case wins
    assert rec.target_name == "OGLE-2024-BLG-0034"               # empty -> alias
    assert rec.filter == "gp"
    assert rec.instrument_id == "ep04"
    assert rec.reduction_level == 91                              # 'N/A' -> alias
    assert rec.configuration_type == "EXPOSE"
    assert rec.proposal_id == "KEY2024A-001"
    assert rec.exposure_time == pytest.approx(120.5, abs=1e-9)
    assert (rec.site_id, rec.telescope_id, rec.observation_day) == ("ogg", "2m0a", "2024-04-30")
    assert rec.md5 == "a" * 32
    assert "sig=1" not in repr(rec)  # the pre-signed link stays out of repr


def test_record_md5_is_the_latest_version_and_filename_falls_back_to_basename():
    rec = ArchiveRecord.from_api({
        "id": 3, "basename": "f-e91",
        "version_set": [
            {"md5": "1" * 32, "extension": ".fits.fz", "created": "2024-05-01T00:00:00Z"},
            {"md5": "2" * 32, "extension": ".fits.fz", "created": "2024-05-03T00:00:00Z",
             "url": "https://s3/new"},
            {"md5": "3" * 32, "extension": ".fits.fz", "created": "2024-05-02T00:00:00Z"},
        ]})
    assert rec.md5 == "2" * 32
    assert rec.filename == "f-e91.fits.fz"
    assert rec.url == "https://s3/new"
    with pytest.raises(ArchiveError, match="no 'filename' or 'basename'"):
        ArchiveRecord.from_api({"id": 4, "version_set": []})


# ---------------------------------------------------------------------------
# Query
# ---------------------------------------------------------------------------

def test_query_pages_each_window_by_offset_to_its_count(archive, live, frames_dir):
    records = query_all(archive)
    expected = frames_dir[1]
    assert len(records) == N_FRAMES
    assert sorted(r.filename for r in records) == sorted(expected)
    for record in records:
        assert record.proposal_id == expected[record.filename]
        assert record.reduction_level == 91
        assert len(record.md5) == 32
    # 84, 83 and 83 frames at 40 a page: 3 pages each (the last one short), once each.
    assert live.stats["api_requests"] == 9


def test_query_window_and_reduction_level_select_the_right_frames(archive, live, frames_dir):
    records = archive.query(PROPOSALS[0], "2024-05-03 00:00", "2024-05-04 23:59:59",
                            reduction_level=91, limit=PAGE)
    want = {n for n, p in frames_dir[1].items() if p == PROPOSALS[0]
            and n.split("-")[2] in ("20240503", "20240504")}
    assert {r.filename for r in records} == want
    raw = archive.query(PROPOSALS[0], START, END, reduction_level=0, limit=PAGE)
    assert len(raw) == 8 and all(r.filename.endswith("e00.fits") for r in raw)


def test_query_honours_retry_after_on_429(archive, live):
    live.faults = Faults(rate_limit=1, retry_after=1, target="api")
    t0 = time.perf_counter()
    records = archive.query(PROPOSALS[1], START, END, limit=PAGE)
    elapsed = time.perf_counter() - t0
    assert len(records) == 83
    assert live.stats["fault_rate_limit"] == 1
    # backoff is 5 ms: only Retry-After explains a wait of a second.
    assert elapsed >= 0.95


def test_query_gives_up_after_retries_with_a_clear_archive_error(live, monkeypatch):
    monkeypatch.setenv(ENVVAR, TOKEN)
    archive = LCOArchive(live.url, token_envvar=ENVVAR, retries=2, backoff=0.001)
    live.faults = Faults(http_5xx=100, target="api")
    with pytest.raises(ArchiveError) as err:
        archive.query(PROPOSALS[0], START, END)
    message = str(err.value)
    assert "127.0.0.1" in message and "/frames/" in message
    assert "3 attempts" in message and "HTTP 5" in message
    assert live.stats["fault_http_5xx"] == 3


def test_stalled_archive_fails_within_its_timeouts_instead_of_hanging(live, monkeypatch):
    monkeypatch.setenv(ENVVAR, TOKEN)
    archive = LCOArchive(live.url, token_envvar=ENVVAR, timeout=(1, 0.3), retries=1,
                         backoff=0.01)
    live.faults = Faults(slow=2, delay=2.0, target="api")
    t0 = time.perf_counter()
    with pytest.raises(ArchiveError, match="Timeout"):
        archive.query(PROPOSALS[0], START, END)
    assert time.perf_counter() - t0 < 2.0  # two 0.3 s read timeouts and a short backoff


# ---------------------------------------------------------------------------
# Downloads under faults
# ---------------------------------------------------------------------------

# At most 3 faults per page or link: the client's 5 retries must get every frame through.
FAULT_CASES = {
    "none": {},
    "http_5xx": {"http_5xx": 40, "every": 3},
    "rate_limit": {"rate_limit": 6, "retry_after": 0.2, "every": 7},
    "slow": {"slow": 40, "delay": 0.05, "every": 3},
    "dropped": {"drop": 40, "every": 3},
    "truncated": {"truncate": 40, "every": 3},
    "wrong_md5": {"corrupt": 40, "every": 3},
    "all_at_once": {"http_5xx": 10, "rate_limit": 3, "retry_after": 0.2, "slow": 10,
                    "delay": 0.05, "drop": 10, "truncate": 10, "corrupt": 10, "every": 2},
}
FAULT_CASES = {k: dict(v, max_per_request=3) for k, v in FAULT_CASES.items()}


@pytest.mark.parametrize("case", list(FAULT_CASES))
def test_every_frame_arrives_exactly_once_with_correct_md5_under_faults(case, archive, live,
                                                                        frames_dir, tmp_path):
    faults = Faults(**FAULT_CASES[case])
    budgets = {k: v for k, v in dataclasses.asdict(faults).items()
               if k in ("http_5xx", "rate_limit", "slow", "drop", "truncate", "corrupt") and v}
    live.faults = faults
    records = query_all(archive)  # the API pages get their share of the faults too
    out = tmp_path / "downloads"
    frame_list = tmp_path / "logs" / "frame_list.txt"

    result = download_frames(archive, records, out, frame_list, max_workers=4, progress=False)

    assert (result.n_found, result.n_downloaded, result.n_failed) == (N_FRAMES, N_FRAMES, 0)
    assert landed(out) == sorted(frames_dir[1])
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    md5s = {f["filename"]: f["md5"] for f in live.frames}
    assert all(md5_of(out / name) == md5s[name] for name in landed(out))
    lines = [ln for ln in frame_list.read_text().splitlines() if ln and not ln.startswith("#")]
    assert sorted(ln.split("\t")[0] for ln in lines) == sorted(frames_dir[1])  # once each
    for name, budget in budgets.items():  # every fault asked for was really served
        assert live.stats[f"fault_{name}"] == budget, name

    # A second run finds everything in the frame list and fetches nothing.
    live.faults = Faults()
    before = live.stats["download_requests"]
    again = download_frames(archive, records, out, frame_list, progress=False)
    assert (again.n_downloaded, again.n_skipped, again.n_failed) == (0, N_FRAMES, 0)
    assert live.stats["download_requests"] == before
    assert live.download_auth_headers == 0  # pre-signed links never got the token


def test_truncated_body_with_retries_exhausted_leaves_no_file(live, monkeypatch, tmp_path):
    monkeypatch.setenv(ENVVAR, TOKEN)
    archive = LCOArchive(live.url, token_envvar=ENVVAR, retries=2, backoff=0.001)
    record = archive.query(PROPOSALS[0], START, END, limit=5)[0]
    live.faults = Faults(truncate=100, target="download")
    with pytest.raises(ArchiveError) as err:
        archive.download(record, tmp_path)
    assert record.filename in str(err.value) and "3 attempts" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither a final name nor a temporary file


def test_wrong_md5_with_retries_exhausted_leaves_no_file(live, monkeypatch, tmp_path):
    monkeypatch.setenv(ENVVAR, TOKEN)
    archive = LCOArchive(live.url, token_envvar=ENVVAR, retries=1, backoff=0.001)
    record = archive.query(PROPOSALS[0], START, END, limit=5)[0]
    live.faults = Faults(corrupt=100)
    with pytest.raises(ArchiveError, match=f"md5 mismatch: expected {record.md5}"):
        archive.download(record, tmp_path)
    assert list(tmp_path.iterdir()) == []
    result = download_frames(archive, [record], tmp_path, tmp_path / "list.txt", progress=False)
    assert result.n_failed == 1 and "md5 mismatch" in result.failures[0][1]
    assert landed(tmp_path) == [] and len(FrameList(tmp_path / "list.txt")) == 0


KILLED_CHILD = textwrap.dedent("""
    import json, sys
    from pipekit.archive import ArchiveRecord, LCOArchive
    data = json.loads(sys.argv[1])
    archive = LCOArchive(data["api"], token_envvar=data["envvar"], timeout=(2, 60))
    archive.download(ArchiveRecord(**data["record"]), data["folder"])
""")


def test_killed_download_leaves_no_file_under_a_final_name(archive, live, tmp_path):
    record = archive.query(PROPOSALS[2], START, END, limit=5)[0]
    out = tmp_path / "downloads"
    out.mkdir()
    live.faults = Faults(stall=1, stall_seconds=30, target="download")
    payload = json.dumps({"api": live.url, "envvar": ENVVAR, "folder": str(out),
                          "record": dataclasses.asdict(record)})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, payload], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            temps = [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
            if temps and live.stats["fault_stall"] == 1:
                break
            assert child.poll() is None, "the download ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the child never started streaming")
        time.sleep(0.2)  # mid-body: half of it sent, the rest held back
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert landed(out) == []
    leftovers = [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == 1  # only the killed process's temporary file

    # The next run fetches the frame whole; an hour later the leftover is swept away.
    live.faults = Faults()
    old = time.time() - 2 * 3600
    os.utime(leftovers[0], (old, old))
    result = download_frames(archive, [record], out, out / "list.txt", progress=False)
    assert result.n_downloaded == 1
    assert landed(out) == [record.filename] and md5_of(out / record.filename) == record.md5
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_frame_present_with_or_without_fz_is_not_fetched_but_listed(archive, live, tmp_path):
    records = query_all(archive)
    fz = next(r for r in records if r.filename.endswith(".fz"))
    plain = next(r for r in records if not r.filename.endswith(".fz"))
    (tmp_path / fz.filename[:-3]).write_bytes(b"funpacked already")
    (tmp_path / (plain.filename + ".fz")).write_bytes(b"packed copy")
    result = download_frames(archive, [fz, plain], tmp_path, tmp_path / "list.txt",
                             progress=False)
    assert (result.n_downloaded, result.n_skipped) == (0, 2)
    assert live.stats["download_requests"] == 0
    listed = FrameList(tmp_path / "list.txt")
    assert listed.has(fz) and listed.has(plain)


def test_download_sends_no_authorization_even_from_a_session_that_has_one(live, monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv(ENVVAR, TOKEN)
    session = requests.Session()
    session.headers["Authorization"] = "Token leaked-by-session"
    archive = LCOArchive(live.url, token_envvar=ENVVAR, session=session, backoff=0.001)
    record = archive.query(PROPOSALS[0], START, END, limit=5)[0]
    path = archive.download(record, tmp_path)
    assert md5_of(path) == record.md5
    assert live.download_auth_headers == 0


# ---------------------------------------------------------------------------
# Authentication and secrets
# ---------------------------------------------------------------------------

def test_bad_token_gives_a_clear_authentication_error(live, monkeypatch):
    monkeypatch.setenv(ENVVAR, "not-the-right-token-1234")
    archive = LCOArchive(live.url, token_envvar=ENVVAR, backoff=0.001)
    with pytest.raises(ArchiveAuthError) as err:
        archive.query(PROPOSALS[0], START, END)
    message = str(err.value)
    assert "HTTP 401" in message and "Invalid token" in message
    assert ENVVAR in message and live.url in message
    assert "not-the-right-token-1234" not in message
    assert live.stats["api_requests"] == 1  # refused credentials are not retried

    monkeypatch.delenv(ENVVAR)
    with pytest.raises(ArchiveAuthError, match=f"{ENVVAR}' is not set"):
        archive.query(PROPOSALS[0], START, END)
    assert live.stats["api_requests"] == 1  # nothing sent without a token


def test_token_never_appears_in_logs_pickles_or_exception_text(archive, live, caplog,
                                                               tmp_path):
    caplog.set_level(logging.DEBUG)  # urllib3's and ours
    live.faults = Faults(http_5xx=3, rate_limit=1, retry_after=0.01)
    records = archive.query(PROPOSALS[0], START, END, limit=PAGE)
    download_frames(archive, records[:5], tmp_path, tmp_path / "list.txt", progress=False)

    errors = []
    live.faults = Faults(http_5xx=100, target="api")
    with pytest.raises(ArchiveError) as err:
        LCOArchive(live.url, token_envvar=ENVVAR, retries=1, backoff=0.001).query(PROPOSALS[0])
    errors.append(err.value)
    live.faults = Faults()
    for bad in ("wrong-" + TOKEN, TOKEN + "x"):
        os.environ[ENVVAR] = bad
        with pytest.raises(ArchiveAuthError) as err:
            archive.query(PROPOSALS[0], START, END)
        errors.append((err.value, bad))
    os.environ[ENVVAR] = TOKEN

    assert live.stats["api_requests"] > 0
    assert TOKEN not in caplog.text
    for blob in (dill.dumps(archive), pickle.dumps(archive), dill.dumps(records)):
        assert TOKEN.encode() not in blob
    restored = dill.loads(dill.dumps(archive))
    assert len(restored.query(PROPOSALS[1], START, END, limit=PAGE)) == 83  # still works
    for item in errors:
        exc, secret = item if isinstance(item, tuple) else (item, TOKEN)
        text = "".join(traceback.format_exception(exc)) + repr(exc)
        assert secret not in text and TOKEN not in text


# ---------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------

BAD_NAMES = ["../evil.fits", "../../etc/passwd", "/tmp/absolute.fits", "sub/dir.fits", "..",
             "", "a\\b.fits", TMP_PREFIX + "frame.fits", "nul\x00.fits"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_filename_that_would_leave_the_folder_is_refused(name, live, tmp_path):
    folder = tmp_path / "inside"
    folder.mkdir()
    record = ArchiveRecord(id=1, basename="x", filename=name,
                           url=live.url + "download/x", md5="0" * 32)
    for archive in (LCOArchive(live.url), LocalArchive(tmp_path)):
        with pytest.raises(ArchiveError, match="refusing frame file name") as err:
            archive.download(record, folder)
        assert repr(name) in str(err.value)
    result = download_frames(LCOArchive(live.url), [record], folder, progress=False)
    assert result.n_failed == 1 and result.n_downloaded == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inside"]
    assert list(folder.iterdir()) == []
    assert safe_destination(folder, "ok-e91.fits.fz") == folder / "ok-e91.fits.fz"


# ---------------------------------------------------------------------------
# Local archive
# ---------------------------------------------------------------------------

@pytest.fixture
def local_frames(tmp_path):
    folder = tmp_path / "local"
    folder.mkdir()
    dates = ["2024-05-01T23:59:59", "2024-05-02T00:00:00", "2024-05-02T12:30:00",
             "2024-05-02T23:59:59.5", "2024-05-03T00:00:01"]
    for i, date_obs in enumerate(dates):
        suffix = ".fits.fz" if i % 2 else ".fits"
        make_frame(folder / f"lsc1m005-fa15-2024050{i}-{i:04d}-e91{suffix}", date_obs,
                   PROPOSALS[i % 2], value=i)
    (folder / "broken.fits").write_bytes(b"SIMPLE  =  this is not FITS")
    return folder


def test_local_archive_selects_frames_by_header_date_window(local_frames, caplog):
    archive = LocalArchive(local_frames)
    in_day = archive.query(start="2024-05-02 00:00", end="2024-05-02 23:59:59.9")
    assert [r.observation_date[:19] for r in in_day] == [
        "2024-05-02T00:00:00", "2024-05-02T12:30:00", "2024-05-02T23:59:59"]
    assert "broken.fits" in caplog.text  # an unreadable file is named and skipped
    assert len(archive.query()) == 5
    assert [r.proposal_id for r in archive.query(PROPOSALS[1])] == [PROPOSALS[1]] * 2
    assert archive.query(reduction_level=0) == []
    with pytest.raises(ArchiveError, match="does not exist"):
        LocalArchive(local_frames / "missing").query()


def test_local_archive_downloads_by_atomic_copy_with_md5_and_skips_next_time(local_frames,
                                                                            tmp_path):
    archive = LocalArchive(local_frames)
    records = archive.query()
    out = tmp_path / "downloads"
    result = download_frames(archive, records, out, tmp_path / "list.txt", progress=False)
    assert result.n_downloaded == 5 and result.n_failed == 0
    for record in records:
        assert md5_of(out / record.filename) == md5_of(local_frames / record.filename)
    listed = FrameList(tmp_path / "list.txt")
    assert {e.md5 for e in listed} == {md5_of(local_frames / r.filename) for r in records}
    again = download_frames(archive, records, out, tmp_path / "list.txt", progress=False)
    assert (again.n_downloaded, again.n_skipped) == (0, 5)

    wrong = dataclasses.replace(records[0], md5="f" * 32)
    with pytest.raises(ArchiveError, match="md5 mismatch"):
        archive.download(wrong, tmp_path / "other")
    assert not (tmp_path / "other" / wrong.filename).exists()


def test_local_archive_and_server_serve_every_lco_frame_suffix_in_any_case(tmp_path):
    folder = tmp_path / "local"
    folder.mkdir()
    names = ["lsc1m005-fa15-20240502-0001-e91.fits.gz", "lsc1m005-fa15-20240502-0002-e91.FITS",
             "lsc1m005-fa15-20240502-0003-e91.fts"]
    for i, name in enumerate(names):
        make_frame(folder / name, f"2024-05-02T0{i}:00:00", PROPOSALS[0], value=i)
    make_frame(folder / ".hidden-e91.fits", "2024-05-02T05:00:00", PROPOSALS[0])
    (folder / "notes.txt").write_text("not a frame")

    records = LocalArchive(folder).query()
    assert sorted(r.filename for r in records) == sorted(names)
    assert {r.basename for r in records} == {n.split(".")[0] for n in names}
    with ArchiveServer(folder, token=None) as server:
        served = LCOArchive(server.url, retries=0).query(
            start="2024-05-02", end="2024-05-03", reduction_level=91)
        assert sorted(r.filename for r in served) == sorted(names)
        for archive, found in ((LocalArchive(folder), records), (LCOArchive(server.url), served)):
            out = tmp_path / f"out-{type(archive).__name__}"
            result = download_frames(archive, found, out, progress=False)
            assert result.n_downloaded == 3 and result.n_failed == 0
            assert sorted(p.name for p in out.iterdir()) == sorted(names)
            assert all(md5_of(out / n) == md5_of(folder / n) for n in names)


def test_atomic_file_appears_only_on_commit_and_leaves_nothing_when_abandoned(tmp_path):
    final = tmp_path / "frame.fits.fz"
    with AtomicFile(final, digest="md5") as out:
        out.write(b"abc")
        out.close()
        assert not final.exists() and out.tmp.name.startswith(TMP_PREFIX)
        assert out.hexdigest == hashlib.md5(b"abc").hexdigest() and out.size == 3
        assert out.commit() == final
    assert final.read_bytes() == b"abc"
    with pytest.raises(ValueError):
        with AtomicFile(final) as out:
            out.write(b"half a frame")
            raise ValueError("md5 mismatch")
    with AtomicFile(final) as out:  # never committed
        out.write(b"unverified")
    assert final.read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["frame.fits.fz"]


# ---------------------------------------------------------------------------
# Frame list
# ---------------------------------------------------------------------------

def test_frame_list_ignores_a_line_cut_short_by_a_kill_and_repairs_it(tmp_path):
    path = tmp_path / "frame_list.txt"
    path.write_text("# pipekit frame list\nold-e91.fits.fz\t7\t" + "a" * 32
                    + "\t2024-05-01T00:00:00+00:00\nlegacy-e91.fits\nhalf-writ")
    frames = FrameList(path)
    assert len(frames) == 2 and "half-writ" not in frames
    assert "old-e91.fits.fz" in frames and "legacy-e91.fits" in frames
    frames.add("new-e91.fits.fz", id=9, md5="b" * 32)
    reread = FrameList(path)
    assert [e.filename for e in reread] == ["old-e91.fits.fz", "legacy-e91.fits",
                                            "new-e91.fits.fz"]
    assert reread.has(ArchiveRecord(id="9", basename="x", filename="renamed.fits"))
    assert reread.has(ArchiveRecord(id=None, basename="old-e91", filename="old-e91.fits"))
    with pytest.raises(ArchiveError, match="tab or newline"):
        frames.add("bad\nname.fits")


# ---------------------------------------------------------------------------
# Configuration and the download step
# ---------------------------------------------------------------------------

def test_archive_from_config_picks_the_client_from_the_url(tmp_path):
    http = archive_from_config({"name": "lco", "url": "https://archive-api.lco.global",
                                "token_envvar": "LCO_TOKEN"})
    assert isinstance(http, LCOArchive) and http.token_envvar == "LCO_TOKEN"
    assert http.url == "https://archive-api.lco.global/"
    assert isinstance(archive_from_config({"url": tmp_path.as_uri()}), LocalArchive)
    local = archive_from_config({"url": str(tmp_path)})
    assert isinstance(local, LocalArchive) and local.folder == tmp_path
    with pytest.raises(ConfigError, match="unknown scheme 'ftp'"):
        archive_from_config({"name": "x", "url": "ftp://example.org/frames"})
    with pytest.raises(ConfigError, match="'url' is empty"):
        archive_from_config({"name": "x", "url": ""})


def write_download_config(root, archives, start=START, end=END):
    """A data_download.yaml with (name, url, proposals, active) archives."""
    lines = ["archives:"]
    for name, url, proposals, active in archives:
        lines += [f"  {name}:", f"    name: {name}", f"    active: {str(active).lower()}",
                  f"    url: {url}", f"    token_envvar: {ENVVAR}",
                  f"    proposals: [{', '.join(proposals)}]",
                  "    reduction_level:", "      image: 91", "      spectrum: 0"]
    lines += ["log_dir: logs", "frame_list: logs/frame_list.txt",
              "data_download_dir: downloads", "data_reduction_dir: reduction",
              f"start_datetime: '{start}'", f"end_datetime: '{end}'",
              "default_red_config: none"]
    path = root / "data_download.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_download_step_collects_every_proposal_of_every_active_archive(live, local_frames,
                                                                       tmp_path, monkeypatch):
    from pipekit import steps

    monkeypatch.setenv(ENVVAR, TOKEN)
    config = write_download_config(tmp_path, [
        ("lco", live.url, list(PROPOSALS), True),
        ("disk", str(local_frames), [], True),
        ("spare", "http://127.0.0.1:9/", ["NOPE"], False),  # inactive: never contacted
    ])
    status = steps.download(str(config))
    # 250 from the server's three proposals, 5 from the folder.
    assert status["status"] == "success"
    assert (status["n_found"], status["n_downloaded"], status["n_failed"]) == (255, 255, 0)
    assert len(landed(tmp_path / "downloads")) == 255
    assert Path(status["frame_list"]) == tmp_path / "logs" / "frame_list.txt"
    assert status["download_dir"] == str(tmp_path / "downloads")
    assert len(pickle.dumps(status)) < 10_000  # a small result, cheap to checkpoint

    again = steps.download(str(config))
    assert (again["n_downloaded"], again["n_skipped"]) == (0, 255)


def test_download_step_reports_a_failed_proposal_and_keeps_the_others(live, tmp_path,
                                                                      monkeypatch):
    from pipekit import steps

    monkeypatch.setenv(ENVVAR, "wrong-token")
    config = write_download_config(tmp_path, [("lco", live.url, [PROPOSALS[0]], True)])
    status = steps.download(str(config))
    assert status["status"] == "error" and status["n_downloaded"] == 0
    assert status["failures"][0][0] == f"lco:{PROPOSALS[0]}"
    assert "HTTP 401" in status["failures"][0][1] and ENVVAR in status["failures"][0][1]
    assert "wrong-token" not in json.dumps(status)


def test_download_result_reports_throughput():
    result = DownloadResult(n_bytes=50_000_000, seconds=2.0)
    assert result.mb_per_s == pytest.approx(25.0, rel=1e-12)
    assert DownloadResult().mb_per_s == 0.0
