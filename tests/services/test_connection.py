import socket
import time

import pytest

from services._clients import check_connection
from services.errors import BackendUnavailableError
from services.settings import load_settings


def test_corrupt_local_store_is_named(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 10)
    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    with pytest.raises(BackendUnavailableError, match="not an SQLite database"):
        check_connection(settings)


def test_unreachable_mlflow_server_fails_fast_with_the_uri():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again at once: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": uri})
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=uri):
        check_connection(settings)
    assert time.monotonic() - started < 10


def test_empty_local_store_is_reachable(isolated_settings):
    check_connection(isolated_settings)
