"""Registered versions of one agent: listing, detail, evaluations, traffic and diffs.

Everything an agent's version table needs comes from a fixed number of calls whatever the
number of versions: one paged ``search_model_versions``, one ``get_registered_model`` (aliases),
one paged ``search_logged_models`` (params), one paged ``search_runs`` (evaluations) and one
store-side aggregate of served traffic (``version_traffic``). No call per version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Sequence

import pandas as pd

from services import registry
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.evaluations import (
    AGENT_TAG,
    EVAL_RUN_FILTER,
    EvaluationSummary,
    summarise_runs,
)
from services.settings import Settings
from services.version_traffic import VersionTraffic, traffic_by_model

_PAGE = 200

# Columns of the frame ``list_versions`` returns, in order.
VERSION_COLUMNS = (
    "version", "created", "creator", "status", "aliases", "run_id", "model_id", "git_commit",
    "description", "params", "tags", "eval_dataset", "eval_run_id", "metrics",
    "traces", "error_rate", "p95_ms", "cost_per_request",
)


@dataclass(frozen=True)
class VersionDetail:
    """One version with everything known about it; ``evaluations`` newest first."""

    agent: str
    version: str
    created: datetime | None
    creator: str
    status: str
    description: str
    aliases: tuple[str, ...]
    run_id: str | None
    model_id: str | None
    source: str
    git_commit: str | None
    params: dict[str, str]
    tags: dict[str, str]
    evaluations: tuple[EvaluationSummary, ...]
    traffic: VersionTraffic


@dataclass(frozen=True)
class VersionDiff:
    """Params and tags of two versions; ``rows`` holds only what differs."""

    agent: str
    left: str
    right: str
    rows: pd.DataFrame  # columns: kind ("param" | "tag"), key, left, right

    @property
    def identical(self) -> bool:
        return self.rows.empty


def check_agent_name(name: str) -> str:
    """A registered model name, stripped; ``ValidationError`` when empty."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("Choose an agent: the registered model name is empty.")
    return name


def check_version(version: str | int) -> str:
    """A version number as text; ``ValidationError`` when it is not a positive integer."""
    text = str(version).strip().removeprefix("v")
    # ASCII digits only: str.isdigit() also accepts '²' (int() then raises) and '١' (another script).
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValidationError(f"{version!r} is not a version number; use a positive integer such as 3.")
    return str(int(text))


def model_id_of(source: str | None) -> str | None:
    """The LoggedModel id in a version's ``models:/m-<id>`` source, else None."""
    if source and source.startswith("models:/m-"):
        return source.removeprefix("models:/").split("/")[0]
    return None


