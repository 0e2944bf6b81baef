"""A review queue sent to the Databricks Review App as a labeling session, with the real
``mlflow.genai.labeling`` / databricks-agents client against the local harness.

The queue and its traces live in a local MLflow store (the app's own client is pointed there);
the labeling calls run in a child process against the harness, which records every request.
"""

from __future__ import annotations

import pytest
from databricks.sdk.service import iam

from services import review_queue as rq
from services.errors import BackendUnavailableError, NotFoundError, PermissionDeniedError, ValidationError
from services.identity import Identity, IdentitySource
from tests.harness.agents_api import ReviewAppApi, api_calls, api_tokens, app_settings
from tests.harness.databricks import DatabricksHarness
from tests.services.test_feedback import make_traces
from tests.services.test_serving_split import _local_client_factory

pytestmark = pytest.mark.slow  # a session is made in a child process that imports databricks-agents (~5 s)

APP_TOKEN = "app-token"


@pytest.fixture
def store(isolated_settings):
    client, experiment_id, ids = make_traces(isolated_settings, 3)
    spec = rq.QueueSpec("angry customers", rq.QueueSource.HAND_PICKED, (), trace_ids=tuple(ids))
    queue = rq.create_queue(spec, "owner@example.com", isolated_settings)
    return client, experiment_id, ids, queue


@pytest.fixture
def harness(monkeypatch, store):
    _, experiment_id, _, _ = store
    running = DatabricksHarness().start()
    api = ReviewAppApi(running, experiments={experiment_id: "/Users/owner/support-agent"}).install()
    monkeypatch.setenv("DATABRICKS_TOKEN", APP_TOKEN)
    monkeypatch.delenv("AGENTOPS_USER_AUTHORIZATION", raising=False)
    # Queues are read and written through the app's MLflow client: here the local store.
    local = _local_client_factory()
    for module in ("queues", "items", "conversation_view", "review_app"):
        monkeypatch.setattr(f"services.review_queue.{module}.mlflow_client", local)
    running.api = api
    yield running
    running.stop()


@pytest.fixture
def dbx(harness, isolated_settings):
    return app_settings(harness, isolated_settings.data_dir)


def test_a_queue_becomes_a_labeling_session_over_the_same_traces_once(harness, dbx, store):
    _, experiment_id, ids, queue = store
    messages: list[str] = []
    session = rq.databricks_labeling_session(queue, ids, ["ana@example.com", "bo@example.com"], dbx,
                                             created_by="owner@example.com", progress=messages.append)
    api = harness.api
    (app_id,) = api.review_apps
    (session_id,) = api.sessions
    apps = "/api/2.0/managed-evals/review-apps"
    assert api_calls(harness, with_query=True) == [
        ("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"),
        ("GET", f"/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}"),
        ("GET", f"{apps}?filter=experiment_id%3D{experiment_id}"),
        ("POST", apps),  # the experiment had no Review App yet
        ("GET", f"/api/2.0/permissions/experiments/{experiment_id}"),
        ("PATCH", f"/api/2.0/permissions/experiments/{experiment_id}"),
        ("POST", f"{apps}/{app_id}/labeling-sessions"),
        ("GET", f"{apps}?filter=experiment_id%3D{experiment_id}"),
        ("GET", f"{apps}/{app_id}/labeling-sessions?page_size=500"),
        ("POST", "/api/2.0/mlflow/traces/link-to-run"),
        ("POST", f"{apps}/{app_id}/labeling-sessions/{session_id}/items:batchCreate"),
    ]
    created = next(r.body for r in harness.requests if r.path == f"{apps}/{app_id}/labeling-sessions")
    assert created["name"] == f"angry customers ({queue.queue_id[:8]})"
    assert created["assigned_users"] == ["ana@example.com", "bo@example.com"]
    # The same traces, no copies: items name the queue's trace ids, linked to the session's run.
    assert [i["source"]["trace_id"] for i in api.items[session_id]] == ids
    assert api.linked == {api.sessions[session_id]["mlflow_run_id"]: ids}
    assert {(e["user_name"], e["permission_level"]) for e in api.permissions[experiment_id]} == {
        ("ana@example.com", "CAN_EDIT"), ("bo@example.com", "CAN_EDIT")}
    assert api_tokens(harness) == {f"Bearer {APP_TOKEN}"}

    assert session.url == f"{harness.url}/ml/review-v2/{app_id}/tasks/labeling/{session_id}"
    assert (session.labeling_session_id, session.experiment_id, session.traces) == (session_id, experiment_id, 3)
    assert any("3 trace(s)" in m for m in messages)
    # Recorded on the queue (who made it), so the queue links to it from now on …
    stored = rq.get_queue(queue.queue_id, dbx).labeling_session
    assert stored == session and stored.created_by == "owner@example.com"
    # … and asking again links to it instead of making a second session: nothing is sent.
    harness.requests.clear()
    again = rq.databricks_labeling_session(queue, ids, ["ana@example.com"], dbx)
    assert again == session and api_calls(harness, with_query=True) == []


