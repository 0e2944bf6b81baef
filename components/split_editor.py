"""The one split editor: shares per served version, add / remove versions, the total, and the
current → proposed confirmation (through ``components.confirm``).

The Serving page edits an endpoint's split with ``split_editor``; the endpoint editor (create, edit,
delete a local endpoint) edits the versions of the endpoint it plans with the same ``share_rows``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Hashable

import pandas as pd
import streamlit as st

from components.confirm import ConfirmKeys, confirm_box
from components.errors import show_error
from components.tables import plain
from services.errors import AgentOpsError, BackendUnavailableError
from services.serving import Endpoint, SplitPlan

# Widget key of one editor part: (kind, row widget id or "") -> key, e.g. ("pct", "m::1") -> "pct::ep::m::1".
KeyOf = Callable[[str, str], str]


@dataclass(frozen=True)
class SplitRow:
    """One arm in the split editor: ``ref`` is what the plan function receives as its key."""

    ref: Hashable
    label: str
    widget_id: str  # the stable part of the row's widget keys
    entity_name: str | None = None  # the served entity it edits; None for a version being added


@dataclass(frozen=True)
class VersionSource:
    """Where the editor offers more served versions from: agent name -> latest registered version."""

    agents: dict[str, str | None]
    row: Callable[[str, str], SplitRow]  # (agent, version) -> the row it adds


Shares = dict[Hashable, list]  # ref -> [SplitRow, percent], the editor's state between runs


def shares_of(editing: Shares) -> dict[Hashable, int]:
    """The shares the user set, keyed by each row's ``ref``."""
    return {ref: pct for ref, (_, pct) in editing.items()}


def share_rows(editing: Shares, *, key: KeyOf, add: VersionSource | None, min_rows: int = 1) -> int:
    """Edit the shares in ``editing`` in place; returns their total.

    A remove button shows on each row while more than ``min_rows`` remain and versions can be added
    (``add``); the first version added to an empty split takes all the traffic, later ones start at 0%.
    """
    if not editing and add is not None:
        st.caption("No version chosen yet: add one from the registry below.")
    for ref, (row, pct) in list(editing.items()):
        c1, c2, _ = st.columns([3, 1, 3], vertical_alignment="bottom")
        editing[ref][1] = int(c1.number_input(plain(row.label), min_value=0, max_value=100, step=5,
                                              value=int(pct), key=key("pct", row.widget_id)))
        if add is not None and len(editing) > min_rows and c2.button("Remove", key=key("rm", row.widget_id)):
            del editing[ref]
            st.rerun()
    if add is not None:
        _add_version(editing, key, add)
    total = sum(pct for _, pct in editing.values())
    if editing or min_rows:
        if total == 100:
            st.success(f"Total: {total}%", icon=":material/check_circle:")
        else:
            st.error(f"Total: {total}% — the shares must add up to 100% ({100 - total:+d}% to go).",
                     icon=":material/error:")
    return total


def _add_version(editing: Shares, key: KeyOf, add: VersionSource) -> None:
    if not add.agents:
        st.info("No registered agents in this store: register a version first, then serve it here.",
                icon=":material/inventory_2:")
        return
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    agent = c1.selectbox("Add a served version of", list(add.agents), key=key("add_agent", ""))
    latest = add.agents.get(agent) if agent else None
    options = [str(v) for v in range(int(latest), 0, -1)] if latest and str(latest).isdigit() else []
    version = c2.selectbox("Version", options, key=key("add_version", ""),
                           help=None if options else "This agent has no versions yet.")
    if c3.button("Add version", key=key("add", ""), disabled=not version):
        row = add.row(agent, version)
        editing.setdefault(row.ref, [row, 0 if editing else 100])
        st.rerun()


def change_frame(before: dict[str, int], after: dict[str, int], after_label: str = "Proposed %", *,
                 after_first: bool = False) -> pd.DataFrame:
    """Current → proposed share per served version (every version on either side, ``before``'s first)."""
    names = list(dict.fromkeys([*after, *before] if after_first else [*before, *after]))
    return pd.DataFrame([
        {"Served version": n, "Current %": before.get(n, 0), after_label: after.get(n, 0),
         "Change": after.get(n, 0) - before.get(n, 0)}
        for n in names
    ])


def plan_frame(plan: SplitPlan) -> pd.DataFrame:
    """Current → proposed share per served version."""
    return change_frame(*plan.percentages())


def propose_split(key: str, plan: SplitPlan) -> None:
    """Keep a reviewed plan under ``key``; a new plan is a new confirmation (a new request id)."""
    st.session_state[key] = plan
    st.session_state.pop(f"{key}::request", None)
    st.session_state.pop(f"{key}::interrupted", None)


