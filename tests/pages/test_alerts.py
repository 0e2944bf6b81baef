"""The Alerts page driven by Streamlit's AppTest: channels, rules, the test button, roles."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services import alerting, roles
from tests.services.test_alerting import SECRET, _messages, hook, receiver  # noqa: F401 - fixtures used by name

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def store(isolated_settings, use_store, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTOPS_ALERT_CHANNELS_FILE", str(tmp_path / "private" / "alert-channels.json"))
    use_store(isolated_settings.data_dir)
    return isolated_settings


def _open() -> AppTest:
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    app.switch_page("pages/alerts.py")
    app.run()
    return app


def _button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def _texts(app: AppTest) -> str:
    parts = [str(e.value) for kind in ("markdown", "caption", "success", "warning", "error", "info")
             for e in getattr(app, kind)]
    parts += [d.value.to_string() for d in app.dataframe if hasattr(d.value, "to_string")]
    return "\n".join(parts)


def test_channels_rules_and_the_test_button(store, hook, receiver):
    app = _open()
    assert not app.exception
    assert any("No alert rules yet" in i.value for i in app.info)

    app.text_input(key="channel_name").input("oncall")
    app.text_input(key="channel_url").input("nosuchservice://tok/" + SECRET)
    _button(app, "Save channel").click().run()
    assert any("apprise does not recognise" in w.value for w in app.warning)
    assert alerting.list_channels(store) == []

    app.text_input(key="channel_name").input("oncall")
    app.text_input(key="channel_url").input(hook)
    _button(app, "Save channel").click().run()
    assert not app.exception
    assert any("Saved channel oncall" in s.value for s in app.success)
    assert "JSON (json://" in _texts(app)

    _button(app, "Send test alert").click().run()
    assert any("Test alert delivered to oncall" in s.value for s in app.success)
    assert [kind for kind, _ in _messages(receiver)] == ["info"]

    app.text_input(key="rule_name").input("errors")
    app.number_input(key="rule_threshold").set_value(0.1)
    app.number_input(key="rule_min_sample").set_value(3)
    app.multiselect(key="rule_channels").select("oncall")
    _button(app, "Save rule").click().run()
    assert any("minimum sample must be between 5" in w.value for w in app.warning)
    assert alerting.list_rules(store) == []

    app.number_input(key="rule_min_sample").set_value(10)
    _button(app, "Save rule").click().run()
    assert not app.exception
    assert [(r.name, r.min_sample, r.channels) for r in alerting.list_rules(store)] == [("errors", 10, ("oncall",))]
    assert "error rate above 10.0% over 60 min" in _texts(app)
    # The history tab renders the test delivery and the recorded changes.
    assert "oncall" in app.dataframe[-2].value.to_string() and getpass.getuser() in app.dataframe[-1].value.to_string()
    assert SECRET not in _texts(app)


def test_viewers_see_the_configuration_but_cannot_change_it(store):
    roles.init_roles("someone-else@example.com", store, by="test")
    app = _open()
    assert not app.exception
    assert any("Needs the operator role" in c.value for c in app.caption)
    assert _button(app, "Save channel").disabled and _button(app, "Save rule").disabled
