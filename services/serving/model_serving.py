"""Databricks Model Serving endpoints, read and changed through ``databricks-sdk``.

An endpoint's ``config.config_version`` is its concurrency token: a split is sent only while the
endpoint still has the version it was planned against. ``update_config`` replaces the whole config,
so every served entity is re-sent exactly as Model Serving returned it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from services import audit
from services._clients import classify_error, translate_errors, workspace_client
from services.errors import AgentOpsError, ConflictError, PermissionDeniedError
from services.serving.base import SplitBackend
from services.serving.entities import (
    Endpoint,
    EndpointBackend,
    EndpointState,
    ServedVersion,
    TrafficRoute,
    describe_split,
)
from services.settings import Settings

_logger = logging.getLogger(__name__)

# databricks-agents' naming (``databricks/agents/deployments.py``): names are cut to 63 characters,
# dots become dashes and a trailing "_" or "-" is dropped.
_MAX_NAME = 63


def _sanitize(model_name: str) -> str:
    return model_name.replace(".", "-").rstrip("_-")


def entity_name_for(model_name: str, version: str) -> str:
    """Served-entity name for a registered version, as ``databricks.agents.deploy`` names it."""
    suffix = f"_{version}"
    return f"{_sanitize(model_name[: _MAX_NAME - len(suffix)])}{suffix}"


def agents_endpoint_name(model_name: str) -> str:
    """The endpoint ``databricks.agents.deploy`` serves a UC model on: ``agents_<catalog>-<schema>-<model>``."""
    prefix = "agents_"
    return f"{prefix}{_sanitize(model_name[: _MAX_NAME - len(prefix)])}"


def _served_from_sdk(entity: Any) -> ServedVersion:
    name = entity.name or ""
    if entity.external_model is not None:
        model = entity.external_model
        provider = getattr(model.provider, "value", model.provider) or ""
        return ServedVersion(name, name, "", f"external model {provider}/{model.name or ''}".rstrip("/"))
    if entity.foundation_model is not None:
        model = entity.foundation_model
        return ServedVersion(name, name, "", f"foundation model {model.display_name or model.name or ''}".strip())
    if not entity.entity_name:
        return ServedVersion(name, name, "", "")
    return ServedVersion(name, entity.entity_name, str(entity.entity_version or ""))


def _routes_from_sdk(traffic_config: Any) -> tuple[TrafficRoute, ...]:
    return tuple(
        TrafficRoute(route.served_entity_name or route.served_model_name or "", int(route.traffic_percentage or 0))
        for route in ((traffic_config.routes if traffic_config else None) or [])
    )


def from_sdk(endpoint: Any, updated_by: str | None = None) -> Endpoint:
    """An SDK ``ServingEndpointDetailed`` as an ``Endpoint``; ``updated_by`` comes from the audit trail
    (the endpoint itself only names its creator)."""
    config = endpoint.config
    entities = (config.served_entities if config else None) or []
    served = tuple(_served_from_sdk(entity) for entity in entities)
    routes = _routes_from_sdk(config.traffic_config if config else None)
    if not routes and len(served) == 1:
        routes = (TrafficRoute(served[0].entity_name, 100),)  # one entity, no traffic config: it takes everything
    read_only = None
    if any(e.foundation_model is not None for e in entities):
        read_only = ("a pay-per-token foundation model endpoint: Databricks manages its configuration, so its "
                     "traffic cannot be changed")
    pending = endpoint.pending_config
    state = EndpointState.NOT_READY
    if endpoint.state is not None:
        update = str(getattr(endpoint.state.config_update, "value", endpoint.state.config_update) or "")
        ready = str(getattr(endpoint.state.ready, "value", endpoint.state.ready) or "")
        if update == "IN_PROGRESS":
            state = EndpointState.UPDATING
        elif update == "UPDATE_FAILED":
            state = EndpointState.FAILED
        elif update == "UPDATE_CANCELED":
            state = EndpointState.CANCELED
        elif ready == "READY":
            state = EndpointState.READY
    updated = (
        datetime.fromtimestamp(endpoint.last_updated_timestamp / 1000, tz=timezone.utc)
        if endpoint.last_updated_timestamp
        else None
    )
    return Endpoint(endpoint.name, served, routes, state, updated, updated_by, False, EndpointBackend.DATABRICKS,
                    config_version=config.config_version if config else None,
                    pending_routes=_routes_from_sdk(pending.traffic_config) if pending else (),
                    read_only=read_only)


def last_changed_by(settings: Settings, endpoint: str | None = None) -> dict[str, str]:
    """Who made the latest recorded change of each endpoint (the audit trail; empty when unreadable)."""
    try:
        changes = audit.traffic_changes(endpoint, settings=settings)
    except AgentOpsError as exc:
        _logger.warning("Could not read the audit trail for 'last updated by': %s", exc)
        return {}
    latest: dict[str, str] = {}
    for change in changes:  # newest first
        if change.completed:
            latest.setdefault(change.endpoint, change.user)
    return latest


def _list_databricks(settings: Settings) -> list[Endpoint]:
    """Every endpoint, each read on its own: one that fails (deleted meanwhile, forbidden, throttled)
    comes back with ``error`` set instead of failing the list."""
    from databricks.sdk.errors import NotFound

    with translate_errors("Model Serving"):
        api = workspace_client(settings).serving_endpoints
        # The list call returns config summaries without traffic routes; get() has them.
        names = [summary.name for summary in api.list()]
    if settings.serving_endpoint and settings.serving_endpoint not in names:
        names.insert(0, settings.serving_endpoint)  # the app's own resource, even if the list leaves it out
    who = last_changed_by(settings)
    found: list[Endpoint] = []
    for name in names:
        try:
            found.append(from_sdk(api.get(name), who.get(name)))
        except NotFound:
            _logger.info("Serving endpoint %s was deleted after it was listed.", name)
        except Exception as exc:  # noqa: BLE001 - one endpoint's failure is shown on that endpoint
            error = classify_error(exc, f"serving endpoint {name!r}")
            found.append(Endpoint(name, (), (), EndpointState.NOT_READY, backend=EndpointBackend.DATABRICKS, error=str(error),
                                  read_only=str(error)))
    first = settings.serving_endpoint
    return sorted(found, key=lambda e: (e.name != first, e.name))


def _entity_input(output: Any) -> Any:
    """The ``ServedEntityInput`` that re-sends a served entity exactly as Model Serving returned it.

    ``update_config`` replaces the whole config: a field left out (``environment_vars`` with the
    tracing experiment and secret references, ``workload_type``, ``instance_profile_arn``, provisioned
    throughput, ``external_model``…) is gone afterwards. Every input field is copied from the output.
    """
    import dataclasses

    from databricks.sdk.service import serving as sdk

    fields = {f.name for f in dataclasses.fields(sdk.ServedEntityInput)}
    return sdk.ServedEntityInput.from_dict({k: v for k, v in output.as_dict().items() if k in fields})


def _describe_endpoint(endpoint: Endpoint) -> str:
    text = describe_split(ModelServingBackend.percentages(endpoint))
    if endpoint.pending_routes:
        text += f" (rolling out: {describe_split(endpoint.pending_percentages)})"
    return text


def _changed_since(plan_before: Endpoint, current: Endpoint) -> bool:
    if plan_before.config_version is not None and current.config_version is not None:
        return plan_before.config_version != current.config_version or bool(current.pending_routes)
    return (current.served, current.routes) != (plan_before.served, plan_before.routes)


def _conflict(plan_before: Endpoint, current: Endpoint) -> ConflictError:
    return ConflictError(
        f"{current.name!r} changed since this change was prepared (config version "
        f"{plan_before.config_version} → {current.config_version}"
        + (f", last recorded change by {current.updated_by}" if current.updated_by else "")
        + f"): it now serves {_describe_endpoint(current)}. Nothing was sent; review the new state and try again."
    )


def _with_author(endpoint: Endpoint, settings: Settings) -> Endpoint:
    return replace(endpoint, updated_by=last_changed_by(settings, endpoint.name).get(endpoint.name))


class ModelServingBackend(SplitBackend):
    """Databricks Model Serving endpoints (as the signed-in user when a user token is given)."""

    kind = EndpointBackend.DATABRICKS

    def list_endpoints(self) -> list[Endpoint]:
        return _list_databricks(self.settings)

    def read(self, name: str) -> Endpoint:
        with translate_errors(f"serving endpoint {name!r}"):
            return from_sdk(workspace_client(self.settings, user_token=self.user_token).serving_endpoints.get(name))

    def get(self, name: str) -> Endpoint:
        with translate_errors(f"serving endpoint {name!r}"):
            detailed = workspace_client(self.settings).serving_endpoints.get(name)
        return from_sdk(detailed, last_changed_by(self.settings, name).get(name))

    def conflict(self, planned: Endpoint, current: Endpoint) -> ConflictError | None:
        if not _changed_since(planned, current):
            return None
        return _conflict(planned, _with_author(current, self.settings))

    def write(self, seen: Endpoint, after: Endpoint, *, user: str) -> Endpoint:
        return _apply_databricks(seen, after, self.settings, self.user_token, self.progress)


def _apply_databricks(seen: Endpoint, after: Endpoint, settings: Settings, user_token: str | None,
                      progress) -> Endpoint:
    """Send the planned split with ``update_config``, every served entity re-sent as read.

    Refused (``ConflictError``, nothing sent) when the endpoint's config changed since ``seen`` was read:
    a colleague's deploy between preview and confirm would otherwise be silently removed.
    """
    from datetime import timedelta

    from databricks.sdk.errors import OperationFailed, PermissionDenied, ResourceConflict
    from databricks.sdk.service import serving as sdk

    client = workspace_client(settings, user_token=user_token)
    name = seen.name
    try:
        current = client.serving_endpoints.get(name)
        if _changed_since(seen, from_sdk(current)):
            raise _conflict(seen, from_sdk(current, last_changed_by(settings, name).get(name)))
        outputs = {e.name: e for e in (current.config.served_entities or [])} if current.config else {}
        registered = [e for e in outputs.values() if e.entity_name and e.external_model is None]
        template = registered[0] if registered else None
        entities = []
        for served in after.served:
            if served.entity_name in outputs:
                entities.append(_entity_input(outputs[served.entity_name]))
                continue
            # A version new to the endpoint: sized and configured like the endpoint's other versions
            # (same workload, scale-to-zero and environment, where agents.deploy keeps the tracing setup).
            base = _entity_input(template).as_dict() if template is not None else {}
            keep = {k: base[k] for k in ("workload_size", "workload_type", "scale_to_zero_enabled", "environment_vars",
                                         "instance_profile_arn") if k in base}
            entities.append(sdk.ServedEntityInput.from_dict({
                "workload_size": "Small", "scale_to_zero_enabled": True, **keep,
                "name": served.entity_name, "entity_name": served.model_name, "entity_version": served.model_version,
            }))
        routes = [sdk.Route(served_entity_name=r.entity_name, traffic_percentage=r.percentage) for r in after.routes]
        waiter = client.serving_endpoints.update_config(
            name, served_entities=entities, traffic_config=sdk.TrafficConfig(routes=routes))
        if progress:
            progress(f"Update of {name!r} submitted; waiting for Model Serving to roll it out…")

        def report(endpoint: Any) -> None:
            if progress and endpoint.state is not None:
                progress(f"{name}: config update {getattr(endpoint.state.config_update, 'value', endpoint.state.config_update)}")

        detailed = waiter.result(timeout=timedelta(minutes=30), callback=report)
    except AgentOpsError:
        raise
    except OperationFailed as exc:
        raise ConflictError(
            f"Model Serving could not apply the new split on {name!r} ({exc}); the endpoint keeps serving "
            "its previous configuration."
        ) from exc
    except ResourceConflict as exc:
        raise ConflictError(
            f"Endpoint {name!r} already has an update in progress; wait for it to finish, then try again. ({exc})"
        ) from exc
    except PermissionDenied as exc:
        raise PermissionDeniedError(
            f"Changing traffic on {name!r} needs CAN_MANAGE on the serving endpoint. ({exc})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - classified below
        raise classify_error(exc, f"serving endpoint {name!r}") from exc
    return from_sdk(detailed)

