"""The archive client against the local server playing by the real archive's rules.

Estimated counts past a short window (science-archive ``archive/frames/pagination.py``),
200 with public frames only for a proposal the token does not belong to
(``archive/frames/views.py``), fractional-second windows, a long ``Retry-After`` and an
HTML error page.
"""

import datetime as dt
import hashlib
import logging
import re
import time
import urllib.parse

import numpy as np
import pytest
import requests
from astropy.io import fits

from pipekit.archive import LCOArchive
from pipekit.errors import ArchiveError
from pipekit.testing.archive_server import ArchiveServer, Faults

TOKEN = "tok-real-rules-4f1e-secret"
ENVVAR = "PIPEKIT_TEST_REAL_RULES_TOKEN"
PROPOSAL = "KEY2024A-001"
SEASON = ("2024-03-01 00:00", "2024-06-29 00:00")  # 120 days
N_SEASON = 163


def frame(path, date_obs, proposal=PROPOSAL, value=0):
    header = fits.Header()
    for key, val in (("OBJECT", "OGLE-2024-BLG-0034"), ("DATE-OBS", date_obs),
                     ("PROPID", proposal), ("RLEVEL", 91), ("FILTER", "ip"),
                     ("INSTRUME", "fa15"), ("SITEID", "cpt"), ("TELID", "1m0a"),
                     ("EXPTIME", 60.0), ("OBSTYPE", "EXPOSE")):
        header[key] = val
    fits.PrimaryHDU(np.full((4, 4), value, dtype=np.int16), header=header).writeto(path)


@pytest.fixture(scope="module")
def season(tmp_path_factory):
    """163 frames spread over 120 days, some on the 63-day boundary the client cuts at."""
    folder = tmp_path_factory.mktemp("season")
    t0 = dt.datetime(2024, 3, 1)
    for i in range(N_SEASON):
        when = t0 + dt.timedelta(days=120 * i / N_SEASON, hours=i % 7)
        if i == 80:  # exactly on the first sub-window's end: listed twice, kept once
            when = t0 + dt.timedelta(weeks=9)
        frame(folder / f"cpt1m010-fa15-{i:04d}-e91.fits", when.isoformat(), value=i)
    return folder


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv(ENVVAR, TOKEN)


def follow_next(server, start, end):
    """What a client that trusts ``next`` gets (the seed pipeline's way)."""
    url = server.url + "frames/?" + urllib.parse.urlencode(
        {"proposal_id": PROPOSAL, "start": start, "end": end, "limit": 100})
    names = []
    while url:
        page = requests.get(url, headers={"Authorization": f"Token {TOKEN}"}, timeout=5).json()
        names += [r["filename"] for r in page["results"]]
        url = page["next"]
    return names


def test_a_season_window_with_estimated_counts_gets_every_frame_exactly_once(season, token):
    with ArchiveServer(season, token=TOKEN) as server:
        # The server truncates like the real one: following next stops at one page.
        assert len(follow_next(server, *SEASON)) == 100
        server.stats.clear()
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        records = archive.query(PROPOSAL, *SEASON)
        names = [r.filename for r in records]
        assert len(names) == N_SEASON == len(set(names))
        assert set(names) == {p.name for p in season.iterdir()}
        assert len({r.id for r in records}) == N_SEASON
        assert server.stats["api_count_estimated"] == 0  # windows short enough up front


def test_windows_still_estimated_are_halved_until_the_count_is_exact(season, token):
    # As when counting takes over 1.5 s: only 20-day windows are counted exactly.
    with ArchiveServer(season, token=TOKEN, page_size=25,
                       exact_count_span_narrowed=dt.timedelta(days=20)) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        records = archive.query(PROPOSAL, *SEASON, limit=25)
        assert sorted(r.filename for r in records) == sorted(p.name for p in season.iterdir())
        assert len(records) == N_SEASON
        assert server.stats["api_count_estimated"] >= 2


def test_a_window_that_cannot_be_counted_is_listed_by_cursor_pages(season, token):
    # Counted exactly only over 6 h: every window down to a day is estimated, so each
    # day is listed by cursor pages (no count to trust or distrust).
    with ArchiveServer(season, token=TOKEN, page_size=10, exact_count_span=dt.timedelta(hours=6),
                       exact_count_span_narrowed=dt.timedelta(hours=6)) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        records = archive.query(PROPOSAL, *SEASON, limit=3)
    names = [r.filename for r in records]
    assert len(names) == len(set(names)) == N_SEASON
    assert set(names) == {p.name for p in season.iterdir()}


