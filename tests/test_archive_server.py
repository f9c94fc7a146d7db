"""The local archive server: the archive's JSON shape, token check, signed links, faults, lifetime."""

import hashlib
import time
import urllib.parse

import numpy as np
import pytest
import requests
from astropy.io import fits

from pipekit.testing.archive_server import ArchiveServer, Faults

TOKEN = "server-test-token-77"
AUTH = {"Authorization": f"Token {TOKEN}"}


def tiny_frame(path, date_obs, proposal=None, rlevel=91):
    header = fits.Header()
    header["DATE-OBS"] = date_obs
    header["DAY-OBS"] = date_obs[:10].replace("-", "")
    header["OBJECT"] = "OGLE-2024-BLG-0034"
    header["FILTER"] = "ip"
    header["INSTRUME"] = "fa15"
    header["SITEID"] = "lsc"
    header["TELID"] = "1m0a"
    header["EXPTIME"] = 30.0
    header["OBSTYPE"] = "EXPOSE"
    header["RLEVEL"] = rlevel
    if proposal:
        header["PROPID"] = proposal
    data = np.arange(64, dtype=np.int16).reshape(8, 8)
    if str(path).endswith(".fz"):
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header)]).writeto(path)
    else:
        fits.PrimaryHDU(data, header=header).writeto(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    for i in range(7):
        name = f"lsc1m005-fa15-20240502-{i:04d}-e91.fits" + (".fz" if i % 2 else "")
        tiny_frame(folder / name, f"2024-05-02T0{i}:00:00.000", "KEY2024A-001")
    tiny_frame(folder / "lsc1m005-fa15-20240502-0100-e91.fits", "2024-05-02T10:00:00",
               proposal=None)  # proposal comes from the server's mapping
    return folder


@pytest.fixture
def server(folder):
    mapping = {"lsc1m005-fa15-20240502-0100-e91.fits": "MAPPED-001"}
    with ArchiveServer(folder, token=TOKEN, page_size=3, proposals=mapping) as srv:
        yield srv


def get(server, path="frames/", **params):
    return requests.get(server.url + path, params=params, headers=AUTH, timeout=5)


def test_frames_pages_have_the_archive_shape_and_follow_next(server, folder):
    first = get(server, proposal_id="KEY2024A-001", start="2024-05-01",
                end="2024-05-03").json()
    assert set(first) == {"count", "count_estimated", "next", "previous", "results"}
    assert first["count"] == 7 and first["previous"] is None
    assert first["count_estimated"] is False
    assert len(first["results"]) == 3
    seen, page = [], first
    while True:
        seen += page["results"]
        if not page["next"]:
            break
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(page["next"]).query))
        assert query["proposal_id"] == "KEY2024A-001" and query["limit"] == "3"
        page = requests.get(page["next"], headers=AUTH, timeout=5).json()
        assert page["previous"] is not None
    assert len(seen) == 7 and len({r["id"] for r in seen}) == 7
    dates = [r["observation_date"] for r in seen]
    assert dates == sorted(dates, reverse=True)  # newest first, as the archive orders

    record = seen[0]
    for key in ("id", "basename", "filename", "url", "version_set", "reduction_level",
                "observation_date", "observation_day", "proposal_id", "instrument_id",
                "target_name", "site_id", "telescope_id", "exposure_time",
                "primary_optical_element", "configuration_type", "OBJECT", "FILTER",
                "INSTRUME", "DATE_OBS", "RLEVEL", "OBSTYPE", "PROPID"):
        assert key in record, key
    assert record["FILTER"] == record["primary_optical_element"] == "ip"
    assert record["observation_day"] == "2024-05-02"
    assert record["reduction_level"] == 91
    md5 = hashlib.md5((folder / record["filename"]).read_bytes()).hexdigest()
    assert record["version_set"][0]["md5"] == md5
    assert record["version_set"][0]["extension"] in (".fits", ".fits.fz")