@pytest.mark.parametrize(("ids", "reviewers", "error", "message"), [
    ([], ["ana@example.com"], ValidationError, "no traces"),
    (None, [], ValidationError, "e-mail"),
    (None, ["ana"], ValidationError, "e-mail"),
    (["tr-not-there"], ["ana@example.com"], NotFoundError, "no longer exists"),
])
def test_refused_sessions_send_nothing(harness, dbx, store, ids, reviewers, error, message):
    _, _, queue_ids, queue = store
    with pytest.raises(error, match=message):
        rq.databricks_labeling_session(queue, queue_ids if ids is None else ids, reviewers, dbx)
    assert api_calls(harness, with_query=True) == []
    assert rq.get_queue(queue.queue_id, dbx).labeling_session is None


def test_traces_outside_the_queue_or_across_experiments_are_refused(harness, dbx, store, isolated_settings):
    _, _, ids, queue = store
    _, _, other_ids = make_traces(isolated_settings, 1, name="other-agent")
    with pytest.raises(ValidationError, match="not in the queue"):
        rq.databricks_labeling_session(queue, [*ids, *other_ids], ["ana@example.com"], dbx)
    mixed = rq.create_queue(rq.QueueSpec("mixed", rq.QueueSource.HAND_PICKED, (), trace_ids=(ids[0], other_ids[0])),
                            "owner@example.com", isolated_settings)
    with pytest.raises(ValidationError, match="one experiment"):
        rq.databricks_labeling_session(mixed, [ids[0], other_ids[0]], ["ana@example.com"], dbx)
    assert api_calls(harness, with_query=True) == []


def test_a_refusal_by_the_review_app_is_named_and_nothing_is_recorded(harness, dbx, store):
    _, _, ids, queue = store
    harness.api.forbid_sessions = True
    with pytest.raises(PermissionDeniedError, match="cannot create labeling sessions"):
        rq.databricks_labeling_session(queue, ids, ["ana@example.com"], dbx)
    assert rq.get_queue(queue.queue_id, dbx).labeling_session is None


def test_made_by_the_app_after_the_reviewers_role_check_and_named_after_them(harness, dbx, store, monkeypatch):
    # The Review App API is outside every Databricks Apps user scope (the harness refuses a user token
    # there with "Invalid scope"): Ana's token only reads her groups; the app makes the session.
    _, _, ids, queue = store
    monkeypatch.setenv("AGENTOPS_USER_AUTHORIZATION", "on")
    monkeypatch.setenv("AGENTOPS_ROLE_GROUPS", "reviewer=experts")
    harness.users["ana-token"] = iam.User(user_name="ana@example.com", groups=[iam.ComplexValue(display="experts")])
    ana = Identity("ana@example.com", "Ana", IdentitySource.DATABRICKS_APPS, access_token="ana-token")
    with pytest.raises(PermissionDeniedError, match="no user token"):
        rq.databricks_labeling_session(queue, ids, ["ana@example.com"], dbx,
                                       identity=Identity("ana@example.com", "Ana", IdentitySource.DATABRICKS_APPS))
    assert api_calls(harness, with_query=True) == []
    session = rq.databricks_labeling_session(queue, ids, ["ana@example.com"], dbx, identity=ana)
    assert session.created_by == "ana@example.com"
    assert harness.scope_refusals == []
    assert {path for _, path, auth in harness.api.callers if auth == "Bearer ana-token"} == {"/api/2.0/preview/scim/v2/Me"}
    assert f"Bearer {APP_TOKEN}" in api_tokens(harness)


def test_local_backend_has_no_labeling_sessions(isolated_settings, store):
    _, _, ids, queue = store
    with pytest.raises(BackendUnavailableError, match="only on Databricks"):
        rq.databricks_labeling_session(queue, ids, ["ana@example.com"], isolated_settings)
