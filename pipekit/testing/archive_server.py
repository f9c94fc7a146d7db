"""A small local archive server that speaks the LCO science archive's ``/frames/`` API.

It serves a folder of FITS frames on 127.0.0.1 for the tests and ``pipekit demo``:
paginated JSON records built from the frames' headers, a token check, pre-signed-style
download links, and faults switched on at will (5xx, 429, slow, truncated, corrupt).
"""

import argparse
import collections
import dataclasses
import hashlib
import hmac
import http.server
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from pathlib import Path

from .. import lco
from ..archive.records import frame_fields, md5_file, read_header, record_int
from .faults import FaultLedger, Faults

__all__ = ["ArchiveServer", "Faults"]

log = logging.getLogger("pipekit.testing.archive_server")

# Lower-case field -> legacy alias, as the real archive still returns them.
_LEGACY = {
    "observation_date": "DATE_OBS",
    "observation_day": "DAY_OBS",
    "proposal_id": "PROPID",
    "instrument_id": "INSTRUME",
    "target_name": "OBJECT",
    "site_id": "SITEID",
    "telescope_id": "TELID",
    "exposure_time": "EXPTIME",
    "primary_optical_element": "FILTER",
    "configuration_type": "OBSTYPE",
    "reduction_level": "RLEVEL",
    "request_id": "REQNUM",
    "public_date": "L1PUBDAT",
}

# Query parameters that filter by exact value (the archive's field names).
_EXACT_FILTERS = ("proposal_id", "instrument_id", "site_id", "telescope_id",
                  "primary_optical_element", "configuration_type", "target_name_exact",
                  "basename_exact", "request_id", "observation_id")


