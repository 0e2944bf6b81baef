"""Run the gateway in this process on a free loopback port (tests and benchmarks).

``python -m gateway`` is how it runs for real; this starts the same app under uvicorn in a
background thread so a caller can send HTTP requests to it and read its ``Gateway`` directly.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.core import Gateway
from services.settings import Settings


class RunningGateway:
    """A uvicorn server for ``create_app(settings, **options)`` on 127.0.0.1; use as a context manager."""

    def __init__(self, settings: Settings, *, start_timeout_s: float = 20.0, **gateway_options: Any) -> None:
        gateway_options.setdefault("seed", 11)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.app = create_app(settings, **gateway_options)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="gateway-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start on port {self.port} within {start_timeout_s} s")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Gateway:
        return self.app.state.gateway

    def stop(self) -> None:
        """Stop serving; the app's shutdown hook writes queued traces first."""
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> "RunningGateway":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