def drop_split(key: str) -> None:
    for suffix in ("", "::request", "::interrupted"):
        st.session_state.pop(key + suffix, None)


def split_confirmation(key: str, apply: Callable[[str, Callable[[str], None]], Endpoint], *,
                       note: str | None = None, actor: str = "") -> Endpoint | None:
    """Preview the plan under ``key`` and apply it once confirmed; returns the stored endpoint then.

    ``apply(request_id, progress)`` writes the split. The request id is made once per
    confirmation and kept until it succeeds or is cancelled, so pressing Confirm again after an
    interruption completes the same change exactly once instead of making a second one.
    """
    plan: SplitPlan | None = st.session_state.get(key)
    if plan is None:
        return None
    st.subheader("Current → proposed")
    st.dataframe(plan_frame(plan), hide_index=True, use_container_width=True)
    if note:
        st.caption(note)
    request_id = st.session_state.setdefault(f"{key}::request", uuid.uuid4().hex)
    if st.session_state.get(f"{key}::interrupted"):
        st.warning("The last attempt at this change was interrupted. Press **Confirm and apply** again once the "
                   f"backend is back: it completes this change exactly once (request `{request_id}`).",
                   icon=":material/sync_problem:")
    # The reason was typed in the editor above (it is part of what was reviewed).
    answer = confirm_box(None, keys=ConfirmKeys(confirm=f"{key}::confirm", cancel=f"{key}::cancel"),
                         confirm_label="Confirm and apply", ask_reason=False, actor=actor)
    if answer.confirmed:
        try:
            with st.status("Applying the new split…", expanded=True) as status:
                stored = apply(request_id, status.write)
                status.update(label="Split applied", state="complete")
        except BackendUnavailableError as exc:
            st.session_state[f"{key}::interrupted"] = True
            show_error(exc, what="The traffic change was interrupted")
        except AgentOpsError as exc:
            show_error(exc, what="The split was not changed")
        else:
            drop_split(key)
            return stored
    if answer.cancelled:
        drop_split(key)
        st.rerun()
    return None


def split_editor(endpoint: Endpoint, rows: list[SplitRow], *, prefix: str, can_change: bool, locked: str | None,
                 plan: Callable[[dict[Hashable, int], bool | None], SplitPlan],
                 apply: Callable[[SplitPlan, str, str, Callable[[str], None]], Endpoint],
                 intro: str, add: VersionSource | None = None, sticky: bool | None = None,
                 sticky_locked: bool = False, note: str | None = None, actor: str = "") -> Endpoint | None:
    """The one split editor, for every backend: shares per arm, a reason, a preview, then confirm.

    ``plan(shares, sticky)`` validates the shares (keyed by each row's ``ref``) into a plan;
    ``apply(plan, reason, request_id, progress)`` writes it, audited. ``add`` offers served versions to
    add from the registry; ``sticky`` (None: not offered) is the endpoint's sticky routing, shown but not
    editable with ``sticky_locked``. ``locked``
    says why the user may not change traffic. Widgets are keyed ``<prefix>pct::<endpoint>::<row>`` etc.
    Returns the stored endpoint once a change was applied.
    """
    name = endpoint.name
    st.markdown(intro)
    state_key = f"{prefix}split_rows::{name}"
    if state_key not in st.session_state:
        st.session_state[state_key] = {row.ref: [row, endpoint.percentage_for(row.entity_name) if row.entity_name else 0]
                                       for row in rows}
    editing: Shares = st.session_state[state_key]
    total = share_rows(editing, add=add,
                       key=lambda kind, row_id: f"{prefix}{kind}::{name}" + (f"::{row_id}" if row_id else ""))
    chosen_sticky = None
    if sticky is not None:
        chosen_sticky = st.toggle("Sticky assignment (same user or conversation → same version)", value=sticky,
                                  key=f"{prefix}sticky::{name}", disabled=sticky_locked)
    reason = st.text_input("Reason (recorded in the audit trail)", key=f"{prefix}reason::{name}")
    plan_key = f"{prefix}plan::{name}"
    if endpoint.read_only:
        st.caption(f":material/lock: {plain(name)} is {plain(endpoint.read_only)}.")
    if st.button("Review change", type="primary", disabled=total != 100 or not can_change or bool(endpoint.read_only),
                 key=f"{prefix}review::{name}", help=locked):
        try:
            propose_split(plan_key, plan(shares_of(editing), chosen_sticky))
        except AgentOpsError as exc:
            show_error(exc, what="This split cannot be applied")
    proposed = st.session_state.get(plan_key)
    stored = split_confirmation(plan_key, lambda request_id, progress: apply(proposed, reason, request_id, progress),
                                note=note, actor=actor)
    if stored is not None:
        st.session_state.pop(state_key, None)
    return stored
