"""Live scoring on Databricks: the app's live-scoring service registers, starts, updates, stops and
deletes Databricks production monitoring's scheduled scorers through MLflow's own client
(``Scorer.register`` / ``start`` / ``update`` / ``stop``, ``delete_scorer``) against the harness's
``/api/2.0/managed-evals`` (``tests/harness/managed_evals.py``), as the app's OAuth service principal.

The world is another team's: a real ``mlflow server`` written with MLflow's public API only, reached
through the harness's MLflow forwarding. Asserted: the exact managed-evals requests (paths, bodies),
the scheduled scorers the harness ends with, the app's stored configuration, and that a refused
change leaves both unchanged.
"""

from __future__ import annotations

import json

import mlflow
import pytest
from databricks.sdk.service import iam

from services import _clients, live_scoring, team_state
from services.errors import PermissionDeniedError
from services.identity import Identity, IdentitySource
from services.live_scoring import LiveScoringConfig
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_env, use_app_env
from tests.harness.managed_evals import MASK, ManagedEvalsApi
from tests.harness.mlflow_forward import AppServicePrincipal, MlflowForwarder
from tests.harness.mlflow_server import running_mlflow_server
from tests.services.live_scoring_world import AGENT, build_world

pytestmark = pytest.mark.slow

CLIENT_ID, CLIENT_SECRET = "agent-ops-app-client", "app-secret-not-a-real-one"
OPS_TOKEN = "olivia-token-0f1e"
OPS = Identity("olivia.ops@acme.example", "Olivia Ops", IdentitySource.DATABRICKS_APPS, access_token=OPS_TOKEN)
FILTER = "tag.environment = 'production'"
JUDGES = ("safety", "relevance_to_query")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("live-dbx")
    with running_mlflow_server(root) as server:
        try:
            mlflow.set_tracking_uri(server.tracking_uri)
            mlflow.set_registry_uri(server.registry_uri)
            world = build_world(server, traces=2)
        finally:
            _clients.configure_mlflow(_clients.get_settings())
        harness = DatabricksHarness()
        principal = AppServicePrincipal(CLIENT_ID, CLIENT_SECRET)
        forwarder = MlflowForwarder(server.tracking_uri, users=harness.users, service_principals=[principal])
        managed = ManagedEvalsApi().install(forwarder)
        harness.handlers.extend([principal, forwarder])
        harness.start()
        principal.host = harness.url
        harness.users[OPS_TOKEN] = iam.User(user_name=OPS.user, display_name=OPS.display_name, active=True,
                                            emails=[iam.ComplexValue(value=OPS.user, primary=True)],
                                            groups=[iam.ComplexValue(display="release-managers")])
        try:
            yield {"harness": harness, "forwarder": forwarder, "managed": managed, "principal": principal, **world}
        finally:
            harness.stop()
            forwarder.close()


@pytest.fixture
def dbx(workspace, tmp_path, monkeypatch):
    env = {**databricks_env(workspace["harness"], tmp_path), "DATABRICKS_CLIENT_ID": CLIENT_ID,
           "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET, "AGENTOPS_ROLE_GROUPS": "operator=release-managers",
           "AGENTOPS_STATE_EXPERIMENT": f"/Shared/agentops-team-state-{tmp_path.name}"}
    settings = use_app_env(monkeypatch, env, unset=("DATABRICKS_TOKEN",), configure=True)
    with _clients.acting_as(None):
        yield settings
    _clients._cached_settings.cache_clear()
    monkeypatch.undo()
    _clients.configure_mlflow(_clients.get_settings())


def _path(experiment_id: str) -> str:
    return f"/api/2.0/managed-evals/scheduled-scorers/{experiment_id}"


def _scorers(body: dict) -> dict[str, dict]:
    return {s["name"]: s for s in body["scheduled_scorers"]["scorers"]}


