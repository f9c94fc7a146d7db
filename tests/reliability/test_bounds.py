"""Servers that never finish: every conversation ends in bounded time with a clear error.

Real loopback servers answer listings whose ``next`` never becomes null (empty pages),
whose ``next`` loops back with a changing query parameter, whose pages never end, that
trickle; a frame body that never ends; a TOM whose ``next`` points at itself. Each test
asserts the error names the cause, how many requests were made, how long it took, and
that no partial file is left.
"""

import http.server
import json
import time
import urllib.parse

import pytest

from _loopback import LoopbackServer
from pipekit.archive import ArchiveRecord, LCOArchive
from pipekit.errors import ArchiveError, TOMError
from pipekit.tom import TOMClient


class LoopServer(LoopbackServer):
    """Answers GETs with ``handler(server, path, query) -> (code, headers, body)``.

    ``body`` may be bytes or an iterator of bytes (written until the client leaves).
    """

    def __init__(self, answer):
        self.answer = answer
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                code, headers, body = server.answer(server, parts.path, query)
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()  # HTTP/1.0, no length: the body ends when we close
                try:
                    for chunk in body:
                        if server.stop.is_set():
                            return
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client stopped reading
                    return

        super().__init__(Handler)


def _json(payload):
    return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def _frame(i):
    return {"id": i, "basename": f"f{i}-e91", "filename": f"f{i}-e91.fits.fz",
            "url": f"http://127.0.0.1:1/f{i}", "observation_date": "2024-05-01T01:00:00"}


def _query(archive):
    t0 = time.monotonic()
    with pytest.raises(ArchiveError) as caught:
        archive.query("P1", "2024-05-01", "2024-05-02")
    return str(caught.value), time.monotonic() - t0


# -- archive listings ------------------------------------------------------------


def test_archive_next_never_null_with_empty_pages_stops(tmp_path):
    def answer(server, path, query):
        offset = int(query.get("offset", 0))
        return _json({"count": 5, "next": f"{server.url}{path}?offset={offset + 100}",
                      "results": []})

    with LoopServer(answer) as server:
        message, seconds = _query(LCOArchive(server.url, retries=0))
    assert "listed 0 frames of the 5" in message and "incomplete" in message
    assert server.requests <= 3 and seconds < 30


def test_archive_next_looping_with_a_changing_query_parameter_stops(tmp_path):
    def answer(server, path, query):
        return _json({"count": None, "results": [_frame(1), _frame(2)],
                      "next": f"{server.url}{path}?offset=0&nonce={server.requests}"})

    with LoopServer(answer) as server:
        message, seconds = _query(LCOArchive(server.url, retries=0))
    assert "repeats only frames already read" in message
    assert server.requests <= 3 and seconds < 30


def test_archive_pages_that_never_end_stop_at_max_pages(tmp_path):
    def answer(server, path, query):  # always new frames, never a count: no natural end
        offset = int(query.get("offset", 0))
        return _json({"results": [_frame(offset + i) for i in range(int(query["limit"]))],
                      "next": f"{server.url}{path}?offset={offset + 2}"})

    with LoopServer(answer) as server:
        archive = LCOArchive(server.url, retries=0, max_pages=20)
        with pytest.raises(ArchiveError, match="max_pages = 20"):
            archive.query("P1", "2024-05-01", "2024-05-02", limit=2)
    assert server.requests == 20


def test_archive_listing_past_its_overall_time_bound_stops(tmp_path):
    def answer(server, path, query):
        time.sleep(0.2)
        offset = int(query.get("offset", 0))
        return _json({"count": 10 ** 6, "results": [_frame(offset), _frame(offset + 1)]})

    with LoopServer(answer) as server:
        archive = LCOArchive(server.url, retries=0, max_seconds=1.5)
        t0 = time.monotonic()
        with pytest.raises(ArchiveError) as caught:
            archive.query("P1", "2024-05-01", "2024-05-02", limit=2)
    assert "overall time bound (max_seconds)" in str(caught.value)
    assert "pages read" in str(caught.value)
    assert time.monotonic() - t0 < 5


# -- downloads --------------------------------------------------------------------


def _forever(piece=b"x" * 65536):
    while True:
        yield piece


def _record(server, size=None):
    return ArchiveRecord(id=1, basename="f1-e91", filename="f1-e91.fits.fz",
                         url=f"{server.url}/f1", size=size)


