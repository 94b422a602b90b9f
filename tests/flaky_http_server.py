"""``python flaky_http_server.py FOLDER PORT FAILURES``: serve FOLDER on 127.0.0.1:PORT; the first FAILURES GETs
of every path answer HTTP 503 (a transient error); missing files answer 404. ``GET /_count/PATH`` returns how
many GETs PATH received. A test server only (see tests/local_servers.py)."""

import os
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FOLDER, PORT, FAILURES = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
COUNTS: Counter = Counter()
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802 - http.server's naming
        path = os.path.join(FOLDER, self.path.lstrip("/"))
        if not os.path.isfile(path):
            return self._send(404)
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.end_headers()

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/_count/"):
            with LOCK:
                return self._send(200, str(COUNTS[self.path[len("/_count"):]]).encode())
        with LOCK:
            COUNTS[self.path] += 1
            attempt = COUNTS[self.path]
        path = os.path.join(FOLDER, self.path.lstrip("/"))
        if not os.path.isfile(path):
            return self._send(404, b"not found")
        if attempt <= FAILURES:
            return self._send(503, b"try again")
        with open(path, "rb") as f:
            self._send(200, f.read())

    def log_message(self, *args):  # quiet
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
