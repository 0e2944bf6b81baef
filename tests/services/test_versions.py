"""Version listing, detail, diff and pagination over real MLflow stores."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
from mlflow import MlflowClient

from demo.seed import DEMO_AGENTS
from services import version_traffic, versions
from services.errors import NotFoundError, ValidationError
from tests.services.test_releases import AGENT, DATASET, METRICS, build_agent


@pytest.fixture
def store(isolated_settings):
    build_agent(isolated_settings)
    return isolated_settings


def test_list_versions_has_every_column_newest_first(store):
    frame = versions.list_versions(AGENT, store)

    assert list(frame.columns) == list(versions.VERSION_COLUMNS)
    assert list(frame["version"]) == [3, 2, 1]
    first = frame.set_index("version").loc[1]
    assert first["aliases"] == ("champion",)
    assert first["git_commit"] == f"{1:040d}"
    assert first["params"] == {"temperature": "0.1", "llm_model": "gpt-4o-mini"}
    assert first["eval_dataset"] == DATASET
    assert first["metrics"] == pytest.approx(METRICS[1])
    assert first["model_id"].startswith("m-") and first["run_id"]
    assert first["status"] == "READY"
    assert first["traces"] == 0
    assert pd.isna(first["p95_ms"])


def test_list_versions_makes_no_call_per_version(store, monkeypatch):
    calls: Counter[str] = Counter()
    for method in ("get_registered_model", "get_model_version", "get_logged_model", "search_model_versions",
                   "search_logged_models", "search_runs", "search_traces"):
        original = getattr(MlflowClient, method)

        def counted(self, *args, _original=original, _name=method, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, method, counted)

    versions.list_versions(AGENT, store)

    assert calls["get_model_version"] == 0
    assert calls["get_logged_model"] == 0
    assert calls["get_registered_model"] == 1
    assert calls["search_model_versions"] == 1
    assert calls["search_logged_models"] == 1
    assert calls["search_runs"] == 1
    assert calls["search_traces"] == 0  # traffic per version is aggregated in the store (issue 17)


@pytest.mark.parametrize(("search", "expected"), [("", [3, 2, 1]), ("champion", [1]), ("0.2", [2]), ("v3", [3]),
                                                   ("nothing-matches", [])])
def test_search_filters_versions(store, search, expected):
    assert list(versions.list_versions(AGENT, store, search=search)["version"]) == expected


@pytest.mark.parametrize(("page", "size", "rows", "pages"), [(1, 2, [3, 2], 2), (2, 2, [1], 2), (9, 2, [1], 2),
                                                             (1, 50, [3, 2, 1], 1)])
def test_paginate(store, page, size, rows, pages):
    frame = versions.list_versions(AGENT, store)
    shown, total = versions.paginate(frame, page, size)
    assert list(shown["version"]) == rows and total == pages


def test_version_detail_includes_its_evaluation_runs(store):
    detail = versions.version_detail(AGENT, "v2", store)

    assert detail.version == "2" and detail.aliases == ()
    assert detail.params["temperature"] == "0.2"
    assert detail.git_commit == f"{2:040d}"
    assert [e.version for e in detail.evaluations] == ["2"]
    assert detail.evaluations[0].metrics == pytest.approx(METRICS[2])


def test_diff_shows_only_what_differs(store):
    diff = versions.diff_versions(AGENT, 1, 3, store)

    assert not diff.identical
    rows = {(r.kind, r.key): (r.left, r.right) for r in diff.rows.itertuples()}
    assert rows == {("param", "temperature"): ("0.1", "0.3"), ("tag", "git_commit"): (f"{1:040d}", f"{3:040d}")}
    assert versions.diff_versions(AGENT, 2, 2, store).identical


@pytest.mark.parametrize(("agent", "version", "error"), [(AGENT, "99", NotFoundError), (AGENT, "x", ValidationError),
                                                         ("", "1", ValidationError), ("missing", "1", NotFoundError)])
def test_bad_version_requests_are_typed_errors(store, agent, version, error):
    with pytest.raises(error):
        versions.version_detail(agent, version, store)


def test_demo_versions_carry_traffic_and_evaluations(seeded_settings):
    client = MlflowClient(seeded_settings.tracking_uri, seeded_settings.tracking_uri)
    served = {agent.name: set(agent.split) for agent in DEMO_AGENTS}
    for model in client.search_registered_models():
        frame = versions.list_versions(model.name, seeded_settings)
        assert len(frame) == len(client.search_model_versions(f"name='{model.name}'"))
        aliases = client.get_registered_model(model.name).aliases
        for row in frame.itertuples():
            assert set(row.aliases) == {a for a, v in aliases.items() if str(v) == str(row.version)}
            assert row.metrics and row.eval_dataset
            # Served traffic only: the versions the endpoint splits across; the others have only evaluation rows.
            assert (row.traces > 0) is (row.version in served[model.name])
            assert row.p95_ms > 0 if row.traces else pd.isna(row.p95_ms)


def test_traces_of_a_version_count_served_traffic_not_evaluation_rows(isolated_settings, monkeypatch):
    """Another team's version (public MLflow API only) with live traces and an evaluation run of it."""
    import mlflow
    from mlflow.genai.scorers import scorer

    from tests.services.live_scoring_world import build_world

    monkeypatch.setenv("MLFLOW_GENAI_EVAL_MAX_WORKERS", "2")
    world = build_world(isolated_settings, traces=3)
    experiment_id, model_id = world["experiment_id"], world["model_id"]

    @scorer
    def answered(outputs) -> bool:
        return bool(outputs)

    mlflow.set_experiment(experiment_id=experiment_id)
    mlflow.genai.evaluate(data=[{"inputs": {"question": q}} for q in ("a?", "b?")],
                          predict_fn=lambda question: f"answer to {question}", scorers=[answered], model_id=model_id)
    mlflow.flush_trace_async_logging()
    linked = mlflow.search_traces(locations=[experiment_id], model_id=model_id, return_type="list")
    assert len(linked) == 5  # the store links the evaluation rows to the version too

    row = versions.list_versions("support-bot", isolated_settings).set_index("version").loc[1]
    assert row["traces"] == 3
    assert versions.version_detail("support-bot", 1, isolated_settings).traffic.traces == 3
    # Where the store cannot leave them out (the query_trace_metrics path of REST and Databricks stores).
    fallback = version_traffic.traffic_by_model([experiment_id], [model_id], isolated_settings, force_fallback=True)
    assert fallback[model_id].traces == 3
