"""A threaded HTTP server on 127.0.0.1 for one test, started and stopped with ``with``."""

import http.server
import threading


class LoopbackServer:
    """Serve ``handler`` (a `BaseHTTPRequestHandler` class) on a free loopback port.

    ``url`` is its address; ``stop`` is set on exit, for handlers that stream until told.
    """

    def __init__(self, handler):
        self.stop = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