def test_filters_by_window_level_and_mapped_proposal(server):
    window = get(server, start="2024-05-02T02:00:00", end="2024-05-02T04:00:00").json()
    assert sorted(r["observation_date"][11:13] for r in window["results"]) == ["02", "03", "04"]
    assert get(server, reduction_level=0, start="2024-05-02", end="2024-05-03").json()[
        "count"] == 0
    mapped = get(server, proposal_id="MAPPED-001", start="2024-05-02",
                 end="2024-05-03").json()["results"]
    assert [r["PROPID"] for r in mapped] == ["MAPPED-001"]
    bad = get(server, start="yesterday-ish")
    assert bad.status_code == 400 and "start" in bad.json()
    one = get(server, f"frames/{mapped[0]['id']}/").json()
    assert one["filename"] == mapped[0]["filename"]


def test_missing_or_wrong_token_gets_401_with_a_json_detail(server):
    missing = requests.get(server.url + "frames/", timeout=5)
    assert missing.status_code == 401
    assert missing.json()["detail"] == "Authentication credentials were not provided."
    wrong = requests.get(server.url + "frames/", headers={"Authorization": "Token nope"},
                         timeout=5)
    assert wrong.status_code == 401 and wrong.json()["detail"] == "Invalid token."
    assert server.stats["api_unauthorised"] == 2


def test_download_links_are_signed_need_no_auth_and_refuse_one(server, folder):
    record = get(server).json()["results"][0]
    body = requests.get(record["url"], timeout=5)
    assert body.status_code == 200
    assert body.content == (folder / record["filename"]).read_bytes()
    with_auth = requests.get(record["url"], headers=AUTH, timeout=5)
    assert with_auth.status_code == 400 and server.download_auth_headers == 1
    tampered = record["url"].replace("Signature=", "Signature=0")
    assert requests.get(tampered, timeout=5).status_code == 403
    assert server.served[record["filename"]] == 1


def test_faults_are_served_as_asked_then_stop(server, folder):
    record = get(server).json()["results"][0]
    size = (folder / record["filename"]).stat().st_size
    server.faults = Faults(http_5xx=1, rate_limit=1, retry_after=2, drop=1, corrupt=1,
                           truncate=1, target="download")
    codes = [requests.get(record["url"], timeout=5) for _ in range(2)]
    assert 500 <= codes[0].status_code <= 504 and codes[1].status_code == 429
    assert codes[1].headers["Retry-After"] == "2"
    with pytest.raises(requests.ConnectionError):
        requests.get(record["url"], timeout=5)  # drop: no answer at all
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(record["url"], timeout=5)  # truncate: half the body, then hang up
    corrupt = requests.get(record["url"], timeout=5).content
    assert len(corrupt) == size and corrupt != (folder / record["filename"]).read_bytes()
    assert requests.get(record["url"], timeout=5).content == (
        folder / record["filename"]).read_bytes()
    assert get(server).status_code == 200  # target="download": the API was spared
    server.faults = Faults(slow=1, delay=0.3, target="api")
    t0 = time.perf_counter()
    assert get(server).status_code == 200
    assert time.perf_counter() - t0 >= 0.28


def test_server_stops_at_context_exit_and_after_its_lifetime(folder):
    with ArchiveServer(folder, token=None) as srv:
        url = srv.url
        assert len(requests.get(url + "frames/", timeout=5).json()["results"]) == 8  # open
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "frames/", timeout=2)
    timed = ArchiveServer(folder, lifetime=0.3).start()
    time.sleep(0.8)
    with pytest.raises(requests.ConnectionError):
        requests.get(timed.url + "frames/", timeout=2)
    with pytest.raises(ValueError, match="loopback"):
        ArchiveServer(folder, host="0.0.0.0")


# ---------------------------------------------------------------------------
# As the real archive: estimated counts, limits, permissions, versions
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def season(tmp_path_factory):
    """163 frames over 120 days of one proposal (about 1.4 a day)."""
    folder = tmp_path_factory.mktemp("season")
    for i in range(163):
        when = "2024-03-01T00:00:00"
        day = int(i * 120 / 163)
        stamp = (np.datetime64(when) + np.timedelta64(day, "D")
                 + np.timedelta64(i % 20, "h")).astype(str)
        tiny_frame(folder / f"lsc1m005-fa15-{i:04d}-e91.fits", stamp, "KEY2024A-001")
    return folder


