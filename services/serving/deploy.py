"""Deploying a registered version with ``databricks.agents.deploy``, through the audited two-phase change.

``databricks.agents.deploy`` builds its own ``WorkspaceClient()`` and MLflow clients from the
environment; it takes no credentials. Running it in this process as the signed-in user would
mean putting their token into ``os.environ``, where every other session's client would pick it
up. So it runs in a short-lived child process (``services.serving.agents_child``) whose
environment carries only the identity it acts as. That also keeps its ~4 s import and its
process-wide MLflow settings (it switches the registry URI) out of the app.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

from services import audit, roles
from services._clients import app_workspace_client, classify_error, get_settings, translate_errors, workspace_client
from services.errors import (
    AgentOpsError,
    BackendUnavailableError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from services.serving.agents_child import run_agents_call
from services.serving.backends import percentages
from services.serving.entities import Endpoint, EndpointState, describe_split
from services.serving.model_serving import agents_endpoint_name, entity_name_for, from_sdk
from services.serving.splits import endpoint_lock
from services.settings import Backend, Settings

_logger = logging.getLogger(__name__)

MONITOR_EXPERIMENT_TAG = "MONITOR_EXPERIMENT_ID"  # the endpoint tag databricks-agents traces by
_MAX_SERVED_ENTITIES = 15  # Model Serving refuses more served entities on one endpoint
_UC_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_LOCAL_DEPLOY = ("Deploying with databricks.agents.deploy needs the Databricks backend. Locally, add the version "
                 "to a gateway endpoint in the split editor.")


@dataclass(frozen=True)
class DeployPlan:
    """What ``deploy_version`` will do: ``before`` is None when the endpoint does not exist yet."""

    model_name: str
    model_version: str
    endpoint_name: str
    entity_name: str
    before: Endpoint | None
    after: dict[str, int]  # "<model> v<version>" -> percent once deployed
    experiment_id: str | None

    @property
    def creates_endpoint(self) -> bool:
        return self.before is None

    def percentages(self) -> tuple[dict[str, int], dict[str, int]]:
        return (percentages(self.before) if self.before else {}), dict(self.after)


@dataclass(frozen=True)
class Deployment:
    """A finished deploy: the endpoint as stored and the links databricks-agents returned."""

    plan: DeployPlan
    endpoint: Endpoint
    endpoint_url: str | None
    review_app_url: str | None
    query_endpoint: str | None


def validate_uc_model_name(model_name: str) -> str:
    """``catalog.schema.model`` with plain name parts, or ``ValidationError``."""
    name = (model_name or "").strip()
    parts = name.split(".")
    if len(parts) != 3 or not all(_UC_PART.fullmatch(p) for p in parts):
        raise ValidationError(
            f"{model_name!r} is not a Unity Catalog model name: databricks.agents.deploy needs "
            "catalog.schema.model (letters, digits, '_' or '-' in each part)."
        )
    return name


def _validate_version(version: Any) -> str:
    text = str(version).strip() if version is not None else ""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValidationError(f"{version!r} is not a model version: use the version number (1, 2, …).")
    return str(int(text))


def plan_deploy(model_name: str, version: Any, *, experiment_id: str | None = None,
                settings: Settings | None = None, user_token: str | None = None) -> DeployPlan:
    """Validate deploying ``model_name`` v``version`` to its agents endpoint; nothing is written.

    Reads the version from Unity Catalog and the endpoint from Model Serving. Raises
    ``ValidationError`` for a malformed name or version, a version the endpoint already serves or
    an endpoint that is full, ``NotFoundError`` for a version that does not exist and
    ``ConflictError`` while the endpoint is updating.
    """
    from databricks.sdk.errors import NotFound

    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise ValidationError(_LOCAL_DEPLOY)
    name = validate_uc_model_name(model_name)
    number = _validate_version(version)
    endpoint_name = agents_endpoint_name(name)
    entity = entity_name_for(name, number)
    client = workspace_client(settings, user_token=user_token)
    try:
        # Unity Catalog is outside every Databricks Apps user scope: the app reads the version.
        app_workspace_client(settings).model_versions.get(name, int(number))
    except NotFound:
        raise NotFoundError(f"Version {number} of {name} does not exist in Unity Catalog; nothing was deployed.") from None
    except Exception as exc:  # noqa: BLE001 - classified below
        raise classify_error(exc, f"Unity Catalog model {name}") from exc
    try:
        detailed = client.serving_endpoints.get(endpoint_name)
    except NotFound:
        detailed = None
    except Exception as exc:  # noqa: BLE001 - classified below
        raise classify_error(exc, f"serving endpoint {endpoint_name!r}") from exc
    before = from_sdk(detailed) if detailed is not None else None
    label = f"{name} v{number}"
    if before is not None:
        if before.state is EndpointState.UPDATING:
            raise ConflictError(f"Endpoint {endpoint_name!r} already has an update in progress; wait for it to finish, "
                                "then deploy.")
        if any(s.entity_name == entity or (s.model_name, s.model_version) == (name, number) for s in before.served):
            raise ValidationError(f"{endpoint_name!r} already serves {label}. To send it more traffic, use the split "
                                  "editor instead of deploying it again.")
        if len(before.served) >= _MAX_SERVED_ENTITIES:
            raise ValidationError(f"{endpoint_name!r} already serves {len(before.served)} versions, the most Model Serving "
                                  "allows; remove one in the split editor first.")
        tags = {t.key: t.value for t in (detailed.tags or [])}
        experiment_id = tags.get(MONITOR_EXPERIMENT_TAG) or experiment_id
    # databricks.agents.deploy routes everything to the new version and keeps the others at 0%.
    after = {label: 100, **{k: 0 for k in (percentages(before) if before else {}) if k != label}}
    return DeployPlan(name, number, endpoint_name, entity, before, after, experiment_id)


def deploy_version(
    model_name: str,
    version: Any,
    *,
    user: str,
    reason: str,
    identity: Any = None,
    user_token: str | None = None,
    experiment_id: str | None = None,
    plan: DeployPlan | None = None,
    settings: Settings | None = None,
    progress: Callable[[str], None] | None = None,
    wait: bool = True,
    request_id: str | None = None,
) -> Deployment:
    """Deploy a UC model version with ``databricks.agents.deploy`` (new version gets 100%), audited.

    Validates first (name, version, role and user token, the version in Unity Catalog, the endpoint's
    state) and sends nothing when that fails. With ``plan`` (the preview the user confirmed), the
    endpoint must still look as it did then. With ``wait``, follows the rollout to the end.

    It goes through the audit trail's two-phase change: the intent is recorded before
    databricks-agents is called and completed with the split the endpoint then serves. An attempt
    the service refused (or whose rollout failed) stays on record as failed, with who tried.
    ``request_id`` (one per confirmation) makes a retry after an interruption deploy at most once:
    it completes the record when the version already took over, deploys when the endpoint still
    serves what it did before, and closes the attempt when someone changed the endpoint since.
    """
    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise ValidationError(_LOCAL_DEPLOY)
    name = validate_uc_model_name(model_name)
    number = _validate_version(version)
    if not reason.strip():
        raise ValidationError("Give a reason for the deployment; it goes into the audit trail.")
    audit.check_request_id(request_id)
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
        user_token = user_token or getattr(identity, "access_token", None)
    if roles.user_authorization_required() and not user_token:
        raise PermissionDeniedError(
            "User authorization is on, but this request carries no user token; the app will not deploy as its "
            "service principal. Reload the app, or ask an admin to enable user authorization scopes for it."
        )
    deploy = _Deploy(name, number, user=user, reason=reason, experiment_id=experiment_id, plan=plan,
                     settings=settings, user_token=user_token, progress=progress, wait=wait)
    done = audit.run_two_phase(deploy, request_id)
    stored = done.state
    if stored is None:  # a retry found the endpoint gone since: nothing was deployed
        raise NotFoundError(f"Endpoint {deploy.endpoint_name!r} no longer exists; deploy again.")
    fresh = deploy.fresh or DeployPlan(name, number, deploy.endpoint_name, entity_name_for(name, number), None,
                                       dict(done.record.requested or {}), experiment_id)
    result = deploy.result
    return Deployment(fresh, stored, result.get("endpoint_url"), result.get("review_app_url"), result.get("query_endpoint"))


class _Deploy(audit.TwoPhaseChange["Endpoint | None"]):
    """One ``databricks.agents.deploy``, as the steps of the audit trail's two-phase change."""

    kind = audit.ChangeKind.DEPLOY

    def __init__(self, name: str, number: str, *, user: str, reason: str, experiment_id: str | None,
                 plan: DeployPlan | None, settings: Settings, user_token: str | None,
                 progress: Callable[[str], None] | None, wait: bool) -> None:
        self.name, self.number, self.user, self.reason, self.settings = name, number, user, reason, settings
        self.experiment_id, self.plan, self.user_token, self.progress, self.wait = (
            experiment_id, plan, user_token, progress, wait)
        self.endpoint_name = agents_endpoint_name(name)
        self.label = f"{name} v{number}"
        self.action = f"deploy v{number}"
        self.target = {"endpoint": self.endpoint_name, "model": name}
        self.detail = {"version": number}
        self.lock_key = endpoint_lock(self.endpoint_name)
        self.fresh: DeployPlan | None = None
        self.result: dict[str, Any] = {}
        self._failure = "failed"  # how a refusal reads in the record: "failed" or "rollout failed"

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    def _plan(self) -> DeployPlan:
        return plan_deploy(self.name, self.number, experiment_id=self.experiment_id, settings=self.settings,
                           user_token=self.user_token)

    def check(self) -> None:
        self._say(f"Checking {self.name} v{self.number} in Unity Catalog and its endpoint…")
        fresh, plan = self._plan(), self.plan
        if plan is not None and (plan.model_name, plan.model_version, plan.endpoint_name) != (
                fresh.model_name, fresh.model_version, fresh.endpoint_name):
            raise ValidationError("The confirmed plan is for another model or version; review the deployment again.")
        if plan is not None and (plan.percentages()[0] != fresh.percentages()[0] or (
                plan.before is not None and fresh.before is not None
                and plan.before.config_version != fresh.before.config_version)):
            raise ConflictError(f"The split of {fresh.endpoint_name!r} changed since this deployment was prepared; "
                                "review it again.")
        self.fresh = fresh

    def planned(self) -> tuple[dict[str, int], dict[str, int]]:
        assert self.fresh is not None
        return self.fresh.percentages()

    def act(self, intent: audit.Change) -> Endpoint | None:
        # A resumed deploy plans again: the endpoint still serves what it did before the interruption.
        fresh = self.fresh = self.fresh or self._plan()
        args = {"model_name": fresh.model_name, "model_version": int(fresh.model_version),
                "endpoint_name": fresh.endpoint_name, "experiment_id": fresh.experiment_id}
        self._say(f"{'Creating' if fresh.creates_endpoint else 'Updating'} {fresh.endpoint_name} with "
                  "databricks.agents.deploy…")
        self._failure = "failed"
        # databricks-agents calls Unity Catalog, MLflow and the agents API, which no Databricks Apps user
        # scope covers: it runs as the app's service principal, after the role check, with the user audited.
        self.result = run_agents_call("deploy", args, self.settings)
        client = workspace_client(self.settings, user_token=self.user_token)
        if not self.wait:
            with translate_errors(f"serving endpoint {fresh.endpoint_name!r}"):
                return from_sdk(client.serving_endpoints.get(fresh.endpoint_name))
        self._say("Deployment submitted; waiting for Model Serving to roll it out…")
        stored = _wait_for_rollout(client, fresh, self.progress)
        if isinstance(stored, AgentOpsError):
            self._failure = "rollout failed"
            raise stored
        return stored

    def observe(self) -> Endpoint | None:
        from databricks.sdk.errors import NotFound

        client = workspace_client(self.settings, user_token=self.user_token)
        try:
            detailed = client.serving_endpoints.get(self.endpoint_name)
        except NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - classified below
            raise classify_error(exc, f"serving endpoint {self.endpoint_name!r}") from exc
        endpoint = from_sdk(detailed)
        if endpoint.state is EndpointState.UPDATING:
            # Neither done nor undone yet: deciding now could deploy twice.
            raise ConflictError(f"{self.endpoint_name!r} has an update in progress; retry once it has finished.")
        return endpoint

    def recorded(self, state: Endpoint | None) -> dict[str, int]:
        if state is None:
            return {}
        if not state.routes and self.fresh is not None:  # not rolled out yet (not waited for)
            return dict(self.fresh.after)
        return percentages(state)

    def outcome(self, state: Endpoint | None) -> str:
        return "applied" if self.wait else "submitted"

    def holds_requested(self, intent: audit.Change, state: Endpoint | None) -> bool:
        return state is not None and percentages(state).get(self.label) == 100

    def close_refused(self, intent: audit.Change, exc: Exception) -> None:
        # The attempt may have changed the endpoint before failing: keep who tried, even then.
        try:
            audit.complete_change(intent, intent.requested, outcome=f"{self._failure}: {exc}"[:500],
                                  settings=self.settings)
        except AgentOpsError as audit_error:  # the deploy's own error is the one to show
            _logger.warning("Could not record the failed deployment of %s: %s", self.label, audit_error)

    def describe(self, state: Endpoint | None) -> str:
        return "no endpoint" if state is None else describe_split(percentages(state))


