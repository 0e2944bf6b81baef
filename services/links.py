"""Which registered version a LoggedModel is: the link MLflow records when a model is registered.

Shared by evaluation runs (the LoggedModel ``evaluate`` logged as input), feedback and review
queues (the ``mlflow.modelId`` on a trace).
"""

from __future__ import annotations

import json
from typing import Any

MODEL_ID_METADATA = "mlflow.modelId"
# LoggedModel tag MLflow writes when a model is registered: [{"name": ..., "version": ...}].
MODEL_VERSIONS_TAG = "mlflow.modelVersions"


class ModelIndex:
    """LoggedModel id → (registered model, version), read once per model id from what MLflow records.

    The LoggedModel's ``mlflow.modelVersions`` tag names its versions; when it is missing (older
    stores, Unity Catalog) the versions' ``models:/m-<id>`` sources are listed once.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._known: dict[str, tuple[str, str] | None] = {}
        self._by_source: dict[str, tuple[str, str]] | None = None

    def version_of(self, model_id: str) -> tuple[str, str] | None:
        if model_id not in self._known:
            self._known[model_id] = self._lookup(model_id)
        return self._known[model_id]

    def _lookup(self, model_id: str) -> tuple[str, str] | None:
        try:
            model = self._client.get_logged_model(model_id)
            listed = json.loads((getattr(model, "tags", None) or {}).get(MODEL_VERSIONS_TAG) or "[]")
        except Exception:  # noqa: BLE001 - a deleted model or a garbled tag: fall back to the registry
            listed = []
        for entry in listed if isinstance(listed, list) else []:
            if isinstance(entry, dict) and entry.get("name") and entry.get("version") is not None:
                return str(entry["name"]), str(entry["version"])
        if self._by_source is None:
            self._by_source = {}
            try:
                token = None
                while True:
                    page = self._client.search_model_versions(max_results=200, page_token=token)
                    for v in page:
                        source = v.source or ""
                        found = getattr(v, "model_id", None) or (
                            source.removeprefix("models:/").split("/")[0] if source.startswith("models:/m-") else None)
                        if found:
                            self._by_source.setdefault(found, (v.name, str(v.version)))
                    token = page.token
                    if not token:
                        break
            except Exception:  # noqa: BLE001 - Unity Catalog needs a name filter; the tag is the link there
                pass
        return self._by_source.get(model_id)
