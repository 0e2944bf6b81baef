"""One confirmation widget for every mutation: summary, reason, confirm / cancel, disabled while blocked.

Usage (a page shows what will change, then asks)::

    answer = confirm_box("Move champion: v1 → v2", keys=ConfirmKeys.under("versions"),
                         confirm_label="Confirm promotion", blocked=plan_blockers)
    if answer.confirmed:
        service.change(..., reason=answer.reason, override=answer.override)
    elif answer.cancelled:
        ...forget the pending change...

The widget decides nothing about *whether* a change is blocked: the page passes the service's
verdict (``blocked``: one message per reason, empty when nothing blocks). While blocked, the
confirm button stays disabled unless the user overrides with a written reason (when
``allow_override``); the service checks the same rule again.

Every mutation on every page goes through this widget, which shows what changes and, with
``actor``, who acts (the audit trail records them). Two shapes:

- values the page knows as the user types (a text field, a table editor outside a form): the summary
  follows them, and the confirm button is the one click;
- values typed in an ``st.form`` are known only once it is submitted: the form's button reviews
  them, the page keeps them (``hold``) and this widget asks, with a before → after list
  (``changes``); ``in_form=True`` renders the button as the form's own submit for the rare change
  whose summary does not depend on the form's values.

``compact=True`` is for frequent low-risk actions (submitting a review): one line saying what
changes and who acts, then the button.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import streamlit as st

from components.tables import plain


@dataclass(frozen=True)
class ConfirmKeys:
    """Widget keys of one confirmation (tests and session state address the widgets by them)."""

    confirm: str
    reason: str = ""  # the reason field while nothing blocks
    override: str = ""  # the override checkbox (shown only while blocked)
    override_reason: str = ""  # the written reason an override needs
    cancel: str = ""  # empty: no cancel button

    @classmethod
    def under(cls, prefix: str) -> ConfirmKeys:
        """``<prefix>.confirm``, ``.reason_ok``, ``.override``, ``.reason`` and ``.cancel``."""
        return cls(f"{prefix}.confirm", f"{prefix}.reason_ok", f"{prefix}.override", f"{prefix}.reason",
                   f"{prefix}.cancel")


@dataclass(frozen=True)
class Confirmation:
    """What the user did in this run: confirmed (with the reason and whether they overrode) or cancelled."""

    confirmed: bool
    cancelled: bool
    reason: str
    override: bool


def confirm_box(
    summary: str | None,
    *,
    keys: ConfirmKeys,
    confirm_label: str = "Confirm",
    icon: str | None = None,
    blocked: Sequence[str] = (),
    allow_override: bool = True,
    ask_reason: bool = True,
    reason_label: str = "Reason (optional, recorded)",
    reason_required: bool = False,
    disabled_hint: str = "",
    missing: str = "",
    actor: str = "",
    compact: bool = False,
    in_form: bool = False,
    button_type: str = "primary",
    held_as: str = "",
) -> Confirmation:
    """Render the confirmation and return what the user did.

    Args:
        summary: markdown of what will change (``None`` when the page already showed it). Text
            from the store must already be escaped (``components.tables.plain``).
        blocked: the service's reasons the change is blocked, each shown as an error.
        allow_override: while blocked, offer an override that needs a written reason.
        ask_reason: show a reason field while nothing blocks (off for changes the service records
            without one).
        reason_required: a reason is needed even when nothing blocks.
        disabled_hint: when not empty, the user may not make this change: the hint says why
            and the confirm button is disabled.
        missing: when not empty, what the change still needs from the page's own fields (a reason
            typed above, a box to tick); the confirm button stays disabled and the hint says so.
        actor: who acts (shown, escaped; the service records them).
        compact: one line (who acts · what changes) and the button; no reason field.
        in_form: inside an ``st.form``: the buttons are the form's submit buttons.
        held_as: the key a reviewed change is held under (``hold``): Cancel forgets it and reruns.
    """
    who = f":material/person: **{plain(actor)}**" if actor else ""
    if compact:
        line = " · ".join(part for part in (who, summary or "") if part)
        if line:
            st.caption(line)
        ask_reason = False
    elif summary:
        st.markdown(summary)
    if who and not compact:
        st.caption(f"Acting as {who}; the change is recorded under this name.")
    for message in blocked:
        st.error(message, icon=":material/block:")
    override = False
    if blocked:
        reason = ""
        if allow_override:
            override = st.checkbox("Override the gate", key=keys.override or f"{keys.confirm}.override")
            if override:
                reason = st.text_area("Why override? (recorded in the audit trail)",
                                      key=keys.override_reason or f"{keys.confirm}.override_reason")
        ready = override and bool(reason.strip())
    elif ask_reason:
        label = reason_label if not reason_required else reason_label.replace("optional, ", "")
        reason = st.text_input(label, key=keys.reason)
        ready = bool(reason.strip()) or not reason_required
    else:
        reason, ready = "", True
    if disabled_hint:
        st.caption(f":material/lock: {plain(disabled_hint)}")
    elif missing:
        st.caption(plain(missing))
    buttons = st.columns(2 if keys.cancel else 1)
    press = (lambda col, label, **kw: col.form_submit_button(label, **kw)) if in_form else \
        (lambda col, label, **kw: col.button(label, **kw))
    confirmed = press(buttons[0], confirm_label, type=button_type, icon=icon, key=keys.confirm,
                      disabled=bool(disabled_hint) or bool(missing) or not ready)
    cancelled = bool(keys.cancel) and bool(press(buttons[1], "Cancel", key=keys.cancel))
    if cancelled and held_as:
        release(held_as)
        st.rerun()
    return Confirmation(bool(confirmed), cancelled, reason.strip(), override)


def hold(key: str, value: Any) -> None:
    """Keep a reviewed change (a form's values) until it is confirmed or cancelled."""
    st.session_state[f"{key}.pending"] = value


def held(key: str) -> Any:
    """The change kept under ``key``, or ``None``."""
    return st.session_state.get(f"{key}.pending")


def release(key: str) -> None:
    """Forget the change kept under ``key`` (confirmed, cancelled or refused)."""
    st.session_state.pop(f"{key}.pending", None)


NOTHING_CHANGES = "Nothing to save: these are the stored values."


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> str:
    """Markdown list of the fields that change: ``**field**: before → after`` (all fields when new).

    Values are escaped (``plain``); an unset value shows as a dash.
    """
    def show(value: Any) -> str:
        if value is None or value == "" or value == () or value == []:
            return "—"
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        return plain(value)

    lines = []
    for field, value in after.items():
        old = None if before is None else before.get(field)
        if before is None:
            lines.append(f"- **{plain(field)}**: {show(value)}")
        elif old != value:
            lines.append(f"- **{plain(field)}**: {show(old)} → {show(value)}")
    if before is not None:
        lines += [f"- **{plain(field)}**: {show(old)} → —" for field, old in before.items()
                  if field not in after and old not in (None, "", (), [])]
    return "\n".join(lines) if lines else "_Nothing changes._"
