"""MLflow clients that act as one Databricks user, with that user's own token.

On Databricks Apps with user authorization, MLflow calls must carry the signed-in user's token
(``X-Forwarded-Access-Token``) so that Unity Catalog and experiment permissions are the user's.
MLflow resolves Databricks credentials process-wide (``get_databricks_host_creds`` reads the
environment, i.e. the app's service principal) and has no public way to build a client for a given
token. This module builds one from non-public parts, all listed here and checked by
``check_internals()`` (``tests/services/test_mlflow_user_client.py`` fails loudly when MLflow
changes any of them):

* ``mlflow.utils.rest_utils.MlflowHostCreds(host, token=...)``: a bearer token sent by MLflow's own
  HTTP path (``use_databricks_sdk=False``), so the SDK's environment auth never joins in.
* ``mlflow.store.tracking.databricks_rest_store.DatabricksTracingRestStore(get_host_creds)``: the
  store MLflow itself uses for the ``databricks`` tracking URI.
* ``mlflow.store._unity_catalog.registry.rest_store.UcModelRegistryStore`` and its
  ``get_host_creds`` / ``get_tracking_host_creds`` attributes: the ``databricks-uc`` registry.
* The ``store`` property of ``TrackingServiceClient``, ``TracingClient`` and ``ModelRegistryClient``,
  and ``MlflowClient``'s ``_tracking_client`` / ``_tracing_client`` / ``_registry_client_lazy``.

Public fallback: none can carry a per-user token, so when these internals are missing the app
refuses with ``UserClientUnavailable`` rather than quietly acting as the service principal.

Clients are never cached here: each call builds a fresh one (a few milliseconds), so a client built
from one user's token can never be handed to another user.

Not covered: artifact downloads (model files, trace data kept as artifacts) still resolve
credentials process-wide inside MLflow's artifact repositories.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from services.errors import ConfigurationError

TRACKING_URI = "databricks"
REGISTRY_URI = "databricks-uc"


class UserClientUnavailable(ConfigurationError):
    """This MLflow version cannot build a client for the signed-in user's token."""


def check_internals() -> None:
    """Raise ``UserClientUnavailable`` naming what moved when MLflow's internals changed."""
    problems: list[str] = []
    try:
        from mlflow import MlflowClient
        from mlflow.store._unity_catalog.registry.rest_store import UcModelRegistryStore
        from mlflow.store.tracking.databricks_rest_store import DatabricksTracingRestStore
        from mlflow.tracing.client import TracingClient
        from mlflow.tracking._model_registry.client import ModelRegistryClient
        from mlflow.tracking._tracking_service.client import TrackingServiceClient
        from mlflow.utils.rest_utils import MlflowHostCreds
    except ImportError as exc:
        raise UserClientUnavailable(f"MLflow moved a module this app needs to act as the user: {exc}") from None

    for cls in (TrackingServiceClient, TracingClient, ModelRegistryClient):
        if not isinstance(cls.__dict__.get("store"), property):
            problems.append(f"{cls.__name__}.store is no longer a property")
    creds = MlflowHostCreds("https://example.invalid", token="t")
    if (creds.token, creds.use_databricks_sdk) != ("t", False):
        problems.append("MlflowHostCreds no longer keeps a plain bearer token")
    store = DatabricksTracingRestStore(lambda: creds)
    if not callable(getattr(store, "get_host_creds", None)) or store.get_host_creds() is not creds:
        problems.append("DatabricksTracingRestStore no longer takes get_host_creds")
    registry = UcModelRegistryStore(store_uri=REGISTRY_URI, tracking_uri=TRACKING_URI)
    for attribute in ("get_host_creds", "get_tracking_host_creds"):
        if not callable(getattr(registry, attribute, None)):
            problems.append(f"UcModelRegistryStore.{attribute} is gone")
    client = MlflowClient(tracking_uri=TRACKING_URI, registry_uri=REGISTRY_URI)
    for attribute in ("_tracking_client", "_tracing_client"):
        if not hasattr(client, attribute):
            problems.append(f"MlflowClient.{attribute} is gone")
    if not callable(getattr(client, "_get_registry_client", None)):
        problems.append("MlflowClient._get_registry_client is gone")
    if problems:
        raise UserClientUnavailable(
            "This MLflow version cannot make calls with the signed-in user's token ("
            + "; ".join(problems) + "). The app refuses rather than act as its service principal."
        )


