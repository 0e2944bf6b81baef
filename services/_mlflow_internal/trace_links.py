"""How traces are linked to agents and versions: MLflow's ``mlflow.modelId`` or the app's older tags."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_ID_KEY = "mlflow.modelId"
SOURCE_RUN_KEY = "mlflow.sourceRun"


@dataclass(frozen=True)
class TraceLink:
    """Which traces belong to something (an agent, a version, an alias holder).

    A trace matches when its ``mlflow.modelId`` metadata is one of ``model_ids`` (the link
    ``set_active_model``, loaded pyfunc models and Databricks serving record), or when it carries
    one of the ``tags`` pairs (traces written by earlier versions of this app, linked by its own
    tags). In a grouping, all links' tags must use one key.
    """

    model_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.model_ids and not self.tags




def _link_condition(ti, tags, md, link: TraceLink):
    """SQL: the trace ``ti`` matches ``link`` (plain EXISTS subqueries, valid on SQLite and PostgreSQL)."""
    import sqlalchemy as sa

    parts = []
    if link.model_ids:
        parts.append(sa.exists().where(md.c.request_id == ti.c.request_id, md.c.key == MODEL_ID_KEY,
                                       md.c.value.in_(list(link.model_ids))))
    for key, value in link.tags:
        parts.append(sa.exists().where(tags.c.request_id == ti.c.request_id, tags.c.key == key,
                                       tags.c.value == value))
    return sa.or_(*parts)


def _label_map(group_links: dict[str, TraceLink]) -> tuple[dict[str, list[str]], dict[str, list[str]], str | None]:
    """Labels by model id and by legacy tag value, and the legacy tag key (None when no group has one)."""
    by_model: dict[str, list[str]] = {}
    by_tag: dict[str, list[str]] = {}
    tag_key = None
    for label, link in group_links.items():
        for model_id in link.model_ids:
            by_model.setdefault(model_id, []).append(label)
        for key, value in link.tags:
            tag_key = key
            by_tag.setdefault(value, []).append(label)
    return by_model, by_tag, tag_key


def _labels_of(model_id: str | None, tag_value: str | None, by_model, by_tag) -> list[str]:
    # The model id is MLflow's own link and wins; the legacy tag counts for traces without one.
    if model_id is not None and model_id in by_model:
        return by_model[model_id]
    return by_tag.get(tag_value, []) if tag_value is not None else []

