"""Team state against one real ``mlflow server``: two app settings with their own data folders share it."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from mlflow import MlflowClient

from services import monitoring, pricing, roles, serving, team_state
from services import alerts
from services.errors import ConflictError, PermissionDeniedError
from services.identity import Identity, IdentitySource
from services.settings import load_settings
from tests.harness.mlflow_server import running_mlflow_server

ANA = Identity("ana@example.com", "ana", IdentitySource.OS_USER)
BO = Identity("bo@example.com", "bo", IdentitySource.OS_USER)
MODEL = "team-agent"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_apps(tmp_path_factory):
    """The settings of two teammates (own data folders) on one server with no roles yet."""
    root = tmp_path_factory.mktemp("team-server")
    with running_mlflow_server(root, open_roles=False) as server:
        client = MlflowClient(server.mlflow_uri, server.mlflow_uri)
        client.create_registered_model(MODEL)
        run = client.create_run(client.create_experiment("team-dev"))
        for _ in range(2):
            client.create_model_version(MODEL, source=f"runs:/{run.info.run_id}/agent", run_id=run.info.run_id)
        apps = tuple(load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": server.mlflow_uri,
                                    "AGENTOPS_DATA_DIR": str(tmp_path_factory.mktemp(name))})
                     for name in ("ana-data", "bo-data"))
        yield apps


def test_a_shared_server_without_roles_makes_nobody_admin(two_apps):
    a, _ = two_apps
    assert roles.roles_table(a)[1] is roles.RolesSource.UNSET
    assert roles.local_role(ANA, a) is roles.Role.VIEWER
    with pytest.raises(PermissionDeniedError, match="viewer"):
        alerts.save_thresholds(a, "*", alerts.AlertThresholds(p95_latency_ms=1), identity=ANA)
    assert team_state.read_all(a, alerts.THRESHOLDS_KEY) == {}


def test_changes_in_one_app_are_seen_in_the_other(two_apps):
    a, b = two_apps
    roles.init_roles(ANA.user, a, by="setup")
    roles.grant(BO.user, roles.Role.OPERATOR, identity=ANA, settings=a)  # a role granted in A ...
    assert roles.local_role(BO, b) is roles.Role.OPERATOR  # ... is B's role

    strict = alerts.AlertThresholds(p95_latency_ms=1500, error_rate=0.05)
    alerts.save_thresholds(a, MODEL, strict, identity=ANA)
    assert alerts.load_thresholds(b)[MODEL] == strict

    table = {**pricing.load_prices(a), "team-llm": {"input_per_mtok": 1, "output_per_mtok": 2}}
    pricing.save_prices(a, table, identity=ANA)
    assert pricing.load_prices(b)["team-llm"].output_per_mtok == 2

    served = tuple(serving.ServedVersion(serving.entity_name_for(MODEL, v), MODEL, v) for v in ("1", "2"))
    serving.save_local_endpoint(serving.Endpoint(
        "team-prod", served, (serving.TrafficRoute(served[0].entity_name, 100), serving.TrafficRoute(served[1].entity_name, 0)),
        serving.EndpointState.READY, datetime.now(tz=timezone.utc), ANA.user), a)
    assert [e.name for e in serving.list_endpoints(b)] == ["team-prod"]
    plan = serving.plan_split("team-prod", {(MODEL, "1"): 80, (MODEL, "2"): 20}, settings=b)
    serving.apply_split(plan, user=BO.user, reason="canary", settings=b, identity=BO)  # B changes the split ...
    assert serving.get_endpoint("team-prod", a).percentage_for(served[1].entity_name) == 20  # ... A sees it

    who = {(c["key"], c["user"]) for c in team_state.history(a)}
    assert {("roles", ANA.user), ("thresholds:" + MODEL, ANA.user), ("prices", ANA.user),
            ("endpoint:team-prod", BO.user)} <= who


@pytest.mark.parametrize("key", ["thresholds:race", "prices"])
def test_two_concurrent_edits_of_one_record_give_one_success_and_one_conflict(two_apps, key):
    a, b = two_apps
    base = team_state.read(key, a)
    expected = base.version if base else 0
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def edit(settings, who):
        barrier.wait()
        try:
            outcomes[who] = team_state.write(key, {"by": who}, expected_version=expected, user=who, settings=settings)
        except ConflictError as exc:
            outcomes[who] = exc

    threads = [threading.Thread(target=edit, args=(s, w)) for s, w in ((a, "ana"), (b, "bo"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    wins = [w for w, o in outcomes.items() if isinstance(o, team_state.Record)]
    losses = [o for o in outcomes.values() if isinstance(o, ConflictError)]
    assert len(wins) == 1 and len(losses) == 1, outcomes
    assert "Nothing was saved" in str(losses[0])
    stored = team_state.read(key, b)
    assert stored.version == expected + 1 and stored.value == {"by": wins[0]}  # the winner's, whole
    # Nothing lost: the loser redoes the edit on top of the winner's version.
    loser = "bo" if wins[0] == "ana" else "ana"
    team_state.write(key, {"by": loser}, expected_version=stored.version, user=loser, settings=a)
    assert team_state.read(key, b).value == {"by": loser}


def test_a_large_record_is_chunked_and_read_back_whole(two_apps):
    a, b = two_apps
    big = {f"user{i}@example.com": "reviewer" for i in range(600)}  # ~20k characters: several tags
    current = team_state.read("big", a)
    team_state.write("big", big, expected_version=current.version if current else 0, user="ana", settings=a)
    assert team_state.read("big", b).value == big
    team_state.update("big", lambda v: {**v, "x": "admin"}, user="bo", settings=b)
    assert team_state.read("big", a).value == {**big, "x": "admin"}


def test_a_claim_left_by_a_writer_that_died_is_taken_over_once_stale(two_apps, monkeypatch):
    """A writer killed after claiming a version (or failing after it) must not hold the record for ever."""
    a, b = two_apps
    key = "thresholds:dead-writer"
    team_state.write(key, {"v": 1}, expected_version=0, user=ANA.user, settings=a)
    client = MlflowClient(a.tracking_uri, a.tracking_uri)
    claim = f"{team_state.state_experiment(a)}.claim.{team_state._slug(key)}"
    client.create_experiment(f"{claim}.v2")  # a writer claimed version 2 and died before writing it
    with pytest.raises(ConflictError, match="being changed by someone else"):  # it may still be at work
        team_state.write(key, {"v": 2}, expected_version=1, user=BO.user, settings=b)
    assert team_state.read(key, a).version == 1
    monkeypatch.setattr(team_state, "STALE_CLAIM_SECONDS", 0.0)  # ... until its claim is stale
    assert team_state.write(key, {"v": 2}, expected_version=1, user=BO.user, settings=b).version == 2
    with pytest.raises(ConflictError, match="was changed"):  # the version it took over is taken now
        team_state.write(key, {"v": "late"}, expected_version=1, user=ANA.user, settings=a)
    monkeypatch.setattr(team_state, "STALE_CLAIM_SECONDS", 120.0)
    client.delete_experiment(client.create_experiment(f"{claim}.v3"))  # a failed writer gave its claim up
    assert team_state.write(key, {"v": 3}, expected_version=2, user=ANA.user, settings=a).version == 3
    assert team_state.read(key, b).value == {"v": 3}
