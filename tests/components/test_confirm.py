"""The one confirmation widget, driven by AppTest: disabled while blocked, override needs a written reason."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def _page(blocked: tuple[str, ...] = (), hint: str = "", ask_reason: bool = True, allow_override: bool = True) -> None:
    import streamlit as st

    from components.confirm import ConfirmKeys, confirm_box

    answer = confirm_box("**m@champion**: v1 → v2", keys=ConfirmKeys.under("t"), confirm_label="Confirm",
                         blocked=blocked, disabled_hint=hint, ask_reason=ask_reason, allow_override=allow_override)
    if answer.confirmed:
        st.session_state["done"] = (answer.reason, answer.override)
    if answer.cancelled:
        st.session_state["cancelled"] = True


def _app(**kwargs) -> AppTest:
    app = AppTest.from_function(_page, kwargs=kwargs, default_timeout=30)
    app.run()
    assert not app.exception
    return app


def test_confirm_returns_the_optional_reason():
    app = _app()
    assert "v1 → v2" in app.markdown[0].value
    app.text_input(key="t.reason_ok").input("  better facts ").run()
    app.button(key="t.confirm").click().run()
    assert app.session_state["done"] == ("better facts", False)


def test_blocked_stays_disabled_until_overridden_with_a_written_reason():
    app = _app(blocked=("**The gate blocks this promotion.**",))
    assert [e.value for e in app.error] == ["**The gate blocks this promotion.**"]
    assert app.button(key="t.confirm").disabled
    app.checkbox(key="t.override").check().run()
    assert app.button(key="t.confirm").disabled  # no reason yet
    app.text_area(key="t.reason").input("   ").run()
    assert app.button(key="t.confirm").disabled  # blank is no reason
    app.text_area(key="t.reason").input("incident 42").run()
    assert not app.button(key="t.confirm").disabled
    app.button(key="t.confirm").click().run()
    assert app.session_state["done"] == ("incident 42", True)


def test_blocked_without_override_and_a_user_without_the_role_cannot_confirm():
    app = _app(blocked=("fix the table first",), allow_override=False)
    assert not app.checkbox and app.button(key="t.confirm").disabled
    app = _app(hint="Promoting needs the operator role.")
    assert app.button(key="t.confirm").disabled
    assert any("operator role" in c.value for c in app.caption)


def test_cancel_and_no_reason_field():
    app = _app(ask_reason=False)
    assert not app.text_input
    app.button(key="t.cancel").click().run()
    assert app.session_state["cancelled"] is True and "done" not in app.session_state
