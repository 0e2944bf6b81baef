"""An outage switch for the Databricks harness: a first handler that answers 503 while the workspace is "down".

``WorkspaceOutage`` goes first in ``DatabricksHarness.handlers``. ``down`` takes every service away
(Model Serving and the workspace's MLflow); ``mlflow_only`` only MLflow. ``down_after(match)`` lets
the first request that ``match`` accepts through and takes the workspace away right after it is
answered, so a test can stop the workspace between two calls of one service function without
wrapping the app's code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

MLFLOW_PREFIXES = ("/api/2.0/mlflow", "/api/3.0/mlflow", "/api/4.0/mlflow", "/ajax-api/")
UNAVAILABLE = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "The service is temporarily unavailable."}


class WorkspaceOutage:
    """A harness handler: while down, the affected calls get 503 TEMPORARILY_UNAVAILABLE."""

    def __init__(self) -> None:
        self.down = False
        self.mlflow_only = False
        self.refused: list[tuple[str, str]] = []
        self._trip: Callable[[str, str], bool] | None = None
        self._lock = threading.Lock()

    def down_after(self, match: Callable[[str, str], bool], *, mlflow_only: bool = False) -> None:
        """Take the workspace down once the first request that ``match(method, path)`` accepts is answered."""
        with self._lock:
            self._trip, self.mlflow_only = match, mlflow_only

    def take_down(self, *, mlflow_only: bool = False) -> None:
        with self._lock:
            self.down, self.mlflow_only = True, mlflow_only

    def restore(self) -> None:
        with self._lock:
            self.down, self.mlflow_only, self._trip = False, False, None

    def __call__(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, dict] | None:
        with self._lock:
            affected = not self.mlflow_only or path.startswith(MLFLOW_PREFIXES)
            if self.down and affected:
                self.refused.append((method, path))
                return 503, UNAVAILABLE
            if self._trip is not None and self._trip(method, path):
                # This request is still answered (by the handlers after this one); the next ones are not.
                self._trip, self.down = None, True
        return None
