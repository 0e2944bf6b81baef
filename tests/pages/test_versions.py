"""The Versions & releases page over real stores, driven by Streamlit's AppTest."""

from __future__ import annotations

import getpass

import pytest
import streamlit as st
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import gates, releases
from services.errors import NotFoundError
from services.identity import Identity, IdentitySource
from services.promotion import PromotionRequest, RollbackRequest
from tests.hardening.mlflow_restart import refuse_connections
from tests.harness.app_page import open_page
from tests.services.test_releases import AGENT, GATE, build_agent

PAGE = "pages/versions.py"


@pytest.fixture
def release_store(isolated_settings, use_store):
    build_agent(isolated_settings)
    gates.set_gate_rules(AGENT, GATE, Identity("lead", "lead", IdentitySource.OS_USER), isolated_settings)
    use_store(isolated_settings.data_dir)
    return isolated_settings


def _review(app: AppTest, alias: str, version: str) -> AppTest:
    app.selectbox(key="versions.alias").set_value(alias)
    app.selectbox(key="versions.target").set_value(version)
    app.button(key="versions.review").click().run()
    assert not app.exception
    return app


def _metric(app: AppTest, label: str) -> str:
    return next(m.value for m in app.metric if m.label == label)


def _champion(settings) -> str:
    return str(MlflowClient(settings.tracking_uri, settings.tracking_uri).get_registered_model(AGENT).aliases["champion"])


def test_empty_store_says_how_to_fill_it(tmp_path, use_store):
    use_store(tmp_path / "empty")
    app = open_page(PAGE)
    assert any("No registered agents yet" in i.value for i in app.info)
    assert any("python -m demo.seed" in i.value for i in app.info)


def test_lists_versions_with_aliases_and_metrics(release_store):
    app = open_page(PAGE)
    table = app.dataframe[0].value
    assert list(table["Version"]) == ["v3", "v2", "v1"]
    assert table.set_index("Version").loc["v1", "Aliases"] == "champion"
    assert "expected_facts" in table.columns
    assert not app.error


def test_confirm_step_shows_before_after_and_evidence_then_promotes(release_store):
    app = _review(open_page(PAGE), "champion", "2")

    assert _metric(app, "Points to now") == "v1"
    assert _metric(app, "Will point to") == "v2"
    evidence = next(d.value for d in app.dataframe if "Δ" in d.value.columns)
    row = evidence.set_index("Metric").loc["expected_facts"]
    assert row["Δ"] == pytest.approx(0.30)
    assert _champion(release_store) == "1"  # reviewing changes nothing

    app.button(key="versions.confirm").click().run()

    assert not app.exception
    assert _champion(release_store) == "2"
    assert any("champion: v1 → v2" in s.value for s in app.success)
    history = releases.alias_history(AGENT, "champion", release_store)
    assert len(history) == 1 and history[0].user == getpass.getuser()
    assert history[0].to_version == _champion(release_store)


def test_blocked_promotion_changes_nothing(release_store):
    app = _review(open_page(PAGE), "champion", "3")

    assert _metric(app, "Will point to") == "v3"
    assert any("gate blocks" in e.value for e in app.error)
    confirm = app.button(key="versions.confirm")
    assert confirm.disabled

    assert _champion(release_store) == "1"
    assert releases.alias_history(AGENT, settings=release_store) == []


def test_override_with_reason_is_recorded(release_store):
    app = _review(open_page(PAGE), "champion", "3")
    app.checkbox(key="versions.override").check().run()
    app.text_area(key="versions.reason").input("incident 42 hotfix").run()
    assert not app.button(key="versions.confirm").disabled
    app.button(key="versions.confirm").click().run()

    assert not app.exception
    assert _champion(release_store) == "3"
    change = releases.alias_history(AGENT, "champion", release_store)[0]
    assert change.override and change.reason == "incident 42 hotfix"


def test_history_tab_offers_rollback_and_flags_external_moves(release_store):
    releases.promote(PromotionRequest(AGENT, "champion", "2"), Identity("ops", "ops", IdentitySource.OS_USER), settings=release_store)
    app = open_page(PAGE)
    states = next(d.value for d in app.dataframe if "Rollback to" in d.value.columns)
    assert states.set_index("Alias").loc["champion", "Rollback to"] == "v1"

    app.button(key="versions.rollback").click().run()
    assert not app.exception
    assert _champion(release_store) == "1"

    MlflowClient(release_store.tracking_uri, release_store.tracking_uri).set_registered_model_alias(
        AGENT, "champion", "3")
    st.cache_data.clear()  # reads are cached for 30 s; the page's Refresh button does the same
    app = open_page(PAGE)
    assert any("moved outside the app" in w.value for w in app.warning)


