"""Registered agents and their versions (MLflow Model Registry / Unity Catalog).

An agent's data is found through the links MLflow itself records, so a workspace written by any
code reads the same as one written by this app:

* a version's LoggedModel is in its ``source`` (``models:/m-<id>``; ``model_id`` is None on
  SQLite), and the LoggedModel (or the version's source run) names the experiment holding the
  agent's traces and evaluations;
* a trace belongs to a version through its ``mlflow.modelId`` metadata (``VersionLink``).

The registered-model tag ``agentops.experiment_id`` (written by earlier versions of the app) and
experiments a user attached from the UI (``attach_experiment``) are read as extras.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from services import audit, roles
from services.filter_strings import escape
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.settings import Settings

# Registered-model tag naming the experiment that holds an agent's traces and evaluations
# (earlier versions of the app wrote it; still read, never required).
EXPERIMENT_TAG = "agentops.experiment_id"
# Registered-model tag listing experiments a user attached to the agent from the UI (comma-separated).
ATTACHED_TAG = "agentops.attached_experiments"
GIT_COMMIT_TAG = "git_commit"
MODEL_ID_METADATA = "mlflow.modelId"
_PAGE = 200


@dataclass(frozen=True)
class AgentSummary:
    """A registered agent: aliases map alias name -> version."""

    name: str
    description: str
    aliases: dict[str, str]
    version_count: int
    latest_version: str | None
    experiment_id: str | None  # the agent's own experiment: tagged, else the newest version's
    updated_at: datetime | None
    tags: dict[str, str]
    # Every experiment found for the agent: its versions' LoggedModels and source runs, the
    # legacy tag and attached ones (``experiment_id`` first).
    experiment_ids: tuple[str, ...] = ()


def datetime_of(ms: int | None) -> datetime | None:
    """An MLflow epoch-milliseconds timestamp as an aware UTC datetime (None when unset)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


def aliases_of(model: Any) -> dict[str, str]:
    """A registered model's aliases as ``{alias: version}``, whatever shape the store returned them in."""
    # Older entities expose a list of RegisteredModelAlias(alias, version).
    return _as_dict(model, "aliases", "alias", "version")


def _as_dict(model: Any, field: str, key: str, value: str) -> dict[str, str]:
    """``model.<field>`` as a str dict, whether a dict or a list of entries with ``key`` and ``value``."""
    raw = getattr(model, field, None) or {}
    if callable(raw):
        # Unity Catalog search results (RegisteredModelSearch) replace the field with a method that raises:
        # they carry neither aliases nor tags.
        return {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(getattr(e, key)): str(getattr(e, value)) for e in raw}


def model_tags(model: Any) -> dict[str, str]:
    """A registered model's tags as a dict, whatever shape the store returned them in."""
    return _as_dict(model, "tags", "key", "value")


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
        counts, latest, all_versions = _version_counts(client, [m.name for m in models])
        found = experiments_of_versions(client, all_versions)
    agents = []
    for model in models:
        aliases = aliases_of(model)
        tags = model_tags(model)
        if not aliases or not tags:
            # Search results leave aliases empty on SQLite, and aliases *and* tags empty on Unity
            # Catalog (where the experiment link lives in a tag); ask the model itself.
            with translate_errors(f"registered model {model.name!r}"):
                full = client.get_registered_model(model.name)
            aliases = aliases or aliases_of(full)
            tags = tags or model_tags(full)
        agents.append(
            AgentSummary(
                name=model.name,
                description=model.description or "",
                aliases=dict(sorted(aliases.items())),
                version_count=counts.get(model.name, 0),
                latest_version=latest.get(model.name),
                experiment_id=None,
                updated_at=datetime_of(model.last_updated_timestamp),
                tags=tags,
            )
        )
        ids = experiments_of_agent(tags, [v for v in all_versions if v.name == model.name], found)
        agents[-1] = _with_experiments(agents[-1], ids)
    return sorted(agents, key=lambda a: a.name)


def _with_experiments(agent: AgentSummary, ids: list[str]) -> AgentSummary:
    from dataclasses import replace

    return replace(agent, experiment_id=ids[0] if ids else None, experiment_ids=tuple(ids))


