"""Faults during an evaluation run: the MLflow server is killed at a step of ``run_evaluation``,
restarted on the same store, and the caller's error, the stored runs and a retry are checked.

Like ``test_faults.py``: a real ``mlflow server`` (``RestartableServer``) on one port and one
SQLite store, killed deterministically by wrapping one client method, so the restart is the same
backend coming back. A retry reuses the request id, as the Evaluations page does after a failure.
"""

from __future__ import annotations

import time
import uuid

import pytest
from mlflow import MlflowClient
from mlflow.tracing.client import TracingClient

from services import evaluations
from services.errors import BackendUnavailableError
from services.evaluations import EvaluationRequest
from tests.hardening.mlflow_restart import count_calls, kill_at_call, refuse_connections, restartable_backend
from tests.hardening.page_session import app_page
from tests.hardening.reliability import write_record
from tests.services.test_releases import AGENT, build_agent

pytestmark = pytest.mark.slow

ROWS = tuple(
    {"inputs": {"question": f"Where is order {i}?"}, "expectations": {"expected_facts": [f"order {i}"]}}
    for i in range(6)
)
SCORERS = ("expected_facts", "required_tools")  # two assessments per row: 12 in all

# (fault point, client class, method wrapped, which call of it is the fatal one)
POINTS = [
    ("before the run is created", MlflowClient, "create_run", 1),
    ("mid-way while results are being logged", TracingClient, "log_assessment", 5),
    ("before the run is ended", MlflowClient, "set_terminated", 1),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with restartable_backend(tmp_path_factory.mktemp("eval-faults-server")) as (srv, settings):
        experiment_id = build_agent(settings)
        yield srv, settings, experiment_id


def _request(request_id: str) -> EvaluationRequest:
    return EvaluationRequest(AGENT, "2", SCORERS, rows=ROWS, dataset_label="faults.jsonl", request_id=request_id)


def _runs(settings, experiment_id: str, request_id: str) -> list:
    client = MlflowClient(settings.tracking_uri, settings.tracking_uri)
    return client.search_runs([experiment_id], filter_string=f"tags.`{evaluations.REQUEST_TAG}` = '{request_id}'",
                              order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize(("point", "cls", "method", "fatal_call"), POINTS, ids=[p[0].replace(" ", "-") for p in POINTS])
def test_server_killed_mid_evaluation_then_retry_completes_exactly_once(server, monkeypatch, point, cls, method,
                                                                        fatal_call):
    srv, settings, experiment_id = server
    if not srv.alive():
        srv.start()
    request_id = uuid.uuid4().hex
    calls = kill_at_call(monkeypatch, srv.kill, cls, method, call=fatal_call)
    began = time.monotonic()
    with pytest.raises(BackendUnavailableError) as failed:
        evaluations.run_evaluation(_request(request_id), settings)
    error_s = time.monotonic() - began
    monkeypatch.undo()
    message = str(failed.value)
    assert calls["n"] >= fatal_call and not srv.alive()
    assert "Traceback" not in message and "\n" not in message
    assert request_id in message and "Retrying is safe" in message and "exactly once" in message, message
    if method == "create_run":
        assert "Nothing was stored" in message, message
    else:
        assert "was interrupted" in message, message

    srv.start()
    # After the restart: nothing of the request reads as a result.
    stored = _runs(settings, experiment_id, request_id)
    assert [r.info.status for r in stored] == ([] if method == "create_run" else ["RUNNING"])
    if stored:
        assert stored[0].info.run_id in message
    if method == "log_assessment":
        # Reading the list marks the interrupted run; it shows as interrupted, not as running.
        listed = {s.run_id: s for s in evaluations.latest_evaluations([experiment_id], limit=50, settings=settings)}
        summary = listed[stored[0].info.run_id]
        assert (summary.status, summary.state, summary.request_id) == ("FAILED", "interrupted", request_id)
        assert [r.info.status for r in _runs(settings, experiment_id, request_id)] == ["FAILED"]
    interrupted_run = stored[0].info.run_id if stored else None

    # The retry with the same request id completes it exactly once ...
    creates = count_calls(monkeypatch, MlflowClient, "create_run")
    began = time.monotonic()
    run_id = evaluations.run_evaluation(_request(request_id), settings)
    retry_s = time.monotonic() - began
    retry_creates = len(creates)
    # ... and a second retry returns the same run without evaluating again.
    again = evaluations.run_evaluation(_request(request_id), settings)
    monkeypatch.undo()

    assert again == run_id and retry_creates == 1 and len(creates) == 1
    after = _runs(settings, experiment_id, request_id)
    statuses = {r.info.run_id: r.info.status for r in after}
    assert [s for s in statuses.values() if s == "FINISHED"] == ["FINISHED"] and statuses[run_id] == "FINISHED"
    finished = next(r for r in after if r.info.run_id == run_id)
    assert set(finished.data.metrics) >= {"expected_facts/mean", "required_tools/mean"}
    assert finished.data.tags[evaluations.REQUEST_TAG] == request_id
    assert evaluations.INTERRUPTED_TAG not in finished.data.tags
    if interrupted_run is not None:
        # The interrupted attempt stays failed and labelled; it is never a second result.
        assert statuses[interrupted_run] == "FAILED"
        old = next(r for r in after if r.info.run_id == interrupted_run)
        assert old.data.tags[evaluations.INTERRUPTED_TAG].startswith("interrupted")
    listed = [s for s in evaluations.latest_evaluations([experiment_id], limit=50, settings=settings)
              if s.request_id == request_id]
    assert [s.state for s in listed if s.state == "finished"] == ["finished"]
    assert [s.run_id for s in listed if s.state == "interrupted"] == ([interrupted_run] if interrupted_run else [])

    write_record("faults", f"evaluation: server killed {point}", {
        "error": type(failed.value).__name__,
        "error after (s)": round(error_s, 2),
        "restart (s)": round(srv.starts[-1], 1),
        "runs after restart": len(stored),
        "interrupted runs": 1 if interrupted_run else 0,
        "finished runs for the request": 1,
        "runs created on retry": retry_creates,
        "runs created on second retry": len(creates) - retry_creates,
        "retry (s)": round(retry_s, 2),
    }, detail={"message": message[:300]},
        notes="mlflow server SIGKILLed at this step of evaluations.run_evaluation (6 rows, 2 scorers), restarted "
              "on the same SQLite store; the retry reuses the request id.")


def test_the_evaluations_page_labels_an_interrupted_run_and_retries_it(isolated_settings, monkeypatch):
    """A run whose backend failed mid-way is listed as interrupted; Run again reuses the request id."""
    import json

    import streamlit as st

    from services import eval_jobs

    build_agent(isolated_settings)
    with app_page(isolated_settings, monkeypatch, "pages/evaluations.py", timeout=120) as app:
        assert not app.exception
        app.selectbox(key="eval_agent").set_value(AGENT).run()
        app.radio(key="eval_source").set_value("Upload a file").run()
        app.file_uploader(key="eval_upload").set_value(
            ("faults.json", json.dumps(list(ROWS[:3])).encode(), "application/json")).run()
        # The backend fails while the scores are stored, and the failed run cannot be closed either.
        with monkeypatch.context() as patch:
            refuse_connections(patch, (TracingClient, "log_assessment"), (MlflowClient, "log_batch"),
                               (MlflowClient, "set_tag"), (MlflowClient, "set_terminated"))
            app.button(key="eval_run").click().run()
            (job_id,) = app.session_state["eval_jobs"]
            job = eval_jobs.wait(job_id, timeout=120)
        assert job.status is eval_jobs.JobStatus.FAILED and job.interrupted, job
        request_id = job.request_id
        assert app.session_state["eval_request"]["request_id"] == request_id
        st.cache_data.clear()
        app.run()
        assert not app.exception
        errors = " ".join(e.value for e in app.error)
        assert "was interrupted" in errors and request_id in errors and "Run evaluation" in errors, errors
        assert "Traceback" not in errors
        runs = next(d.value for d in app.dataframe if "Status" in d.value.columns)
        row = runs[runs["Request"] == request_id[:8]].iloc[0]
        assert row["Status"] == "interrupted", runs
        warnings = [w.value for w in app.warning]
        assert any("interrupted and not completed since" in w for w in warnings), warnings

        # Run again: the same request id, one finished run, the interrupted one stays failed.
        app.button(key="eval_run").click().run()
        newest = app.session_state["eval_jobs"][0]
        job = eval_jobs.wait(newest, timeout=120)
        assert job.status is eval_jobs.JobStatus.SUCCEEDED and job.request_id == request_id, job
        st.cache_data.clear()
        app.run()
        assert not app.exception
        assert "eval_request" not in app.session_state  # a new click starts a new request
        runs = next(d.value for d in app.dataframe if "Status" in d.value.columns)
        mine = runs[runs["Request"] == request_id[:8]]
        assert sorted(mine["Status"]) == ["finished", "interrupted"], mine
        assert not any("not completed since" in w.value for w in app.warning)  # the retry resolved it
        client = MlflowClient(isolated_settings.tracking_uri)
        stored = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    filter_string=f"tags.`{evaluations.REQUEST_TAG}` = '{request_id}'")
        assert sorted(r.info.status for r in stored) == ["FAILED", "FINISHED"]
