"""Create, edit or delete a local gateway endpoint (Serving page): choose versions, preview, confirm.

Versions and shares are edited with the one split editor (``components.split_editor.share_rows``).
Every change is planned by ``services.endpoint_admin`` (validation, nothing written), shown as a
current → proposed preview, and confirmed through ``components.confirm``, by an operator, with a
reason that goes into the audit trail. A bad entry shows why and leaves the stored endpoints as they were.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pandas as pd
import streamlit as st

from components.confirm import ConfirmKeys, confirm_box
from components.errors import show_error
from components.split_editor import Shares, SplitRow, VersionSource, share_rows, shares_of
from components.tables import plain, readable
from services import endpoint_admin, roles
from services.errors import AgentOpsError, BackendUnavailableError
from services.serving import Endpoint

KEY = "epadm"
_MODES = ("Create", "Edit", "Delete")


def _k(*parts: str) -> str:
    return "::".join((KEY, *parts))


def plan_frame(plan: endpoint_admin.EndpointPlan) -> pd.DataFrame:
    """The preview table: current and proposed share per served version (a dash where there is none)."""
    return readable(pd.DataFrame(plan.rows(), columns=["Served version", "Current %", "Proposed %", "Change"]))


def _source(agents: dict[str, Any]) -> VersionSource:
    """The registry's agents as the split editor's version source; rows are keyed (model, version)."""
    return VersionSource({name: getattr(agent, "latest_version", None) for name, agent in agents.items()},
                         lambda model, version: SplitRow((model, version), f"{model} v{version} — share %",
                                                         f"{model}::{version}"))


def _rows_editor(rows: Shares, agents: dict[str, Any], scope: str) -> None:
    """Served versions with their shares, a remove button each, and an 'add a version' row."""
    share_rows(rows, add=_source(agents), min_rows=0,
               key=lambda kind, row_id: _k(scope, kind, *([row_id] if row_id else [])))


def _start(served: dict[tuple[str, str], int]) -> Shares:
    """The editor's state for an endpoint's current versions and shares."""
    return {(m, v): [SplitRow((m, v), f"{m} v{v} — share %", f"{m}::{v}"), pct] for (m, v), pct in served.items()}


def _propose(make: Callable[[], endpoint_admin.EndpointPlan]) -> None:
    st.session_state.pop(_k("plan"), None)
    try:
        plan = make()
    except AgentOpsError as exc:
        show_error(exc, what="This change cannot be made")
        return
    st.session_state[_k("plan")] = plan
    st.session_state[_k("request")] = uuid.uuid4().hex  # one request id per confirmation


def _confirmation(reason: str, *, settings: Any, identity: Any, on_change: Callable[[], None]) -> None:
    plan: endpoint_admin.EndpointPlan | None = st.session_state.get(_k("plan"))
    if plan is None:
        return
    st.markdown(f"**Preview.** {plain(plan.summary())}")
    st.dataframe(plan_frame(plan), hide_index=True, use_container_width=True)
    answer = confirm_box(None, keys=ConfirmKeys(confirm=_k("confirm"), cancel=_k("cancel")),
                         confirm_label="Confirm and apply", ask_reason=False, actor=identity.user,
                         missing="" if reason.strip() else "A reason is needed to confirm.")
    if answer.confirmed:
        try:
            with st.spinner(f"Applying: {plan.kind.value} {plan.name}…"):
                endpoint_admin.apply(plan, identity=identity, reason=reason, settings=settings,
                                     request_id=st.session_state.get(_k("request")))
        except BackendUnavailableError as exc:
            show_error(exc, what="The change was interrupted")  # the same request id completes it once
        except AgentOpsError as exc:
            show_error(exc, what="Nothing was changed")
        else:
            for suffix in ("plan", "request"):
                st.session_state.pop(_k(suffix), None)
            # The page's split editor keeps its rows per endpoint (``split_rows::<name>``): re-read after a change.
            stale = (_k("rows"), f"split_rows::{plan.name}")
            for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(stale)]:
                del st.session_state[key]
            st.session_state[_k("done")] = f"{plan.name}: {plan.kind.value} applied and recorded in the audit trail."
            on_change()
            st.rerun()
    if answer.cancelled:
        st.session_state.pop(_k("plan"), None)
        st.rerun()


def endpoint_editor(endpoints: list[Endpoint], agents: dict[str, Any], *, settings: Any, identity: Any,
                    can_change: bool, on_change: Callable[[], None]) -> None:
    """The 'Create, edit or delete an endpoint' expander of the Serving page (local gateway endpoints)."""
    with st.expander("Create, edit or delete an endpoint", expanded=not endpoints, icon=":material/add_road:"):
        done = st.session_state.pop(_k("done"), None)
        if done:
            st.success(plain(done), icon=":material/task_alt:")
        if not can_change:
            st.caption(f":material/lock: You can look, not change: needs the "
                       f"{roles.NEEDED[roles.Action.CHANGE_TRAFFIC].label} role.")
        modes = list(_MODES) if endpoints else ["Create"]
        mode = st.segmented_control("Change", modes, default="Create", key=_k("mode")) or "Create"
        if st.session_state.get(_k("plan_mode")) != mode:
            st.session_state.pop(_k("plan"), None)  # a preview belongs to the mode it was made in
            st.session_state[_k("plan_mode")] = mode
        by_name = {e.name: e for e in endpoints}
        if mode == "Create":
            name = st.text_input("Endpoint name", key=_k("name"), placeholder="support-ab",
                                 help="Letters, digits, '-' and '_'; served at /serving-endpoints/<name>/invocations.")
            rows = st.session_state.setdefault(_k("rows", "create"), {})
            _rows_editor(rows, agents, "create")
            sticky = st.toggle("Sticky assignment (same user or conversation → same version)", key=_k("sticky"))
            make = lambda: endpoint_admin.plan_create(name, shares_of(rows), sticky=sticky, settings=settings)  # noqa: E731
        elif mode == "Edit":
            name = st.selectbox("Endpoint", list(by_name), key=_k("edit_name"))
            endpoint = by_name[name]
            rows = st.session_state.setdefault(
                _k("rows", "edit", name),
                _start({(s.model_name, s.model_version): endpoint.percentage_for(s.entity_name) for s in endpoint.served}))
            _rows_editor(rows, agents, f"edit::{name}")
            sticky = st.toggle("Sticky assignment (same user or conversation → same version)", value=endpoint.sticky,
                               key=_k("sticky", name))
            make = lambda: endpoint_admin.plan_edit(name, shares_of(rows), sticky=sticky, settings=settings)  # noqa: E731
        else:
            name = st.selectbox("Endpoint", list(by_name), key=_k("delete_name"))
            st.caption("Deleting stops serving it: the gateway answers 404 for its URL. Its traces and audit "
                       "history stay.")
            make = lambda: endpoint_admin.plan_delete(name, settings=settings)  # noqa: E731
        reason = st.text_input("Reason (recorded in the audit trail)", key=_k("reason"))
        if st.button("Preview change", key=_k("preview"), disabled=not can_change,
                     help=None if can_change else f"Needs the {roles.NEEDED[roles.Action.CHANGE_TRAFFIC].label} role."):
            _propose(make)
        _confirmation(reason, settings=settings, identity=identity, on_change=on_change)
