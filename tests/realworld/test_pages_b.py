"""Evaluations, Review and Versions pages on the real-world workspace (AppTest), against the builder's facts.

No experiment id is configured and no app tag exists: the pages find everything through the links
MLflow records.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from tests.harness import app_page
from tests.realworld.workspace import UNICODE_AGENT


@pytest.fixture
def open_page(on_realworld):
    return lambda page: app_page.open_page(page, timeout=120)


def _table(app: AppTest, column: str):
    return next(d.value for d in app.dataframe if column in d.value.columns)


def _cells(app: AppTest) -> list[str]:
    return [str(v) for d in app.dataframe for v in d.value.astype(str).to_numpy().ravel()]


def _label(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def test_review_page_lists_every_feedback_name_with_counts_per_value(realworld, open_page):
    app = open_page("pages/review.py")
    names = _table(app, "counts per value").set_index("name")
    assert set(names.index) == set(realworld.feedback)
    for name, counts in realworld.feedback.items():
        ordered = sorted(((_label(v), n) for v, n in counts.items()), key=lambda kv: (-kv[1], kv[0]))
        assert names.loc[name, "counts per value"] == " · ".join(f"{k}: {n}" for k, n in ordered)
        assert names.loc[name, "sources (count)"] == f"HUMAN: {sum(counts.values())}"
        assert names.loc[name, "reviewers"] == str(len(realworld.feedback_reviewers[name]))
    assert not any(c in ("None", "nan", "NaT") for c in _cells(app))


def test_evaluations_page_lists_and_compares_runs_made_outside_the_app(realworld, open_page):
    with_model, bare = realworld.eval_runs["with_model"], realworld.eval_runs["bare"]
    app = open_page("pages/evaluations.py")
    runs = _table(app, "Linked by").set_index("Run")
    version = next(v.version for v in realworld.agents[UNICODE_AGENT].versions.values()
                   if v.model_id == with_model.model_id)
    assert runs.loc[with_model.run_id, "Version"] == f"v{version}"
    assert runs.loc[bare.run_id, "Version"] == "not attached"
    assert runs.loc[bare.run_id, "Linked by"] == "no model recorded"
    app.multiselect(key="compare_runs").set_value([bare.run_id, with_model.run_id]).run()
    assert not app.exception
    shared = set(bare.questions) & set(with_model.questions)
    only_base, only_cand = len(set(bare.questions) - shared), len(set(with_model.questions) - shared)
    captions = " ".join(c.value for c in app.caption)
    assert f"{only_base} rows only in the baseline and {only_cand} only in B: {UNICODE_AGENT} v{version}" in captions
    rows = _table(app, "change")
    assert len(rows) == len(set(bare.questions) | set(with_model.questions))
    assert sorted(rows["present_in"]) == sorted(["A, B"] * len(shared) + ["A"] * only_base + ["B"] * only_cand)


def test_unknown_experiment_id_gets_a_clear_message_and_changes_nothing(realworld, open_page):
    client = MlflowClient(realworld.tracking_uri, realworld.tracking_uri)
    before = sorted((e.experiment_id, e.name) for e in client.search_experiments())
    app = open_page("pages/evaluations.py")
    app.selectbox(key="eval_scope").set_value("Another experiment id…").run()
    app.text_input(key="eval_scope_other").input("999999999").run()
    assert not app.exception
    errors = " ".join(e.value for e in [*app.error, *app.warning])
    assert "999999999" in errors and "does not exist" in errors and "Traceback" not in errors
    assert sorted((e.experiment_id, e.name) for e in client.search_experiments()) == before


def test_versions_page_shows_linked_prompts_and_their_diff(realworld, open_page):
    support = realworld.agents[UNICODE_AGENT]
    left, right = sorted(support.versions, key=int)[:2]
    app = open_page("pages/versions.py")
    app.selectbox(key="versions.agent").set_value(UNICODE_AGENT).run()
    app.selectbox(key="versions.detail").set_value(right).run()
    prompts_table = _table(app, "Linked on")
    assert list(prompts_table["Prompt"] + "/" + prompts_table["Version"].str.removeprefix("v")) == \
        support.versions[right].prompt_versions
    app.selectbox(key="versions.left").set_value(left).run()
    app.selectbox(key="versions.right").set_value(right).run()
    assert not app.exception
    diffs = [c.value for c in app.code if c.language == "diff"]
    assert len(diffs) == 1
    old = realworld.prompt_texts[support.versions[left].prompt_versions[0].split("/")[1]]
    new = realworld.prompt_texts[support.versions[right].prompt_versions[0].split("/")[1]]
    lines = diffs[0].splitlines()
    assert [ln[1:] for ln in lines if ln.startswith("-") and not ln.startswith("---")] == old.splitlines()
    assert [ln[1:] for ln in lines if ln.startswith("+") and not ln.startswith("+++")] == new.splitlines()
    # The version the with-model evaluation run evaluated lists it in its detail.
    with_model = realworld.eval_runs["with_model"]
    evaluated = next(v.version for v in support.versions.values() if v.model_id == with_model.model_id)
    app.selectbox(key="versions.detail").set_value(evaluated).run()
    assert with_model.run_id in list(_table(app, "Run id")["Run id"])
