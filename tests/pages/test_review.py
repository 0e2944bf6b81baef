"""The Review page driven as a reviewer (forwarded-user header simulated), over an isolated store."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from components.tables import plain
from services import feedback as fb
from services import review_queue as rq
from tests.harness.app_page import button, open_page
from tests.harness.databricks_settings import databricks_env, use_app_env
from tests.services.test_feedback import QUESTIONS, make_traces

REVIEWER = "rev@example.com"


@pytest.fixture
def as_reviewer(monkeypatch):
    monkeypatch.setattr("components.context.request_headers", lambda: {"X-Forwarded-Email": REVIEWER})


def _store(settings, count: int = 2):
    client, experiment_id, ids = make_traces(settings, count, name="review")
    MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri).create_registered_model(
        "agent-a", tags={"agentops.experiment_id": experiment_id})
    fb.set_label_questions("agent-a", QUESTIONS, settings)
    return experiment_id, ids


def test_empty_store_explains_what_to_do(isolated_settings, use_store, as_reviewer):
    use_store(isolated_settings.data_dir)
    app = open_page("pages/review.py")
    assert not app.exception and not app.error
    assert any("no review queues yet" in i.value for i in app.info)
    assert any(plain(REVIEWER) in c.value for c in app.caption)  # shown as typed, not as a mailto link


def test_reviewer_reviews_edits_and_curates(isolated_settings, use_store, as_reviewer):
    experiment_id, ids = _store(isolated_settings)
    queue = rq.create_queue(rq.QueueSpec("triage", rq.QueueSource.HAND_PICKED, (), agent="agent-a", trace_ids=tuple(ids)),
                            "owner@example.com", isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/review.py")
    assert not app.exception and not app.error

    button(app, "Review next item").click().run()
    assert not app.exception
    shown = [t.value for t in app.text]
    assert any(v.startswith("What is") for v in shown) and any(v.startswith("It is") for v in shown)
    trace_id = next(i.trace_id for i in rq.queue_items(queue, isolated_settings) if i.claimed_by == REVIEWER)

    # An empty review is refused and nothing is stored.
    button(app, "Submit review").click().run()
    assert any("empty" in w.value for w in app.warning)
    assert fb.assessment_history(trace_id, isolated_settings).empty

    app.radio(key="review_form_thumbs").set_value(":material/thumb_down: Bad answer")
    app.select_slider(key="review_form_rating").set_value("2")
    app.text_area(key="review_form_comment").input("Wrong number")
    app.text_area(key="review_form_corrected").input("It is zero.")
    app.selectbox(key="review_form_label_tone").select("rude")
    button(app, "Submit review").click().run()
    assert not app.exception and not app.warning, [w.value for w in app.warning]
    assert any("Review stored" in s.value for s in app.success)
    history = fb.assessment_history(trace_id, isolated_settings)
    assert set(history["reviewer"]) == {REVIEWER}
    assert dict(zip(history["name"], history["value"])) == {
        "thumbs_up": False, "rating": 2, "comment": "Wrong number", "expected_response": "It is zero.", "tone": "rude"}
    progress = rq.progress(queue, REVIEWER, isolated_settings)
    assert (progress.completed, progress.mine) == (1, 1)

    # Edit the judgement: MLflow keeps the old value, overridden.
    app.radio(key="edit_form_thumbs").set_value(":material/thumb_up: Good answer")
    next(b for b in app.button if b.label == "Submit review" and "edit_form" in b.id).click().run()
    assert any("Updated 1 judgement" in s.value for s in app.success)
    thumbs = fb.assessment_history(trace_id, isolated_settings).query("name == 'thumbs_up'")
    assert list(thumbs["value"]) == [False, True] and list(thumbs["valid"]) == [False, True]

    # Curate the reviewed trace into an evaluation dataset.
    app.text_input(key="cur_name").input("triaged")
    button(app, "Add reviewed traces to the dataset").click().run()
    assert not app.exception
    assert any("Added 1 row" in s.value for s in app.success)
    from services import datasets

    assert datasets.load_dataset_rows("triaged", isolated_settings)[0]["expectations"] == {"expected_response": "It is zero."}


def test_a_trace_whose_agent_tag_is_no_registered_model_opens_with_its_tags_as_text(isolated_settings, use_store,
                                                                                       as_reviewer):
    # The agent and version tags are whatever the traced code wrote: here markdown that would load an image.
    agent = "![pix](http://127.0.0.1:9/pix.png)"
    _, _, ids = make_traces(isolated_settings, 1, agent=agent, name="tagged")
    rq.create_queue(rq.QueueSpec("tags", rq.QueueSource.HAND_PICKED, (), trace_ids=tuple(ids)), "o@x", isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/review.py")
    button(app, "Review next item").click().run()
    assert not app.exception and not app.warning, [w.value for w in app.warning]
    assert any(t.value.startswith("What is") for t in app.text)
    meta = next(c.value for c in app.caption if "version 1" in c.value)
    assert plain(agent) in meta and "![" not in meta  # escaped: the image markdown cannot render
    # Only the built-in questions: the tag names no registered model with label questions.
    assert [w for w in app.selectbox if "review_form_label" in (w.key or "")] == []
    app.radio(key="review_form_thumbs").set_value(":material/thumb_up: Good answer")
    button(app, "Submit review").click().run()
    assert any("Review stored" in s.value for s in app.success)


def test_deleted_item_gets_a_clear_message(isolated_settings, use_store, as_reviewer):
    experiment_id, ids = _store(isolated_settings, 1)
    rq.create_queue(rq.QueueSpec("one", rq.QueueSource.HAND_PICKED, (), trace_ids=tuple(ids)), "o@x", isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/review.py")
    button(app, "Review next item").click().run()
    MlflowClient(tracking_uri=isolated_settings.tracking_uri).delete_traces(experiment_id, trace_ids=ids)
    app.radio(key="review_form_thumbs").set_value(":material/thumb_up: Good answer")
    button(app, "Submit review").click().run()
    assert not app.exception
    assert any("deleted meanwhile" in w.value for w in app.warning)


def test_queue_form_and_label_questions(isolated_settings, use_store, as_reviewer):
    _, ids = _store(isolated_settings, 2)
    use_store(isolated_settings.data_dir)
    app = open_page("pages/review.py")
    app.text_input(key="nq_name").input("picked")
    app.selectbox(key="nq_source").select(rq.QueueSource.HAND_PICKED)
    app.text_area(key="nq_ids").input("\n".join(ids))
    button(app, "Preview queue").click().run()
    assert any("- **trace ids**: 2 pasted" in m.value for m in app.markdown)
    assert rq.list_queues(isolated_settings) == []  # previewed, not created
    button(app, "Create queue").click().run()
    assert not app.exception
    assert any("Queue 'picked' created" in s.value for s in app.success)
    (queue,) = rq.list_queues(isolated_settings)
    assert queue.created_by == REVIEWER and len(rq.queue_items(queue, isolated_settings)) == 2

    # An unknown trace id creates nothing.
    app.text_input(key="nq_name").input("bad")
    app.text_area(key="nq_ids").input("tr-0000")
    button(app, "Preview queue").click().run()
    button(app, "Create queue").click().run()
    assert any("does not exist" in w.value for w in app.warning)
    assert len(rq.list_queues(isolated_settings)) == 1

    # A label question with a single option is refused; the stored questions stay.
    text = app.text_area(key="lq_text_agent-a")
    text.input('[{"name": "tone", "prompt": "Tone?", "options": ["only"]}]').run()
    assert any("at least two distinct" in w.value for w in app.warning)
    assert button(app, "Save questions").disabled
    assert fb.label_questions("agent-a", isolated_settings) == QUESTIONS
    app.text_area(key="lq_text_agent-a").input('[{"name": "tone", "prompt": "Tone?", "options": ["ok", "rude"]}]').run()
    assert any("**tone**:" in m.value and "→ " + plain("Tone? (ok / rude)") in m.value for m in app.markdown)
    button(app, "Save questions").click().run()
    assert not app.exception
    assert [(q.name, q.options) for q in fb.label_questions("agent-a", isolated_settings)] == [("tone", ("ok", "rude"))]


def test_a_viewer_cannot_review(monkeypatch, tmp_path, use_store):
    import json as _json

    use_store(tmp_path / "store")
    roles_file = tmp_path / "roles.json"
    roles_file.write_text(_json.dumps({"users": {}, "default": "viewer"}))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles_file))
    monkeypatch.setattr("components.context.request_headers", lambda: {"X-Forwarded-Email": "viewer@example.com"})
    app = open_page("pages/review.py", timeout=90)
    assert any("not review" in w.value and "reviewer role" in w.value for w in app.warning)


# --- Databricks Review App -------------------------------------------------------------------------


def _link_buttons(app: AppTest) -> dict[str, str]:
    """Label → URL of the page's link buttons (AppTest has no typed accessor for them)."""
    found = {}
    for element in app.get("link_button"):
        proto = element.proto
        found[proto.label] = proto.url
    return found


