"""Each download run's window: from where the last successful one ended, so no night is lost."""

import datetime as dt
import json

import numpy as np
import pytest
from astropy.io import fits

from pipekit import steps
from pipekit.archive import QueryState, query_state_path, query_window
from pipekit.testing.archive_server import ArchiveServer, Faults

TOKEN = "tok-window-77c1-secret"
ENVVAR = "PIPEKIT_TEST_WINDOW_TOKEN"
PROPOSAL = "KEY2024A-001"
UTC = dt.timezone.utc
NIGHT_END = [dt.datetime(2024, 5, d, 8, 0, tzinfo=UTC) for d in (2, 3, 4, 5)]


def frame(path, when, value):
    header = fits.Header()
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23]
    for key, val in (("OBJECT", "OGLE-2024-BLG-0034"), ("DATE-OBS", stamp),
                     ("PROPID", PROPOSAL), ("RLEVEL", 91), ("FILTER", "ip"),
                     ("INSTRUME", "fa15"), ("SITEID", "cpt"), ("TELID", "1m0a"),
                     ("EXPTIME", 60.0), ("OBSTYPE", "EXPOSE")):
        header[key] = val
    fits.PrimaryHDU(np.full((4, 4), value, dtype=np.int16), header=header).writeto(path)


@pytest.fixture
def nights(tmp_path):
    """Eight frames a night for four nights (20:00 to 06:00 UTC), one 10 min before 08:00."""
    folder = tmp_path / "archive"
    folder.mkdir()
    names = {}
    for n, end in enumerate(NIGHT_END):
        night = []
        for i in range(8):
            when = end - dt.timedelta(hours=12) + dt.timedelta(hours=1.4 * i)
            if i == 7:  # observed just before the run: the next run's overlap sees it too
                when = end - dt.timedelta(minutes=10)
            name = f"cpt1m010-fa15-night{n}-{i:02d}-e91.fits"
            frame(folder / name, when, value=10 * n + i)
            night.append(name)
        names[n] = night
    return folder, names


def write_config(root, url, lookback=None):
    lines = ["archives:", "  lco:", "    name: lco", f"    url: {url}",
             f"    token_envvar: {ENVVAR}", f"    proposals: [{PROPOSAL}]", "    retries: 0",
             "log_dir: logs", "frame_list: logs/frame_list.txt",
             "data_download_dir: downloads", "data_reduction_dir: reduction",
             "start_datetime: none", "end_datetime: none", "default_red_config: none"]
    if lookback is not None:
        lines.append(f"first_run_lookback_days: {lookback}")
    path = root / "data_download.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_missed_night_loses_no_frame_and_downloads_none_twice(nights, tmp_path, monkeypatch):
    folder, names = nights
    monkeypatch.setenv(ENVVAR, TOKEN)
    with ArchiveServer(folder, token=TOKEN) as server:
        config = write_config(tmp_path, server.url)
        first = steps.download(str(config), now=NIGHT_END[0])
        assert first["status"] == "success" and first["n_downloaded"] == 8
        state_file = query_state_path(tmp_path / "logs" / "frame_list.txt")
        recorded = json.loads(state_file.read_text())["queries"][f"lco\t{PROPOSAL}"]["end"]
        assert recorded == NIGHT_END[0].isoformat()

        server.faults = Faults(http_5xx=1000, target="api")  # night 2: the archive is down
        failed = steps.download(str(config), now=NIGHT_END[1])
        assert failed["status"] == "error" and failed["n_downloaded"] == 0
        assert json.loads(state_file.read_text())["queries"][f"lco\t{PROPOSAL}"]["end"] == \
            recorded  # a failed run moves nothing

        server.faults = Faults()
        third = steps.download(str(config), now=NIGHT_END[2])
        assert third["status"] == "success"
        assert dt.datetime.fromisoformat(third["start"]) == NIGHT_END[0] - dt.timedelta(hours=1)
        fourth = steps.download(str(config), now=NIGHT_END[3])
        assert fourth["status"] == "success"

    landed = sorted(p.name for p in (tmp_path / "downloads").iterdir())
    assert landed == sorted(sum(names.values(), []))  # every frame of every night
    assert set(server.served.values()) == {1}  # none downloaded twice
    assert third["n_downloaded"] == 16 and fourth["n_downloaded"] == 8
    assert third["n_skipped"] == 1  # night 1's last frame, seen again in the overlap


def test_a_run_whose_download_failed_starts_again_from_the_last_success(nights, tmp_path,
                                                                        monkeypatch):
    folder, names = nights
    monkeypatch.setenv(ENVVAR, TOKEN)
    with ArchiveServer(folder, token=TOKEN) as server:
        config = write_config(tmp_path, server.url, lookback=2)
        server.faults = Faults(http_5xx=1000, target="download")
        partial = steps.download(str(config), now=NIGHT_END[1])
        assert partial["status"] == "error"
        assert not query_state_path(tmp_path / "logs" / "frame_list.txt").exists()
        server.faults = Faults()
        again = steps.download(str(config), now=NIGHT_END[1])
        assert again["status"] == "success" and again["n_downloaded"] == 16  # lookback 2 days
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == sorted(
        names[0] + names[1])


def test_query_window_starts_at_the_last_end_minus_an_overlap_or_looks_back_first():
    now = NIGHT_END[2]
    assert query_window(None, now=now) == (now - dt.timedelta(days=1), now)
    assert query_window(None, now=now, first_run_lookback_days=3)[0] == now - dt.timedelta(3)
    assert query_window(NIGHT_END[0], now=now)[0] == NIGHT_END[0] - dt.timedelta(hours=1)
    explicit = dt.datetime(2024, 4, 1, tzinfo=UTC)
    assert query_window(NIGHT_END[0], start=explicit, now=now) == (explicit, now)


def test_query_state_only_moves_forward_and_survives_a_corrupt_file(tmp_path, caplog):
    path = tmp_path / "frame_list.txt.state.json"
    state = QueryState(path)
    state.record("lco", PROPOSAL, NIGHT_END[1])
    state.record("lco", PROPOSAL, NIGHT_END[0])  # a catch-up run over an older window
    assert QueryState(path).last_end("lco", PROPOSAL) == NIGHT_END[1]
    assert QueryState(path).last_end("lco", "OTHER") is None
    path.write_text("{not json")
    assert QueryState(path).last_end("lco", PROPOSAL) is None
    assert "unreadable" in caplog.text
