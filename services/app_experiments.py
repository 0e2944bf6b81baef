"""The experiments this app itself writes to a team's workspace, and whether they exist yet.

The app writes nothing until a user acts: the audit trail (``AGENTOPS_AUDIT_EXPERIMENT``) is
created with the first recorded change, the review queues (``AGENTOPS_REVIEW_EXPERIMENT``) with
the first queue. Reading them never creates them (``get_experiment_by_name`` only).
"""

from __future__ import annotations

from dataclasses import dataclass

from services._clients import get_settings, mlflow_client, translate_errors, workspace_experiment_name
from services.settings import Settings


@dataclass(frozen=True)
class AppExperiment:
    """One experiment the app writes: what for, its name, the variable naming it, and its id once it exists."""

    purpose: str
    name: str
    variable: str
    experiment_id: str | None

    @property
    def exists(self) -> bool:
        return self.experiment_id is not None


def app_experiments(settings: Settings | None = None) -> tuple[AppExperiment, ...]:
    """The audit and review-queue experiments, each with its id when it has been created (read only)."""
    settings = settings or get_settings()
    client = mlflow_client(settings)
    wanted = (
        ("audit trail of alias and traffic changes", settings.audit_experiment, "AGENTOPS_AUDIT_EXPERIMENT"),
        ("review queues", settings.review_experiment, "AGENTOPS_REVIEW_EXPERIMENT"),
    )
    out = []
    for purpose, name, variable in wanted:
        with translate_errors(f"experiment {name!r}"):
            if variable == "AGENTOPS_AUDIT_EXPERIMENT" and settings.audit_experiment_id:
                # Databricks Apps: the audit-experiment resource, by id (AGENTOPS_AUDIT_EXPERIMENT_ID).
                found = client.get_experiment(settings.audit_experiment_id)
                name, variable = found.name, "AGENTOPS_AUDIT_EXPERIMENT_ID"
            else:
                name = workspace_experiment_name(name, settings)  # absolute on Databricks
                found = client.get_experiment_by_name(name)
        live = found is not None and str(getattr(found, "lifecycle_stage", "active")) != "deleted"
        out.append(AppExperiment(purpose, name, variable, str(found.experiment_id) if live else None))
    return tuple(out)


def describe(experiment: AppExperiment) -> str:
    """One line for the UI: where the app writes, and whether it has yet."""
    if experiment.exists:
        return (f"The {experiment.purpose} live in the experiment '{experiment.name}' (id {experiment.experiment_id}; "
                f"set by {experiment.variable}).")
    return (f"The {experiment.purpose} will live in the experiment '{experiment.name}' ({experiment.variable}); "
            "it does not exist yet and is created only when the first one is written.")