def test_long_windows_get_an_estimated_count_that_cuts_next_and_results_short(season):
    with ArchiveServer(season, token=TOKEN) as srv:
        season_window = dict(proposal_id="KEY2024A-001", start="2024-02-28", end="2024-07-01")
        first = get(srv, **season_window).json()
        # archive/frames/pagination.py: past 9 weeks (with a proposal) the count is the
        # planner's estimate, and DRF's next is null once offset + limit >= count.
        assert first["count_estimated"] is True and first["count"] < 163
        assert len(first["results"]) == 100 and first["next"] is None
        beyond = get(srv, offset=100, **season_window).json()
        assert beyond["results"] == []  # offset past the estimate: nothing, as DRF does
        week = get(srv, proposal_id="KEY2024A-001", start="2024-03-01",
                   end="2024-03-08").json()
        assert week["count_estimated"] is False and week["count"] == len(week["results"])
        nine_weeks = dict(start="2024-03-01", end="2024-05-03")
        assert get(srv, proposal_id="KEY2024A-001", **nine_weeks).json()[
            "count_estimated"] is False
        assert get(srv, **nine_weeks).json()["count_estimated"] is True  # no proposal
        assert get(srv, proposal_id="KEY2024A-001").json()["count_estimated"] is True


def test_limit_defaults_to_100_and_is_clamped_silently_to_1000(season):
    with ArchiveServer(season, token=TOKEN, estimate_counts=False) as srv:
        assert len(get(srv).json()["results"]) == 100
        big = get(srv, limit=5000).json()
        assert len(big["results"]) == 163 and big["count"] == 163
    with ArchiveServer(season, token=TOKEN, max_limit=50, estimate_counts=False) as srv:
        assert len(get(srv, limit=5000).json()["results"]) == 50


def test_ordering_by_id_is_honoured(server):
    ids = [r["id"] for r in get(server, ordering="id", limit=50).json()["results"]]
    assert ids == sorted(ids)


def test_a_token_sees_its_proposals_and_public_frames_with_200_never_403(tmp_path):
    for i, proposal in enumerate(["MINE-001", "MINE-001", "OTHER-002", "OTHER-002"]):
        tiny_frame(tmp_path / f"f-{i}-e91.fits", f"2024-05-02T0{i}:00:00", proposal)
    public = {"f-2-e91.fits": "2020-01-01T00:00:00"}  # OTHER-002's frame 2 is public
    with ArchiveServer(tmp_path, token=None, tokens={"mine": ["MINE-001"], "all": None},
                       public_dates=public, proprietary_days=10_000,
                       estimate_counts=False) as srv:
        def names(token, **params):
            headers = {"Authorization": f"Token {token}"} if token else {}
            resp = requests.get(srv.url + "frames/", params=params, headers=headers, timeout=5)
            assert resp.status_code == 200
            return sorted(r["filename"] for r in resp.json()["results"])

        assert names("mine", proposal_id="MINE-001") == ["f-0-e91.fits", "f-1-e91.fits"]
        assert names("mine", proposal_id="OTHER-002") == ["f-2-e91.fits"]
        assert names(None, proposal_id="MINE-001") == []
        assert names(None) == ["f-2-e91.fits"]
        assert len(names("all")) == 4
        record = get(srv, "frames/", proposal_id="OTHER-002")  # a wrong token: 401
        assert record.status_code == 401


def test_a_new_version_keeps_id_and_name_with_a_new_md5_newest_first(tmp_path):
    tiny_frame(tmp_path / "f-0-e91.fits", "2024-05-02T01:00:00", "KEY2024A-001")
    tiny_frame(tmp_path / "other.fits", "2024-05-02T02:00:00", "KEY2024A-001", rlevel=0)
    with ArchiveServer(tmp_path, token=TOKEN) as srv:
        before = get(srv, reduction_level=91, start="2024-05-02", end="2024-05-03").json()[
            "results"][0]
        new_md5 = srv.add_version("f-0-e91.fits", (tmp_path / "other.fits").read_bytes())
        after = get(srv, reduction_level=0, start="2024-05-02", end="2024-05-03").json()[
            "results"]
        after = [r for r in after if r["filename"] == "f-0-e91.fits"][0]
        assert after["id"] == before["id"] and after["basename"] == before["basename"]
        assert [v["md5"] for v in after["version_set"]] == [
            new_md5, before["version_set"][0]["md5"]]
        body = requests.get(after["url"], timeout=5).content
        assert hashlib.md5(body).hexdigest() == new_md5
