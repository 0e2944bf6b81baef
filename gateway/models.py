"""Loading the registered versions an endpoint serves, once each, without losing a trace to a load.

A served version is loaded on its first request and kept for the life of the process, with the
experiment its traces go to (the version's own, else the gateway's fallback experiment) and its
LoggedModel id (the trace's ``mlflow.modelId``).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow

from gateway.requests import GatewayError
from services import registry
from services._clients import get_or_create_experiment
from services.serving import ServedVersion
from services.settings import Settings

FALLBACK_EXPERIMENT = "agentops-gateway"


@dataclass(frozen=True)
class LoadedVersion:
    """A served version ready to predict, with where its traces go."""

    model: Any
    model_id: str | None
    experiment_id: str
    aliases: tuple[str, ...]


class LoadGate:
    """Keeps model loads and traced requests apart.

    ``mlflow.pyfunc.load_model`` is ``@trace_disabled``: while it runs, MLflow swaps the
    process-wide tracer provider for a no-op one, so a request traced in another thread at
    that moment would produce no trace. A load therefore waits for traced requests in flight
    and holds new ones back (loads happen once per served version, ~1 s at most).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._serving = 0
        self._loading = False
        self._loaders_waiting = 0

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        with self._cond:
            while self._loading or self._loaders_waiting:
                self._cond.wait()
            self._serving += 1
        try:
            yield
        finally:
            with self._cond:
                self._serving -= 1
                if not self._serving:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        with self._cond:
            self._loaders_waiting += 1
            while self._loading or self._serving:
                self._cond.wait()
            self._loaders_waiting -= 1
            self._loading = True
        try:
            yield
        finally:
            with self._cond:
                self._loading = False
                self._cond.notify_all()


class ModelLoader:
    """The loaded versions of this process, keyed by (model name, version); each loaded once."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self.gate = LoadGate()
        self._models: dict[tuple[str, str], LoadedVersion] = {}
        self._model_locks: dict[tuple[str, str], threading.Lock] = {}

    def load(self, served: ServedVersion) -> LoadedVersion:
        """The loaded version, loading it on first use; a 503 ``GatewayError`` when it cannot be loaded."""
        key = (served.model_name, served.model_version)
        if key in self._models:
            return self._models[key]
        lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._models:
                return self._models[key]
            try:
                version = self.client.get_model_version(served.model_name, served.model_version)
                model = self.client.get_registered_model(served.model_name)
                with self.gate.loading():
                    loaded = mlflow.pyfunc.load_model(f"models:/{served.model_name}/{served.model_version}")
            except Exception as exc:  # noqa: BLE001 - any load failure is the arm being unavailable
                raise GatewayError(
                    503, "SERVED_VERSION_UNAVAILABLE",
                    f"{served.model_name} v{served.model_version} could not be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                ) from exc
            model_id = registry.model_id_of(version)
            # The version's own experiment: the legacy tag if set, else its LoggedModel's (or source
            # run's) experiment, else the gateway's fallback experiment.
            experiment_id = (
                (model.tags or {}).get(registry.EXPERIMENT_TAG)
                or registry.experiments_of_versions(self.client, [version]).get(model_id or version.run_id or "")
                or get_or_create_experiment(self.client, FALLBACK_EXPERIMENT, self.settings)
            )
            aliases = tuple(sorted(a for a, v in registry.aliases_of(model).items() if v == served.model_version))
            self._models[key] = LoadedVersion(loaded, model_id, experiment_id, aliases)
            return self._models[key]

