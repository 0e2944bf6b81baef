"""Faults during a promotion: the MLflow server is killed at each step, restarted on the same store,
and the caller's error, the registry, the audit trail and a retry are checked.

The server is a real ``mlflow server`` process (the command of ``tests/harness/mlflow_server.py``)
kept on one port and one SQLite store, so a restart is the same backend coming back. The kill is
injected deterministically by wrapping one ``MlflowClient`` method: the process group gets SIGKILL
right before (or right after) that call reaches the server.
"""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient

from services import audit, releases
from services.errors import BackendUnavailableError
from services.promotion import PromotionRequest, Seen
from services.releases import Drift
from tests.hardening.mlflow_restart import (
    count_calls,
    expect_backend_lost,
    kill_at_call,
    refuse_connections,
    restartable_backend,
)
from tests.hardening.page_session import app_page
from tests.hardening.reliability import write_record
from tests.services.test_releases import AGENT, ALICE, build_agent

pytestmark = pytest.mark.slow

# (fault point, client method wrapped, kill before or after the call reaches the server)
POINTS = [
    ("before the audit intent", "create_run", "before"),
    ("before the alias is set", "set_registered_model_alias", "before"),
    ("after the alias is set", "set_registered_model_alias", "after"),
    ("before the audit record is completed", "log_batch", "before"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with restartable_backend(tmp_path_factory.mktemp("faults-server")) as (srv, settings):
        build_agent(settings)
        yield srv, settings


def _holder(settings) -> str | None:
    held = MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(AGENT).aliases.get("champion")
    return None if held is None else str(held)


def _records(settings, request_id: str) -> list[audit.Change]:
    return [c for c in audit.alias_changes(AGENT, "champion", settings=settings) if c.request_id == request_id]


@pytest.mark.parametrize(("point", "method", "when"), POINTS, ids=[p[0].replace(" ", "-") for p in POINTS])
def test_server_killed_mid_promotion_then_retry_completes_exactly_once(server, monkeypatch, point, method, when):
    srv, settings = server
    if not srv.alive():
        srv.start()
    before = _holder(settings)
    target = "2" if before != "2" else "3"
    completed_before = releases.alias_history(AGENT, "champion", settings)
    request_id = uuid.uuid4().hex

    calls = kill_at_call(monkeypatch, srv.kill, MlflowClient, method, when=when)
    request = PromotionRequest(AGENT, "champion", target, reason=f"fault {point}", seen=Seen(before),
                               request_id=request_id)
    error, message, error_s = expect_backend_lost(lambda: releases.promote(request, ALICE, settings=settings), srv,
                                                  calls, monkeypatch)
    if method == "create_run":
        # Nothing was written or moved yet, and the message says so.
        assert "Nothing changed" in message and f"still points to v{before}" in message, message
    else:
        assert "interrupted" in message and request_id in message and "retry" in message, message

    srv.start()
    # After the restart: the registry and the trail agree on what happened.
    held = _holder(settings)
    records = _records(settings, request_id)
    state = releases.alias_state(AGENT, "champion", settings)
    assert releases.alias_history(AGENT, "champion", settings) == completed_before  # no completed change yet
    if method == "create_run":
        assert held == before and records == []
        assert state.drift is Drift.RECORDED or state.drift is Drift.UNRECORDED
    else:
        assert [r.status for r in records] == [audit.ChangeStatus.INTERRUPTED]
        assert state.drift is Drift.INTERRUPTED and state.interrupted == records[0]
        assert state.previous_version is None  # no rollback offered while the outcome is unknown
        assert held == (target if when == "after" or method == "log_batch" else before)
        assert records[0].from_version == before and records[0].requested_version == target

    # The retry of the same confirmation completes it exactly once.
    alias_calls = count_calls(monkeypatch, MlflowClient, "set_registered_model_alias")
    began = time.monotonic()
    result = releases.promote(request, ALICE, settings=settings)
    retry_s = time.monotonic() - began
    again = releases.promote(request, ALICE, settings=settings)
    monkeypatch.undo()

    assert _holder(settings) == target
    records = _records(settings, request_id)
    assert len(records) == 1 and records[0].completed
    assert records[0].from_version == before and records[0].to_version == target
    assert result.change == records[0] and again.change == records[0]
    assert "already carried out" in " ".join(again.messages)
    history = releases.alias_history(AGENT, "champion", settings)
    assert history[1:] == completed_before and history[0] == records[0]
    assert releases.alias_state(AGENT, "champion", settings).drift is Drift.RECORDED
    # The alias moves at most once per request: not again when it already had moved.
    expected_alias_calls = 0 if (when == "after" or method == "log_batch") else 1
    assert len(alias_calls) == expected_alias_calls

    write_record("faults", f"promotion: server killed {point}", {
        "error": type(error).__name__,
        "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1),
        "alias after restart": f"v{held}" if held else "none",
        "records for the request": len(records),
        "alias calls on retry": len(alias_calls),
        "retry (s)": round(retry_s, 2),
        "trail agrees": "yes",
    }, detail={"message": message[:300]},
        notes="mlflow server SIGKILLed at this step of releases.promote, restarted on the same SQLite store; "
              "the retry reuses the confirmation's request id.")


def test_the_versions_page_says_a_promotion_was_interrupted(isolated_settings, monkeypatch):
    """The history tab shows the interrupted attempt as such and offers no rollback until it is resolved."""
    build_agent(isolated_settings)
    with monkeypatch.context() as patch:
        refuse_connections(patch, (MlflowClient, "set_registered_model_alias"))
        with pytest.raises(BackendUnavailableError):
            releases.promote(PromotionRequest(AGENT, "champion", "2", request_id="page-req"), ALICE, settings=isolated_settings)
    with app_page(isolated_settings, monkeypatch, "pages/versions.py", timeout=60) as app:
        assert not app.exception
        assert any("was interrupted" in w.value and "v2" in w.value for w in app.warning), [w.value for w in app.warning]
        history = next(d.value for d in app.dataframe if "Audit run" in d.value.columns)
        row = history.iloc[0]
        assert (row["Status"], row["To"], row["From"]) == ("interrupted", "v2 (requested)", "v1")
        states = next(d.value for d in app.dataframe if "Rollback to" in d.value.columns)
        assert "interrupted" in states.set_index("Alias").loc["champion", "Audit"]
        assert not [b for b in app.button if b.key == "versions.rollback"]
