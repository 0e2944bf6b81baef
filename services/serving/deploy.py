"""Deploying a registered version with ``databricks.agents.deploy``, audited like a split change.

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
from services.serving.entities import Endpoint, EndpointState
from services.serving.model_serving import agents_endpoint_name, entity_name_for, from_sdk
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
) -> Deployment:
    """Deploy a UC model version with ``databricks.agents.deploy`` (new version gets 100%), audited.

    Validates first (name, version, role and user token, the version in Unity Catalog, the endpoint's
    state) and sends nothing when that fails. With ``plan`` (the preview the user confirmed), the
    endpoint must still look as it did then. With ``wait``, follows the rollout to the end.
    """
    settings = settings or get_settings()
    say = progress or (lambda _message: None)
    if settings.backend is not Backend.DATABRICKS:
        raise ValidationError(_LOCAL_DEPLOY)
    validate_uc_model_name(model_name)
    _validate_version(version)
    if not reason.strip():
        raise ValidationError("Give a reason for the deployment; it goes into the audit trail.")
    if identity is not None:
        roles.enforce(identity, roles.Action.CHANGE_TRAFFIC, settings)
        user_token = user_token or getattr(identity, "access_token", None)
    if roles.user_authorization_required() and not user_token:
        raise PermissionDeniedError(
            "User authorization is on, but this request carries no user token; the app will not deploy as its "
            "service principal. Reload the app, or ask an admin to enable user authorization scopes for it."
        )
    say(f"Checking {model_name} v{version} in Unity Catalog and its endpoint…")
    fresh = plan_deploy(model_name, version, experiment_id=experiment_id, settings=settings, user_token=user_token)
    if plan is not None and (plan.model_name, plan.model_version, plan.endpoint_name) != (
            fresh.model_name, fresh.model_version, fresh.endpoint_name):
        raise ValidationError("The confirmed plan is for another model or version; review the deployment again.")
    if plan is not None and (plan.percentages()[0] != fresh.percentages()[0] or (
            plan.before is not None and fresh.before is not None
            and plan.before.config_version != fresh.before.config_version)):
        raise ConflictError(f"The split of {fresh.endpoint_name!r} changed since this deployment was prepared; "
                            "review it again.")
    before_pct, after_pct = fresh.percentages()
    args = {"model_name": fresh.model_name, "model_version": int(fresh.model_version),
            "endpoint_name": fresh.endpoint_name, "experiment_id": fresh.experiment_id}
    say(f"{'Creating' if fresh.creates_endpoint else 'Updating'} {fresh.endpoint_name} with databricks.agents.deploy…")
    action = f"deploy v{fresh.model_version}"

    def record_failure(outcome: str) -> None:
        # The attempt may have changed the endpoint before failing: keep who tried, even then.
        try:
            audit.record_traffic_change(fresh.endpoint_name, action=action, user=user, reason=reason,
                                                before=before_pct, after=after_pct, outcome=outcome[:500], settings=settings)
        except AgentOpsError as audit_error:  # the deploy's own error is the one to show
            _logger.warning("Could not record the failed deployment of %s v%s: %s", fresh.model_name,
                            fresh.model_version, audit_error)

    try:
        # databricks-agents calls Unity Catalog, MLflow and the agents API, which no Databricks Apps user
        # scope covers: it runs as the app's service principal, after the role check, with the user audited.
        result = run_agents_call("deploy", args, settings)
    except AgentOpsError as exc:
        record_failure(f"failed: {exc}")
        raise
    client = workspace_client(settings, user_token=user_token)
    if wait:
        say("Deployment submitted; waiting for Model Serving to roll it out…")
        stored = _wait_for_rollout(client, fresh, progress)
        if isinstance(stored, AgentOpsError):
            record_failure(f"rollout failed: {stored}")
            raise stored
    else:
        with translate_errors(f"serving endpoint {fresh.endpoint_name!r}"):
            stored = from_sdk(client.serving_endpoints.get(fresh.endpoint_name))
    if stored.routes:
        after_pct = percentages(stored)
    audit.record_traffic_change(
        fresh.endpoint_name, action=action, user=user, reason=reason,
        before=before_pct, after=after_pct, outcome="applied" if wait else "submitted", settings=settings)
    return Deployment(fresh, stored, result.get("endpoint_url"), result.get("review_app_url"), result.get("query_endpoint"))


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