@pytest.mark.slow
def test_on_databricks_a_queue_becomes_a_labeling_session_and_the_page_links_to_it(
        isolated_settings, monkeypatch, as_reviewer):
    """Databricks backend: the session is made with the real labeling client against the harness; the
    queue, registry and feedback stay in the local store (the app's MLflow client is pointed there)."""
    from services import _clients
    from tests.harness.agents_api import ReviewAppApi
    from tests.harness.databricks import DatabricksHarness
    from tests.services.test_serving_split import _local_client_factory

    experiment_id, ids = _store(isolated_settings, 2)
    queue = rq.create_queue(rq.QueueSpec("triage", rq.QueueSource.HAND_PICKED, (), agent="agent-a", trace_ids=tuple(ids)),
                            "owner@example.com", isolated_settings)
    # On Databricks the app keeps queues under an absolute experiment path (a workspace refuses others).
    local_client = _clients.mlflow_client(isolated_settings)
    review = local_client.get_experiment_by_name(rq.REVIEW_EXPERIMENT)
    local_client.rename_experiment(review.experiment_id, f"/Shared/{rq.REVIEW_EXPERIMENT}")
    from databricks.sdk.service import iam

    harness = DatabricksHarness().start()
    api = ReviewAppApi(harness, experiments={experiment_id: "/Users/owner/agent-a"}).install()
    harness.users["rev-token"] = iam.User(user_name=REVIEWER, groups=[iam.ComplexValue(display="experts")])
    monkeypatch.setattr("components.context.request_headers",
                        lambda: {"X-Forwarded-Email": REVIEWER, "X-Forwarded-Access-Token": "rev-token"})
    try:
        use_app_env(monkeypatch, databricks_env(harness, isolated_settings.data_dir, DATABRICKS_TOKEN="app-token",
                                                AGENTOPS_ROLE_GROUPS="reviewer=experts"))
        local = _local_client_factory()
        for module in ("review_queue.queues", "review_queue.items", "review_queue.conversation_view",
                       "review_queue.review_app", "registry", "feedback.labels", "feedback.reviews",
                       "feedback.reading", "feedback.curation"):
            monkeypatch.setattr(f"services.{module}.mlflow_client", local)
        app = open_page("pages/review.py")
        assert not app.exception
        app.text_input(key="dbx_assign").input(f"{REVIEWER}, bo@example.com").run()
        button(app, "Create a labeling session for this queue").click().run()
        assert not app.exception
        assert any("Labeling session created" in s.value for s in app.success), [w.value for w in app.warning + app.error]
        (session_id,) = api.sessions
        assert [i["source"]["trace_id"] for i in api.items[session_id]] == [
            i.trace_id for i in rq.queue_items(queue, isolated_settings)]
        (app_id,) = api.review_apps
        url = f"{harness.url}/ml/review-v2/{app_id}/tasks/labeling/{session_id}"
        assert _link_buttons(app) == {"Open in the Databricks Review App": url}

        # From now on the queue links to its session, on the Queues tab and while reviewing it.
        app = open_page("pages/review.py")
        assert not app.exception
        assert not any(b.label == "Create a labeling session for this queue" for b in app.button)
        assert list(_link_buttons(app).values()) == [url]
        # The Review App API is outside every Databricks Apps user scope: the app made it, after the
        # reviewer's role check; the reviewer's token went nowhere outside its scopes.
        assert {a for m, p, a in api.callers if m in ("POST", "PATCH")} == {"Bearer app-token"}
        assert harness.scope_refusals == []
        assert any(t.value == f"Labeling session: triage ({queue.queue_id[:8]})" for t in app.text)
    finally:
        monkeypatch.undo()
        _clients._cached_settings.cache_clear()
        _clients.configure_mlflow()
        harness.stop()
