"""Configuration: one frozen object read from the environment.

Every variable the app reads is documented here once, with its default.

| variable | default | meaning |
| --- | --- | --- |
| ``AGENTOPS_BACKEND`` | ``local`` | ``local`` (embedded SQLite store), ``mlflow`` (a remote ``mlflow server``) or ``databricks`` |
| ``AGENTOPS_DATA_DIR`` | ``<project>/.agentops`` | folder for the local store, artifacts and endpoint configs |
| ``AGENTOPS_MLFLOW_URI`` | — | tracking URI of a remote ``mlflow server``; required when the backend is ``mlflow`` |
| ``AGENTOPS_EXPERIMENT_IDS`` | — | comma-separated experiment ids holding traces and evaluations (Databricks: from ``valueFrom``) |
| ``AGENTOPS_AUDIT_EXPERIMENT`` | ``agentops-audit`` | experiment (name) that holds the audit trail of mutating actions; created on the first recorded change, never on a read |
| ``AGENTOPS_REVIEW_EXPERIMENT`` | ``agentops-review`` | experiment (name) that holds the review queues (one run per queue); created when the first queue is, never on a read |
| ``AGENTOPS_STATE_EXPERIMENT`` | ``agentops-team-state`` (Databricks: ``/Shared/agentops-team-state``) | experiment (name) holding the team's shared configuration: endpoints and splits, alert thresholds, prices, roles (``services.team_state``) |
| ``AGENTOPS_GATEWAY_URL`` | ``http://127.0.0.1:8765`` | local serving gateway |
| ``DATABRICKS_HOST`` | — | workspace URL; required when the backend is ``databricks`` |
| ``DATABRICKS_APP_NAME`` | — | set by Databricks Apps; shown in the sidebar |
| ``DATABRICKS_CLIENT_ID`` / ``DATABRICKS_CLIENT_SECRET`` | — | the app's service principal (set by Databricks Apps); used for reads when no user token is forwarded |
| ``AGENTOPS_USER_AUTHORIZATION`` | off | ``on``: every change needs the signed-in user's forwarded token and is made with it, never as the service principal (``services.roles``) |
| ``AGENTOPS_ROLE_GROUPS`` | — | workspace groups mapped to roles, e.g. ``operator=release-managers,reviewer=domain-experts`` (``services.roles``) |
| ``AGENTOPS_WAREHOUSE_ID`` | — | Databricks: SQL warehouse that aggregates trace windows for the Monitoring charts (``valueFrom``) |
| ``AGENTOPS_TRACE_SPANS_TABLE`` | — | Databricks: Unity Catalog spans table holding the traces (``catalog.schema.table``); with the warehouse, charts are one SQL statement there (``services.trace_sql``) |
| ``AGENTOPS_ROLES_FILE`` | — | a roles file managed outside the app; when set it overrides the roles stored with the team's data (``services.roles``) |

On Databricks, MLflow and workspace calls carry the signed-in user's token whenever one is forwarded
(``X-Forwarded-Access-Token``), so Unity Catalog and endpoint permissions are the user's
(``services._clients``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Mapping

from services.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    state_experiment: str | None = None
    review_experiment: str = "agentops-review"

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
    raw_backend = env.get("AGENTOPS_BACKEND", Backend.LOCAL.value).strip().lower()
    try:
        backend = Backend(raw_backend)
    except ValueError:
        valid = ", ".join(b.value for b in Backend)
        raise ConfigurationError(
            f"AGENTOPS_BACKEND={raw_backend!r} is not a backend; use one of: {valid}."
        ) from None

    mlflow_uri = env.get("AGENTOPS_MLFLOW_URI") or None
    if backend is Backend.MLFLOW and not mlflow_uri:
        raise ConfigurationError(
            "AGENTOPS_MLFLOW_URI is not set: the 'mlflow' backend needs the URL of an "
            "`mlflow server`, e.g. http://127.0.0.1:5000."
        )
    databricks_host = env.get("DATABRICKS_HOST") or None
    if backend is Backend.DATABRICKS and not databricks_host:
        raise ConfigurationError(
            "DATABRICKS_HOST is not set: the 'databricks' backend needs the workspace URL "
            "(Databricks Apps injects it)."
        )
    if databricks_host and not databricks_host.startswith(("http://", "https://")):
        databricks_host = f"https://{databricks_host}"

    data_dir = Path(env.get("AGENTOPS_DATA_DIR") or PROJECT_ROOT / ".agentops").expanduser()
    experiment_ids = tuple(
        part.strip() for part in env.get("AGENTOPS_EXPERIMENT_IDS", "").split(",") if part.strip()
    )
    return Settings(
        backend=backend,
        data_dir=data_dir.resolve(),
        mlflow_uri=mlflow_uri,
        experiment_ids=experiment_ids,
        audit_experiment=env.get("AGENTOPS_AUDIT_EXPERIMENT") or "agentops-audit",
        gateway_url=env.get("AGENTOPS_GATEWAY_URL") or "http://127.0.0.1:8765",
        databricks_host=databricks_host,
        databricks_app_name=env.get("DATABRICKS_APP_NAME") or None,
        warehouse_id=(env.get("AGENTOPS_WAREHOUSE_ID") or "").strip() or None,
        trace_spans_table=(env.get("AGENTOPS_TRACE_SPANS_TABLE") or "").strip() or None,
        state_experiment=(env.get("AGENTOPS_STATE_EXPERIMENT") or "").strip() or None,
        review_experiment=(env.get("AGENTOPS_REVIEW_EXPERIMENT") or "").strip() or "agentops-review",
    )


# What a Databricks App needs beyond DATABRICKS_HOST: the app's own credentials (injected by the
# platform) and the experiment resource (``valueFrom`` in app.yaml).
DATABRICKS_APP_ENV = ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "AGENTOPS_EXPERIMENT_IDS")


def missing_databricks_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of Databricks App variables that are not set (empty when not on Databricks)."""
    env = os.environ if environ is None else environ
    if (env.get("AGENTOPS_BACKEND") or "").strip().lower() != Backend.DATABRICKS.value:
        return []
    return [name for name in DATABRICKS_APP_ENV if not env.get(name)]
