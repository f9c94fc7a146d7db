"""A fault-injecting HTTP proxy on 127.0.0.1, put in front of a real server in the tests.

``FaultProxy(upstream)`` forwards every request to ``upstream`` unchanged, except
the next ``n`` requests of the fault set with ``proxy.inject(kind, n)``:
``"500"`` answers HTTP 500, ``"drop"`` closes the connection without an answer,
``"stall"`` waits ``stall_seconds`` before forwarding (past the client's timeout).
``n=None`` means every request until ``proxy.inject(None)``.
"""

import http.server
import socket
import threading

import requests


class FaultProxy:
    def __init__(self, upstream, stall_seconds=3.0):
        self.upstream = upstream.rstrip("/")
        self.stall_seconds = stall_seconds
        self.kind, self.left = None, 0
        self.requests = 0
        self.faulted = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take()
                if fault == "drop":
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if fault == "500":
                    payload = b'{"detail": "injected server error"}'
                    self.send_response(500)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "stall":
                    proxy._stop.wait(proxy.stall_seconds)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                r = requests.request(self.command, proxy.upstream + self.path, headers=headers,
                                     data=body, allow_redirects=False, timeout=60)
                content = r.content
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding", "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                try:
                    self.wfile.write(content)
                except OSError:  # the client gave up (timed out) meanwhile
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def inject(self, kind, n=None):
        with self._lock:
            self.kind, self.left = kind, n

    def _take(self):
        with self._lock:
            self.requests += 1
            if self.kind is None:
                return None
            if self.left is not None:
                if self.left <= 0:
                    return None
                self.left -= 1
            self.faulted += 1
            return self.kind

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
