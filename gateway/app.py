"""FastAPI app: ``POST /serving-endpoints/{name}/invocations`` routed by the endpoint's split.

The HTTP surface around one ``gateway.core.Gateway``: invocations (served in a worker thread),
the endpoint list, ``/stats`` and ``/health``, and the shutdown hook that writes queued traces
(``Gateway.close``). How a request is routed, traced and journaled is described in
``gateway.core``.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gateway.core import Gateway
from gateway.requests import REQUEST_ID_HEADER, GatewayError
from services import serving
from services.settings import Settings



def create_app(settings: Settings, **gateway_options: Any) -> FastAPI:
    """The FastAPI application around one ``Gateway``."""
    gateway = Gateway(settings, **gateway_options)
    app = FastAPI(title="Agent Ops Console gateway")
    app.state.gateway = gateway

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(name: str, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any parse failure is a bad request
            return _error(GatewayError(400, "MALFORMED_REQUEST", "The request body is not valid JSON."))
        try:
            payload, headers = await run_in_threadpool(
                functools.partial(gateway.invoke, name, body, request_id=request.headers.get(REQUEST_ID_HEADER))
            )
        except GatewayError as exc:
            return _error(exc)
        return JSONResponse(payload, headers=headers)

    @app.get("/serving-endpoints")
    def list_endpoints() -> dict[str, Any]:
        return {"endpoints": [serving.endpoint_to_json(e) for e in gateway.endpoints().values()]}

    @app.get("/stats")
    def stats(drain_s: float = 0.0) -> dict[str, Any]:
        if drain_s > 0:
            gateway.drain(min(drain_s, 120.0))
        return gateway.stats()

    @app.get("/health")
    def health() -> dict[str, Any]:
        # Always 200 while serving; "degraded" says traces were lost or could not be recorded
        # (also by an earlier process, within the journal's window), and "problems" says what.
        stats = gateway.stats()
        problems = gateway.problems(stats)
        return {"status": "degraded" if problems else "ok", "problems": problems, "traces": stats["traces"],
                "journal": stats["journal"]}

    @app.on_event("shutdown")
    def shutdown() -> None:
        gateway.close()

    return app


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse({"error_code": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers)
