"""Databricks production monitoring's scheduled scorers (``/api/2.0/managed-evals/...``) for the harness.

What MLflow 3.17 sends on a ``databricks`` tracking URI was read from the installed package
(``mlflow/genai/scorers/registry.py``, ``DatabricksStore``; deleting every version goes through
databricks-agents' ``ManagedEvalsClient.delete_scheduled_scorer``):

* ``GET    /api/2.0/managed-evals/scheduled-scorers/{experiment_id}[?page_token=]`` — the experiment's
  scheduled scorers (``list_scorers``, ``get_scorer`` and the first step of every change);
* ``PATCH  .../scheduled-scorers/{experiment_id}`` with ``{"scheduled_scorers": {"scorers": [...]},
  "update_mask": "scheduled_scorers.scorers"}`` — the whole list replaced (``register``, ``start``,
  ``update``, ``stop``, delete); 404 when the experiment has no scheduled scorers yet, after which
  MLflow creates them with
* ``POST   .../scheduled-scorers/{experiment_id}`` (409 ``ALREADY_EXISTS`` when they exist);
* ``DELETE .../scheduled-scorers/{experiment_id}`` — all of them;
* ``GET    /api/2.0/managed-evals/experiments/{id}/scorers/{base64url(name)}/versions[/{n}]`` and
  ``DELETE .../versions/{n}`` — the immutable scorer versions.

databricks-sdk has no types for these, so every scorer in a request is parsed into MLflow's own
wire type (``_DatabricksScheduledScorerConfig``, which keeps unknown fields) and every answer is built
from it (and from ``_DatabricksScorerVersion``), so a change in what MLflow sends or parses fails
here. Refused as the service refuses: an unknown or deleted experiment (404), a sample rate outside
0–1, two scorers with one name, a filter MLflow's trace search cannot parse, a serialized scorer that
is not MLflow's scorer JSON, a scorer both built-in and custom or neither, a missing or wrong
``update_mask``, an ``experiment_id`` in the body that is not the one in the path, a field the
request type does not have (400). Permission refusals (403) come from ``MlflowForwarder.deny``, which
sees these calls first. The service assigns ``scorer_version``: 1 for a new name, one more whenever
the serialized scorer changes.
"""

from __future__ import annotations

import json
import threading
from base64 import urlsafe_b64decode
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

PREFIX = "/api/2.0/managed-evals/"
SCHEDULED = PREFIX + "scheduled-scorers/"
MASK = "scheduled_scorers.scorers"
_BODY_FIELDS = {"POST": {"experiment_id", "scheduled_scorers"},
                "PATCH": {"experiment_id", "scheduled_scorers", "update_mask"}}


@dataclass(frozen=True)
class ManagedEvalsCall:
    """One managed-evals request the harness answered."""

    method: str
    path: str
    query: str
    body: Any
    status: int


def _error(status: int, code: str, message: str) -> tuple[int, dict]:
    return status, {"error_code": code, "message": message}


