"""A reverse proxy in front of Streamlit that signs requests in the way Databricks Apps does.

Databricks Apps puts every request to an app behind its own proxy, which authenticates the browser
and adds the user in headers (``X-Forwarded-Email``, ``X-Forwarded-User``,
``X-Forwarded-Preferred-Username`` and, with user authorization, ``X-Forwarded-Access-Token``),
overwriting whatever the client sent under those names. ``AppsProxy`` does the same for one
configured user (run one proxy per user), for plain HTTP and for Streamlit's WebSocket
(``/_stcore/stream``): Streamlit reads ``st.context.headers`` from the WebSocket handshake, so that
is where the identity has to be.

Built on aiohttp (installed with the project); it runs its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

IDENTITY_HEADERS = ("X-Forwarded-Email", "X-Forwarded-User", "X-Forwarded-Preferred-Username",
                    "X-Forwarded-Access-Token")
# Hop-by-hop headers (RFC 9110 §7.6.1) and ones the proxy's own client sets.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "content-length"}
_WS_HANDSHAKE = {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-accept"}


@dataclass(frozen=True)
class ForwardedUser:
    """Who the proxy signs requests as."""

    email: str
    user_id: str
    preferred_username: str
    access_token: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        out = {"X-Forwarded-Email": self.email, "X-Forwarded-User": self.user_id,
               "X-Forwarded-Preferred-Username": self.preferred_username}
        if self.access_token:
            out["X-Forwarded-Access-Token"] = self.access_token
        return out


def _is_platform_header(name: str) -> bool:
    lower = name.lower()
    return lower.startswith("x-forwarded-") or lower in ("x-real-ip", "x-request-id")


class AppsProxy:
    """Forward everything to ``upstream`` (``http://host:port``) as ``user``."""

    def __init__(self, upstream: str, user: ForwardedUser) -> None:
        self.upstream = upstream.rstrip("/")
        self.user = user
        self.url = ""
        self.spoofed: list[str] = []  # identity headers a client sent and the proxy replaced
        self.websockets = 0  # WebSocket sessions relayed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: Any = None
        self._session: Any = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> "AppsProxy":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="apps-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(15) or failure:
            raise RuntimeError(f"the Apps proxy did not start: {failure[0] if failure else 'timeout'}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=15)

    async def _serve(self) -> None:
        import aiohttp
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- forwarding ---------------------------------------------------------------------------

    def _signed(self, incoming: Any, *, websocket: bool) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in incoming.items():
            lower = name.lower()
            if lower in _HOP or (websocket and lower in _WS_HANDSHAKE):
                continue
            if _is_platform_header(name):
                if name.lower() in (h.lower() for h in IDENTITY_HEADERS):
                    self.spoofed.append(name)
                continue
            headers[name] = value
        headers.update(self.user.headers())
        headers["X-Real-Ip"] = "127.0.0.1"
        headers["X-Request-Id"] = str(uuid.uuid4())
        return headers

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        headers = self._signed(request.headers, websocket=False)
        body = await request.read()
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            payload = await upstream.read()
            response = web.Response(status=upstream.status, body=payload)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP:
                    response.headers.add(name, value)
            return response

    async def _websocket(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        headers = self._signed(request.headers, websocket=True)
        target = "ws" + self.upstream[len("http"):] + request.path_qs
        # The raw protocol list goes upstream unchanged: Streamlit reads positions 2 and 3 of it (XSRF
        # token, session id) and an empty entry must keep its place.
        upstream = await self._session.ws_connect(target, headers=headers, max_msg_size=0, autoping=True)
        browser = web.WebSocketResponse(protocols=offered[:1] if offered and offered[0] else (), max_msg_size=0)
        await browser.prepare(request)
        self.websockets += 1

        async def pump(source: Any, sink: Any) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                else:
                    break

        tasks = [asyncio.ensure_future(pump(browser, upstream)), asyncio.ensure_future(pump(upstream, browser))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await upstream.close()
            await browser.close()
        return browser
