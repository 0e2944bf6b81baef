"""Run the local serving gateway: ``python -m gateway``."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

import uvicorn

from gateway.app import create_app
from services._clients import configure_mlflow


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = configure_mlflow()
    address = urlparse(settings.gateway_url)
    app = create_app(settings)
    print(f"Gateway serving {settings.gateway_url}/serving-endpoints/<name>/invocations", flush=True)
    uvicorn.run(app, host=address.hostname or "127.0.0.1", port=address.port or 8765, log_level="warning")


if __name__ == "__main__":
    main()