def test_register_start_update_stop_delete_through_mlflows_client(workspace, dbx):
    managed, experiment_id = workspace["managed"], workspace["experiment_id"]
    path = _path(experiment_id)
    live = {f"live_{n}" for n in JUDGES}

    # 1. Create: each judge registered (sample rate 0), then started at 0.25 with the filter.
    start = len(managed.calls)
    config = LiveScoringConfig(scorers=JUDGES, sample_rate=0.25, filter_string=FILTER)
    live_scoring.save_config(AGENT, config, identity=OPS, settings=dbx)
    changes = managed.changes(start)
    assert {c.path for c in changes} == {path}
    # The first registration finds no scheduled scorers (PATCH 404) and creates them (POST).
    assert [(c.method, c.status) for c in changes] == [("PATCH", 404), ("POST", 200), ("PATCH", 200),
                                                       ("PATCH", 200), ("PATCH", 200)]
    first = _scorers(changes[1].body)["live_safety"]
    assert first["sample_rate"] == 0.0 and first["builtin"] == {"name": "live_safety"}
    assert json.loads(first["serialized_scorer"])["name"] == "live_safety"
    assert all(c.body["update_mask"] == MASK for c in changes if c.method == "PATCH")
    started = _scorers(changes[2].body)["live_safety"]
    assert (started["sample_rate"], started["filter_string"]) == (0.25, FILTER)
    stored = managed.scorers_of(experiment_id)
    assert set(stored) == live
    assert {(s.sample_rate, s.filter_string, s.scorer_version) for s in stored.values()} == {(0.25, FILTER, 1)}
    # Every managed-evals call was the app's service principal's.
    calls = [c for c in workspace["forwarder"].calls if c.path.startswith("/api/2.0/managed-evals/")]
    assert {c.principal for c in calls} == {workspace["principal"].name}
    assert live_scoring.load_config(AGENT, dbx) == (config, 1)

    # Another team registers and starts its own judge in the same experiment, with MLflow's client.
    from mlflow.genai.scorers import RelevanceToQuery, ScorerSamplingConfig

    RelevanceToQuery(name="team_relevance").register(experiment_id=experiment_id).start(
        experiment_id=experiment_id, sampling_config=ScorerSamplingConfig(sample_rate=0.1))
    theirs = managed.scorers_of(experiment_id)["team_relevance"].model_dump()

    # 2. Update the sample rate: no new registration, one PATCH per scorer, versions unchanged.
    start = len(managed.calls)
    faster = LiveScoringConfig(scorers=JUDGES, sample_rate=0.5, filter_string=FILTER)
    live_scoring.save_config(AGENT, faster, identity=OPS, settings=dbx, expected_version=1)
    assert [(c.method, c.status) for c in managed.changes(start)] == [("PATCH", 200), ("PATCH", 200)]
    assert {(s.sample_rate, s.filter_string, s.scorer_version) for n, s in managed.scorers_of(experiment_id).items()
            if n in live} == {(0.5, FILTER, 1)}

    # 3. Pause: stopped (sample rate 0), still registered.
    start = len(managed.calls)
    paused = LiveScoringConfig(scorers=JUDGES, sample_rate=0.5, filter_string=FILTER, enabled=False)
    live_scoring.save_config(AGENT, paused, identity=OPS, settings=dbx, expected_version=2)
    assert len(managed.changes(start)) == 2
    assert {managed.scorers_of(experiment_id)[n].sample_rate for n in live} == {0.0}
    assert not live_scoring.configured(AGENT, dbx)

    # 4. Delete: each scorer removed from the list (databricks-agents' delete parses the answers too).
    start = len(managed.calls)
    live_scoring.delete_config(AGENT, identity=OPS, settings=dbx)
    deletes = managed.changes(start)
    assert [(c.method, c.status) for c in deletes] == [("PATCH", 200), ("PATCH", 200)]
    assert [set(_scorers(c.body)) for c in deletes] == [{"team_relevance", "live_safety"}, {"team_relevance"}]
    # The other team's judge went through every change untouched.
    assert {n: s.model_dump() for n, s in managed.scorers_of(experiment_id).items()} == {"team_relevance": theirs}
    history = team_state.history(dbx, f"{live_scoring.KEY_PREFIX}{AGENT}")
    assert sorted((c["version"], c["user"]) for c in history) == [(v, OPS.user) for v in (1, 2, 3, 4)]


