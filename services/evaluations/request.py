"""What an evaluation request asks for, checked before anything is written, and the version it names."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client, translate_errors
from services.errors import NotFoundError, ValidationError
from services.settings import Settings

# Registered-model tag naming the experiment of an agent (kept in sync with services.registry).
_EXPERIMENT_TAG = "agentops.experiment_id"
_REQUEST_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id: one per click on Run, kept until that request succeeded."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate: a version number or alias of ``agent`` on a named dataset or given rows.

    ``request_id`` makes the request idempotent: a retry with the same id after a failure
    evaluates at most once more, and returns the finished run once there is one.
    """

    agent: str
    version: str
    scorers: tuple[str, ...]
    dataset_name: str | None = None
    rows: tuple[dict[str, Any], ...] | None = None
    dataset_label: str | None = None
    options: Any = None  # services.scorers.ScorerOptions
    request_id: str | None = None


def request_fingerprint(request: EvaluationRequest) -> str:
    """A digest of what a request evaluates (not its id): equal for the same choices on the page."""
    payload = {
        "agent": request.agent, "version": request.version, "scorers": list(request.scorers),
        "dataset": request.dataset_name, "label": request.dataset_label, "rows": request.rows,
        "options": repr(request.options),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResolvedVersion:
    agent: str
    version: str
    model_id: str | None
    experiment_id: str


def check_request(request: EvaluationRequest) -> None:
    """Refuse a request that cannot run, with a message naming what to fix (before anything is written)."""
    if not request.agent.strip():
        raise ValidationError("Pick an agent to evaluate.")
    if not request.version.strip():
        raise ValidationError("Pick a version or alias to evaluate.")
    if (request.dataset_name is None) == (request.rows is None):
        raise ValidationError("Pick exactly one dataset: an MLflow evaluation dataset or an uploaded file.")
    if not request.scorers:
        raise ValidationError("Pick at least one scorer.")
    if request.request_id is not None and not _REQUEST_RE.match(request.request_id):
        raise ValidationError("A request id is 1-128 letters, digits, '_' or '-' (one per click on Run, e.g. a uuid).")


def resolve_version(agent: str, ref: str, settings: Settings | None = None) -> ResolvedVersion:
    """A version number or alias of an agent → its number, LoggedModel id and experiment."""
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    ref = ref.strip()
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        if ref.removeprefix("v").isdigit():
            version = client.get_model_version(agent, ref.removeprefix("v"))
        else:
            alias = ref.removeprefix("@")
            try:
                version = client.get_model_version_by_alias(agent, alias)
            except Exception as exc:  # noqa: BLE001 - a missing alias is reported as INVALID_PARAMETER_VALUE
                if "alias" in str(exc).lower() and "not found" in str(exc).lower():
                    raise NotFoundError(f"{agent} has no alias @{alias}.") from exc
                raise
    source = version.source or ""
    model_id = getattr(version, "model_id", None) or (
        source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None
    )
    experiment_id = (getattr(model, "tags", None) or {}).get(_EXPERIMENT_TAG) or _own_experiment(
        client, model_id, getattr(version, "run_id", None))
    if not experiment_id and settings.experiment_ids:
        experiment_id = settings.experiment_ids[0]
    if not experiment_id:
        # Nothing MLflow recorded says where the agent lives: only then does the app make an experiment.
        with translate_errors("the experiment of the agent"):
            experiment_id = get_or_create_experiment(client, f"agentops-{agent}", settings)
    return ResolvedVersion(agent, str(version.version), model_id, str(experiment_id))


def _own_experiment(client: Any, model_id: str | None, run_id: str | None) -> str | None:
    """The experiment of the version's LoggedModel, else of its source run: where the agent's traces live."""
    if model_id:
        try:
            with translate_errors(f"LoggedModel {model_id}"):
                found = getattr(client.get_logged_model(model_id), "experiment_id", None)
            if found:
                return str(found)
        except NotFoundError:
            pass
    if run_id:
        try:
            with translate_errors(f"run {run_id}"):
                return str(client.get_run(run_id).info.experiment_id)
        except NotFoundError:
            pass
    return None


def version_choices(agent: str, settings: Settings | None = None) -> dict[str, str]:
    """Versions an evaluation can target: ``{"@alias": "@alias (v2)", "2": "v2", ...}``, aliases first."""
    client = mlflow_client(settings)
    escaped = agent.replace("'", "\\'")
    with translate_errors(f"registered model {agent!r}"):
        model = client.get_registered_model(agent)
        versions = client.search_model_versions(filter_string=f"name='{escaped}'", max_results=1000)
    raw = getattr(model, "aliases", None) or {}
    aliases = raw if isinstance(raw, dict) else {a.alias: a.version for a in raw}
    choices = {f"@{alias}": f"@{alias} (v{number})" for alias, number in sorted(aliases.items())}
    for number in sorted({int(v.version) for v in versions}, reverse=True):
        choices[str(number)] = f"v{number}"
    return choices

