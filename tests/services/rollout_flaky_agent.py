"""A tiny ResponsesAgent (models from code) whose error rate a test raises while it is served.

Logged with ``model_config={"fault_file": path}``: while that file holds a fraction (``0.8``), that
share of requests fails (deterministically: the first 8 of every 10), as an agent whose upstream
starts timing out would. Without the file every request is answered.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import mlflow
from mlflow.pyfunc import ResponsesAgent
from mlflow.types.responses import ResponsesAgentRequest, ResponsesAgentResponse


class FlakyAgent(ResponsesAgent):
    def __init__(self) -> None:
        self.fault_file = Path(mlflow.models.ModelConfig(development_config={"fault_file": ""}).get("fault_file"))
        self._count = itertools.count()
        self._lock = threading.Lock()

    def _failing_share(self) -> float:
        try:
            return float(self.fault_file.read_text().strip() or 0)
        except (FileNotFoundError, IsADirectoryError, ValueError):
            return 0.0

    def predict(self, request: ResponsesAgentRequest) -> ResponsesAgentResponse:
        with self._lock:
            n = next(self._count)
        if n % 10 < round(self._failing_share() * 10):
            raise TimeoutError("upstream timed out")
        return ResponsesAgentResponse(output=[self.create_text_output_item(text="Done.", id=f"msg_{n}")])


mlflow.models.set_model(FlakyAgent())
