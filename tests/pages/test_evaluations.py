"""The Evaluations page (Run and Compare tabs) over real stores, driven by Streamlit's AppTest."""

from __future__ import annotations

import json

from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import eval_jobs
from tests.harness.app_page import open_page

PAGE = "pages/evaluations.py"
EVAL_FILTER = "tags.`mlflow.runType` = 'genai_evaluate'"
GOOD_ROWS = [
    {"inputs": {"question": "How do I reset my password?"}, "expectations": {"expected_facts": ["30 minutes"]}},
    {"inputs": {"question": "How do I enable two-factor authentication?"}, "expectations": {"expected_facts": ["authenticator app"]}},
]
BAD_JSONL = (json.dumps(GOOD_ROWS[0]) + "\n" + json.dumps({"inputs": {"prompt": "hi"}}) + "\n").encode()


def _eval_runs(settings) -> list:
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=EVAL_FILTER, max_results=1000, order_by=["attributes.start_time ASC"])


def _table(app: AppTest, column: str):
    """The page's dataframe that has ``column`` (the Run tab lists evaluation runs in a table too)."""
    return next(d.value for d in app.dataframe if column in d.value.columns)


def _datasets(settings) -> int:
    from mlflow.genai.datasets import search_datasets

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    return len(search_datasets(experiment_ids=[e.experiment_id for e in client.search_experiments()]))


def test_run_tab_offers_versions_datasets_and_explains_judges(seeded_settings):
    app = open_page(PAGE, timeout=120)
    assert app.title[0].value == "Evaluations"
    assert app.selectbox(key="eval_agent").options == ["orders-agent", "support-agent"]
    assert "@champion (v2)" in app.selectbox(key="eval_version").options
    assert "orders-agent-golden" in app.selectbox(key="eval_dataset").options
    assert app.multiselect(key="eval_scorers").value == ["expected_facts", "required_tools"]
    assert any("Correctness" in c.value and "cannot run here" in c.value for c in app.caption)
    assert not app.button(key="eval_run").disabled


def test_malformed_upload_names_the_row_and_stores_nothing(seeded_settings):
    runs, stored = len(_eval_runs(seeded_settings)), _datasets(seeded_settings)
    app = open_page(PAGE, timeout=120)
    app.radio(key="eval_source").set_value("Upload a file").run()
    app.file_uploader(key="eval_upload").set_value(("bad.jsonl", BAD_JSONL, "application/jsonl")).run()
    assert not app.exception
    message = " ".join(w.value for w in app.warning)
    assert "Row 2" in message and "inputs.question" in message
    assert app.button(key="eval_run").disabled
    assert "eval_jobs" not in app.session_state
    assert len(_eval_runs(seeded_settings)) == runs and _datasets(seeded_settings) == stored


def test_run_from_the_page_in_the_background(seeded_settings):
    runs = len(_eval_runs(seeded_settings))
    app = open_page(PAGE, timeout=120)
    app.selectbox(key="eval_agent").set_value("support-agent").run()
    app.radio(key="eval_source").set_value("Upload a file").run()
    upload = json.dumps(GOOD_ROWS).encode()
    app.file_uploader(key="eval_upload").set_value(("two.json", upload, "application/json")).run()
    assert any("2 valid rows" in s.value for s in app.success)
    app.button(key="eval_run").click().run()
    (job_id,) = app.session_state["eval_jobs"]
    job = eval_jobs.wait(job_id, timeout=120)
    assert job.status is eval_jobs.JobStatus.SUCCEEDED, job.error
    app.run()
    assert any("finished" in s.value and job.run_id in s.value for s in app.success)
    assert len(_eval_runs(seeded_settings)) == runs + 1


def test_compare_tab_shows_verdicts_summary_and_rows(seeded_settings):
    by_version = {}
    for run in _eval_runs(seeded_settings):
        tags = run.data.tags
        if tags.get("agentops.agent") == "orders-agent" and tags.get("agentops.dataset") == "orders-agent-golden":
            by_version.setdefault(tags["agentops.version"], run.info.run_id)
    app = open_page(PAGE, timeout=120)
    app.multiselect(key="compare_runs").set_value([by_version["1"], by_version["2"]]).run()
    assert not app.exception
    verdicts = " ".join(s.value for s in app.success)
    assert "B: orders-agent v2 is better on expected_facts" in verdicts and "n = 48 shared rows" in verdicts
    summary = _table(app, "Metric")
    assert set(summary["Metric"]) == {"expected_facts", "required_tools"}
    assert len(_table(app, "change")) == 48
    app.radio(key="compare_filter").set_value("Improvements").run()
    rows = _table(app, "change")
    assert 0 < len(rows) < 48 and set(rows["change"]) == {"improvement"}


def test_empty_store_says_what_to_do(tmp_path, use_store):
    use_store(tmp_path / "empty")
    app = open_page(PAGE, timeout=120)
    assert any("No registered agents yet" in i.value for i in app.info)
