"""Which traces belong to which agent version: the versions' LoggedModel ids and aliases (cached per model
stamp), turned into trace links for the store's filters."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Sequence

from services import _mlflow_internal as internal
from services import registry
from services._clients import mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.monitoring.query import (
    ALIAS_TAG,
    SPLIT_TAGS,
    Split,
    TraceQuery,
    validate_query,
)
from services.settings import Settings
from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG


@dataclass(frozen=True)
class Attribution:
    """How traces map to agents and versions: ``mlflow.modelId`` -> LoggedModel -> registered version."""

    versions: tuple[Any, ...]  # registry.VersionLink of the agents in scope

    def by_model(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for link in self.versions:
            if link.model_id and link.model_id not in found:
                found[link.model_id] = link
        return found

    def model_ids(self, *, agent: str | None = None, version: str | None = None,
                  alias: str | None = None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            link.model_id for link in self.versions
            if link.model_id and (agent is None or link.agent == agent)
            and (version is None or link.version == version) and (alias is None or alias in link.aliases)
        ))


def attribution(agent: str | None = None, settings: Settings | None = None) -> Attribution:
    """The versions of ``agent`` (every agent when None) with their LoggedModel ids and aliases.

    An agent that is not (or no longer) registered has no versions: its traces are then found
    only through the app's older trace tags.
    """
    if agent:
        client = mlflow_client(settings)
        store = (str(getattr(client, "tracking_uri", "")), str(getattr(client, "_registry_uri", "")))
        try:
            with translate_errors(f"registered model {agent!r}"):
                model = client.get_registered_model(agent)
        except (NotFoundError, ValidationError):  # not a registered model (name unknown or not valid there)
            return Attribution(())
        # A model's versions change only with its update time (new or deleted versions) or its aliases:
        # while both are unchanged, the versions read last time still hold (one request, not a paged search).
        stamp = (getattr(model, "last_updated_timestamp", None), tuple(sorted(registry.aliases_of(model).items())))
        with _ATTRIBUTION_LOCK:
            cached = _ATTRIBUTIONS.get((store, agent))
        if cached is not None and cached[0] == stamp and stamp[0] is not None:
            return cached[1]
        try:
            links, _ = registry.agent_links(agent, settings)
        except (NotFoundError, ValidationError):
            links = []
        found = Attribution(tuple(links))
        with _ATTRIBUTION_LOCK:
            if len(_ATTRIBUTIONS) > 256:
                _ATTRIBUTIONS.clear()
            _ATTRIBUTIONS[(store, agent)] = (stamp, found)
        return found
    return Attribution(tuple(registry.all_version_links(settings)))


_ATTRIBUTIONS: dict[tuple, tuple[tuple, Attribution]] = {}  # (store, agent) -> (model stamp, attribution)
_ATTRIBUTION_LOCK = threading.Lock()


def filter_links(query: TraceQuery, attribution_: Attribution) -> list[internal.TraceLink]:
    """Agent, version and alias filters as trace links: the model ids, or the legacy tag."""
    links = []
    if query.agent:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent), ((AGENT_TAG, query.agent),)))
    if query.version:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent, version=query.version),
                                        ((VERSION_TAG, query.version),)))
    if query.alias:
        links.append(internal.TraceLink(attribution_.model_ids(agent=query.agent, alias=query.alias),
                                        ((ALIAS_TAG, query.alias),)))
    return links


def group_links(query: TraceQuery, split: Split, labels: Sequence[str],
                 attribution_: Attribution) -> dict[str, internal.TraceLink]:
    if split is Split.VERSION:
        return {v: internal.TraceLink(attribution_.model_ids(agent=query.agent, version=v), ((VERSION_TAG, v),))
                for v in labels}
    if split is Split.ALIAS:
        return {a: internal.TraceLink(attribution_.model_ids(agent=query.agent, alias=a), ((ALIAS_TAG, a),))
                for a in labels}
    return {g: internal.TraceLink(tags=((SPLIT_TAGS[split], g),)) for g in labels}


def other_tags(query: TraceQuery) -> dict[str, str]:
    """The tag filters that stay tags (endpoint and arm, written by the gateway)."""
    return {k: v for k, v in query.tag_equalities().items() if k in (ENDPOINT_TAG, ARM_TAG)}


def needs_attribution(query: TraceQuery, split: Split = Split.NONE) -> bool:
    return bool(query.agent or query.version or query.alias) or split in (Split.VERSION, Split.ALIAS)


def versions_with_traffic(query: TraceQuery, settings: Settings | None = None) -> list[str]:
    """Version numbers (of ``query.agent``, or of any agent) whose LoggedModel has traces in the window.

    Traces written with the app's older version tag count too. Newest version first.
    """
    validate_query(query)
    if not query.experiment_ids:
        return []
    attribution_ = attribution(query.agent, settings)
    client = mlflow_client(settings)
    with translate_errors("trace search"):
        model_ids = set(internal.trace_model_ids(client, list(query.experiment_ids), start_ms=query.start_ms,
                                                 end_ms=query.end_ms))
        legacy = internal.trace_tag_values(client, list(query.experiment_ids), VERSION_TAG, start_ms=query.start_ms,
                                           end_ms=query.end_ms)
    found = {link.version for link in attribution_.versions if link.model_id in model_ids}
    if query.agent is None or not attribution_.versions:
        found |= set(legacy)
    return sorted(found, key=lambda v: (-int(v) if v.isdigit() else 0, v))
