"""A loopback webhook for alert channels: every JSON body posted to it, in order, under a lock.

``.received`` holds the bodies it accepted and ``.paths`` their request paths (aligned);
``.attempts`` holds the path of every POST, refused ones too. Set ``.fail_next`` to answer that
many POSTs with HTTP 500 (a channel that is down); ``reset()`` forgets everything between tests.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        server = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with server.lock:
            server.attempts.append(self.path)
            fail = server.fail_next > 0
            if fail:
                server.fail_next -= 1
            else:
                server.received.append(json.loads(body or b"{}"))
                server.paths.append(self.path)
        self.send_response(500 if fail else 200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


class WebhookReceiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.lock = threading.Lock()
        self.received: list[dict] = []
        self.paths: list[str] = []
        self.attempts: list[str] = []
        self.fail_next = 0

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.paths.clear()
            self.attempts.clear()
            self.fail_next = 0


@contextlib.contextmanager
def running_webhook_receiver() -> Iterator[WebhookReceiver]:
    """Serve on a free loopback port until the block ends."""
    server = WebhookReceiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