def test_a_window_that_cannot_be_counted_fails_when_the_archive_has_no_cursor_pages(
        season, token):
    with ArchiveServer(season, token=TOKEN, exact_count_span=dt.timedelta(hours=6),
                       exact_count_span_narrowed=dt.timedelta(hours=6)) as server:
        server.cursor_pagination = False
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        with pytest.raises(ArchiveError, match="only an estimated count.*does not offer "
                                               "cursor pagination") as err:
            archive.query(PROPOSAL, *SEASON)
        assert TOKEN not in str(err.value)


def test_cursor_pages_follow_each_other_without_a_count(season, token):
    with ArchiveServer(season, token=TOKEN) as server:
        url = f"{server.url}frames/?pagination_style=cursor&limit=50&ordering=id"
        headers = {"Authorization": f"Token {TOKEN}"}
        seen = []
        while url:
            page = requests.get(url, headers=headers, timeout=10).json()
            assert "count" not in page and "count_estimated" not in page
            seen += [r["id"] for r in page["results"]]
            url = page["next"]
        bad = requests.get(f"{server.url}frames/?pagination_style=cursor&cursor=bm9wZQ==",
                           headers=headers, timeout=10)
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == N_SEASON
    assert bad.status_code == 400 and "Invalid cursor" in bad.text


