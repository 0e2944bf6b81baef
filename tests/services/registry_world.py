"""A registered model with bare versions, written with MLflow's public API only (no artifacts, no runs)."""

from __future__ import annotations

from mlflow import MlflowClient


def register_versions(settings, name: str, count: int, *, champion: str | None = None) -> MlflowClient:
    """Register ``name`` with versions 1..``count`` (``champion`` alias on one of them); returns the client."""
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    client.create_registered_model(name)
    for _ in range(count):
        client.create_model_version(name, source="file:///tmp/none")
    if champion is not None:
        client.set_registered_model_alias(name, "champion", champion)
    return client