@dataclass
class ManagedEvalsApi:
    """Scheduled scorers per experiment, answered for an ``MlflowForwarder`` (``install``)."""

    # experiment id -> True when it exists and is active (the forwarder asks the mlflow server).
    experiment_active: Callable[[str], bool] = lambda _id: True
    page_size: int = 50
    # experiment id -> current scheduled scorer configs (MLflow's wire type), absent when never created.
    scheduled: dict[str, list[Any]] = field(default_factory=dict)
    # (experiment id, name) -> every version of the scorer (MLflow's ``_DatabricksScorerVersion``).
    versions: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    calls: list[ManagedEvalsCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, forwarder: Any) -> "ManagedEvalsApi":
        """Answer the forwarder's managed-evals calls; experiments are looked up in its mlflow server."""

        def active(experiment_id: str) -> bool:
            status, payload = forwarder._forward("GET", "/api/2.0/mlflow/experiments/get",
                                                 f"experiment_id={experiment_id}", None)
            return status == 200 and payload.get("experiment", {}).get("lifecycle_stage") == "active"

        self.experiment_active = active
        forwarder.managed_evals = self
        return self

    # --- views for tests ---------------------------------------------------------------------------

    def scorers_of(self, experiment_id: str) -> dict[str, Any]:
        """The experiment's current scheduled scorers by name (MLflow's wire type)."""
        return {c.name: c for c in self.scheduled.get(experiment_id, [])}

    def changes(self, start: int = 0) -> list[ManagedEvalsCall]:
        """The calls from ``start`` on that change state (every method but GET)."""
        return [c for c in self.calls[start:] if c.method != "GET"]

    # --- the handler -------------------------------------------------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        """Scheduled scorers and scorer versions; other managed-evals families (review apps) are not ours."""
        return path.startswith((SCHEDULED, PREFIX + "experiments/"))

    def answer(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        with self._lock:
            try:
                status, payload = self._route(method, path, query, body)
            except Exception as exc:  # noqa: BLE001 - a harness bug must fail the test, not look like a refusal
                status, payload = _error(500, "HARNESS_ERROR", repr(exc))
            self.calls.append(ManagedEvalsCall(method, path, query, body, status))
            return status, payload

    def _route(self, method: str, path: str, query: str, body: Any) -> tuple[int, Any]:
        if path.startswith(SCHEDULED):
            experiment_id = unquote(path[len(SCHEDULED):])
            if not experiment_id or "/" in experiment_id:
                return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
            if not self.experiment_active(experiment_id):
                return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Experiment with id '{experiment_id}' does not exist.")
            if method == "GET":
                return self._list(experiment_id, query)
            if method in ("POST", "PATCH"):
                return self._write(method, experiment_id, body)
            if method == "DELETE":
                if self.scheduled.pop(experiment_id, None) is None:
                    return _error(404, "NOT_FOUND", f"Experiment {experiment_id} has no scheduled scorers.")
                return 200, {}
        parts = path[len(PREFIX):].split("/")
        if len(parts) in (5, 6) and parts[0] == "experiments" and parts[2] == "scorers" and parts[4] == "versions":
            return self._versions(method, parts)
        return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def _list(self, experiment_id: str, query: str) -> tuple[int, Any]:
        configs = self.scheduled.get(experiment_id, [])
        token = (parse_qs(query).get("page_token") or ["0"])[0]
        if not token.isdigit() or int(token) > len(configs):
            return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid page_token {token!r}.")
        start = int(token)
        page = configs[start:start + self.page_size]
        answer = self._info(experiment_id, page)
        if start + self.page_size < len(configs):
            answer["next_page_token"] = str(start + self.page_size)
        return 200, answer

    @staticmethod
    def _info(experiment_id: str, configs: list[Any]) -> dict[str, Any]:
        # As a proto answer: an empty repeated field is left out.
        scorers = [c.model_dump(exclude_unset=True) for c in configs]
        return {"experiment_id": experiment_id, "scheduled_scorers": {"scorers": scorers} if scorers else {}}

    def _write(self, method: str, experiment_id: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return _error(400, "MALFORMED_REQUEST", "The request body must be a JSON object.")
        unknown = sorted(set(body) - _BODY_FIELDS[method])
        if unknown:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Unknown field(s) in the request: {', '.join(unknown)}.")
        if str(body.get("experiment_id", experiment_id)) != experiment_id:
            return _error(400, "INVALID_PARAMETER_VALUE",
                          f"experiment_id {body['experiment_id']!r} does not match the path ({experiment_id}).")
        if method == "PATCH" and body.get("update_mask") != MASK:
            return _error(400, "INVALID_PARAMETER_VALUE", f"update_mask must be '{MASK}', got {body.get('update_mask')!r}.")
        exists = experiment_id in self.scheduled
        if method == "PATCH" and not exists:
            return _error(404, "NOT_FOUND", f"Experiment {experiment_id} has no scheduled scorers to update.")
        if method == "POST" and exists:
            return _error(409, "ALREADY_EXISTS", f"Experiment {experiment_id} already has scheduled scorers.")
        scheduled = body.get("scheduled_scorers")
        if not isinstance(scheduled, dict) or set(scheduled) - {"scorers"}:
            return _error(400, "INVALID_PARAMETER_VALUE", "scheduled_scorers must be an object with 'scorers' only.")
        items = scheduled.get("scorers") or []
        if not isinstance(items, list):
            return _error(400, "INVALID_PARAMETER_VALUE", "scheduled_scorers.scorers must be a list.")
        parsed = []
        for item in items:
            config, problem = _parse_config(item)
            if problem:
                return _error(400, "INVALID_PARAMETER_VALUE", problem)
            parsed.append(config)
        names = [c.name for c in parsed]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Scheduled scorer names must be unique: {', '.join(duplicates)}.")
        kept = [self._versioned(experiment_id, c) for c in parsed]
        self.scheduled[experiment_id] = kept
        return 200, self._info(experiment_id, kept)

    def _versioned(self, experiment_id: str, config: Any) -> Any:
        """The config as stored: ``scorer_version`` set by the service, every other field as sent."""
        from mlflow.genai.scorers.registry import DatabricksStore, _DatabricksScorerVersion

        history = self.versions.setdefault((experiment_id, config.name), [])
        if not history or history[-1].serialized_scorer != config.serialized_scorer:
            number = len(history) + 1
            history.append(_DatabricksScorerVersion.model_validate({
                "name": DatabricksStore._scorer_version_resource_name(experiment_id, config.name, number),
                "display_name": config.name, "scorer_version": number,
                "create_time": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
                "serialized_scorer": config.serialized_scorer,
                **({"builtin": config.builtin} if config.builtin is not None else {"custom": config.custom}),
            }))
        return type(config).model_validate({**config.model_dump(exclude_unset=True),
                                            "scorer_version": history[-1].scorer_version})

    def _versions(self, method: str, parts: list[str]) -> tuple[int, Any]:
        experiment_id = unquote(parts[1])
        try:
            name = urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)).decode("utf-8")
        except ValueError:
            return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid scorer key {parts[3]!r}.")
        if not self.experiment_active(experiment_id):
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Experiment with id '{experiment_id}' does not exist.")
        history = self.versions.get((experiment_id, name))
        if not history:
            return _error(404, "NOT_FOUND", f"Scorer '{name}' not found in experiment {experiment_id}.")
        if len(parts) == 5 and method == "GET":
            return 200, {"scorer_versions": [v.model_dump(exclude_unset=True) for v in history]}
        if len(parts) == 6 and parts[5].isdigit():
            found = next((v for v in history if v.scorer_version == int(parts[5])), None)
            if found is None:
                return _error(404, "NOT_FOUND", f"Scorer version {parts[5]} of '{name}' not found.")
            if method == "GET":
                return 200, found.model_dump(exclude_unset=True)
            if method == "DELETE":
                history.remove(found)
                return 200, {}
        return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {'/'.join(parts)}'")


