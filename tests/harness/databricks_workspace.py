"""A whole local "Databricks workspace" for tests of the Databricks path.

A real ``mlflow server`` seeded with one demo agent (the local seeding code, straight into the
server), a ``DatabricksHarness`` answering the REST shapes the app uses (serving endpoint, SCIM
users in groups) with MLflow REST forwarded to that server (``mlflow_forward``), and the app's own
OAuth service principal. ``databricks_workspace()`` starts it all and stops it by PID.
"""

from __future__ import annotations

import contextlib
import importlib
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from databricks.sdk.service import iam
from databricks.sdk.service import serving as sdk

from services.settings import Settings
from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_env
from tests.harness.mlflow_forward import AppServicePrincipal, MlflowForwarder, bearer_token
from tests.harness.mlflow_server import running_mlflow_server

AGENT = "support-agent"
ENDPOINT = "support-prod"
CLIENT_ID = "agent-ops-app-client"
CLIENT_SECRET = "app-secret-not-a-real-one"
ROLE_GROUPS = "operator=release-managers,reviewer=domain-experts,admin=ops-admins"


@dataclass(frozen=True)
class WorkspaceUser:
    email: str
    display: str
    token: str
    groups: tuple[str, ...]


OPERATOR = WorkspaceUser("olivia.ops@acme.example", "Olivia Ops", "olivia-token-0f1e", ("release-managers", "users"))
REVIEWER = WorkspaceUser("rafael.review@acme.example", "Rafael Review", "rafael-token-9a8b", ("domain-experts", "users"))


@dataclass
class Seeded:
    experiment_id: str
    trace_ids: list[str]
    queue_id: str
    model_ids: dict[int, str]
    audit_experiment_id: str = ""


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    principal: str | None


@dataclass
class RequestLog:
    """First harness handler: notes who (by bearer token) made every request, then lets others answer."""

    forwarder: MlflowForwarder
    entries: list[LoggedRequest] = field(default_factory=list)

    def __call__(self, method: str, path: str, body: object, headers: object) -> None:
        self.entries.append(LoggedRequest(method, path, self.forwarder.principal_of(bearer_token(headers))))
        return None


@dataclass
class Workspace:
    server: Settings  # the mlflow server, for direct checks of the stored state
    harness: DatabricksHarness
    forwarder: MlflowForwarder
    app_principal: AppServicePrincipal
    seeded: Seeded
    log: RequestLog
    users: tuple[WorkspaceUser, ...] = field(default=())

    @property
    def url(self) -> str:
        return self.harness.url

    def app_env(self) -> dict[str, str]:
        """The variables Databricks Apps would give the app (plus the app's own settings)."""
        return {
            **databricks_env(self.url),
            "DATABRICKS_CLIENT_ID": CLIENT_ID,
            "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
            "DATABRICKS_APP_NAME": "agent-ops-console",
            "AGENTOPS_EXPERIMENT_IDS": self.seeded.experiment_id,
            # app.yaml: the audit trail is the "audit-experiment" resource, by id.
            "AGENTOPS_AUDIT_EXPERIMENT_ID": self.seeded.audit_experiment_id,
            "AGENTOPS_SERVING_ENDPOINT": ENDPOINT,
            "AGENTOPS_USER_AUTHORIZATION": "on",
            "AGENTOPS_ROLE_GROUPS": ROLE_GROUPS,
        }


def endpoint(creator: str = "olivia.ops@acme.example") -> sdk.ServingEndpointDetailed:
    """The demo agent's serving endpoint: v1 80%, v2 20%, ready, each version configured as
    ``agents.deploy`` leaves it (tracing environment, a secret reference)."""
    entities = [sdk.ServedEntityOutput.from_dict({
        "name": f"{AGENT}_{n}", "entity_name": AGENT, "entity_version": str(n), "workload_size": "Small",
        "scale_to_zero_enabled": True, "workload_type": "CPU", "creator": creator,
        "environment_vars": {"ENABLE_MLFLOW_TRACING": "true", "MLFLOW_EXPERIMENT_ID": "1",
                             "DATABRICKS_TOKEN": "{{secrets/agents/token}}"}}) for n in (1, 2)]
    return sdk.ServingEndpointDetailed(
        name=ENDPOINT, creator=creator,
        creation_timestamp=int((datetime.now(tz=timezone.utc) - timedelta(days=3)).timestamp() * 1000),
        last_updated_timestamp=int((datetime.now(tz=timezone.utc) - timedelta(days=1)).timestamp() * 1000),
        state=sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING,
                                ready=sdk.EndpointStateReady.READY),
        config=sdk.EndpointCoreConfigOutput(
            served_entities=entities, config_version=1,
            traffic_config=sdk.TrafficConfig(routes=[
                sdk.Route(served_entity_name=f"{AGENT}_1", traffic_percentage=80),
                sdk.Route(served_entity_name=f"{AGENT}_2", traffic_percentage=20),
            ]),
        ),
    )


