"""Create, edit or delete a local gateway endpoint (Serving page): choose versions, preview, confirm.

Every change is planned by ``services.endpoint_admin`` (validation, nothing written), shown as a
current → proposed preview, and applied only after confirmation, by an operator, with a reason that
goes into the audit trail. A bad entry shows why and leaves the stored endpoints as they were.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pandas as pd
import streamlit as st

from components.errors import show_error
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


def _versions(agent: Any) -> list[str]:
    latest = getattr(agent, "latest_version", None)
    return [str(v) for v in range(int(latest), 0, -1)] if latest and str(latest).isdigit() else []


def _rows_editor(rows: dict[tuple[str, str], int], agents: dict[str, Any], scope: str) -> None:
    """Served versions with their shares, a remove button each, and an 'add a version' row."""
    if not rows:
        st.caption("No version chosen yet: add one from the registry below.")
    for (model, version) in list(rows):
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        rows[(model, version)] = int(c1.number_input(
            plain(f"{model} v{version} — share %"), min_value=0, max_value=100, step=5,
            value=int(rows[(model, version)]), key=_k(scope, "pct", model, version)))
        if c2.button("Remove", key=_k(scope, "rm", model, version)):
            del rows[(model, version)]
            st.rerun()
    if not agents:
        st.info("No registered agents in this store: register a version first, then serve it here.",
                icon=":material/inventory_2:")
        return
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    agent = c1.selectbox("Registered agent", list(agents), key=_k(scope, "add_agent"))
    options = _versions(agents.get(agent))
    version = c2.selectbox("Version", options, key=_k(scope, "add_version"),
                           help=None if options else "This agent has no versions yet.")
    if c3.button("Add version", key=_k(scope, "add"), disabled=not version):
        # The first version takes all the traffic; later ones start at 0% until given a share.
        rows.setdefault((agent, str(version)), 0 if rows else 100)
        st.rerun()
    total = sum(rows.values())
    if rows and total != 100:
        st.error(f"Total: {total}% — the shares must add up to 100% ({100 - total:+d}% to go).",
                 icon=":material/error:")
    elif rows:
        st.success(f"Total: {total}%", icon=":material/check_circle:")


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
    confirm, cancel = st.columns(2)
    if confirm.button("Confirm and apply", type="primary", key=_k("confirm"), disabled=not reason.strip()):
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
    if not reason.strip():
        confirm.caption("A reason is needed to confirm.")
    if cancel.button("Cancel", key=_k("cancel")):
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
            make = lambda: endpoint_admin.plan_create(name, dict(rows), sticky=sticky, settings=settings)  # noqa: E731
        elif mode == "Edit":
            name = st.selectbox("Endpoint", list(by_name), key=_k("edit_name"))
            endpoint = by_name[name]
            rows = st.session_state.setdefault(
                _k("rows", "edit", name),
                {(s.model_name, s.model_version): endpoint.percentage_for(s.entity_name) for s in endpoint.served})
            _rows_editor(rows, agents, f"edit::{name}")
            sticky = st.toggle("Sticky assignment (same user or conversation → same version)", value=endpoint.sticky,
                               key=_k("sticky", name))
            make = lambda: endpoint_admin.plan_edit(name, dict(rows), sticky=sticky, settings=settings)  # noqa: E731
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
