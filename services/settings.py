"""Configuration: every environment variable the app reads, declared once here with its default.

``VARIABLES`` below is the one list: name, default, meaning and where the value comes from on
Databricks Apps. Other modules never read ``os.environ`` for app configuration; they call
``load_settings()`` (the frozen ``Settings``) or ``read(name)`` (for values read per call, such as
the role mapping). ``tests/services/test_settings.py`` checks ``app.yaml`` and ``databricks.yml``
against this list.

On Databricks, MLflow calls (tracking, registry, audit) run as the app's service principal with the
signed-in user recorded; Model Serving, SQL and the user directory are called with the user's
forwarded token when user authorization is on (see the README, "Who makes each call").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Mapping

from services.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Source(StrEnum):
    """Where a variable's value comes from when the app runs on Databricks Apps."""

    APP_YAML = "app.yaml"  # an ``env`` entry (``value`` or ``valueFrom`` a resource) in app.yaml
    PLATFORM = "platform"  # injected by Databricks Apps
    OPERATOR = "operator"  # optional; set by whoever runs the app


@dataclass(frozen=True)
class Variable:
    name: str
    default: str | None
    meaning: str
    source: Source = Source.OPERATOR
    required_on_databricks: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("AGENTOPS_BACKEND", "local", "``local`` (embedded SQLite store), ``mlflow`` (a remote ``mlflow server``) "
             "or ``databricks``", Source.APP_YAML, True),
    Variable("AGENTOPS_DATA_DIR", "<project>/.agentops", "folder for the local store, artifacts and endpoint configs"),
    Variable("AGENTOPS_MLFLOW_URI", None, "tracking URI of a remote ``mlflow server``; required when the backend is "
             "``mlflow``"),
    Variable("AGENTOPS_EXPERIMENT_IDS", None, "comma-separated experiment ids holding traces and evaluations "
             "(Databricks: ``valueFrom`` the experiment resource)", Source.APP_YAML, True),
    Variable("AGENTOPS_AUDIT_EXPERIMENT_ID", None, "id of the experiment holding the audit trail (Databricks: "
             "``valueFrom`` the audit-experiment resource); wins over AGENTOPS_AUDIT_EXPERIMENT", Source.APP_YAML),
    Variable("AGENTOPS_AUDIT_EXPERIMENT", "agentops-audit (Databricks: /Shared/agentops-audit)",
             "name of the audit experiment, created when missing; on Databricks an absolute workspace path "
             "(``/Shared/...`` or ``/Users/<user>/...``)"),
    Variable("AGENTOPS_SERVING_ENDPOINT", None, "Databricks: the serving endpoint the app was granted "
             "(``valueFrom`` the serving-endpoint resource); listed first and read even when the list "
             "call does not return it", Source.APP_YAML),
    Variable("AGENTOPS_REVIEW_EXPERIMENT", "agentops-review (Databricks: /Shared/agentops-review)",
             "experiment (name) that holds the review queues (one run per queue); created when the first queue is, "
             "never on a read; on Databricks a bare name is kept under /Shared/"),
    Variable("AGENTOPS_STATE_EXPERIMENT", "agentops-team-state (Databricks: /Shared/agentops-team-state)",
             "experiment (name) holding the team's shared configuration: endpoints and splits, alert thresholds, "
             "prices, roles (``services.team_state``)"),
    Variable("AGENTOPS_GATEWAY_URL", "http://127.0.0.1:8765", "local serving gateway"),
    Variable("DATABRICKS_HOST", None, "workspace URL; required when the backend is ``databricks``", Source.PLATFORM, True),
    Variable("DATABRICKS_APP_NAME", None, "set by Databricks Apps; shown in the sidebar", Source.PLATFORM),
    Variable("DATABRICKS_CLIENT_ID", None, "the app's service principal (set by Databricks Apps)", Source.PLATFORM, True),
    Variable("DATABRICKS_CLIENT_SECRET", None, "the app's service principal (set by Databricks Apps)",
             Source.PLATFORM, True),
    Variable("AGENTOPS_USER_AUTHORIZATION", "off", "``on``: changes need the signed-in user's forwarded token; "
             "Model Serving, SQL and user-directory calls are made with it (the scopes in databricks.yml), "
             "MLflow calls as the app with the user recorded", Source.APP_YAML),
    Variable("AGENTOPS_ROLE_GROUPS", None, "workspace groups mapped to roles, e.g. "
             "``operator=release-managers,reviewer=domain-experts`` (``services.roles``)", Source.APP_YAML),
    Variable("AGENTOPS_ROLES_FILE", None, "a roles file managed outside the app; when set it overrides the roles "
             "stored with the team's data (``services.roles``)"),
    Variable("AGENTOPS_WAREHOUSE_ID", None, "Databricks: SQL warehouse that aggregates trace windows for the "
             "Monitoring charts (``valueFrom``)", Source.APP_YAML),
    Variable("AGENTOPS_STORE_DB_URL", None, "``mlflow`` backend: optional SQLAlchemy URL of the server's own database for a "
             "role that may only read MLflow's tables (``postgresql+psycopg://reader@host/mlflow`` or ``sqlite:///path``); "
             "Monitoring aggregates there in SQL instead of through ``query_trace_metrics`` requests, and on PostgreSQL "
             "keeps incremental roll-ups in a schema ``agentops`` the role owns (``services._mlflow_internal.rollups``)"),
    Variable("AGENTOPS_TRACE_SPANS_TABLE", None, "Databricks: Unity Catalog spans table holding the traces "
             "(``catalog.schema.table``); with the warehouse, charts are one SQL statement there"),
    Variable("AGENTOPS_DATABRICKS_RETRY_SECONDS", "20", "longest a workspace call retries when Databricks throttles "
             "(429) or is briefly unavailable, instead of the SDK's 300 s; then the page says "
             "\"throttled: retry after N s\""),
    Variable("AGENTOPS_ALERT_SECRET_SCOPE", "agentops-alerts", "Databricks: secret scope holding the alert channel "
             "URLs (one secret per channel; the app's service principal needs WRITE) (``services.notify``)"),
    Variable("AGENTOPS_ALERT_CHANNELS_FILE", "~/.config/agentops/alert-channels.json", "local and ``mlflow`` "
             "backends: file outside the repository, readable only by its owner (chmod 600), holding the alert "
             "channel URLs (``services.notify``)"),
    Variable("AGENTOPS_JUDGE_MODEL", None, "model URI of MLflow's LLM judges, e.g. ``openai:/gpt-4o-mini``; "
             "on Databricks the built-in judges are used when unset (``services.scorers``)"),
    Variable("OPENAI_BASE_URL", None, "OpenAI-compatible endpoint for an ``openai:/`` judge model"),
    Variable("OPENAI_API_KEY", None, "key for an ``openai:/`` judge model"),
    Variable("MLFLOW_TRACKING_TOKEN", None, "bearer token for the ``mlflow`` backend's server (also used by the "
             "AI Gateway calls)"),
    Variable("MLFLOW_TRACKING_USERNAME", None, "basic-auth user for the ``mlflow`` backend's server"),
    Variable("MLFLOW_TRACKING_PASSWORD", None, "basic-auth password for the ``mlflow`` backend's server"),
)
_DECLARED = {v.name: v for v in VARIABLES}
DATABRICKS_AUDIT_EXPERIMENT = "/Shared/agentops-audit"