def _creds(host: str, token: str) -> Any:
    from mlflow.utils.rest_utils import MlflowHostCreds

    if not host or not token:
        raise UserClientUnavailable("A user client needs the workspace host and the user's token.")
    return MlflowHostCreds(host, token=token)


def _tracking_store(host: str, token: str) -> Any:
    from mlflow.store.tracking.databricks_rest_store import DatabricksTracingRestStore

    creds = _creds(host, token)
    return DatabricksTracingRestStore(lambda: creds)


def _registry_store(host: str, token: str) -> Any:
    from mlflow.store._unity_catalog.registry.rest_store import UcModelRegistryStore

    creds = _creds(host, token)
    store = UcModelRegistryStore(store_uri=REGISTRY_URI, tracking_uri=TRACKING_URI)
    store.get_host_creds = lambda: creds
    store.get_tracking_host_creds = lambda: creds
    return store


@lru_cache(maxsize=1)
def _client_classes() -> tuple[type, type, type]:
    """Subclasses whose ``store`` is the one they were built with, not MLflow's process-wide store."""
    from mlflow.tracing.client import TracingClient
    from mlflow.tracking._model_registry.client import ModelRegistryClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    class _OwnStore:
        """``store`` answers the store the client was built with."""

        _user_store: Any

        @property
        def store(self) -> Any:
            return self._user_store

    class _UserTrackingServiceClient(_OwnStore, TrackingServiceClient):
        def __init__(self, store: Any) -> None:
            self._user_store = store
            super().__init__(TRACKING_URI)

    class _UserTracingClient(_OwnStore, TracingClient):
        def __init__(self, store: Any) -> None:
            self._user_store = store
            super().__init__(TRACKING_URI)

    class _UserRegistryClient(_OwnStore, ModelRegistryClient):
        def __init__(self, store: Any) -> None:
            self._user_store = store
            super().__init__(REGISTRY_URI, TRACKING_URI)

    return _UserTrackingServiceClient, _UserTracingClient, _UserRegistryClient


def user_tracing_client(host: str, token: str) -> Any:
    """A ``TracingClient`` (traces and assessments) whose calls carry ``token``."""
    _, tracing_cls, _ = _client_classes()
    try:
        return tracing_cls(_tracking_store(host, token))
    except (AttributeError, TypeError) as exc:
        raise UserClientUnavailable(f"Cannot build a tracing client for the user: {exc}") from None


def user_mlflow_client(host: str, token: str, *, client_class: type | None = None) -> Any:
    """An ``MlflowClient`` (tracking, traces, Unity Catalog registry) whose calls carry ``token``.

    ``client_class``: an ``MlflowClient`` subclass to instantiate instead (its own methods are kept).
    """
    from mlflow import MlflowClient

    tracking_cls, tracing_cls, registry_cls = _client_classes()
    try:
        tracking_store = _tracking_store(host, token)
        client = (client_class or MlflowClient)(tracking_uri=TRACKING_URI, registry_uri=REGISTRY_URI)
        client._tracking_client = tracking_cls(tracking_store)
        client._tracing_client = tracing_cls(tracking_store)
        # MlflowClient builds its registry client lazily into this attribute (_get_registry_client).
        client._registry_client_lazy = registry_cls(_registry_store(host, token))
    except (AttributeError, TypeError) as exc:
        raise UserClientUnavailable(f"Cannot build an MLflow client for the user: {exc}") from None
    return client