def _download_fails(archive, record, folder):
    t0 = time.monotonic()
    with pytest.raises(ArchiveError) as caught:
        archive.download(record, folder)
    assert list(folder.iterdir()) == [], "a partial file is left"
    return str(caught.value), time.monotonic() - t0


def test_a_frame_body_that_never_ends_stops_at_the_declared_size(tmp_path):
    with LoopServer(lambda s, p, q: (200, {}, _forever())) as server:
        record = ArchiveRecord.from_api({"id": 1, "basename": "f1-e91", "url": f"{server.url}/f1",
                                         "version_set": [{"extension": ".fits.fz",
                                                          "size": 80_000}]})
        assert record.size == 80_000
        message, seconds = _download_fails(LCOArchive(server.url, retries=2), record, tmp_path)
    assert "past the 80000 bytes its archive record declares" in message
    assert "removed the partial file" in message
    assert server.requests == 1 and seconds < 30  # not retried: a broken body is not transient


def test_a_frame_of_undeclared_size_stops_at_max_frame_bytes(tmp_path):
    with LoopServer(lambda s, p, q: (200, {}, _forever())) as server:
        archive = LCOArchive(server.url, retries=0, max_frame_bytes=3_000_000)
        message, seconds = _download_fails(archive, _record(server), tmp_path)
    assert "past the 3000000 bytes" in message and "max_frame_bytes" in message
    assert seconds < 30


def test_a_trickling_frame_body_stops_at_the_overall_time_bound(tmp_path):
    def trickle():
        while True:
            time.sleep(0.05)
            yield b"x"

    with LoopServer(lambda s, p, q: (200, {}, trickle())) as server:
        archive = LCOArchive(server.url, retries=3, max_seconds=1.0)
        message, seconds = _download_fails(archive, _record(server, size=10 ** 9), tmp_path)
    assert "overall time bound (max_seconds)" in message and "bytes received" in message
    assert seconds < 5 and server.requests == 1


# -- TOM listings -------------------------------------------------------------------


def _tom_query(server, **kwargs):
    client = TOMClient(server.url, retries=0, **kwargs)
    t0 = time.monotonic()
    with pytest.raises(TOMError) as caught:
        client.find_target("T1")
    return str(caught.value), time.monotonic() - t0


def test_tom_next_pointing_at_itself_stops():
    def answer(server, path, query):
        return _json({"count": 1, "next": f"{server.url}{path}?name=T1",
                      "results": [{"id": 1, "name": "T0"}]})

    with LoopServer(answer) as server:
        message, seconds = _tom_query(server)
    assert "points at a page already read" in message
    assert server.requests == 1 and seconds < 10  # the loop is seen before asking again


def test_tom_pages_repeating_with_a_changing_parameter_stop():
    def answer(server, path, query):
        return _json({"next": f"{server.url}{path}?name=T1&page={server.requests + 1}",
                      "results": [{"id": 1, "name": "T0"}]})

    with LoopServer(answer) as server:
        message, _ = _tom_query(server)
    assert "repeats only results already read" in message and server.requests == 2


def test_tom_empty_pages_with_a_next_link_stop():
    def answer(server, path, query):
        return _json({"next": f"{server.url}{path}?page={server.requests + 1}", "results": []})

    with LoopServer(answer) as server:
        message, _ = _tom_query(server)
    assert "empty page with a 'next' link" in message and server.requests == 1


def test_tom_pages_that_never_end_stop_at_max_pages():
    def answer(server, path, query):
        n = server.requests
        return _json({"next": f"{server.url}{path}?page={n + 1}",
                      "results": [{"id": n, "name": f"T{n}0"}]})

    with LoopServer(answer) as server:
        message, _ = _tom_query(server, max_pages=15)
    assert "stopped after 15 pages" in message and server.requests == 15


def test_the_time_bound_is_set_in_the_config_files(tmp_path):
    from pipekit.archive import archive_from_config
    from pipekit.config import load_tom_config

    archive = archive_from_config({"name": "lco", "url": "http://127.0.0.1:1/",
                                   "max_seconds": 42})
    assert archive.max_seconds == 42
    path = tmp_path / "tom_config.yaml"
    path.write_text("url: http://127.0.0.1:1\ntoken_envvar: PK_BOUNDS_TOKEN\nmax_seconds: 17\n")
    assert TOMClient.from_config(load_tom_config(path)).max_seconds == 17