def read(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of a declared variable ('' when unset); an undeclared name is a programming error."""
    if name not in _DECLARED:
        raise KeyError(f"{name} is not declared in services.settings.VARIABLES")
    env = os.environ if environ is None else environ
    return (env.get(name) or "").strip()


class Backend(StrEnum):
    LOCAL = "local"
    MLFLOW = "mlflow"
    DATABRICKS = "databricks"


@dataclass(frozen=True)
class Settings:
    backend: Backend
    data_dir: Path
    mlflow_uri: str | None
    experiment_ids: tuple[str, ...]
    audit_experiment: str
    gateway_url: str
    databricks_host: str | None
    databricks_app_name: str | None
    warehouse_id: str | None = None
    trace_spans_table: str | None = None
    audit_experiment_id: str | None = None
    serving_endpoint: str | None = None
    retry_timeout_seconds: int = 20
    review_experiment: str = "agentops-review"
    state_experiment: str | None = None
    store_db_url: str | None = field(default=None, repr=False)  # may carry a password

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI this backend uses."""
        match self.backend:
            case Backend.LOCAL:
                return f"sqlite:///{self.db_path}"
            case Backend.MLFLOW:
                return self.mlflow_uri or ""
            case Backend.DATABRICKS:
                return "databricks"

    @property
    def registry_uri(self) -> str:
        """The MLflow registry URI this backend uses."""
        if self.backend is Backend.DATABRICKS:
            return "databricks-uc"
        return self.tracking_uri

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mlflow.db"

    @property
    def artifact_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def audit_label(self) -> str:
        """How messages name the audit experiment."""
        return f"id {self.audit_experiment_id}" if self.audit_experiment_id else self.audit_experiment

    @property
    def workspace_label(self) -> str:
        """Human-readable name of what the app is connected to."""
        match self.backend:
            case Backend.LOCAL:
                return str(self.db_path)
            case Backend.MLFLOW:
                return self.mlflow_uri or ""
            case Backend.DATABRICKS:
                return self.databricks_host or ""


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from the environment, failing fast on a missing required variable."""
    env = os.environ if environ is None else environ
    raw_backend = (read("AGENTOPS_BACKEND", env) or Backend.LOCAL.value).lower()
    try:
        backend = Backend(raw_backend)
    except ValueError:
        valid = ", ".join(b.value for b in Backend)
        raise ConfigurationError(
            f"AGENTOPS_BACKEND={raw_backend!r} is not a backend; use one of: {valid}."
        ) from None

    mlflow_uri = read("AGENTOPS_MLFLOW_URI", env) or None
    if backend is Backend.MLFLOW and not mlflow_uri:
        raise ConfigurationError(
            "AGENTOPS_MLFLOW_URI is not set: the 'mlflow' backend needs the URL of an "
            "`mlflow server`, e.g. http://127.0.0.1:5000."
        )
    databricks_host = read("DATABRICKS_HOST", env) or None
    if backend is Backend.DATABRICKS and not databricks_host:
        raise ConfigurationError(
            "DATABRICKS_HOST is not set: the 'databricks' backend needs the workspace URL "
            "(Databricks Apps injects it)."
        )
    if databricks_host and not databricks_host.startswith(("http://", "https://")):
        databricks_host = f"https://{databricks_host}"

    data_dir = Path(read("AGENTOPS_DATA_DIR", env) or PROJECT_ROOT / ".agentops").expanduser()
    experiment_ids = tuple(
        part.strip() for part in read("AGENTOPS_EXPERIMENT_IDS", env).split(",") if part.strip()
    )
    audit_id = read("AGENTOPS_AUDIT_EXPERIMENT_ID", env) or None
    audit_name = read("AGENTOPS_AUDIT_EXPERIMENT", env)
    if backend is Backend.DATABRICKS:
        audit_name = audit_name or DATABRICKS_AUDIT_EXPERIMENT
        if not audit_id and not audit_name.startswith("/"):
            # A workspace refuses relative names ("Got an invalid experiment name"), and every change
            # is audited first: with such a name nothing could ever change.
            raise ConfigurationError(
                f"AGENTOPS_AUDIT_EXPERIMENT={audit_name!r} is not a workspace path: on Databricks an experiment "
                f"name is absolute, e.g. /Shared/{audit_name.strip('/') or 'agentops-audit'} or "
                "/Users/<you>/agentops-audit. Or set AGENTOPS_AUDIT_EXPERIMENT_ID (valueFrom an experiment resource)."
            )
    raw_retry = read("AGENTOPS_DATABRICKS_RETRY_SECONDS", env) or "20"
    try:
        retry = int(raw_retry)
        if retry < 1:
            raise ValueError
    except ValueError:
        raise ConfigurationError(
            f"AGENTOPS_DATABRICKS_RETRY_SECONDS={raw_retry!r} is not a positive whole number of seconds."
        ) from None
    return Settings(
        backend=backend,
        data_dir=data_dir.resolve(),
        mlflow_uri=mlflow_uri,
        experiment_ids=experiment_ids,
        audit_experiment=audit_name or "agentops-audit",
        gateway_url=read("AGENTOPS_GATEWAY_URL", env) or "http://127.0.0.1:8765",
        databricks_host=databricks_host,
        databricks_app_name=read("DATABRICKS_APP_NAME", env) or None,
        warehouse_id=read("AGENTOPS_WAREHOUSE_ID", env) or None,
        trace_spans_table=read("AGENTOPS_TRACE_SPANS_TABLE", env) or None,
        audit_experiment_id=audit_id,
        serving_endpoint=read("AGENTOPS_SERVING_ENDPOINT", env) or None,
        retry_timeout_seconds=retry,
        review_experiment=read("AGENTOPS_REVIEW_EXPERIMENT", env) or "agentops-review",
        state_experiment=read("AGENTOPS_STATE_EXPERIMENT", env) or None,
        store_db_url=read("AGENTOPS_STORE_DB_URL", env) or None,
    )


# What a Databricks App needs beyond DATABRICKS_HOST: the app's own credentials (injected by the
# platform) and the experiment resource (``valueFrom`` in app.yaml).
DATABRICKS_APP_ENV = ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "AGENTOPS_EXPERIMENT_IDS")


def missing_databricks_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of Databricks App variables that are not set (empty when not on Databricks)."""
    env = os.environ if environ is None else environ
    if read("AGENTOPS_BACKEND", env).lower() != Backend.DATABRICKS.value:
        return []
    return [name for name in DATABRICKS_APP_ENV if not read(name, env)]