def _parse_config(item: Any) -> tuple[Any, str]:
    """A request's scorer as MLflow's wire type, or the reason the service refuses it."""
    from mlflow.exceptions import MlflowException
    from mlflow.genai.scorers.registry import _DatabricksScheduledScorerConfig
    from mlflow.utils.search_utils import SearchTraceUtils
    from pydantic import ValidationError

    try:
        config = _DatabricksScheduledScorerConfig.model_validate(item)
    except ValidationError as exc:
        return None, f"Invalid scheduled scorer: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc']})."
    if not config.name.strip():
        return None, "A scheduled scorer needs a name."
    try:
        serialized = json.loads(config.serialized_scorer)
    except ValueError:
        serialized = None
    if not isinstance(serialized, dict) or "mlflow_version" not in serialized:
        return None, f"serialized_scorer of '{config.name}' is not a serialized MLflow scorer."
    if (config.builtin is None) == (config.custom is None):
        return None, f"Scheduled scorer '{config.name}' must be exactly one of builtin or custom."
    if config.builtin is not None and (not serialized.get("builtin_scorer_class") or config.builtin.get("name") != config.name):
        return None, f"Scheduled scorer '{config.name}' is marked builtin but its serialized scorer is not."
    rate = config.sample_rate
    if rate is not None and (isinstance(rate, bool) or not 0.0 <= float(rate) <= 1.0):
        return None, f"sample_rate of '{config.name}' must be between 0 and 1, got {rate}."
    if config.filter_string:
        try:
            SearchTraceUtils.parse_search_filter_for_search_traces(config.filter_string)
        except MlflowException as exc:
            return None, f"filter_string of '{config.name}' is invalid: {exc.message}"
    return config, ""
