"""The Apps proxy signs HTTP and WebSocket requests as its user and drops what the client claimed."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from tests.harness.apps_proxy import AppsProxy, ForwardedUser

ANA = ForwardedUser("ana@acme.example", "1001@42", "ana", access_token="ana-token")
SPOOF = {"X-Forwarded-Email": "boss@acme.example", "x-forwarded-access-token": "stolen", "X-Real-Ip": "6.6.6.6"}


@pytest.fixture
def upstream():
    """A small aiohttp server: GET /echo returns the headers it got; /_stcore/stream echoes frames."""
    from aiohttp import web

    seen: dict = {}
    ready = threading.Event()
    holder: dict = {}

    async def echo(request):
        return web.json_response(dict(request.headers), headers={"X-Upstream": "yes"})

    async def stream(request):
        seen["ws_headers"] = dict(request.headers)
        ws = web.WebSocketResponse(protocols=("streamlit",))
        await ws.prepare(request)
        async for message in ws:
            await ws.send_bytes(b"echo:" + message.data)
        return ws

    def run():
        loop = asyncio.new_event_loop()
        holder["loop"] = loop
        app = web.Application()
        app.router.add_get("/echo", echo)
        app.router.add_get("/_stcore/stream", stream)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        loop.run_until_complete(web.SockSite(runner, sock).start())
        holder["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield holder["url"], seen
    holder["loop"].call_soon_threadsafe(holder["loop"].stop)
    thread.join(10)


def test_http_requests_carry_the_configured_user_not_the_clients_claims(upstream):
    import httpx

    url, _ = upstream
    proxy = AppsProxy(url, ANA).start()
    try:
        response = httpx.get(f"{proxy.url}/echo", headers=SPOOF)
        got = {k.lower(): v for k, v in response.json().items()}
        assert response.headers["X-Upstream"] == "yes"
        assert got["x-forwarded-email"] == "ana@acme.example"
        assert got["x-forwarded-user"] == "1001@42"
        assert got["x-forwarded-preferred-username"] == "ana"
        assert got["x-forwarded-access-token"] == "ana-token"
        assert got["x-real-ip"] == "127.0.0.1"
        assert sorted(h.lower() for h in proxy.spoofed) == ["x-forwarded-access-token", "x-forwarded-email"]
    finally:
        proxy.stop()


def test_websocket_handshake_is_signed_and_frames_flow_both_ways(upstream):
    import aiohttp

    url, seen = upstream
    proxy = AppsProxy(url, ForwardedUser("bo@acme.example", "1002@42", "bo")).start()

    async def talk():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{proxy.url}/_stcore/stream", protocols=("streamlit", "xsrf-1", "sess-9"),
                                          headers={"X-Forwarded-Email": "boss@acme.example"}) as ws:
                await ws.send_bytes(b"hello")
                message = await ws.receive(timeout=10)
                return ws.protocol, message.data

    try:
        protocol, data = asyncio.run(talk())
    finally:
        proxy.stop()
    assert (protocol, data) == ("streamlit", b"echo:hello")
    headers = {k.lower(): v for k, v in seen["ws_headers"].items()}
    assert headers["x-forwarded-email"] == "bo@acme.example"
    assert "x-forwarded-access-token" not in headers  # this user has no token: none is invented
    # Streamlit reads the XSRF token and session id by position from this header.
    assert [p.strip() for p in headers["sec-websocket-protocol"].split(",")] == ["streamlit", "xsrf-1", "sess-9"]
    assert proxy.websockets == 1