def test_a_limit_above_the_server_maximum_is_clamped_and_still_lists_everything(season, token):
    with ArchiveServer(season, token=TOKEN, max_limit=30) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        records = archive.query(PROPOSAL, "2024-03-01", "2024-04-15", limit=1000)
        want = [p for p in season.iterdir()
                if fits.getheader(p)["DATE-OBS"] <= "2024-04-15"]
        assert len(records) == len(want) > 30


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Two proposals: MINE (proprietary) and THEIRS (two public frames, two not)."""
    folder = tmp_path_factory.mktemp("shared")
    public = {}
    for i in range(4):
        frame(folder / f"mine-{i}-e91.fits", f"2024-05-02T0{i}:00:00", "MINE-001")
        frame(folder / f"theirs-{i}-e91.fits", f"2024-05-02T1{i}:00:00", "THEIRS-002")
        if i < 2:
            public[f"theirs-{i}-e91.fits"] = "2024-06-01T00:00:00"
    return folder, public


def test_a_proposal_the_token_does_not_belong_to_is_named_in_a_warning(shared, token, caplog):
    folder, public = shared
    with ArchiveServer(folder, token=None, tokens={TOKEN: ["MINE-001"]}, public_dates=public,
                       proprietary_days=100_000) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        with caplog.at_level(logging.WARNING, logger="pipekit.archive"):
            mine = archive.query("MINE-001", "2024-05-02", "2024-05-03")
            assert not [r for r in caplog.records if r.levelno == logging.WARNING]
            theirs = archive.query("THEIRS-002", "2024-05-02", "2024-05-03")
            nothing = archive.query("NOBODY-003", "2024-05-02", "2024-05-03")
        assert len(mine) == 4
        assert sorted(r.filename for r in theirs) == sorted(public)  # 200, public only
        assert nothing == []
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2
        assert "proposal THEIRS-002 gave only public frames (2)" in warnings[0]
        assert "proposal NOBODY-003 gave no frames" in warnings[1]
        for text in warnings:
            assert f"the token in {ENVVAR} may not belong to proposal" in text
            assert TOKEN not in text


def test_without_a_token_a_warning_says_once_that_only_public_frames_are_visible(shared,
                                                                                  caplog):
    folder, public = shared
    with ArchiveServer(folder, token=None, tokens={TOKEN: ["MINE-001"]}, public_dates=public,
                       proprietary_days=100_000) as server:
        archive = LCOArchive(server.url, retries=0)
        with caplog.at_level(logging.WARNING, logger="pipekit.archive"):
            assert archive.query("MINE-001", "2024-05-02", "2024-05-03") == []
            assert len(archive.query("THEIRS-002", "2024-05-02", "2024-05-03")) == 2
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "no token configured" in warnings[0]
        assert "only public frames are visible" in warnings[0]


def test_window_bounds_keep_fractional_seconds(tmp_path, token):
    for i, stamp in enumerate(["2024-05-02T01:00:00.250", "2024-05-02T01:00:00.750",
                               "2024-05-02T01:00:01.250"]):
        frame(tmp_path / f"f-{i}-e91.fits", stamp)
    with ArchiveServer(tmp_path, token=TOKEN) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        got = archive.query(PROPOSAL, "2024-05-02T01:00:00.500", "2024-05-02T01:00:01.000")
        assert [r.filename for r in got] == ["f-1-e91.fits"]


def test_a_retry_after_longer_than_the_client_waits_fails_at_once_saying_when(season, token):
    with ArchiveServer(season, token=TOKEN) as server:
        server.faults = Faults(rate_limit=5, retry_after=1500, target="api")
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=5, max_retry_after=60)
        t0 = time.perf_counter()
        with pytest.raises(ArchiveError) as err:
            archive.query(PROPOSAL, "2024-03-01", "2024-03-02")
        assert time.perf_counter() - t0 < 3
        text = str(err.value)
        assert "HTTP 429" in text and "1500 s" in text and "try again after" in text
        when = dt.datetime.strptime(text.split("try again after ")[1][:19], "%Y-%m-%d %H:%M:%S")
        wait = when.replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)
        assert dt.timedelta(minutes=23) < wait < dt.timedelta(minutes=26)
        assert server.stats["fault_rate_limit"] == 1  # no retry was attempted


def test_an_html_error_page_is_summarised_in_one_line_naming_the_status(season, token):
    with ArchiveServer(season, token=TOKEN) as server:
        server.faults = Faults(http_5xx=2, html_errors=True, target="api")
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=1, backoff=0.01)
        with pytest.raises(ArchiveError) as err:
            archive.query(PROPOSAL, "2024-03-01", "2024-03-02")
        text = str(err.value)
        assert re.search(r"HTTP 50\d: HTML page: 50\d [A-Z][a-z]+", text)
        assert "<" not in text and "\n" not in text


def test_a_reprocessed_frame_is_downloaded_again_replacing_the_old_one(tmp_path, token):
    from pipekit import steps
    from pipekit.archive import FrameList

    served = tmp_path / "served"
    served.mkdir()
    for i in range(3):
        frame(served / f"f-{i}-e91.fits", f"2024-05-02T0{i}:00:00", value=i)
    frame(tmp_path / "v2.fits", "2024-05-02T01:00:00", value=99)  # the new version's bytes
    with ArchiveServer(served, token=TOKEN) as server:
        config = tmp_path / "data_download.yaml"
        config.write_text("\n".join([
            "archives:", "  lco:", f"    url: {server.url}", f"    token_envvar: {ENVVAR}",
            f"    proposals: [{PROPOSAL}]", "log_dir: logs", "data_download_dir: downloads",
            "data_reduction_dir: reduction", "start_datetime: '2024-05-01 00:00'",
            "end_datetime: '2024-05-03 00:00'"]) + "\n")
        first = steps.download(str(config))
        assert first["n_downloaded"] == 3 and first["reprocessed"] == []
        # Sorting moves frames away: the frame list is what remembers them.
        (tmp_path / "downloads" / "f-1-e91.fits").unlink()
        old_id = server.frames[1]["id"]
        new_md5 = server.add_version("f-1-e91.fits", (tmp_path / "v2.fits").read_bytes())
        assert server.frames[1]["id"] == old_id

        second = steps.download(str(config))
        assert second["status"] == "success"
        assert (second["n_downloaded"], second["n_skipped"]) == (1, 2)
        assert second["reprocessed"] == ["f-1-e91.fits"] and second["n_reprocessed"] == 1
        landed = tmp_path / "downloads" / "f-1-e91.fits"
        assert hashlib.md5(landed.read_bytes()).hexdigest() == new_md5
        listed = FrameList(tmp_path / "logs" / "frame_list.txt")
        assert [e.md5 for e in listed if e.filename == "f-1-e91.fits"] == [new_md5]

        third = steps.download(str(config))
        assert (third["n_downloaded"], third["reprocessed"]) == (0, [])
    assert server.served["f-1-e91.fits"] == 2 and server.served["f-0-e91.fits"] == 1


def test_a_reprocessed_frame_still_in_the_download_folder_is_replaced_in_place(tmp_path, token):
    from pipekit.archive import download_frames

    served = tmp_path / "served"
    served.mkdir()
    frame(served / "f-0-e91.fits", "2024-05-02T00:00:00", value=1)
    frame(tmp_path / "v2.fits", "2024-05-02T00:00:00", value=2)
    with ArchiveServer(served, token=TOKEN) as server:
        archive = LCOArchive(server.url, token_envvar=ENVVAR, retries=0)
        out = tmp_path / "downloads"
        download_frames(archive, archive.query(PROPOSAL, "2024-05-01", "2024-05-03"), out,
                        progress=False)  # no frame list: the file on disk is compared
        new_md5 = server.add_version("f-0-e91.fits", (tmp_path / "v2.fits").read_bytes())
        result = download_frames(archive, archive.query(PROPOSAL, "2024-05-01", "2024-05-03"),
                                 out, progress=False)
        assert result.reprocessed == ["f-0-e91.fits"] and result.n_failed == 0
        assert hashlib.md5((out / "f-0-e91.fits").read_bytes()).hexdigest() == new_md5
        assert sorted(p.name for p in out.iterdir()) == ["f-0-e91.fits"]  # no temporaries
