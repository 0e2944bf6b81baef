"""The backend switch: the one place that configures MLflow and builds clients."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterator

from services.errors import AgentOpsError, BackendUnavailableError, error_class, typed_error
from services.settings import Backend, Settings, load_settings

if TYPE_CHECKING:
    from services.identity import Identity

_logger = logging.getLogger(__name__)
_configure_lock = threading.Lock()
_configured_for: Settings | None = None
# Who the current request acts for. Set at the start of every Streamlit run (components.context) and
# again by every mutation's role check (roles.enforce). A context variable, so it belongs to the
# thread serving one session's run and is never read by another user's run.
_acting: contextvars.ContextVar["Identity | None"] = contextvars.ContextVar("agentops_acting_identity", default=None)

# Defaults that keep a local SQLite setup from silently losing data or blocking
# (measured in shared/MLFLOW-NOTES.md). Only set when the user has not chosen otherwise.
LOCAL_MLFLOW_DEFAULTS = {
    # Ten parallel workers exhaust SQLite's connection pool and drop evaluation rows.
    "MLFLOW_GENAI_EVAL_MAX_WORKERS": "2",
    # The cost catalog is otherwise fetched from the internet, blocking ~7 s offline.
    "MLFLOW_MODEL_CATALOG_URI": "",
    # A burst overflows the async export queue (size 1000) and traces are discarded.
    "MLFLOW_ASYNC_TRACE_LOGGING_MAX_QUEUE_SIZE": "100000",
    # Ten export workers contend for SQLite's single writer; two export faster (measured).
    "MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS": "2",
    # Fail fast instead of retrying for minutes when a server is down.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return _cached_settings()


@lru_cache(maxsize=1)
def _cached_settings() -> Settings:
    return load_settings()


def configure_mlflow(settings: Settings | None = None) -> Settings:
    """Point MLflow at the configured backend (idempotent) and return the settings used."""
    global _configured_for
    settings = settings or get_settings()
    import mlflow

    with _configure_lock:
        if _configured_for == settings and mlflow.get_tracking_uri() == settings.tracking_uri:
            return settings

        for key, value in LOCAL_MLFLOW_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if settings.backend is Backend.DATABRICKS:
            # MLflow's Databricks calls go through the SDK, which retries a 503/429 for up to
            # MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT (500 s by default): a page would hang for
            # minutes while the workspace's MLflow is down. Bound it as the app's own SDK calls are.
            os.environ.setdefault("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", str(settings.retry_timeout_seconds))
        if settings.backend is Backend.LOCAL:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            settings.artifact_root.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_registry_uri(settings.registry_uri)
        if settings.backend is Backend.MLFLOW:  # the server's database, for the store-side aggregates
            from services._mlflow_internal import store_db

            store_db.register(settings.tracking_uri, settings.store_db_url)
        _configured_for = settings
        return settings


def act_as(identity: "Identity | None") -> None:
    """Make this request's MLflow and workspace calls act for ``identity`` (with its token, when forwarded)."""
    _acting.set(identity)


@contextlib.contextmanager
def acting_as(identity: "Identity | None") -> Iterator[None]:
    """``act_as`` for a block only (tests, background work handed one user's request)."""
    token = _acting.set(identity)
    try:
        yield
    finally:
        _acting.reset(token)


def acting_identity() -> "Identity | None":
    """The identity this request acts for, if one was set."""
    return _acting.get()


def _user_token(settings: Settings) -> str | None:
    """The acting user's forwarded token on Databricks (None elsewhere or when none was forwarded)."""
    if settings.backend is not Backend.DATABRICKS:
        return None
    identity = _acting.get()
    return identity.access_token if identity is not None else None


# The scopes a Databricks App can ask for its users' tokens (``user_api_scopes``), from the Databricks
# Apps documentation ("Configure authorization in a Databricks app"); the two ``iam`` ones are always
# granted. None covers MLflow tracking, the Unity Catalog model registry, databricks-agents or the
# Review App: a user token sent there is refused ("Invalid scope").
APPS_USER_SCOPES = frozenset({
    "sql", "serving.serving-endpoints", "dashboards.genie", "files.files", "catalog.catalogs:read",
    "catalog.schemas:read", "catalog.tables:read", "catalog.connections", "vectorsearch.vector-search-indexes",
    "vectorsearch.vector-search-endpoints", "iam.access-control:read", "iam.current-user:read",
})
# Every call this app makes with a user's token, by the scope it needs (databricks.yml declares them;
# tests/services/test_settings.py checks). Everything else runs as the app's service principal.
USER_TOKEN_CALLS = {
    "serving.serving-endpoints": "Model Serving: list and read endpoints, change a traffic split (update_config)",
    "sql": "SQL statements on the warehouse (Monitoring aggregates, services.trace_sql)",
    "iam.current-user:read": "the signed-in user's groups, for the app's roles (SCIM Me)",
}


