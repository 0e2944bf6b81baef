"""Registered agents and their versions (MLflow Model Registry / Unity Catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from services._clients import mlflow_client, translate_errors
from services.settings import Settings

# Registered-model tag naming the experiment that holds an agent's traces and evaluations.
EXPERIMENT_TAG = "agentops.experiment_id"
GIT_COMMIT_TAG = "git_commit"
_PAGE = 200


@dataclass(frozen=True)
class AgentSummary:
    """A registered agent: aliases map alias name -> version."""

    name: str
    description: str
    aliases: dict[str, str]
    version_count: int
    latest_version: str | None
    experiment_id: str | None
    updated_at: datetime | None
    tags: dict[str, str]


def _ts(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


def _aliases(model: Any) -> dict[str, str]:
    raw = getattr(model, "aliases", None) or {}
    if callable(raw):
        # Unity Catalog search results (RegisteredModelSearch) replace the field with a method that raises.
        return {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    # Older entities expose a list of RegisteredModelAlias(alias, version).
    return {str(a.alias): str(a.version) for a in raw}


def _tags(model: Any) -> dict[str, str]:
    raw = getattr(model, "tags", None) or {}
    if callable(raw):
        # As with aliases: Unity Catalog search results carry no tags.
        return {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(t.key): str(t.value) for t in raw}


def list_agents(settings: Settings | None = None, *, max_results: int = 1000) -> list[AgentSummary]:
    """All registered agents with their aliases and version counts, in few calls."""
    client = mlflow_client(settings)
    with translate_errors("the model registry"):
        models = []
        token = None
        while len(models) < max_results:
            page = client.search_registered_models(max_results=_PAGE, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                break
        counts, latest = _version_counts(client, [m.name for m in models])
    agents = []
    for model in models:
        aliases = _aliases(model)
        tags = _tags(model)
        if not aliases or not tags:
            # Search results leave aliases empty on SQLite, and aliases *and* tags empty on Unity
            # Catalog (where the experiment link lives in a tag); ask the model itself.
            with translate_errors(f"registered model {model.name!r}"):
                full = client.get_registered_model(model.name)
            aliases = aliases or _aliases(full)
            tags = tags or _tags(full)
        agents.append(
            AgentSummary(
                name=model.name,
                description=model.description or "",
                aliases=dict(sorted(aliases.items())),
                version_count=counts.get(model.name, 0),
                latest_version=latest.get(model.name),
                experiment_id=tags.get(EXPERIMENT_TAG),
                updated_at=_ts(model.last_updated_timestamp),
                tags=tags,
            )
        )
    return sorted(agents, key=lambda a: a.name)


def _version_counts(client: Any, names: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    counts: dict[str, int] = {}
    latest: dict[str, str] = {}

    def add(versions: Any) -> None:
        for version in versions:
            counts[version.name] = counts.get(version.name, 0) + 1
            if version.name not in latest or int(version.version) > int(latest[version.name]):
                latest[version.name] = str(version.version)

    try:
        # One paged listing of every version, grouped here: no call per agent.
        add(_all_pages(client.search_model_versions, filter_string=None))
        return counts, latest
    except Exception:  # noqa: BLE001 - Unity Catalog requires a name filter
        counts.clear()
        latest.clear()
    for name in names:
        escaped = name.replace("'", "\\'")
        add(_all_pages(client.search_model_versions, filter_string=f"name='{escaped}'"))
    return counts, latest


def _all_pages(method: Any, **kwargs: Any) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = method(max_results=_PAGE, page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items
