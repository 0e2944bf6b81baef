"""The Alerts page driven by Streamlit's AppTest: channels, rules, the test button, roles."""

from __future__ import annotations

import getpass

import pytest
from streamlit.testing.v1 import AppTest

from services import alerting, roles
from tests.harness.app_page import button, open_page
from tests.services.test_alerting import SECRET, _messages, hook, receiver  # noqa: F401 - fixtures used by name


@pytest.fixture
def store(isolated_settings, use_store, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "alert-channels.json"))
    use_store(isolated_settings.data_dir)
    return isolated_settings


def _texts(app: AppTest) -> str:
    parts = [str(e.value) for kind in ("markdown", "caption", "success", "warning", "error", "info")
             for e in getattr(app, kind)]
    parts += [d.value.to_string() for d in app.dataframe if hasattr(d.value, "to_string")]
    return "\n".join(parts)


def test_channels_rules_and_the_test_button(store, hook, receiver):
    app = open_page("pages/alerts.py")
    assert not app.exception
    assert any("No alert rules yet" in i.value for i in app.info)

    app.text_input(key="channel_name").input("oncall")
    app.text_input(key="channel_url").input("nosuchservice://tok/" + SECRET)
    button(app, "Review channel").click().run()
    assert any("apprise does not recognise" in w.value for w in app.warning)
    assert not any(b.label == "Save channel" for b in app.button)  # nothing to confirm
    assert alerting.list_channels(store) == []

    app.text_input(key="channel_name").input("oncall")
    app.text_input(key="channel_url").input(hook)
    button(app, "Review channel").click().run()
    assert "Add channel **oncall**" in _texts(app) and hook not in _texts(app)
    assert alerting.list_channels(store) == []  # reviewed, not yet confirmed
    button(app, "Save channel").click().run()
    assert not app.exception
    assert any("Saved channel oncall" in s.value for s in app.success)
    assert "JSON (json://" in _texts(app)

    button(app, "Send test alert").click().run()
    assert any("Test alert delivered to oncall" in s.value for s in app.success)
    assert [kind for kind, _ in _messages(receiver)] == ["info"]

    app.text_input(key="rule_name").input("errors")
    app.number_input(key="rule_threshold").set_value(0.1)
    app.number_input(key="rule_min_sample").set_value(3)
    app.multiselect(key="rule_channels").select("oncall")
    button(app, "Review rule").click().run()
    assert any("minimum sample must be between 5" in w.value for w in app.warning)
    assert not any(b.label == "Save rule" for b in app.button)
    assert alerting.list_rules(store) == []

    app.number_input(key="rule_min_sample").set_value(10)
    button(app, "Review rule").click().run()
    assert "- **min_sample**: 10" in _texts(app)
    button(app, "Save rule").click().run()
    assert not app.exception
    assert [(r.name, r.min_sample, r.channels) for r in alerting.list_rules(store)] == [("errors", 10, ("oncall",))]
    assert "error rate above 10.0% over 60 min" in _texts(app)
    # The history tab renders the test delivery and the recorded changes.
    assert "oncall" in app.dataframe[-2].value.to_string() and getpass.getuser() in app.dataframe[-1].value.to_string()
    assert SECRET not in _texts(app)


def test_viewers_see_the_configuration_but_cannot_change_it(store):
    roles.init_roles("someone-else@example.com", store, by="test")
    app = open_page("pages/alerts.py")
    assert not app.exception
    assert any("Needs the operator role" in c.value for c in app.caption)
    assert button(app, "Review channel").disabled and button(app, "Review rule").disabled


def test_editing_evaluating_and_deleting_a_rule(store, hook, receiver):
    from tests.services.test_alerting import ADMIN

    alerting.save_channel(store, "oncall", hook, ADMIN)
    alerting.save_rule(store, {"name": "errors", "measure": "error_rate", "threshold": 0.1, "channels": ["oncall"]},
                       ADMIN)
    app = open_page("pages/alerts.py")
    app.selectbox(key="rule_pick").select("errors").run()
    assert app.text_input(key="rule_name@errors").value == "errors"
    assert app.number_input(key="rule_threshold@errors").value == 0.1
    app.number_input(key="rule_threshold@errors").set_value(0.25)
    button(app, "Review rule").click().run()
    assert "**threshold**: 0.1 → 0.25" in _texts(app)
    button(app, "Save rule").click().run()
    assert not app.exception
    assert [(r.name, r.threshold) for r in alerting.list_rules(store)] == [("errors", 0.25)]

    button(app, "Evaluate rules now").click().run()
    assert not app.exception
    assert any("1 rule(s) evaluated, 0 firing, 0 notification(s) sent" in m.value for m in app.markdown)
    assert _messages(receiver) == []

    app.selectbox(key="rule_pick").select("errors").run()
    assert button(app, "Delete rule").disabled
    app.checkbox(key="rule_delete_sure").check().run()
    button(app, "Delete rule").click().run()
    assert not app.exception and alerting.list_rules(store) == []
    assert any("Deleted rule errors" in s.value for s in app.success)


def test_a_group_readable_channels_file_is_refused_on_the_page(store, hook, tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    secrets = private / "alert-channels.json"
    secrets.write_text("{}")
    secrets.chmod(0o644)
    app = open_page("pages/alerts.py")
    app.text_input(key="channel_name").input("oncall")
    app.text_input(key="channel_url").input(hook)
    button(app, "Review channel").click().run()
    button(app, "Save channel").click().run()
    assert not app.exception
    assert any("chmod 600" in e.value for e in app.error)
    assert alerting.list_channels(store) == [] and secrets.read_text() == "{}"