def agent_experiment_ids(name: str, settings: Settings | None = None, *, model: Any = None,
                         versions: Sequence[Any] | None = None,
                         models: dict[str, registry.LoggedModelFacts] | None = None) -> list[str]:
    """Experiments holding an agent's evaluations and traces: those of its versions' LoggedModels
    and source runs, the tagged and attached ones, plus configured ids."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        if model is None:
            model = client.get_registered_model(name)
        if versions is None:
            versions = _all_versions(client, name)
        if models is not None:
            found = {m: f.experiment_id for m, f in models.items() if f.experiment_id}
            runs_only = [v for v in versions if not registry.model_id_of(v) and v.run_id]
            found.update(registry.experiments_of_versions(client, runs_only) if runs_only else {})
        else:
            found = registry.experiments_of_versions(client, versions)
    ids = registry.experiments_of_agent(registry.model_tags(model), versions, found)
    ids += [i for i in settings.experiment_ids if i not in ids]
    return ids


def _known_experiments(model: Any, settings: Settings | None) -> list[str]:
    tags = registry.model_tags(model)
    known = [tags[registry.EXPERIMENT_TAG]] if tags.get(registry.EXPERIMENT_TAG) else []
    return list(dict.fromkeys([*known, *registry.attached_experiments(tags), *(settings or get_settings()).experiment_ids]))


def list_versions(
    name: str, settings: Settings | None = None, *, search: str = "", now: datetime | None = None
) -> pd.DataFrame:
    """All versions of an agent, newest first, with columns ``VERSION_COLUMNS``.

    ``search`` keeps versions whose number, alias, creator, git commit, description or
    tag/param value contains it (case-insensitive).
    """
    name = check_agent_name(name)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        model = client.get_registered_model(name)
        versions = _all_versions(client, name)
    model_ids = [m for m in (registry.model_id_of(v) for v in versions) if m]
    with translate_errors("logged models"):
        models = registry.logged_models(client, model_ids, _known_experiments(model, settings))
    experiment_ids = agent_experiment_ids(name, settings, model=model, versions=versions, models=models)
    aliases_by_version: dict[str, list[str]] = {}
    for alias, number in registry.aliases_of(model).items():
        aliases_by_version.setdefault(str(number), []).append(alias)
    params = {m: f.params for m, f in models.items()}
    evaluations = latest_evaluation_by_version(name, settings, experiment_ids=experiment_ids)
    traffic = traffic_by_model(experiment_ids, model_ids, settings, now=now)
    rows = []
    for v in versions:
        number = str(v.version)
        model_id = registry.model_id_of(v)
        tags = dict(v.tags or {})
        evaluation = evaluations.get(number)
        flow = traffic.get(model_id or "", VersionTraffic(0, 0, None, None))
        rows.append(
            {
                "version": int(number),
                "created": registry.datetime_of(v.creation_timestamp),
                "creator": v.user_id or "",
                "status": str(v.status or ""),
                "aliases": tuple(sorted(aliases_by_version.get(number, []))),
                "run_id": v.run_id or None,
                "model_id": model_id,
                "git_commit": tags.get(registry.GIT_COMMIT_TAG),
                "description": v.description or "",
                "params": params.get(model_id or "", {}),
                "tags": tags,
                "eval_dataset": evaluation.dataset if evaluation else None,
                "eval_run_id": evaluation.run_id if evaluation else None,
                "metrics": dict(evaluation.metrics) if evaluation else {},
                "traces": flow.traces,
                "error_rate": flow.error_rate,
                "p95_ms": flow.p95_ms,
                "cost_per_request": flow.cost_per_request,
            }
        )
    frame = pd.DataFrame(rows, columns=list(VERSION_COLUMNS))
    frame = frame.sort_values("version", ascending=False, ignore_index=True)
    return filter_versions(frame, search)


def filter_versions(frame: pd.DataFrame, search: str) -> pd.DataFrame:
    """Rows whose number, alias, creator, commit, description, tag or param value contains ``search``."""
    needle = (search or "").strip().lower()
    if not needle or frame.empty:
        return frame
    return frame[frame.apply(lambda row: _matches(row, needle), axis=1)].reset_index(drop=True)


def paginate(frame: pd.DataFrame, page: int, page_size: int) -> tuple[pd.DataFrame, int]:
    """One page (1-based, clamped) of a frame, and the number of pages."""
    if page_size < 1:
        raise ValidationError("Page size must be at least 1.")
    pages = max(1, -(-len(frame) // page_size))
    page = min(max(1, page), pages)
    start = (page - 1) * page_size
    return frame.iloc[start : start + page_size].reset_index(drop=True), pages


def version_detail(name: str, version: str | int, settings: Settings | None = None) -> VersionDetail:
    """One version: registry fields, LoggedModel params, its evaluation runs and traffic."""
    name = check_agent_name(name)
    number = check_version(version)
    client = mlflow_client(settings)
    with translate_errors(f"registered model {name!r}"):
        model = client.get_registered_model(name)
    with translate_errors(f"version {number} of {name!r}"):
        v = client.get_model_version(name, number)
    experiment_ids = agent_experiment_ids(name, settings, model=model)
    model_id = registry.model_id_of(v)
    with translate_errors("logged models"):
        params = {m: f.params for m, f in registry.logged_models(client, [model_id] if model_id else []).items()}
    runs = evaluations_for(name, settings, experiment_ids=experiment_ids, version=number)
    traffic = (traffic_by_model(experiment_ids, [model_id], settings).get(model_id, VersionTraffic(0, 0, None, None))
               if model_id else VersionTraffic(0, 0, None, None))
    tags = dict(v.tags or {})
    return VersionDetail(
        agent=name,
        version=number,
        created=registry.datetime_of(v.creation_timestamp),
        creator=v.user_id or "",
        status=str(v.status or ""),
        description=v.description or "",
        aliases=tuple(sorted(a for a, n in registry.aliases_of(model).items() if str(n) == number)),
        run_id=v.run_id or None,
        model_id=model_id,
        source=v.source or "",
        git_commit=tags.get(registry.GIT_COMMIT_TAG),
        params=params.get(model_id or "", {}),
        tags=tags,
        evaluations=tuple(runs),
        traffic=traffic,
    )


def diff_versions(name: str, left: str | int, right: str | int, settings: Settings | None = None) -> VersionDiff:
    """Params and tags that differ between two versions, side by side."""
    left, right = check_version(left), check_version(right)
    a = version_detail(name, left, settings)
    b = version_detail(name, right, settings)
    rows = []
    for kind, x, y in (("param", a.params, b.params), ("tag", a.tags, b.tags)):
        for key in sorted(set(x) | set(y)):
            if x.get(key) != y.get(key):
                rows.append({"kind": kind, "key": key, "left": x.get(key), "right": y.get(key)})
    return VersionDiff(name, left, right, pd.DataFrame(rows, columns=["kind", "key", "left", "right"]))


def evaluations_for(
    name: str,
    settings: Settings | None = None,
    *,
    experiment_ids: Sequence[str] | None = None,
    version: str | None = None,
) -> list[EvaluationSummary]:
    """Evaluation runs of an agent (optionally one version), newest first, in one paged search."""
    experiment_ids = list(experiment_ids if experiment_ids is not None else agent_experiment_ids(name, settings))
    if not experiment_ids:
        return []
    client = mlflow_client(settings)
    # Runs made outside the app carry no app tag: every evaluation run of the experiments is read
    # and tied to its version through what MLflow recorded (services.evaluations.run_link).
    clauses = [EVAL_RUN_FILTER]
    runs = []
    with translate_errors("evaluation runs"):
        token = None
        while True:
            page = client.search_runs(
                experiment_ids, filter_string=" AND ".join(clauses), max_results=1000,
                page_token=token, order_by=["attributes.start_time DESC"],
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    # A run another agent's tag claims is not read further (no link lookup for it).
    runs = [r for r in runs if r.data.tags.get(AGENT_TAG) in (None, "", name)]
    summaries = summarise_runs(client, runs)
    return [r for r in summaries if r.agent == name and (version is None or r.version == str(version))]


def latest_evaluation_by_version(
    name: str, settings: Settings | None = None, *, experiment_ids: Sequence[str] | None = None
) -> dict[str, EvaluationSummary]:
    """The newest finished evaluation run of each version."""
    latest: dict[str, EvaluationSummary] = {}
    for run in evaluations_for(name, settings, experiment_ids=experiment_ids):
        if run.version and run.status == "FINISHED" and run.version not in latest:
            latest[run.version] = run
    return latest


def _all_versions(client: Any, name: str) -> list[Any]:
    versions = registry.agent_versions(client, name)
    if not versions:
        # search_model_versions raises nothing for an unknown name; the caller already
        # fetched the registered model, so an empty list means "no versions yet".
        return []
    return versions


def _logged_model_params(client: Any, experiment_ids: Sequence[str], model_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Params of LoggedModels by id: one paged search per experiment list, not one call per model."""
    wanted = set(model_ids)
    found: dict[str, dict[str, str]] = {}
    if not wanted:
        return found
    if experiment_ids:
        with translate_errors("logged models"):
            token = None
            while True:
                page = client.search_logged_models(
                    experiment_ids=list(experiment_ids), max_results=100, page_token=token
                )
                for model in page:
                    if model.model_id in wanted:
                        found[model.model_id] = dict(model.params or {})
                token = getattr(page, "token", None)
                if not token:
                    break
    # A version logged in an experiment we do not know about: direct lookups, all of them (an
    # agent with hundreds of versions gets params on every one), a few at a time.
    missing = sorted(wanted - set(found))
    if missing:
        from concurrent.futures import ThreadPoolExecutor

        def one(model_id: str) -> dict[str, str]:
            try:
                return dict(client.get_logged_model(model_id).params or {})
            except Exception:  # noqa: BLE001 - the model may live where we cannot read it
                return {}

        with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
            found.update(zip(missing, pool.map(one, missing)))
    return found


def _matches(row: pd.Series, needle: str) -> bool:
    haystack = [
        f"v{row['version']}", str(row["version"]), row["creator"], row["git_commit"] or "",
        row["description"], " ".join(row["aliases"]), " ".join(map(str, row["tags"].values())),
        " ".join(map(str, row["params"].values())),
    ]
    return any(needle in str(part).lower() for part in haystack)


def require_version_exists(client: Any, name: str, version: str) -> Any:
    """The model version, or ``NotFoundError`` naming the agent and version."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise NotFoundError(f"{name!r} has no version {version}. Pick an existing version.") from None
        with translate_errors(f"version {version} of {name!r}"):
            raise
