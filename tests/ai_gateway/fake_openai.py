"""A tiny OpenAI-compatible chat server on loopback that says which model answered, or gives a fixed
answer (a judge's verdict), and keeps the requests (models named ``*-fail`` answer 500)."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(calls: Counter, requests: list | None = None, content: str | None = None) -> FastAPI:
    """``requests`` (when given) collects every request body; ``content`` replaces the "answered by" text."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body.get("model", "")
        calls[model] += 1
        if requests is not None:
            requests.append(body)
        if model.endswith("-fail"):
            return JSONResponse({"error": {"message": "upstream down", "type": "server_error"}}, status_code=500)
        return {
            "id": f"chatcmpl-{sum(calls.values())}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content or f"answered by {model}"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }

    return app


class FakeOpenAI:
    """Runs the fake server in a thread on a free loopback port."""

    def __init__(self, content: str | None = None) -> None:
        self.calls: Counter = Counter()
        self.requests: list[dict] = []
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        app = create_app(self.calls, self.requests, content)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.api_base = f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
