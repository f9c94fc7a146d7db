"""A small local archive server that speaks the LCO science archive's ``/frames/`` API.

It serves a folder of FITS frames on 127.0.0.1 for the tests and ``pipekit demo``:
paginated JSON records built from the frames' headers, a token check, pre-signed-style
download links, and faults switched on at will (5xx, 429, slow, truncated, corrupt).
"""

import argparse
import collections
import datetime as dt
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
from ..atomic import write_bytes_atomic
from .archive_listing import (DEFAULT_LIMIT, EXACT_COUNT_SPAN, EXACT_COUNT_SPAN_NARROWED,
                              MAX_LIMIT, ServedFrame, frame_record, is_small_query, lookup,
                              new_version, paginate, paginate_cursor, public_date,
                              select_frames)
from .faults import FaultLedger, Faults, html_error_page

__all__ = ["ArchiveServer", "Faults"]

log = logging.getLogger("pipekit.testing.archive_server")

class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class ArchiveServer:
    """A threaded HTTP server on 127.0.0.1 serving a folder of frames as the archive does.

    ``GET /frames/?proposal_id=&start=&end=&reduction_level=&limit=&offset=``
    answers ``{count, count_estimated, next, previous, results}`` with the archive's
    field names, its legacy upper-case aliases and a ``version_set`` (newest first)
    carrying each version's md5; each ``url`` is a signed, expiring link on the same
    server that needs no auth header (and, like S3, refuses one). ``GET /frames/<id>/``
    returns one record.

    Like the real archive (see :mod:`pipekit.testing.archive_listing`): ``count`` is
    exact only for windows of at most 7 days (9 weeks with ``proposal_id``), otherwise
    an estimate (``count_estimated: true``) that cuts ``next`` and the results short;
    ``limit`` defaults to 100 and is clamped silently to 1000; a token sees its own
    proposals' frames and everyone's public ones, with HTTP 200 either way.

    Parameters
    ----------
    folder : str or os.PathLike
        The frames to serve, any of :data:`pipekit.lco.FRAME_SUFFIXES` (read at start; see
        :meth:`refresh`).
    token : str or None
        A token that sees every frame, sent as ``Authorization: Token <token>``.
        With neither ``token`` nor ``tokens`` the API is open and shows every frame.
    page_size : int
        Default ``limit``.
    host, port : str, int
        Loopback only: ``127.0.0.1``; port 0 picks a free port.
    proposals : dict or callable, optional
        File name (or basename) -> proposal id, or ``f(path, header)``;
        default: each frame's ``PROPID`` header.
    max_limit : int
        Largest ``limit`` honoured; larger ones are clamped silently.
    lifetime : float, optional
        Stop by itself after this many seconds (a safety net for scripts).
    link_lifetime : float
        Seconds a download link stays valid.
    bandwidth : float, optional
        Bytes per second per download, to stand in for a wide-area link
        (default: as fast as loopback goes).
    tokens : dict, optional
        Token -> the proposals it belongs to (it sees those and public frames),
        or None for a token that sees everything.
    anonymous : bool, optional
        Whether a request with no ``Authorization`` header is answered (with
        public frames only) rather than refused with 401. Default: True when
        ``tokens`` is given, False otherwise (the single-token behaviour).
    public_dates : dict or callable, optional
        File name (or basename) -> public date, or ``f(path, header)``; default:
        the observation date plus ``proprietary_days``.
    proprietary_days : float
        Proprietary period of a frame without an explicit public date.
    estimate_counts : bool
        Estimate ``count`` for windows too long to count exactly, as the archive
        does (False: always exact).
    estimate_factor : float
        An estimated count is the true one times this (too low loses frames).
    exact_count_span, exact_count_span_narrowed : datetime.timedelta
        Longest window counted exactly, without and with ``proposal_id``.

    Examples
    --------
    >>> with ArchiveServer("frames/", token="t0ken") as server:   # doctest: +SKIP
    ...     server.faults = Faults(http_5xx=3)
    ...     archive = LCOArchive(server.url, token_envvar="ARCHIVE_TOKEN")
    """

    def __init__(self, folder, token="pipekit-test-token", page_size=DEFAULT_LIMIT,
                 host="127.0.0.1", port=0, proposals=None, max_limit=MAX_LIMIT, lifetime=None,
                 link_lifetime=86400.0, bandwidth=None, tokens=None, anonymous=None,
                 public_dates=None, proprietary_days=365.0, estimate_counts=True,
                 estimate_factor=0.5, exact_count_span=EXACT_COUNT_SPAN,
                 exact_count_span_narrowed=EXACT_COUNT_SPAN_NARROWED):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"ArchiveServer listens on loopback only, not {host!r}")
        self.folder = Path(folder)
        self.token = token
        self.tokens = dict(tokens or {})
        self.anonymous = bool(tokens) if anonymous is None else bool(anonymous)
        self.page_size = int(page_size)
        self.host = host
        self.port = int(port)
        self.proposals = proposals
        self.public_dates = public_dates
        self.proprietary_days = float(proprietary_days)
        self.max_limit = int(max_limit)
        self.estimate_counts = bool(estimate_counts)
        self.estimate_factor = float(estimate_factor)
        self.exact_count_span = exact_count_span
        self.exact_count_span_narrowed = exact_count_span_narrowed
        self.lifetime = lifetime
        self.link_lifetime = float(link_lifetime)
        self.bandwidth = float(bandwidth) if bandwidth else None
        self.faults = Faults()
        #: Whether ``pagination_style=cursor`` is honoured (False: an archive without it).
        self.cursor_pagination = True
        #: Counters: requests by kind, faults injected by kind, downloads served.
        self.stats = collections.Counter()
        #: Complete download bodies sent, by file name.
        self.served = collections.Counter()
        #: Authorization headers seen on download links (should stay 0).
        self.download_auth_headers = 0
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._ledger = FaultLedger()
        self._frames, self._by_name, self._by_id, self._version_ids = [], {}, {}, 0
        self._httpd = self._thread = self._timer = None
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
        """Re-read the folder (new or changed frames).

        A frame keeps its ``id`` across refreshes; a frame whose bytes changed
        gets a new version (new md5, newest first in ``version_set``), as a
        reprocessed frame does in the archive.
        """
        md5_by_inode = {}
        old = {f.fields["basename"]: f for f in self._frames}
        next_id = max([f.fields["id"] for f in self._frames] + [0]) + 1
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
            md5 = md5_by_inode[key]
            fields = frame_fields(path, header, proposal_id=lookup(self.proposals, path, header))
            fields["public_date"] = public_date(lookup(self.public_dates, path, header),
                                                fields["observation_date"], self.proprietary_days)
            fields["observation_id"] = record_int(header.get("BLKUID"))
            before = old.get(fields["basename"])
            if before is not None:
                fields["id"] = before.fields["id"]
                versions = list(before.versions)
            else:
                fields["id"], next_id = next_id, next_id + 1
                versions = []
            if not versions or versions[0]["md5"] != md5:  # new, or reprocessed
                self._version_ids += 1
                versions.insert(0, new_version(self._version_ids, md5, path.name,
                                               fields["observation_date"] if not versions
                                               else None))
            frames.append(ServedFrame(path, stat.st_size, md5, fields, versions))
        self._frames = frames
        self._by_name = {f.path.name: f for f in frames}
        self._by_id = {f.fields["id"]: f for f in frames}
        return self

    def add_version(self, filename, content):
        """Reprocess a frame: new bytes under the same name, a new version, the same id.

        Parameters
        ----------
        filename : str
            A served frame's file name.
        content : bytes or str or os.PathLike
            The new version's bytes, or a file holding them.

        Returns
        -------
        str
            The new version's md5.
        """
        frame = self._by_name.get(filename)
        if frame is None:
            raise KeyError(f"archive server: no frame {filename!r}")
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        write_bytes_atomic(frame.path, data)
        with self._lock:
            self.refresh()
            return self._by_name[filename].md5

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
        return frame_record(frame, self._signed_link(frame.path.name))

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
            if faults.html_errors:
                body = html_error_page(code, self.responses[code][0])
                self.send_response(code)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
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

    def _send_whole(self, fh, size, bandwidth, on_last_slice):
        # Paced to ``bandwidth`` (bytes/s) when set. ``on_last_slice`` runs just before
        # the final slice goes out: a client holding every byte finds the download counted.
        # Slices of ~10 ms each when paced, sent on a schedule that holds the rate.
        step = max(16384, int(bandwidth / 100)) if bandwidth else max(size - 1, 1)
        t0 = time.perf_counter()
        offset = 0
        while offset < size:
            count = min(step, size - offset)
            if bandwidth:
                ahead = offset / bandwidth - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if offset + count >= size:
                on_last_slice()
            self.connection.sendfile(fh, offset, count)
            offset += count
        if size == 0:
            on_last_slice()

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

    def _access(self):
        """Who is asking: (answered, proposals seen); proposals None means every frame.

        As the archive's DRF TokenAuthentication: no header is an anonymous user
        (public frames), a header with an unknown token is refused with 401.
        """
        server = self.archive
        known = dict(server.tokens)
        if server.token is not None:
            known[server.token] = None
        if not known:
            return True, None
        header = self.headers.get("Authorization")
        if not header:
            if server.anonymous:
                return True, frozenset()
            server._count("api_unauthorised")
            self._send_json(401, {"detail": "Authentication credentials were not provided."},
                            {"WWW-Authenticate": "Token"})
            return False, None
        scheme, _, value = header.partition(" ")
        value = value.strip().encode()
        for token, proposals in known.items():
            if scheme == "Token" and hmac.compare_digest(value, token.encode()):
                return True, None if proposals is None else frozenset(proposals)
        server._count("api_unauthorised")
        self._send_json(401, {"detail": "Invalid token."}, {"WWW-Authenticate": "Token"})
        return False, None

    def _api(self, parts):
        server = self.archive
        server._count("api_requests")
        answered, proposals = self._access()
        if not answered:
            return
        delay, fault = server._take_faults("api", self.path)
        self._pause(delay)
        if fault in ("http_5xx", "rate_limit", "drop"):
            self._send_fault(fault)
            return
        now = dt.datetime.now(dt.timezone.utc)
        rest = parts.path[len("/frames"):].strip("/")
        if rest:
            frame = server._by_id.get(record_int(rest))
            if frame is None or not select_frames([frame], {}, {}, proposals, now):
                self._send_json(404, {"detail": "Not found."})
            else:
                self._send_json(200, server._record(frame))
            return
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=False))
        try:
            payload = self._page(params, proposals, now)
        except ValueError as exc:
            self._send_json(400, exc.args[0])
            return
        if fault == "truncate":
            self._send_fault(fault, json.dumps(payload).encode())
            return
        self._send_json(200, payload)

    def _page(self, params, proposals, now):
        server = self.archive
        bounds = {}
        for key in ("start", "end"):
            if key in params:
                bounds[key] = lco.parse_utc(params[key])
                if bounds[key] is None:
                    raise ValueError({key: ["Enter a valid date/time."]})
        with server._lock:
            frames = list(server._frames)
        selected = select_frames(frames, params, bounds, proposals, now)
        small = (not server.estimate_counts
                 or is_small_query(params, bounds, server.exact_count_span,
                                   server.exact_count_span_narrowed))

        def link(limit, position, key="offset"):
            query = dict(params, limit=limit, **{key: position})
            return f"{server.url}frames/?{urllib.parse.urlencode(query)}"

        if server.cursor_pagination and params.get("pagination_style") == "cursor":
            meta, page = paginate_cursor(selected, params, server.page_size, server.max_limit,
                                         lambda limit, cursor: link(limit, cursor, "cursor"))
        else:
            meta, page = paginate(selected, params, small, server.estimate_factor,
                                  server.faults.count_error, server.page_size,
                                  server.max_limit, link)
            if not small:
                server._count("api_count_estimated")
        return {**meta, "results": [server._record(frame) for frame in page]}

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
            if fault == "corrupt":
                data, step = bytearray(fh.read()), max(1, size // 8)
                data[::step] = bytes(b ^ 0xFF for b in data[::step])
                self.wfile.write(bytes(data))
            elif fault in ("truncate", "stall"):
                self.connection.sendfile(fh, 0, size // 2)
                if fault == "stall":
                    self._pause(server.faults.stall_seconds)
                if fault == "truncate" or server.stop_event.is_set():
                    self._hang_up()
                    return
                self.connection.sendfile(fh, size // 2)
            else:
                self._send_whole(fh, size, server.bandwidth,
                                 lambda: self._count_served(filename))
                return
        self._count_served(filename)

    def _count_served(self, filename):
        server = self.archive
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
