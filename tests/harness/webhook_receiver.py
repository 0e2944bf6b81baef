"""A loopback webhook for alert channels: every JSON body posted to it, in order, under a lock."""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running_webhook_receiver() -> Iterator[ThreadingHTTPServer]:
    """Serve on a free loopback port; ``.received`` holds the posted bodies (read under ``.lock``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.lock, server.received = threading.Lock(), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