@lru_cache(maxsize=1)
def _unity_catalog_client_class() -> type:
    """``MlflowClient`` whose registry searches return plain entities on Unity Catalog.

    UC search results (``RegisteredModelSearch``/``ModelVersionSearch``) turn ``tags`` and ``aliases``
    into methods that raise, so any caller reading them crashes. Here they come back as ordinary
    entities with empty tags and aliases (what UC's search gives); read a model or version itself
    for its tags and aliases.
    """
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.store.entities.paged_list import PagedList

    def plain(items: Any, entity: type) -> Any:
        converted = []
        for item in items:
            if type(item) is not entity and isinstance(item, entity):
                copy = entity.__new__(entity)
                copy.__dict__.update(item.__dict__)
                item = copy
            converted.append(item)
        return PagedList(converted, items.token)

    class UnityCatalogMlflowClient(MlflowClient):
        def search_registered_models(self, *args: Any, **kwargs: Any) -> Any:
            return plain(super().search_registered_models(*args, **kwargs), RegisteredModel)

        def search_model_versions(self, *args: Any, **kwargs: Any) -> Any:
            return plain(super().search_model_versions(*args, **kwargs), ModelVersion)

    return UnityCatalogMlflowClient


def mlflow_client(settings: Settings | None = None) -> Any:
    """An ``MlflowClient`` for the configured backend.

    On Databricks it is the app's service principal's, whoever is signed in: no Databricks Apps user
    scope covers MLflow or the Unity Catalog registry. Mutations check the user's role first
    (``roles.enforce``) and record the user in the audit trail or the assessment's source.
    """
    from mlflow import MlflowClient

    settings = configure_mlflow(settings)
    if settings.backend is not Backend.DATABRICKS:
        return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    return _unity_catalog_client_class()(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)


def tracing_client(settings: Settings | None = None) -> Any:
    """MLflow's ``TracingClient`` (assessments, trace tags); the app's service principal on Databricks, like ``mlflow_client``."""
    from mlflow.tracing.client import TracingClient

    settings = configure_mlflow(settings)
    return TracingClient(settings.tracking_uri)


def workspace_client(settings: Settings | None = None, *, user_token: str | None = None) -> Any:
    """A Databricks ``WorkspaceClient``: the user's (given token, else the acting user's), else the app's."""
    from databricks.sdk import WorkspaceClient

    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise BackendUnavailableError("A Databricks workspace is only used with AGENTOPS_BACKEND=databricks.")
    from databricks.sdk.core import Config

    user_token = user_token or _user_token(settings)
    # The SDK retries 429 and 503 for 300 s by default; a page must not block that long.
    bound = {"retry_timeout_seconds": settings.retry_timeout_seconds}
    if user_token:
        # auth_type="pat": otherwise the SDK refuses a token alongside the app's OAuth env vars.
        return WorkspaceClient(config=Config(host=settings.databricks_host, token=user_token, auth_type="pat", **bound))
    return WorkspaceClient(config=Config(host=settings.databricks_host, **bound))


def app_workspace_client(settings: Settings | None = None) -> Any:
    """The app's own ``WorkspaceClient`` (service principal), for calls no user scope covers."""
    from databricks.sdk import WorkspaceClient

    settings = settings or get_settings()
    if settings.backend is not Backend.DATABRICKS:
        raise BackendUnavailableError("A Databricks workspace is only used with AGENTOPS_BACKEND=databricks.")
    from databricks.sdk.core import Config

    return WorkspaceClient(config=Config(host=settings.databricks_host, retry_timeout_seconds=settings.retry_timeout_seconds))


def artifact_location(settings: Settings, experiment_name: str) -> str | None:
    """Where a new experiment keeps artifacts: inside the data dir locally, server default otherwise."""
    if settings.backend is Backend.LOCAL:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in experiment_name.strip("/"))
        return (settings.artifact_root / safe).as_uri()
    return None