def _version_counts(client: Any, names: list[str]) -> tuple[dict[str, int], dict[str, str], list[Any]]:
    counts: dict[str, int] = {}
    latest: dict[str, str] = {}
    every: list[Any] = []

    def add(versions: Any) -> None:
        for version in versions:
            every.append(version)
            counts[version.name] = counts.get(version.name, 0) + 1
            if version.name not in latest or int(version.version) > int(latest[version.name]):
                latest[version.name] = str(version.version)

    try:
        # One paged listing of every version, grouped here: no call per agent.
        add(_all_pages(client.search_model_versions, filter_string=None))
        return counts, latest, every
    except Exception:  # noqa: BLE001 - Unity Catalog requires a name filter
        counts.clear()
        latest.clear()
        every.clear()
    for name in names:
        escaped = name.replace("'", "\\'")
        add(_all_pages(client.search_model_versions, filter_string=f"name='{escaped}'"))
    return counts, latest, every


def _all_pages(method: Any, **kwargs: Any) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = method(max_results=_PAGE, page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


# --- links MLflow records ------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionLink:
    """One registered version and the LoggedModel its traces carry as ``mlflow.modelId``."""

    agent: str
    version: str
    model_id: str | None
    run_id: str | None
    experiment_id: str | None
    aliases: tuple[str, ...] = ()


def model_id_of(version: Any) -> str | None:
    """The LoggedModel id of a model version: its ``model_id``, else the ``models:/m-<id>`` source."""
    model_id = getattr(version, "model_id", None)
    if model_id:
        return str(model_id)
    source = getattr(version, "source", None) if not isinstance(version, str) else version
    if source and source.startswith("models:/m-"):
        return source.removeprefix("models:/").split("/")[0]
    return None


# A LoggedModel's (or run's) experiment never changes: remembered per store for the process.
_EXPERIMENT_OF: dict[tuple[str, str], str | None] = {}
_EXPERIMENT_LOCK = threading.Lock()


def _store_key(client: Any) -> str:
    return str(getattr(client, "_tracking_client", None) and client._tracking_client.tracking_uri or id(client))


def experiments_of_versions(client: Any, versions: Iterable[Any]) -> dict[str, str]:
    """Experiment id of each version's LoggedModel (or, without one, its source run), by model/run id.

    Ids already resolved in this process are not asked again. Models in one experiment are
    resolved together: one ``get_logged_model`` finds the experiment, one paged
    ``search_logged_models`` there finds its other models.
    """
    store = _store_key(client)
    model_ids, run_ids = [], []
    for v in versions:
        model_id = model_id_of(v)
        if model_id:
            model_ids.append(model_id)
        elif getattr(v, "run_id", None):
            run_ids.append(str(v.run_id))
    wanted = list(dict.fromkeys(model_ids + run_ids))
    with _EXPERIMENT_LOCK:
        missing = [i for i in wanted if (store, i) not in _EXPERIMENT_OF]
    pending = [m for m in dict.fromkeys(model_ids) if m in set(missing)]
    while pending:
        first = pending[0]
        experiment = _lookup(client, "model", first)
        _remember(store, first, experiment)
        if experiment:
            for model in _models_in(client, experiment):
                _remember(store, model, experiment)
        with _EXPERIMENT_LOCK:
            pending = [m for m in pending if (store, m) not in _EXPERIMENT_OF]
    runs = [r for r in dict.fromkeys(run_ids) if r in set(missing)]
    if runs:
        with ThreadPoolExecutor(max_workers=min(8, len(runs))) as pool:
            for run_id, experiment in zip(runs, pool.map(lambda r: _lookup(client, "run", r), runs)):
                _remember(store, run_id, experiment)
    with _EXPERIMENT_LOCK:
        return {i: e for i in wanted if (e := _EXPERIMENT_OF.get((store, i)))}


def _remember(store: str, key: str, experiment: str | None) -> None:
    with _EXPERIMENT_LOCK:
        _EXPERIMENT_OF[(store, key)] = experiment


def _lookup(client: Any, kind: str, key: str) -> str | None:
    try:
        if kind == "model":
            return str(client.get_logged_model(key).experiment_id)
        return str(client.get_run(key).info.experiment_id)
    except Exception:  # noqa: BLE001 - deleted, or where this user cannot read: no experiment
        return None


def _models_in(client: Any, experiment_id: str) -> list[str]:
    ids: list[str] = []
    token = None
    try:
        while True:
            page = client.search_logged_models(experiment_ids=[experiment_id], max_results=100, page_token=token)
            ids.extend(m.model_id for m in page)
            token = getattr(page, "token", None)
            if not token:
                return ids
    except Exception:  # noqa: BLE001 - the direct lookups still work without the bulk listing
        return ids


@dataclass(frozen=True)
class LoggedModelFacts:
    """What the Versions page needs of a LoggedModel."""

    model_id: str
    experiment_id: str | None
    params: dict[str, str]


def logged_models(client: Any, model_ids: Sequence[str], known_experiments: Sequence[str] = ()
                  ) -> dict[str, LoggedModelFacts]:
    """Experiment and params of every LoggedModel in ``model_ids``, however many there are.

    One paged ``search_logged_models`` over the experiments already known; then, while some
    remain, one ``get_logged_model`` finds a further experiment and one paged search there
    finds its other models. No call per model unless each lives in an experiment of its own.
    """
    wanted = set(m for m in model_ids if m)
    found: dict[str, LoggedModelFacts] = {}
    searched: set[str] = set()
    store = _store_key(client)

    def search(experiment_ids: list[str]) -> None:
        searched.update(experiment_ids)
        token = None
        while True:
            page = client.search_logged_models(experiment_ids=experiment_ids, max_results=100, page_token=token)
            for m in page:
                _remember(store, m.model_id, str(m.experiment_id))
                if m.model_id in wanted:
                    found[m.model_id] = LoggedModelFacts(m.model_id, str(m.experiment_id), dict(m.params or {}))
            token = getattr(page, "token", None)
            if not token:
                return

    if wanted and known_experiments:
        search(list(dict.fromkeys(known_experiments)))
    while wanted - set(found):
        model_id = sorted(wanted - set(found))[0]
        try:
            model = client.get_logged_model(model_id)
        except Exception:  # noqa: BLE001 - deleted, or where this user cannot read it
            found[model_id] = LoggedModelFacts(model_id, None, {})
            continue
        found[model_id] = LoggedModelFacts(model_id, str(model.experiment_id), dict(model.params or {}))
        _remember(store, model_id, str(model.experiment_id))
        if str(model.experiment_id) not in searched:
            search([str(model.experiment_id)])
    return found


def attached_experiments(tags: dict[str, str]) -> list[str]:
    """Experiment ids a user attached to an agent (the registered-model tag ``ATTACHED_TAG``)."""
    return [part.strip() for part in (tags.get(ATTACHED_TAG) or "").split(",") if part.strip()]


def experiments_of_agent(tags: dict[str, str], versions: Sequence[Any], found: dict[str, str]) -> list[str]:
    """An agent's experiments: the tagged one, its versions' (newest first, from ``found``), then attached ones."""
    ids: list[str] = []
    if tags.get(EXPERIMENT_TAG):
        ids.append(tags[EXPERIMENT_TAG])
    newest_first = sorted(versions, key=lambda v: int(v.version), reverse=True)
    for v in newest_first:
        experiment = found.get(model_id_of(v) or "") or found.get(str(getattr(v, "run_id", None) or ""))
        if experiment:
            ids.append(experiment)
    ids += attached_experiments(tags)
    return list(dict.fromkeys(ids))


def agent_versions(client: Any, name: str) -> list[Any]:
    """Every version of one registered model (paged)."""
    return _all_pages(client.search_model_versions, filter_string=f"name='{escape(name)}'")


def agent_links(name: str, settings: Settings | None = None) -> tuple[list[VersionLink], list[str]]:
    """The agent's versions with their LoggedModel ids, and the experiments holding its data.

    Raises ``NotFoundError`` when no agent has that name.
    """
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        model = client.get_registered_model(name)
        versions = agent_versions(client, name)
        found = experiments_of_versions(client, versions)
    by_version: dict[str, list[str]] = {}
    for alias, number in aliases_of(model).items():
        by_version.setdefault(str(number), []).append(alias)
    links = [
        VersionLink(name, str(v.version), model_id_of(v), v.run_id or None,
                    found.get(model_id_of(v) or "") or found.get(str(v.run_id or "")),
                    tuple(sorted(by_version.get(str(v.version), []))))
        for v in versions
    ]
    links.sort(key=lambda link: int(link.version))
    return links, experiments_of_agent(model_tags(model), versions, found)


def attach_experiment(name: str, experiment_id: str, identity: Any, settings: Settings | None = None) -> list[str]:
    """Attach an experiment to an agent (for traces logged outside any LoggedModel); audited.

    Validates before writing: the agent and the experiment must exist. Returns the attached ids.
    """
    experiment_id = _check_experiment_id(experiment_id)
    user = _allowed(identity, settings)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        model = client.get_registered_model(name)
    try:
        with translate_errors(f"experiment {experiment_id}"):
            experiment = client.get_experiment(experiment_id)
    except NotFoundError:
        raise NotFoundError(f"Experiment {experiment_id} does not exist; nothing was attached to {name!r}. "
                            "Give the id shown in MLflow's experiment page.") from None
    if getattr(experiment, "lifecycle_stage", "active") != "active":
        raise ValidationError(f"Experiment {experiment_id} is deleted; restore it first. Nothing was attached.")
    before = attached_experiments(model_tags(model))
    if experiment_id in before:
        return before
    after = [*before, experiment_id]
    _record_attachment(name, "attach", experiment_id, before, after, user, settings)
    with translate_errors(f"registered model {name!r}"):
        client.set_registered_model_tag(name, ATTACHED_TAG, ",".join(after))
    return after


def detach_experiment(name: str, experiment_id: str, identity: Any, settings: Settings | None = None) -> list[str]:
    """Detach an experiment a user attached earlier; audited. Returns the attached ids."""
    experiment_id = _check_experiment_id(experiment_id)
    user = _allowed(identity, settings)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        model = client.get_registered_model(name)
    before = attached_experiments(model_tags(model))
    if experiment_id not in before:
        raise ValidationError(f"Experiment {experiment_id} is not attached to {name!r}; nothing was changed.")
    after = [e for e in before if e != experiment_id]
    _record_attachment(name, "detach", experiment_id, before, after, user, settings)
    with translate_errors(f"registered model {name!r}"):
        if after:
            client.set_registered_model_tag(name, ATTACHED_TAG, ",".join(after))
        else:
            client.delete_registered_model_tag(name, ATTACHED_TAG)
    return after


def _allowed(identity: Any, settings: Settings | None) -> str:
    roles.enforce(identity, roles.Action.EDIT_RULES, settings or get_settings())
    return identity.user


def _check_experiment_id(experiment_id: Any) -> str:
    text = str(experiment_id or "").strip()
    if not text or len(text) > 64 or not all(ch.isalnum() or ch in "-_" for ch in text):
        raise ValidationError(f"{experiment_id!r} is not an experiment id; give the id shown in MLflow, e.g. 123.")
    return text


def _record_attachment(name: str, action: str, experiment_id: str, before: list[str], after: list[str],
                       user: str, settings: Settings | None) -> None:
    audit.record_experiment_link(model=name, action=action, experiment_id=experiment_id, before=before,
                                 after=after, user=user, settings=settings)


def all_version_links(settings: Settings | None = None) -> list[VersionLink]:
    """Every version of every agent with its LoggedModel id and aliases (experiments not resolved)."""
    client = mlflow_client(settings)
    agents = list_agents(settings)
    with translate_errors("the model registry"):
        _, _, versions = _version_counts(client, [a.name for a in agents])
    aliases = {a.name: a.aliases for a in agents}
    links = []
    for v in versions:
        held = tuple(sorted(alias for alias, n in aliases.get(v.name, {}).items() if str(n) == str(v.version)))
        links.append(VersionLink(v.name, str(v.version), model_id_of(v), v.run_id or None, None, held))
    return sorted(links, key=lambda link: (link.agent, int(link.version)))