def test_after_a_rollback_the_form_is_rebuilt_and_a_second_click_does_not_re_promote(release_store):
    ops = Identity("ops", "ops", IdentitySource.OS_USER)
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ops, settings=release_store)
    app = open_page(PAGE)
    app.text_input(key="versions.rollback_reason").input("p95 regression").run()
    app.button(key="versions.rollback").click().run()
    assert not app.exception
    assert _champion(release_store) == "1"
    assert releases.alias_history(AGENT, "champion", release_store)[0].reason == "p95 regression"
    # Same session, after the rerun: the old move (v2 → v1) and its reason are gone, and nothing offers
    # v1 → v2 under the name of a rollback.
    offered = [app.selectbox(key="versions.rollback_alias").options] if any(
        s.key == "versions.rollback_alias" for s in app.selectbox) else []
    assert not any("v1 → v2" in o for opts in offered for o in opts), offered
    assert not any(b.key == "versions.rollback" for b in app.button)
    assert not any(t.key == "versions.rollback_reason" and t.value for t in app.text_input)
    assert releases.alias_state(AGENT, "champion", release_store).previous_version is None
    with pytest.raises(NotFoundError, match="No previous holder"):  # the service refuses a re-promotion too
        releases.rollback(RollbackRequest(AGENT, "champion"), ops, settings=release_store)
    assert _champion(release_store) == "1" and len(releases.alias_history(AGENT, "champion", release_store)) == 2


def test_rollbacks_walk_back_through_the_promotions(release_store):
    ops = Identity("ops", "ops", IdentitySource.OS_USER)
    releases.promote(PromotionRequest(AGENT, "champion", "2"), ops, settings=release_store)
    releases.promote(PromotionRequest(AGENT, "champion", "3", override=True, reason="try 3"), ops, settings=release_store)
    releases.rollback(RollbackRequest(AGENT, "champion"), ops, settings=release_store)
    state = releases.alias_state(AGENT, "champion", release_store)
    assert (state.version, state.previous_version) == ("2", "1")  # the next rollback goes further back


@pytest.mark.slow
def test_demo_agents_render(seeded_settings, use_store):
    use_store(seeded_settings.data_dir)
    app = open_page(PAGE)
    assert not app.error
    assert len(app.dataframe[0].value) == 3


@pytest.fixture
def ready_store(isolated_settings, use_store):
    from tests.services.test_readiness import build_ready_agent

    build_ready_agent(isolated_settings, with_datasets=False)
    use_store(isolated_settings.data_dir)
    return isolated_settings


def test_versions_list_has_a_readiness_column(ready_store):
    from tests.services.test_readiness import AGENT as READY

    app = open_page(PAGE)
    app.selectbox(key="versions.agent").set_value(READY).run()
    table = app.dataframe[0].value.set_index("Version")
    assert table.loc["v2", "Readiness"].startswith("⛔")  # fails its gate (required)
    assert "pass" in table.loc["v1", "Readiness"]
    assert not app.exception


def test_failing_load_check_blocks_promotion_until_overridden(ready_store):
    from tests.services.test_readiness import AGENT as READY

    app = open_page(PAGE)
    app.selectbox(key="versions.agent").set_value(READY).run()
    app = _review(app, "champion", "3")
    assert not any("Required readiness items fail" in e.value for e in app.error)
    assert not app.button(key="versions.confirm").disabled  # unknown never blocks

    app.button(key="versions.load_check").click().run()
    assert not app.exception
    assert any("Required readiness items fail" in e.value for e in app.error)
    checklist = next(d.value for d in app.dataframe if "Fix" in d.value.columns and "vector index" in " ".join(d.value["Why"]))
    assert checklist is not None
    assert app.button(key="versions.confirm").disabled

    app.checkbox(key="versions.override").check().run()
    app.text_area(key="versions.reason").input("load fixed by config at deploy").run()
    app.button(key="versions.confirm").click().run()
    assert not app.exception
    change = releases.alias_history(READY, "champion", ready_store)[0]
    assert change.override and change.to_version == "3"
    assert change.evidence["readiness"]["failing_required"] == ["loads_and_predicts"]


def test_an_interrupted_alias_change_is_settled_through_the_confirmation(isolated_settings, use_store, monkeypatch):
    from services.errors import BackendUnavailableError

    build_agent(isolated_settings)
    lead = Identity("lead", "lead", IdentitySource.OS_USER)
    with monkeypatch.context() as patch:  # the alias moves, then the trail cannot be completed
        refuse_connections(patch, (MlflowClient, "log_batch"))
        with pytest.raises(BackendUnavailableError):
            releases.promote(PromotionRequest(AGENT, "champion", "2", request_id="lost-1"), lead,
                             settings=isolated_settings)
    use_store(isolated_settings.data_dir)
    app = open_page(PAGE)
    assert any("was interrupted" in w.value for w in app.warning)
    settle = app.button(key="versions.settle::champion")
    assert settle.label == "Settle champion" and not settle.disabled
    assert releases.alias_history(AGENT, "champion", isolated_settings) == []  # nothing settled by looking
    settle.click().run()
    assert not app.exception
    assert any("recorded as applied" in s.value for s in app.success), [s.value for s in app.success]
    (done,) = releases.alias_history(AGENT, "champion", isolated_settings)
    assert (done.to_version, done.completed, done.outcome) == ("2", True, f"applied (settled by {getpass.getuser()})")
    assert _champion(isolated_settings) == "2"  # settling never moves the alias
    assert not any("was interrupted" in w.value for w in app.warning)
    assert not [b for b in app.button if b.key and b.key.startswith("versions.settle::")]
