"""Another team's agent, written with MLflow's public API only: a registered version whose
LoggedModel lives in the team's experiment, and traces linked to it with ``set_active_model``."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

AGENT = "support-bot"


def build_world(settings, *, traces: int = 10, agent: str = AGENT, answer: str = "Refunds take 5 days.") -> dict:
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    experiment_id = client.create_experiment(f"{agent}-traces", artifact_location=str(settings.data_dir / "art"))
    model = mlflow.create_external_model(name=agent, experiment_id=experiment_id)
    client.create_registered_model(agent)
    client.create_model_version(agent, source=f"models:/{model.model_id}", model_id=model.model_id)
    trace_ids = log_traces(experiment_id, model.model_id, traces, answer=answer)
    return {"experiment_id": experiment_id, "model_id": model.model_id, "trace_ids": trace_ids, "client": client}


def log_traces(experiment_id: str, model_id: str, count: int, *, answer: str = "Refunds take 5 days.",
               tags: dict[str, str] | None = None) -> list[str]:
    """``count`` traces linked to the version by ``set_active_model``, each with ``tags`` (e.g. a gateway's)."""
    ids = []
    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.set_active_model(model_id=model_id)
    try:
        for i in range(count):
            with mlflow.start_span("agent") as span:
                span.set_inputs({"input": [{"role": "user", "content": f"question {i}"}]})
                span.set_outputs({"output": [{"type": "message", "content": [{"type": "output_text", "text": answer}]}]})
                if tags:
                    mlflow.update_current_trace(tags=tags)
                ids.append(span.trace_id)
    finally:
        mlflow.clear_active_model()
    mlflow.flush_trace_async_logging()
    return ids

