"""The Versions page's "Alias history & audit" tab: aliases as held, settle, roll back, who held an alias when."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, time, timezone

import streamlit as st

from components.app_homes import show_home
from components.confirm import ConfirmKeys, confirm_box
from components.context import role_hint
from components.errors import show_error
from components.tables import DASH, plain
from components.versions import history_frame, states_frame
from services import promotion, releases, roles
from services.audit import Change
from services.errors import AgentOpsError
from services.identity import Identity
from services.settings import Settings

_ROLLBACK_REQUEST = "versions.rollback_requests"
# Changed is called after a stored alias change with its notice and the session keys to forget.
Changed = Callable[..., None]


def _held(version: str | None) -> str:
    return f"v{version}" if version else "nothing"


def show_alias_history(agent: str, states: list[releases.AliasState], history: list[Change], *, settings: Settings,
                       identity: Identity, can_promote: bool, changed: Changed) -> None:
    """Where the audit trail lives, each alias as held (with drift and interruptions), rollback and history."""
    show_home(settings, "AGENTOPS_AUDIT_EXPERIMENT")
    if states:
        st.dataframe(states_frame(states), hide_index=True, width="stretch", placeholder=DASH,
                     column_config={"Last change": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
        for state in states:
            _drift_warning(agent, state, settings=settings, identity=identity, can_promote=can_promote, changed=changed)
        _rollback(agent, states, settings=settings, identity=identity, can_promote=can_promote, changed=changed)
    if history:
        _recorded(agent, history, settings)
    else:
        st.info("No alias change has been made through the app yet; promotions and rollbacks appear here.",
                icon=":material/history:")


def _drift_warning(agent: str, state: releases.AliasState, *, settings: Settings, identity: Identity,
                   can_promote: bool, changed: Changed) -> None:
    if state.drift in (releases.Drift.EXTERNAL, releases.Drift.REMOVED):
        st.warning(f"**{plain(state.alias)}** was {state.drift.value}: the last recorded change set it to "
                   f"v{state.last_change.to_version}, the registry holds {_held(state.version)}.",
                   icon=":material/warning:")
    if state.drift is releases.Drift.INTERRUPTED and state.interrupted is not None:
        st.warning(f"**{plain(state.alias)}**: a change to v{state.interrupted.requested_version} by "
                   f"{plain(state.interrupted.user)} was interrupted (the backend failed mid-change); the "
                   f"registry holds {_held(state.version)}. Retrying that confirmation completes it once; a new "
                   "promotion supersedes it. If that confirmation is gone (another session, a reload), settle the "
                   "record from what the registry holds now.", icon=":material/warning:")
        _settle(agent, state, settings=settings, identity=identity, can_promote=can_promote, changed=changed)


def _settle(agent: str, state: releases.AliasState, *, settings: Settings, identity: Identity,
            can_promote: bool, changed: Changed) -> None:
    """Settle an interrupted alias change from the registry (completes or closes the record; never moves the alias)."""
    answer = confirm_box(
        f"**{plain(agent)}@{plain(state.alias)}** holds {_held(state.version)}: the interrupted change to "
        f"v{state.interrupted.requested_version} is recorded as applied if the alias holds it, otherwise closed as "
        "not applied. The alias does not move.",
        keys=ConfirmKeys(confirm=f"versions.settle::{state.alias}"), confirm_label=f"Settle {state.alias}",
        icon=":material/task_alt:", ask_reason=False, actor=identity.user, button_type="secondary",
        disabled_hint="" if can_promote else role_hint(roles.Action.PROMOTE))
    if answer.confirmed:
        try:
            message = releases.settle_interrupted(agent, state.alias, identity, settings)
        except AgentOpsError as exc:
            show_error(exc, what="The interrupted change was not settled")
        else:
            changed(message)


def _rollback(agent: str, states: list[releases.AliasState], *, settings: Settings, identity: Identity,
              can_promote: bool, changed: Changed) -> None:
    rollbackable = [s for s in states if s.previous_version and s.version]
    if not rollbackable:
        return
    st.subheader("Roll back")
    roll_alias = st.selectbox(
        "Roll back alias", [s.alias for s in rollbackable], key="versions.rollback_alias",
        format_func=lambda a: next(f"{a}: v{s.version} → v{s.previous_version}" for s in rollbackable if s.alias == a),
    )
    state = next(s for s in rollbackable if s.alias == roll_alias)
    answer = confirm_box(
        f"**{plain(agent)}@{plain(roll_alias)}**: v{state.version} → v{state.previous_version} "
        "(the previous recorded holder; rollbacks restore, so the gate is not applied).",
        keys=ConfirmKeys(confirm="versions.rollback", reason="versions.rollback_reason"),
        confirm_label="Roll back", icon=":material/undo:", reason_label="Reason (optional, recorded)",
        actor=identity.user, disabled_hint="" if can_promote else role_hint(roles.Action.PROMOTE),
    )
    if not answer.confirmed:
        return
    # One request id per rollback of this alias from this holder: a retry after a backend
    # failure completes the same rollback instead of making a second one.
    request_key = (agent, roll_alias, state.version)
    request_id = st.session_state.setdefault(_ROLLBACK_REQUEST, {}).setdefault(request_key, uuid.uuid4().hex)
    try:
        result = releases.rollback(
            promotion.RollbackRequest(agent, roll_alias, reason=answer.reason, request_id=request_id,
                                      seen=promotion.Seen(state.version)),
            identity, settings,
        )
    except AgentOpsError as exc:
        show_error(exc, what="The alias was not rolled back")
        return
    st.session_state[_ROLLBACK_REQUEST].pop(request_key, None)
    # The forms describing a change are rebuilt from the stored state: no stale reason.
    changed(f"Rolled {roll_alias} back: v{result.change.from_version} → v{result.change.to_version}.",
            "versions.rollback_reason", "versions.rollback_alias")


def _recorded(agent: str, history: list[Change], settings: Settings) -> None:
    st.subheader("Recorded changes")
    st.dataframe(history_frame(history), hide_index=True, width="stretch", placeholder=DASH,
                 column_config={"When": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    st.subheader("Who held an alias at a given time?")
    q = st.columns(3)
    when_alias = q[0].selectbox("Alias", sorted({c.alias for c in history}), key="versions.when_alias")
    when_day = q[1].date_input("Date (UTC)", key="versions.when_day")
    when_time = q[2].time_input("Time (UTC)", value=time(23, 59), key="versions.when_time")
    moment = datetime.combine(when_day, when_time, tzinfo=timezone.utc)
    try:
        holder = releases.holder_at(agent, when_alias, moment, settings)
    except AgentOpsError as exc:
        show_error(exc, what="Cannot answer from the audit trail")
    else:
        st.markdown(f"At {moment:%Y-%m-%d %H:%M} UTC **{plain(when_alias)}** held "
                    f"**{'v' + holder if holder else 'no version (per the audit trail)'}**.")
