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


def _compact_page(in_form: bool = False) -> None:
    import streamlit as st

    from components.confirm import ConfirmKeys, confirm_box

    def ask():
        return confirm_box("stores **your** judgement", keys=ConfirmKeys(confirm="c.go"), confirm_label="Submit",
                           actor="bo@example.com", compact=True, in_form=in_form)

    if in_form:
        with st.form("f"):
            st.text_input("note", key="c.note")
            answer = ask()
    else:
        answer = ask()
    if answer.confirmed:
        st.session_state["done"] = st.session_state.get("c.note", "")


def test_compact_shows_who_acts_and_what_changes_in_one_line_and_no_reason():
    for in_form in (False, True):
        app = AppTest.from_function(_compact_page, kwargs={"in_form": in_form}, default_timeout=30)
        app.run()
        assert not app.exception
        (line,) = [c.value for c in app.caption]
        assert "bo@" in line and "stores **your** judgement" in line
        assert not app.markdown and [t.key for t in app.text_input] == (["c.note"] if in_form else [])
        if in_form:
            app.text_input(key="c.note").input("typed")
        app.button(key="c.go").click().run()
        assert app.session_state["done"] == ("typed" if in_form else "")


def test_the_full_box_names_the_actor_escaped():
    def page() -> None:
        from components.confirm import ConfirmKeys, confirm_box

        confirm_box("**x**: 1 → 2", keys=ConfirmKeys(confirm="a.go"), actor="[me](http://evil)", ask_reason=False)

    app = AppTest.from_function(page, default_timeout=30)
    app.run()
    assert app.markdown[0].value == "**x**: 1 → 2"
    (caption,) = [c.value for c in app.caption]
    assert "Acting as" in caption and "[me](http" not in caption


def test_changes_lists_only_what_changes():
    from components.confirm import changes

    before = {"threshold": 0.1, "channels": ["a"], "agent": None, "arm": "b"}
    after = {"threshold": 0.25, "channels": ["a", "b"], "agent": None}
    assert changes(before, after).splitlines() == [
        "- **threshold**: 0.1 → 0.25", "- **channels**: a → a, b", "- **arm**: b → —"]
    assert changes(None, {"name": "x", "agent": None}).splitlines() == ["- **name**: x", "- **agent**: —"]
    assert changes(after, after) == "_Nothing changes._"


def test_cancel_forgets_the_held_change():
    def page() -> None:
        import streamlit as st

        from components.confirm import ConfirmKeys, confirm_box, held, hold

        if st.button("Review", key="h.review"):
            hold("h", {"threshold": 0.2})
        if held("h") is not None:
            confirm_box("change", keys=ConfirmKeys(confirm="h.go", cancel="h.cancel"), ask_reason=False, held_as="h")

    app = AppTest.from_function(page, default_timeout=30)
    app.run()
    app.button(key="h.review").click().run()
    assert app.session_state["h.pending"] == {"threshold": 0.2}
    app.button(key="h.cancel").click().run()
    assert not app.exception and "h.pending" not in app.session_state
    assert [b.key for b in app.button] == ["h.review"]
