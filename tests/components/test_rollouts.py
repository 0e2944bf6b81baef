"""The rollout panel: start a plan from the form, refuse a bad one with a message, show the timeline and abort."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from services import rollout_controller as rc


def _panel(data_dir: str, state_file: str) -> None:
    import json
    from pathlib import Path

    from components.rollouts import rollout_panel
    from services.identity import Identity, IdentitySource
    from services.settings import load_settings
    from tests.services.test_rollout_controller import Ports

    settings = load_settings({"AGENTOPS_DATA_DIR": data_dir})
    ports = Ports()
    path = Path(state_file)
    if path.exists():
        ports.split = json.loads(path.read_text())
    identity = Identity("op@example.com", "Op", IdentitySource.OS_USER)
    rollout_panel("support-ep", ["support-1", "support-2"], settings=settings, identity=identity, can_change=True,
                  ports=ports)
    path.write_text(json.dumps(ports.split))


def test_start_show_and_abort_a_rollout(isolated_settings, tmp_path):
    state = str(tmp_path / "split.json")
    app = AppTest.from_function(_panel, args=(str(isolated_settings.data_dir), state), default_timeout=60).run()
    assert not app.exception
    assert any("always-valid" in c.value for c in app.caption)
    app.text_input(key="rollout::steps").set_value("25, 5, 100")
    app.get("form_submit_button")[0].click().run()
    assert not app.exception
    assert any("increase" in w.value for w in app.warning)
    assert rc.get_rollout("support-ep", isolated_settings) is None  # refused: nothing stored

    app.text_input(key="rollout::steps").set_value("10, 50, 100")
    app.get("form_submit_button")[0].click().run()
    assert not app.exception
    assert any("10 % → 50 % → 100 %" in m.value for m in app.markdown)  # reviewed, not yet started
    assert rc.get_rollout("support-ep", isolated_settings) is None
    app.button(key="rollout::start").click().run()
    assert not app.exception
    started = rc.get_rollout("support-ep", isolated_settings)
    assert started is not None and started.status is rc.Status.RUNNING and started.share == 10
    assert any("support-2" in m.value and "running" in m.value for m in app.markdown)
    assert len(app.dataframe) == 1 and "start" in app.dataframe[0].value["Action"].tolist()

    assert app.button(key="rollout::abort").disabled  # the box is not ticked yet
    app.checkbox(key="rollout::abort_sure").check().run()
    app.text_input(key="rollout::abort_reason").set_value("paging storm").run()
    app.button(key="rollout::abort").click().run()
    assert not app.exception
    aborted = rc.get_rollout("support-ep", isolated_settings)
    assert aborted.status is rc.Status.ABORTED and "paging storm" in aborted.timeline[-1].reason


def test_approve_a_rollout_waiting_for_a_person(isolated_settings, tmp_path):
    import json

    from services.identity import Identity, IdentitySource
    from services.rollouts import Final, Guardrail, Measure, RolloutPlan
    from tests.services.test_rollout_controller import Ports

    ports = Ports()
    ports.n, ports.error_rates = 20_000, (0.05, 0.05)
    plan = RolloutPlan("support-ep", "support-1", "support-2", (50, 100), 100, 0, (Guardrail(Measure.ERROR_RATE, 0.02),),
                       Final.APPROVAL)
    rc.start(plan, Identity("op@example.com", "Op", IdentitySource.OS_USER), isolated_settings, ports)
    rc.tick(isolated_settings, ports)
    rc.tick(isolated_settings, ports)
    assert rc.get_rollout("support-ep", isolated_settings).status is rc.Status.AWAITING_APPROVAL
    state = tmp_path / "split.json"
    state.write_text(json.dumps(ports.split))
    app = AppTest.from_function(_panel, args=(str(isolated_settings.data_dir), str(state)), default_timeout=60).run()
    assert not app.exception
    assert any("All traffic moves to **support-2**" in m.value for m in app.markdown)
    app.button(key="rollout::Approve promotion").click().run()
    assert not app.exception
    done = rc.get_rollout("support-ep", isolated_settings)
    assert done.status is rc.Status.PROMOTED and done.timeline[-1].by == "op@example.com"