def workspace_experiment_name(name: str, settings: Settings | None = None) -> str:
    """``name`` as the backend accepts it: on Databricks an absolute path (``/Shared/<name>`` for a bare name)."""
    settings = settings or get_settings()
    if settings.backend is Backend.DATABRICKS and not name.startswith("/"):
        # A workspace refuses relative experiment names ("Got an invalid experiment name").
        return f"/Shared/{name}"
    return name


def get_experiment_by_name(client: Any, name: str, settings: Settings | None = None) -> Any:
    """The experiment called ``name`` (see ``workspace_experiment_name``), or None."""
    return client.get_experiment_by_name(workspace_experiment_name(name, settings))


def get_or_create_experiment(client: Any, name: str, settings: Settings | None = None) -> str:
    """Experiment id by name, creating it (with an explicit artifact location) when missing."""
    settings = settings or get_settings()
    name = workspace_experiment_name(name, settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(settings, name))


def check_connection(settings: Settings | None = None) -> None:
    """Raise ``BackendUnavailableError`` with a clear message when the store cannot be read."""
    settings = settings or get_settings()
    if settings.backend is Backend.LOCAL and settings.db_path.exists():
        with settings.db_path.open("rb") as handle:
            header = handle.read(16)
        if header and header != b"SQLite format 3\x00":
            raise BackendUnavailableError(
                f"The local store {settings.db_path} is not an SQLite database (it may be "
                "corrupt). Move it aside, or set AGENTOPS_DATA_DIR to another folder, and restart."
            )
    if settings.backend is Backend.MLFLOW:
        _check_http(settings.mlflow_uri or "")
        if settings.store_db_url:
            from services._mlflow_internal import store_db

            try:
                store_db.check(settings.store_db_url)
            except store_db.StoreDatabaseError as exc:
                raise BackendUnavailableError(str(exc)) from None
    try:
        with translate_errors(f"the tracking store at {settings.workspace_label}"):
            mlflow_client(settings).search_experiments(max_results=1)
    except BackendUnavailableError as exc:
        if settings.backend is not Backend.MLFLOW:
            raise
        # /health answered, so the server runs but cannot read its own store (its database is down).
        raise BackendUnavailableError(
            f"{exc} The MLflow server answers but cannot read its store: if it runs on PostgreSQL, check that "
            "the database is running (scripts/team-server status <folder>)."
        ) from None


def _check_http(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackendUnavailableError(
            f"Cannot reach the MLflow server at {uri} ({reason}). Check that it is running and "
            "that AGENTOPS_MLFLOW_URI is right."
        ) from None


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn MLflow, SQLAlchemy and SDK exceptions into the service layer's typed errors."""
    try:
        yield
    except AgentOpsError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to classify everything
        raise classify_error(exc, what) from exc


def classify_error(exc: Exception, what: str) -> AgentOpsError:
    """Map a backend exception to a typed error whose message names ``what``."""
    from mlflow.exceptions import MlflowException

    throttled = throttled_for(exc)
    if throttled is not None:
        return BackendUnavailableError(
            f"{what} is throttled: retry after {throttled} s (Databricks answered 429 Too Many Requests"
            " for longer than the app waits).")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MlflowException):
        return typed_error(error_class(code=exc.error_code), what, message)
    try:
        from databricks.sdk.errors import DatabricksError

        if isinstance(exc, DatabricksError):
            return typed_error(error_class(names=tuple(c.__name__ for c in type(exc).__mro__)), what, message)
    except ImportError:  # pragma: no cover - the SDK is a hard dependency
        pass
    return typed_error(None, what, message)


def throttled_for(exc: BaseException) -> int | None:
    """Seconds Databricks asked to wait when ``exc`` is (or ends) a throttled call, else None."""
    try:
        from databricks.sdk.errors import TooManyRequests
    except ImportError:  # pragma: no cover - the SDK is a hard dependency
        return None
    seen: BaseException | None = exc
    for _ in range(5):  # the SDK raises TimeoutError from the last 429 once its retry bound is spent
        if seen is None:
            return None
        if isinstance(seen, TooManyRequests):
            return int(getattr(seen, "retry_after_secs", None) or 1)
        seen = seen.__cause__ or seen.__context__
    return None