def _wait_for_rollout(client: Any, plan: DeployPlan, progress: Callable[[str], None] | None) -> Endpoint | AgentOpsError:

    from databricks.sdk.errors import OperationFailed

    def report(endpoint: Any) -> None:
        if progress and endpoint.state is not None:
            progress(f"{plan.endpoint_name}: config update "
                     f"{getattr(endpoint.state.config_update, 'value', endpoint.state.config_update)}")

    try:
        detailed = client.serving_endpoints.wait_get_serving_endpoint_not_updating(
            plan.endpoint_name, timeout=timedelta(minutes=30), callback=report)
    except OperationFailed as exc:
        return ConflictError(f"Model Serving could not roll out {plan.model_name} v{plan.model_version} on "
                             f"{plan.endpoint_name!r} ({exc}); the endpoint keeps its previous configuration.")
    except TimeoutError as exc:
        return BackendUnavailableError(f"The rollout on {plan.endpoint_name!r} did not finish in 30 minutes ({exc}); "
                                       "check the endpoint's events in the Serving UI.")
    except Exception as exc:  # noqa: BLE001 - classified below
        return classify_error(exc, f"serving endpoint {plan.endpoint_name!r}")
    return from_sdk(detailed)


def _child_deploy(args: dict[str, Any]) -> dict[str, Any]:
    """Child side of ``deploy_version``: the real ``databricks.agents.deploy`` call."""
    from databricks import agents

    environment = {"MLFLOW_EXPERIMENT_ID": str(args["experiment_id"])} if args.get("experiment_id") else None
    deployment = agents.deploy(args["model_name"], int(args["model_version"]), endpoint_name=args["endpoint_name"],
                               environment_vars=environment)
    if deployment is None:
        raise RuntimeError("the agents service accepted the deployment but returned no deployment record")
    return {"endpoint_name": deployment.endpoint_name, "served_entity_name": deployment.served_entity_name,
            "endpoint_url": deployment.endpoint_url, "review_app_url": deployment.review_app_url,
            "query_endpoint": deployment.query_endpoint}