def test_a_refused_change_says_why_and_stores_nothing(workspace, dbx):
    managed, forwarder, experiment_id = workspace["managed"], workspace["forwarder"], workspace["experiment_id"]
    denial = forwarder.deny(workspace["principal"].name, "PATCH", _path(experiment_id),
                            message="User app-service-principal does not have CAN_MANAGE permission on "
                                    f"experiment {experiment_id}.")
    before = {n: s.model_dump() for n, s in managed.scorers_of(experiment_id).items()}
    start = len(managed.calls)
    try:
        with pytest.raises(PermissionDeniedError, match=f"experiment {experiment_id}.*CAN_MANAGE"):
            live_scoring.save_config(AGENT, LiveScoringConfig(scorers=("safety",), sample_rate=0.3),
                                     identity=OPS, settings=dbx)
    finally:
        forwarder.denials.remove(denial)
    assert [c.status for c in managed.changes(start)] == []  # refused before the harness saw it
    assert {n: s.model_dump() for n, s in managed.scorers_of(experiment_id).items()} == before
    assert live_scoring.load_config(AGENT, dbx) == (None, 0)
    assert team_state.history(dbx, f"{live_scoring.KEY_PREFIX}{AGENT}") == []


@pytest.mark.parametrize("case, message", [
    ("unknown experiment", "does not exist"),
    ("sample rate above 1", "between 0 and 1"),
    ("unparsable filter", "filter_string of 'live_relevance' is invalid"),
    ("duplicate names", "must be unique"),
    ("no update mask", "update_mask"),
])
def test_the_harness_refuses_what_the_service_refuses(workspace, dbx, case, message):
    """MLflow's own client against the harness: what the real service refuses is refused, nothing stored."""
    from mlflow.exceptions import MlflowException
    from mlflow.genai.scorers import RelevanceToQuery, ScorerSamplingConfig
    from mlflow.genai.scorers.registry import DatabricksStore

    managed, experiment_id = workspace["managed"], workspace["experiment_id"]
    before = {n: s.model_dump() for n, s in managed.scorers_of(experiment_id).items()}
    relevance = RelevanceToQuery(name="live_relevance")
    store = DatabricksStore("databricks")
    with pytest.raises(MlflowException, match=message):
        if case == "unknown experiment":
            relevance.register(experiment_id="987654321")
        elif case in ("sample rate above 1", "unparsable filter"):
            registered = relevance.register(experiment_id=experiment_id)
            rate, filter_string = (1.5, None) if case == "sample rate above 1" else (0.5, "tag.x === 'y' oops")
            registered.start(experiment_id=experiment_id,
                             sampling_config=ScorerSamplingConfig(sample_rate=rate, filter_string=filter_string))
        else:
            item = {"name": "live_relevance", "serialized_scorer": json.dumps(relevance.model_dump()),
                    "builtin": {"name": "live_relevance"}, "sample_rate": 0.1}
            body = {"scheduled_scorers": {"scorers": [item, item] if case == "duplicate names" else [item]}}
            method = "POST" if experiment_id not in managed.scheduled else "PATCH"
            if case == "duplicate names" and method == "PATCH":
                body["update_mask"] = MASK
            store._request("PATCH" if case == "no update mask" else method, _path(experiment_id), json_body=body)
    after = managed.scorers_of(experiment_id)
    if case in ("sample rate above 1", "unparsable filter"):
        # Registered (at 0) before the refused start; the refused start changed nothing.
        assert after["live_relevance"].sample_rate == 0.0
        mlflow.genai.scorers.delete_scorer(name="live_relevance", experiment_id=experiment_id)
        after = managed.scorers_of(experiment_id)
    assert {n: s.model_dump() for n, s in after.items()} == before
