"""Pages over a workspace written by other code (AppTest): the exact figures the builder wrote."""

from __future__ import annotations

from mlflow import MlflowClient

from tests.harness.app_page import open_page
from tests.realworld.workspace import BULK_AGENT, EMPTY_AGENT, QUIET_AGENT, UNICODE_AGENT


def _live(agent) -> tuple[int, int]:
    return sum(v.traces for v in agent.versions.values()), sum(v.errors for v in agent.versions.values())


def test_overview_rows_count_each_agents_traces_through_the_model_id(on_realworld):
    app = open_page(timeout=120)
    frame = app.dataframe[0].value.set_index("Agent")
    assert set(frame.index) == set(on_realworld.agents)
    for name, agent in on_realworld.agents.items():
        traces, errors = _live(agent)
        assert frame.loc[name, "Versions"] == len(agent.versions)
        assert frame.loc[name, "Traces (24h)"] == traces
        if traces:
            assert frame.loc[name, "Error rate (24h)"] == f"{errors / traces:.1%}"
    assert frame.loc[UNICODE_AGENT, "Champion"].endswith(f"v{on_realworld.agents[UNICODE_AGENT].aliases['champion']}")
    assert frame.loc[EMPTY_AGENT, "Traces (24h)"] == 0 and frame.loc[QUIET_AGENT, "Traces (24h)"] == 0


def test_monitoring_splits_the_unicode_agent_by_version(on_realworld):
    app = open_page("pages/monitoring.py", timeout=120)
    assert not any("nothing to monitor" in i.value.lower() or "no agents" in i.value.lower() for i in app.info)
    app.selectbox(key="mon_agent").set_value(UNICODE_AGENT).run()
    app.selectbox(key="mon_split").set_value("Version").run()
    assert not app.exception
    totals = next(d.value for d in app.dataframe if "version" in d.value.columns and "requests" in d.value.columns)
    totals = totals.set_index("version")
    for number, version in on_realworld.agents[UNICODE_AGENT].versions.items():
        assert (totals.loc[number, "requests"], totals.loc[number, "errors"]) == (version.traces, version.errors)
    traces, errors = _live(on_realworld.agents[UNICODE_AGENT])
    requests = next(m.value for m in app.metric if m.label == "Requests")
    assert requests == f"{traces:,}"
    # The version filter lists the versions with traffic, found through the model id.
    assert set(app.selectbox(key="mon_version").options) == {"Any", *on_realworld.agents[UNICODE_AGENT].versions}


def test_versions_page_shows_params_and_traffic_of_every_version(on_realworld):
    app = open_page("pages/versions.py", timeout=120)
    app.selectbox(key="versions.agent").set_value(UNICODE_AGENT).run()
    assert not app.exception
    table = app.dataframe[0].value.set_index("Version")
    for number, version in on_realworld.agents[UNICODE_AGENT].versions.items():
        row = table.loc[f"v{number}"]
        for key, value in version.params.items():
            assert f"{key}={value}" in row["Params"]
        # Served traffic only: the evaluation rows linked to the same LoggedModel do not count.
        assert row["Traces (7d)"] == version.traces


def test_versions_page_of_an_agent_with_hundreds_of_versions(on_realworld):
    app = open_page("pages/versions.py", timeout=120)
    app.selectbox(key="versions.agent").set_value(BULK_AGENT).run()
    assert not app.exception
    bulk = on_realworld.agents[BULK_AGENT]
    assert any(f"of {len(bulk.versions)} versions" in c.value for c in app.caption)
    table = app.dataframe[0].value.set_index("Version")
    assert len(table) > 0
    for number in table.index:
        version = bulk.versions[number.removeprefix("v")]
        for key, value in version.params.items():
            assert f"{key}={value}" in table.loc[number, "Params"]
        assert table.loc[number, "Traces (7d)"] == version.traces


def test_versions_service_reads_params_of_all_two_hundred_versions(realworld, realworld_settings):
    from services import versions

    frame = versions.list_versions(BULK_AGENT, realworld_settings)
    bulk = realworld.agents[BULK_AGENT]
    assert len(frame) == len(bulk.versions)
    for row in frame.itertuples():
        assert row.params == bulk.versions[str(row.version)].params
        assert row.traces == bulk.versions[str(row.version)].traces


def test_attach_and_detach_an_experiment_from_the_ui(on_realworld):
    client = MlflowClient(on_realworld.tracking_uri, on_realworld.tracking_uri)
    before = dict(client.get_registered_model(QUIET_AGENT).tags)
    app = open_page("pages/versions.py", timeout=120)
    app.selectbox(key="versions.agent").set_value(QUIET_AGENT).run()
    # An experiment id that does not exist: a clear message, nothing stored.
    app.text_input(key="versions.attach_id").set_value("987654").run()
    app.button(key="versions.attach").click().run()
    assert not app.exception
    assert any("987654" in w.value and "does not exist" in w.value for w in app.warning)
    assert dict(client.get_registered_model(QUIET_AGENT).tags) == before

    other = on_realworld.agents[UNICODE_AGENT].experiment_id
    app.text_input(key="versions.attach_id").set_value(other).run()
    app.button(key="versions.attach").click().run()
    assert not app.exception
    assert client.get_registered_model(QUIET_AGENT).tags.get("agentops.attached_experiments") == other
    from services import audit
    from services.settings import load_settings

    settings = load_settings({"AGENTOPS_DATA_DIR": str(on_realworld.data_dir)})
    assert audit.experiment_links(QUIET_AGENT, settings=settings)[0]["action"] == "attach"

    app.button(key="versions.detach").click().run()
    assert not app.exception
    assert "agentops.attached_experiments" not in client.get_registered_model(QUIET_AGENT).tags
    assert [r["action"] for r in audit.experiment_links(QUIET_AGENT, settings=settings)] == ["detach", "attach"]