def seed_server(settings: Settings, *, traces: int = 6) -> Seeded:
    """Two versions of the demo support agent, aliases, a few traces and a review queue, via the server."""
    import mlflow

    from demo import seed
    from services import _mlflow_internal as internal
    from services import registry
    from services import review_queue as rq
    from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client

    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    agent = next(a for a in seed.DEMO_AGENTS if a.name == AGENT)
    module = importlib.import_module(agent.module)
    experiment_id = get_or_create_experiment(client, f"agentops-{agent.name}", settings)
    mlflow.set_experiment(experiment_id=experiment_id)
    model_ids = {n: seed._log_version(client, agent, n, agent.versions[n - 1], Path(module.__file__), experiment_id)
                 for n in (1, 2)}
    client.set_registered_model_tag(agent.name, registry.EXPERIMENT_TAG, experiment_id)
    client.update_registered_model(agent.name, description=agent.description)
    client.set_registered_model_alias(agent.name, "champion", "1")
    client.set_registered_model_alias(agent.name, "challenger", "2")
    rows = seed.load_eval_rows(agent)
    rng = random.Random(11)
    now = datetime.now(tz=timezone.utc)
    specs = []
    for i in range(traces):
        number = 1 + i % 2
        spec, _ = seed._trace_spec(agent, module, agent.versions[number - 1], number, model_ids[number], experiment_id,
                                   rows[i % len(rows)], now - timedelta(minutes=10 * (i + 1)), rng,
                                   "champion" if number == 1 else "challenger")
        specs.append(spec)
    trace_ids = internal.log_traces(client, specs)
    queue = rq.create_queue(rq.QueueSpec(name="Support spot check", source=rq.QueueSource.HAND_PICKED,
                                         experiment_ids=(experiment_id,), agent=agent.name,
                                         trace_ids=tuple(trace_ids[:3])), "seed@acme.example", settings)
    # Named as a workspace requires (absolute paths): where the app looks for queues on Databricks.
    review = client.get_experiment_by_name(rq.REVIEW_EXPERIMENT)
    client.rename_experiment(review.experiment_id, f"/Shared/{rq.REVIEW_EXPERIMENT}")
    # The audit-experiment resource.
    audit_id = client.create_experiment("/Shared/agent-ops-console/audit")
    mlflow.set_experiment(experiment_name="Default")
    return Seeded(experiment_id, list(trace_ids), queue.queue_id, model_ids, audit_id)


@contextlib.contextmanager
def databricks_workspace(root: Path, users: tuple[WorkspaceUser, ...] = (OPERATOR, REVIEWER)) -> Iterator[Workspace]:
    """Start the server (seeded), the harness with forwarding and the app's service principal; stop all after."""
    from services._clients import configure_mlflow, get_settings

    with running_mlflow_server(root) as server:
        try:
            seeded = seed_server(server)
        finally:
            configure_mlflow(get_settings())
        harness = DatabricksHarness()
        principal = AppServicePrincipal(CLIENT_ID, CLIENT_SECRET)
        forwarder = MlflowForwarder(server.tracking_uri, users=harness.users, service_principals=[principal])
        log = RequestLog(forwarder)
        harness.handlers.extend([log, principal, forwarder])
        harness.start()
        principal.host = harness.url
        for user in users:
            harness.users[user.token] = iam.User(
                user_name=user.email, display_name=user.display, active=True,
                emails=[iam.ComplexValue(value=user.email, primary=True)],
                groups=[iam.ComplexValue(display=g) for g in user.groups],
            )
        harness.endpoints[ENDPOINT] = endpoint()
        try:
            yield Workspace(server, harness, forwarder, principal, seeded, log, users)
        finally:
            harness.stop()
            forwarder.close()