@dataclasses.dataclass
class _Frame:
    path: Path
    size: int
    md5: str
    fields: dict


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class ArchiveServer:
    """A threaded HTTP server on 127.0.0.1 serving a folder of frames as the archive does.

    ``GET /frames/?proposal_id=&start=&end=&reduction_level=&limit=&offset=``
    answers ``{count, next, previous, results}`` with the archive's field
    names, its legacy upper-case aliases and a ``version_set`` carrying the
    md5; each ``url`` is a signed, expiring link on the same server that
    needs no auth header (and, like S3, refuses one). ``GET /frames/<id>/``
    returns one record.

    Parameters
    ----------
    folder : str or os.PathLike
        The frames to serve, any of :data:`pipekit.lco.FRAME_SUFFIXES` (read at start; see
        :meth:`refresh`).
    token : str or None
        Required as ``Authorization: Token <token>`` on the API; None leaves
        the API open.
    page_size : int
        Default ``limit``.
    host : str
        Loopback only: ``127.0.0.1``.
    port : int
        0 picks a free port.
    proposals : dict or callable, optional
        File name (or basename) -> proposal id, or ``f(path, header)``;
        default: each frame's ``PROPID`` header.
    max_limit : int
        Largest ``limit`` honoured (the archive caps it too).
    lifetime : float, optional
        Stop by itself after this many seconds (a safety net for scripts).
    link_lifetime : float
        Seconds a download link stays valid.
    bandwidth : float, optional
        Bytes per second per download, to stand in for a wide-area link
        (default: as fast as loopback goes).

    Examples
    --------
    >>> with ArchiveServer("frames/", token="t0ken") as server:   # doctest: +SKIP
    ...     server.faults = Faults(http_5xx=3)
    ...     archive = LCOArchive(server.url, token_envvar="ARCHIVE_TOKEN")
    """

    def __init__(self, folder, token="pipekit-test-token", page_size=100, host="127.0.0.1",
                 port=0, proposals=None, max_limit=1000, lifetime=None, link_lifetime=86400.0,
                 bandwidth=None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"ArchiveServer listens on loopback only, not {host!r}")
        self.folder = Path(folder)
        self.token = token
        self.page_size = int(page_size)
        self.host = host
        self.port = int(port)
        self.proposals = proposals
        self.max_limit = int(max_limit)
        self.lifetime = lifetime
        self.link_lifetime = float(link_lifetime)
        self.bandwidth = float(bandwidth) if bandwidth else None
        self.faults = Faults()
        #: Counters: requests by kind, faults injected by kind, downloads served.
        self.stats = collections.Counter()
        #: Complete download bodies sent, by file name.
        self.served = collections.Counter()
        #: Authorization headers seen on download links (should stay 0).
        self.download_auth_headers = 0
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._ledger = FaultLedger()
        self._frames = []
        self._by_name = {}
        self._by_id = {}
        self._httpd = None
        self._thread = None
        self._timer = None
        self.stop_event = threading.Event()
        self.refresh()

    # -- lifecycle --------------------------------------------------------

    @property
    def url(self):
        """The API root, e.g. ``http://127.0.0.1:PORT/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        """Start serving in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self.stop_event.clear()
        server_cls = _HTTPServer
        if ":" in self.host:
            server_cls = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        self._httpd = server_cls((self.host, self.port), _Handler)
        self._httpd.archive = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"archive-server-{self.port}", daemon=True)
        self._thread.start()
        if self.lifetime:
            self._timer = threading.Timer(self.lifetime, self.stop)
            self._timer.daemon = True
            self._timer.start()
        log.info("archive server on %s serving %d frames from %s", self.url, len(self._frames),
                 self.folder)
        return self

    def stop(self):
        """Stop serving and close the socket (stalled responses are cut)."""
        self.stop_event.set()
        httpd, self._httpd = self._httpd, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def wait(self):
        """Block until the server stops (``lifetime`` or :meth:`stop`)."""
        while self._httpd is not None and not self.stop_event.wait(0.5):
            pass

    # -- frames -----------------------------------------------------------

    def refresh(self):
        """Re-read the folder (new or changed frames)."""
        md5_by_inode = {}
        frames = []
        for path in lco.list_frames(self.folder):
            try:
                header = read_header(path)
            except Exception as exc:  # an unreadable file is simply not served
                log.warning("archive server: skipping %s (%s)", path, exc)
                continue
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if key not in md5_by_inode:
                md5_by_inode[key] = md5_file(path)
            fields = frame_fields(path, header, proposal_id=self._proposal_for(path, header))
            fields["public_date"] = fields["observation_date"]
            fields["observation_id"] = record_int(header.get("BLKUID"))
            frames.append(_Frame(path, stat.st_size, md5_by_inode[key], fields))
        for number, frame in enumerate(frames, start=1):
            frame.fields["id"] = number
        self._frames = frames
        self._by_name = {f.path.name: f for f in frames}
        self._by_id = {f.fields["id"]: f for f in frames}
        return self

    def _proposal_for(self, path, header):
        if callable(self.proposals):
            return self.proposals(path, header)
        if isinstance(self.proposals, dict):
            name = path.name
            return self.proposals.get(name) or self.proposals.get(name.split(".")[0])
        return None

    @property
    def frames(self):
        """The served frames' records (without download links)."""
        return [dict(f.fields, md5=f.md5, size=f.size) for f in self._frames]

    def _signed_link(self, filename):
        expires = int(time.time() + self.link_lifetime)
        signature = self._sign(filename, expires)
        query = urllib.parse.urlencode({"Expires": expires, "Signature": signature})
        return f"{self.url}download/{urllib.parse.quote(filename)}?{query}"

    def _sign(self, filename, expires):
        message = f"{filename}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _record(self, frame):
        fields = frame.fields
        link = self._signed_link(frame.path.name)
        extension = lco.frame_suffix(frame.path.name)
        record = {
            "id": fields["id"],
            "basename": fields["basename"],
            "area": None,
            "related_frames": [],
            "version_set": [{
                "id": fields["id"],
                "created": fields["observation_date"],
                "key": frame.md5[:16],
                "md5": frame.md5,
                "extension": extension,
                "url": link,
            }],
            "filename": frame.path.name,
            "url": link,
        }
        for name in ("reduction_level", "observation_day", "observation_date", "proposal_id",
                     "instrument_id", "target_name", "site_id", "telescope_id", "exposure_time",
                     "primary_optical_element", "public_date", "configuration_type",
                     "observation_id", "request_id"):
            record[name] = fields.get(name)
        for name, alias in _LEGACY.items():
            record[alias] = fields.get(name)
        return record

    def _count(self, key):
        with self._lock:
            self.stats[key] += 1

    def _take_faults(self, kind, target):
        """The faults for this request: (delay seconds, replacing fault or None)."""
        with self._lock:
            return self._ledger.take(self.faults, kind, target, self.stats)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pipekit-archive/1.0"
    timeout = 60
    # Headers and body leave in separate writes: without this, Nagle's
    # algorithm and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    # -- helpers ----------------------------------------------------------

    @property
    def archive(self):
        return self.server.archive

    def _send_json(self, code, payload, extra_headers=None):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_fault(self, fault, body=None):
        faults = self.archive.faults
        if fault == "drop":
            self._hang_up()
            return True
        if fault == "http_5xx":
            code = (500, 502, 503, 504)[self.archive.stats["fault_http_5xx"] % 4]
            self._send_json(code, {"detail": "injected server error"})
            return True
        if fault == "rate_limit":
            retry = faults.retry_after
            text = str(int(retry)) if float(retry).is_integer() else f"{retry:g}"
            self._send_json(429, {"detail": f"Request was throttled. Expected available in "
                                            f"{text} seconds."},
                            {"Retry-After": text})
            return True
        if fault == "truncate" and body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self._hang_up()
            return True
        return False

    def _hang_up(self):
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _send_paced(self, fh, size, bandwidth):
        # Slices of ~10 ms each, sent on a schedule that holds the rate.
        step = max(16384, int(bandwidth / 100))
        t0 = time.perf_counter()
        offset = 0
        while offset < size:
            count = min(step, size - offset)
            self.connection.sendfile(fh, offset, count)
            offset += count
            ahead = offset / bandwidth - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def _pause(self, seconds):
        if seconds > 0:
            self.archive.stop_event.wait(seconds)

    # -- routing ----------------------------------------------------------

    def do_GET(self):
        try:
            parts = urllib.parse.urlsplit(self.path)
            path = parts.path
            if path == "/":
                self._send_json(200, {"frames": f"{self.archive.url}frames/"})
            elif path.rstrip("/") == "/frames" or path.startswith("/frames/"):
                self._api(parts)
            elif path.startswith("/download/"):
                self._download(parts)
            else:
                self._send_json(404, {"detail": "Not found."})
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as exc:
            log.debug("client went away: %s", exc)
            self.close_connection = True

    def _authorised(self):
        token = self.archive.token
        if token is None:
            return True
        header = self.headers.get("Authorization")
        scheme, _, value = (header or "").partition(" ")
        if scheme != "Token" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            self.archive._count("api_unauthorised")
        if not header:
            self._send_json(401, {"detail": "Authentication credentials were not provided."},
                            {"WWW-Authenticate": "Token"})
            return False
        scheme, _, value = header.partition(" ")
        if scheme != "Token" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            self._send_json(401, {"detail": "Invalid token."}, {"WWW-Authenticate": "Token"})
            return False
        return True

    def _api(self, parts):
        server = self.archive
        server._count("api_requests")
        if not self._authorised():
            return
        delay, fault = server._take_faults("api", self.path)
        self._pause(delay)
        if fault in ("http_5xx", "rate_limit", "drop"):
            self._send_fault(fault)
            return
        rest = parts.path[len("/frames"):].strip("/")
        if rest:
            frame = server._by_id.get(record_int(rest))
            if frame is None:
                self._send_json(404, {"detail": "Not found."})
            else:
                self._send_json(200, server._record(frame))
            return
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=False))
        try:
            payload = self._page(params)
        except ValueError as exc:
            self._send_json(400, exc.args[0])
            return
        if fault == "truncate":
            self._send_fault(fault, json.dumps(payload).encode())
            return
        self._send_json(200, payload)

    def _page(self, params):
        server = self.archive
        bounds = {}
        for key in ("start", "end"):
            if key in params:
                bounds[key] = lco.parse_utc(params[key])
                if bounds[key] is None:
                    raise ValueError({key: ["Enter a valid date/time."]})
        try:
            limit = min(int(params.get("limit", server.page_size)), server.max_limit)
            offset = max(int(params.get("offset", 0)), 0)
        except ValueError:
            raise ValueError({"limit": ["A valid integer is required."]}) from None
        limit = limit if limit > 0 else server.page_size
        level = params.get("reduction_level", params.get("RLEVEL"))
        if level not in (None, "") and record_int(level) is None:
            raise ValueError({"reduction_level": ["Enter a number."]})

        selected = []
        for frame in server._frames:
            f = frame.fields
            when = lco.parse_utc(f["observation_date"])
            if "start" in bounds and (when is None or when < bounds["start"]):
                continue
            if "end" in bounds and (when is None or when > bounds["end"]):
                continue
            if level not in (None, "") and f["reduction_level"] != record_int(level):
                continue
            if not all(str(f.get(key.replace("_exact", ""))) == params[key]
                       for key in _EXACT_FILTERS if key in params):
                continue
            if "basename" in params and params["basename"] not in f["basename"]:
                continue
            if "target_name" in params and params["target_name"].lower() not in str(
                    f.get("target_name") or "").lower():
                continue
            selected.append(frame)
        # The archive's default ordering: newest observation first.
        selected.sort(key=lambda fr: (fr.fields["observation_date"] or "", fr.fields["id"]),
                      reverse=True)
        page = selected[offset: offset + limit]

        def link(new_offset):
            query = dict(params, limit=limit, offset=new_offset)
            return f"{server.url}frames/?{urllib.parse.urlencode(query)}"

        return {
            "count": max(0, len(selected) + server.faults.count_error),
            "next": link(offset + limit) if offset + limit < len(selected) else None,
            "previous": link(max(0, offset - limit)) if offset > 0 else None,
            "results": [server._record(frame) for frame in page],
        }

    def _download(self, parts):
        server = self.archive
        server._count("download_requests")
        if self.headers.get("Authorization"):
            # A pre-signed S3 link refuses a second authentication mechanism.
            with server._lock:
                server.download_auth_headers += 1
            self._send_json(400, {"detail": "Only one auth mechanism allowed; the download "
                                            "link is signed, send no Authorization header"})
            return
        filename = urllib.parse.unquote(parts.path[len("/download/"):])
        params = dict(urllib.parse.parse_qsl(parts.query))
        frame = server._by_name.get(filename)
        try:
            expires = int(params.get("Expires", "0"))
        except ValueError:
            expires = 0
        signature = params.get("Signature", "")
        if frame is None:
            self._send_json(404, {"detail": "Not found."})
            return
        if (expires < time.time()
                or not hmac.compare_digest(signature, server._sign(filename, expires))):
            self._send_json(403, {"detail": "Request has expired or the signature does "
                                            "not match"})
            return
        delay, fault = server._take_faults("download", parts.path)
        self._pause(delay)
        if fault in ("http_5xx", "rate_limit", "drop"):
            self._send_fault(fault)
            return
        size = frame.size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("ETag", f'"{frame.md5}"')
        self.end_headers()
        with open(frame.path, "rb") as fh:
            if fault == "truncate":
                self.connection.sendfile(fh, 0, size // 2)
                self._hang_up()
                return
            if fault == "corrupt":
                data = bytearray(fh.read())
                for i in range(0, len(data), max(1, len(data) // 8)):
                    data[i] ^= 0xFF
                self.wfile.write(bytes(data))
            elif fault == "stall":
                self.connection.sendfile(fh, 0, size // 2)
                self._pause(server.faults.stall_seconds)
                if server.stop_event.is_set():
                    self._hang_up()
                    return
                self.connection.sendfile(fh, size // 2)
            elif server.bandwidth:
                self._send_paced(fh, size, server.bandwidth)
            else:
                self.connection.sendfile(fh, 0)
        with server._lock:
            server.stats["downloads_served"] += 1
            server.served[filename] += 1


def main(argv=None):
    """Serve a folder of frames: ``python -m pipekit.testing.archive_server FOLDER --port 8001``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-envvar", default=None,
                        help="environment variable holding the token to require")
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--lifetime", type=float, default=3600.0,
                        help="stop by itself after this many seconds (default 1 h)")
    parser.add_argument("--bandwidth-mb", type=float, default=None,
                        help="MB/s per download, to stand in for a wide-area link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    token = os.environ.get(args.token_envvar) if args.token_envvar else None
    bandwidth = args.bandwidth_mb * 1e6 if args.bandwidth_mb else None
    server = ArchiveServer(args.folder, token=token, page_size=args.page_size, port=args.port,
                           lifetime=args.lifetime, bandwidth=bandwidth)
    with server:
        try:
            server.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
