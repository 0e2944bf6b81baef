"""Review: queues of traces for domain experts, feedback as MLflow assessments, curation, charts."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import streamlit as st

from components.caching import per_user_cache
from components.navigation import ensure_app_navigation

ensure_app_navigation()  # before anything renders: see components/navigation.py

from components.app_homes import forget_homes, show_home
from components.confirm import NOTHING_CHANGES, ConfirmKeys, changes, confirm_box, held, hold, release
from components.context import allowed, current_identity, current_settings, page_link, role_hint
from components.errors import read_or, show_error
from components.review import (agreement_frame, labeling_session_block, name_trend_chart, names_frame,
                               progress_block, render_conversation, review_failed, review_form)
from components.tables import plain, readable
from services import feedback as fb
from services import registry, roles
from services import review_queue as rq
from services.errors import AgentOpsError, BackendUnavailableError
from services.overview import agent_experiment_ids
from services.settings import Backend, Settings

WINDOWS = {"Last 24 hours": timedelta(days=1), "Last 7 days": timedelta(days=7), "Last 30 days": timedelta(days=30)}
SOURCE_LABELS = {
    rq.QueueSource.SAMPLE: "Sample of live traffic",
    rq.QueueSource.NEGATIVE_FEEDBACK: "Negative feedback (thumbs down, or any feedback name)",
    rq.QueueSource.LOW_SCORES: "Low scorer results",
    rq.QueueSource.HAND_PICKED: "Hand-picked trace ids",
}
PLOT_CONFIG = {"displayModeBar": False}


@per_user_cache(ttl=60, show_spinner=False)
def _agents(settings: Settings) -> list[registry.AgentSummary]:
    return registry.list_agents(settings)


@per_user_cache(ttl=30, show_spinner=False)
def _queues(settings: Settings, user: str) -> list[rq.ReviewQueue]:
    return rq.list_queues(settings)


@per_user_cache(ttl=30, show_spinner=False)
def _progress(settings: Settings, user: str, queue: rq.ReviewQueue) -> rq.QueueProgress:
    return rq.progress(queue, user, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _items(settings: Settings, user: str, queue: rq.ReviewQueue) -> list[rq.QueueItem]:
    return rq.queue_items(queue, settings)


@per_user_cache(ttl=300, show_spinner=False)
def _conversation(settings: Settings, user: str, trace_id: str) -> rq.Conversation:
    return rq.conversation(trace_id, settings)


@per_user_cache(ttl=60, show_spinner=False)
def _questions(settings: Settings, user: str, agent: str) -> tuple[fb.LabelQuestion, ...]:
    return fb.label_questions(agent, settings)


@per_user_cache(ttl=30, show_spinner=False)
def _previous(settings: Settings, user: str, trace_id: str) -> fb.Review | None:
    return fb.current_review(trace_id, user, settings)


@per_user_cache(ttl=60, show_spinner=False)
def _feedback(settings: Settings, user: str, experiment_ids: tuple[str, ...], start_ms: int, end_ms: int,
              agent: str | None, human_only: bool = True) -> pd.DataFrame:
    return fb.human_feedback(experiment_ids, start_ms, end_ms, agent=agent, settings=settings, human_only=human_only)


def _after_mutation() -> None:
    for cached in (_queues, _progress, _items, _previous, _feedback, _questions):
        cached.clear()
    forget_homes()


settings = current_settings()
identity = current_identity(settings)
can_review = allowed(settings, identity, roles.Action.REVIEW)
if not can_review:
    st.warning(f"You can read the queues but not review: {role_hint(roles.Action.REVIEW)}", icon=":material/lock:")
user = identity.user
st.title("Review")
st.caption(f"Reviewing as **{plain(identity.display_name)}** ({plain(user)}); your judgements are stored as MLflow "
           "assessments on each trace with you as the source.")
if settings.backend is not Backend.DATABRICKS:
    st.caption(":material/info: Locally, this app's own review queue is the whole story. On Databricks a queue "
               "can also be sent to the Databricks Review App as a labeling session.")

try:
    agents = _agents(settings)
    queues = _queues(settings, user)
except AgentOpsError as exc:
    show_error(exc, what="Cannot read the workspace")
    st.stop()
experiment_ids = tuple(agent_experiment_ids(agents, settings))
agent_names = [a.name for a in agents]
experiment_of = {a.name: a.experiment_id for a in agents if a.experiment_id}
# Every experiment found for an agent (its versions' LoggedModels and runs, attached ones), own one first.
experiments_of = {a.name: tuple(dict.fromkeys(i for i in (a.experiment_id, *getattr(a, "experiment_ids", ())) if i))
                  for a in agents}

review_tab, queues_tab, curate_tab, charts_tab, labels_tab = st.tabs(
    ["Review", "Queues", "Curate", "Feedback charts", "Label questions"])


def _queue_picker(container, queues: list[rq.ReviewQueue], key: str) -> rq.ReviewQueue | None:
    if not queues:
        container.info("**There are no review queues yet.** Create one in the *Queues* tab: a sample of live "
                       "traffic, traces with thumbs down or low scores, or a hand-picked list.", icon=":material/inbox:")
        return None
    by_id = {q.queue_id: q for q in queues}
    chosen = container.selectbox("Queue", list(by_id), key=key,
                                 format_func=lambda i: f"{by_id[i].name} · {SOURCE_LABELS[by_id[i].source]}")
    return by_id[chosen]


# --- review ----------------------------------------------------------------------------------
with review_tab:
    queue = _queue_picker(st, queues, "review_queue")
    if queue is not None:
        state_key = f"review_item_{queue.queue_id}"
        try:
            progress_block(_progress(settings, user, queue))
        except AgentOpsError as exc:
            show_error(exc, what="Cannot read the queue")
        if queue.labeling_session is not None:
            with st.expander("Also in the Databricks Review App", icon=":material/open_in_new:"):
                labeling_session_block(queue.labeling_session)
        current = st.session_state.get(state_key)
        if st.session_state.get("review_notice"):
            st.success(st.session_state.pop("review_notice"), icon=":material/check_circle:")
        if current is None:
            if st.button("Review next item", type="primary", icon=":material/play_arrow:", key="review_next",
                         disabled=not can_review):
                try:
                    item = rq.next_item(queue, user, settings=settings)
                except AgentOpsError as exc:
                    show_error(exc, what="Cannot claim an item")
                    item = None
                else:
                    _progress.clear()
                    if item is None:
                        st.info("Nothing is left for you in this queue: every item is done, reviewed by you, or "
                                "being reviewed by someone else right now.", icon=":material/task_alt:")
                    else:
                        st.session_state[state_key] = item.trace_id
                        st.rerun()
        else:
            trace_id = current
            try:
                conv = _conversation(settings, user, trace_id)
                questions = _questions(settings, user, conv.agent or queue.agent or "")
                previous = _previous(settings, user, trace_id)
            except AgentOpsError as exc:
                show_error(exc, what="Cannot open this item")
                st.session_state.pop(state_key, None)
                st.button("Review next item", key="review_after_error")
            else:
                st.subheader("Conversation")
                render_conversation(conv)
                st.caption(f"Trace {trace_id} · reserved for you for {rq.CLAIM_SECONDS // 60} minutes")
                submitted, review = review_form(
                    "review_form", questions, previous, actor=user,
                    summary=f"your judgement on trace {plain(trace_id)} is stored as MLflow feedback and the item "
                            f"counts as reviewed in **{plain(queue.name)}**")
                if submitted:
                    try:
                        rq.submit_queue_review(queue, trace_id, review, user, questions=questions, settings=settings,
                                                 identity=identity)
                    except AgentOpsError as exc:
                        # The form keeps the answers (its cached prefill is left as it was) for a retry.
                        review_failed(exc)
                        if isinstance(exc, fb.ReviewPartlySavedError):
                            _progress.clear()
                            _items.clear()
                            _feedback.clear()
                    else:
                        _after_mutation()
                        st.session_state.pop(state_key, None)
                        st.session_state["review_notice"] = "Review stored. Thank you!"
                        st.rerun()
                if st.button("Skip this item", icon=":material/skip_next:", key="review_skip"):
                    try:
                        rq.release(queue, trace_id, user, settings)
                    except AgentOpsError as exc:
                        show_error(exc, what="Cannot give the item back")
                    st.session_state.pop(state_key, None)
                    _progress.clear()
                    st.rerun()

        try:
            mine = [i.trace_id for i in _items(settings, user, queue) if user in i.reviewed_by]
        except AgentOpsError:
            mine = []
        if mine:
            with st.expander(f"Edit one of your earlier reviews ({len(mine)})", icon=":material/edit:"):
                edit_id = st.selectbox("Trace", mine, key="review_edit_trace")
                try:
                    conv = _conversation(settings, user, edit_id)
                    questions = _questions(settings, user, conv.agent or queue.agent or "")
                    previous = _previous(settings, user, edit_id)
                except AgentOpsError as exc:
                    show_error(exc, what="Cannot open this trace")
                else:
                    render_conversation(conv)
                    submitted, review = review_form(
                        "edit_form", questions, previous, actor=user,
                        summary=f"changed answers on trace {plain(edit_id)} override your earlier ones, which stay "
                                "in its history")
                    if submitted:
                        try:
                            changed = fb.submit_review(edit_id, review, user, questions=questions, settings=settings, identity=identity)
                        except AgentOpsError as exc:
                            review_failed(exc, what="The change was not stored")
                            if isinstance(exc, fb.ReviewPartlySavedError):
                                _feedback.clear()
                        else:
                            _after_mutation()
                            st.success(f"Updated {changed} judgement(s); the earlier values stay in the trace's "
                                       "history, marked as overridden.", icon=":material/history:")

# --- queues ----------------------------------------------------------------------------------
with queues_tab:
    st.subheader("New queue")
    with st.form("new_queue"):
        cols = st.columns(3)
        name = cols[0].text_input("Name", key="nq_name")
        source = cols[1].selectbox("Traces from", list(SOURCE_LABELS), format_func=SOURCE_LABELS.get, key="nq_source")
        agent = cols[2].selectbox("Agent", agent_names or ["(no agents)"], key="nq_agent")
        cols = st.columns(4)
        window = cols[0].selectbox("Time window", list(WINDOWS), index=1, key="nq_window")
        size = cols[1].number_input("Items", 1, rq.MAX_ITEMS, 20, key="nq_size")
        reviews = cols[2].number_input("Reviewers per item", 1, 10, 1, key="nq_reviews",
                                       help="More than one lets you measure agreement between reviewers.")
        scorer = cols[3].text_input("Scorer (for low scores)", value="expected_facts", key="nq_scorer")
        cols = st.columns(3)
        feedback_name = cols[0].text_input("Feedback name (for negative feedback)", value=fb.THUMBS, key="nq_feedback",
                                           help="Any feedback name on the traces: a boolean is negative when false, a "
                                                "number when below the threshold, a category when it is one of the "
                                                "values listed.")
        threshold = cols[1].number_input("Below this is low", value=0.5, step=0.5, key="nq_threshold")
        negative = cols[2].text_input("Negative values (categories, comma-separated)", key="nq_negative",
                                      placeholder="e.g. unhelpful, wrong")
        pasted = st.text_area("Trace ids (for a hand-picked list; one per line)", key="nq_ids")
        previewed = st.form_submit_button("Preview queue", icon=":material/fact_check:")
    if previewed:  # shown now, created only once confirmed (the service checks the spec and finds the traces)
        release("review.new_queue")
        now = datetime.now(tz=timezone.utc)
        scope = tuple(dict.fromkeys((*experiments_of.get(agent, ()), *settings.experiment_ids))) or experiment_ids
        hold("review.new_queue", (window, rq.QueueSpec(
            name=name, source=rq.QueueSource(source), experiment_ids=scope,
            agent=agent if agent in agent_names else None,
            start_ms=int((now - WINDOWS[window]).timestamp() * 1000), end_ms=int(now.timestamp() * 1000),
            size=int(size), scorer=scorer.strip() or None, reviews_per_item=int(reviews),
            threshold=float(threshold), feedback_name=feedback_name.strip() or None,
            negative_values=tuple(v.strip() for v in negative.split(",") if v.strip()),
            trace_ids=tuple(line.strip() for line in pasted.replace(",", "\n").splitlines() if line.strip()),
        )))
    pending = held("review.new_queue")
    if pending is not None:
        window_label, spec = pending
        shown = {"name": spec.name, "traces from": SOURCE_LABELS.get(spec.source, spec.source),
                 "agent": spec.agent or "any"}
        if spec.source == rq.QueueSource.HAND_PICKED:
            shown["trace ids"] = f"{len(spec.trace_ids)} pasted"
        else:
            shown |= {"time window": window_label, "items": spec.size}
        shown["reviewers per item"] = spec.reviews_per_item
        answer = confirm_box(f"New queue:\n\n{changes(None, shown)}",
                             keys=ConfirmKeys(confirm="nq_create", cancel="nq_cancel"), confirm_label="Create queue",
                             icon=":material/add:", ask_reason=False, actor=user)
        if answer.cancelled:
            release("review.new_queue")
            st.session_state.pop("nq_request", None)
            st.rerun()
        if answer.confirmed:
            # One id per confirmation: pressing Create queue again after an interruption finishes that queue.
            request_id = st.session_state.setdefault("nq_request", uuid.uuid4().hex)
            try:
                with st.spinner("Finding traces…"):
                    created = rq.create_queue(spec, user, settings, request_id=request_id)
            except AgentOpsError as exc:
                show_error(exc, what="The queue was not created")  # after an interruption the message says how to finish it
            else:
                st.session_state.pop("nq_request", None)
                release("review.new_queue")
                _after_mutation()
                st.session_state["nq_created"] = created.name
                st.rerun()
    if created_name := st.session_state.pop("nq_created", None):
        st.success(f"Queue '{plain(created_name)}' created. Open the Review tab to start.",
                   icon=":material/check_circle:")

    st.subheader("Queues")
    show_home(settings, "AGENTOPS_REVIEW_EXPERIMENT")
    if not queues:
        st.caption("No queues yet.")
    rows = []
    for q in queues:
        try:
            p = _progress(settings, user, q)
        except AgentOpsError:
            continue
        rows.append({"queue": q.name, "source": SOURCE_LABELS[q.source], "agent": q.agent or "", "items": p.total,
                     "done": p.completed, "in review": p.in_progress, "reviewers per item": q.reviews_per_item,
                     "reviewers": ", ".join(f"{r} ({n})" for r, n in zip(p.per_reviewer["reviewer"], p.per_reviewer["reviewed"])),
                     "created by": q.created_by, "created": q.created_at})
    if rows:
        st.dataframe(readable(pd.DataFrame(rows)), hide_index=True)
    if settings.backend is Backend.DATABRICKS and queues:
        st.subheader("Databricks Review App")
        st.caption("Teams already labeling in the Review App can work on the same traces there: a queue becomes one "
                   "labeling session (its traces, not copies). The assigned reviewers get edit access to the traces' "
                   "experiment, as the Review App requires.")
        by_id = {q.queue_id: q for q in queues}
        send = st.selectbox("Queue", list(by_id), format_func=lambda i: by_id[i].name, key="dbx_queue")
        chosen_queue = by_id[send]
        if chosen_queue.labeling_session is not None:
            labeling_session_block(chosen_queue.labeling_session)
        else:
            assign = st.text_input("Assign to (workspace e-mails, comma-separated)", value=user, key="dbx_assign")
            assignees = [a.strip() for a in assign.split(",") if a.strip()]
            if confirm_box(f"A labeling session in the Databricks Review App over the traces of queue "
                           f"**{plain(chosen_queue.name)}**, assigned to {plain(', '.join(assignees) or 'nobody')} "
                           "(they get edit access to the traces' experiment).",
                           keys=ConfirmKeys(confirm="dbx_create"), confirm_label="Create a labeling session for this queue",
                           icon=":material/open_in_new:", ask_reason=False, actor=user, compact=True,
                           button_type="secondary",
                           disabled_hint="" if can_review else role_hint(roles.Action.REVIEW)).confirmed:
                try:
                    ids = [i.trace_id for i in _items(settings, user, chosen_queue)]
                    with st.spinner("Creating the labeling session in the Review App…"):
                        session = rq.databricks_labeling_session(
                            chosen_queue, ids, assignees, settings,
                            created_by=user, identity=identity)
                except AgentOpsError as exc:
                    show_error(exc, what="The labeling session was not created")
                else:
                    _after_mutation()
                    st.success("Labeling session created over the queue's traces.", icon=":material/check_circle:")
                    labeling_session_block(session)

# --- curate ----------------------------------------------------------------------------------
with curate_tab:
    queue = _queue_picker(st, queues, "curate_queue")
    if queue is not None:
        reviewed = [i.trace_id for i in read_or([], "Cannot read the queue", _items, settings, user, queue)
                    if i.reviewed_by]
        if not reviewed:
            st.info("No item of this queue has been reviewed yet; review some first.", icon=":material/inbox:")
        else:
            st.write(f"{len(reviewed)} reviewed trace(s). Those with a corrected answer become evaluation rows "
                     "(question → expected response); the others are skipped.")
            default = f"reviewed-{queue.agent or 'traces'}"
            dataset_name = st.text_input("Evaluation dataset (created when it does not exist)", value=default, key="cur_name")
            target = experiment_of.get(queue.agent or "") or (queue.experiment_ids[0] if queue.experiment_ids else "")
            if confirm_box(f"Add the corrected answers of {len(reviewed)} reviewed trace(s) of **{plain(queue.name)}** "
                           f"to evaluation dataset **{plain(dataset_name.strip())}** (experiment {plain(target or '—')}); "
                           "rows already there are not added twice.",
                           keys=ConfirmKeys(confirm="cur_add"), confirm_label="Add reviewed traces to the dataset",
                           icon=":material/playlist_add:", ask_reason=False, actor=user, compact=True,
                           missing="" if dataset_name.strip() else "Give the evaluation dataset a name.").confirmed:
                try:
                    result = fb.curate_to_dataset(reviewed, dataset_name, target, settings)
                except AgentOpsError as exc:
                    show_error(exc, what="Adding to the dataset was interrupted" if isinstance(exc, BackendUnavailableError)
                               else "Nothing was added")
                else:
                    st.success(f"Added {result.added} row(s) to '{plain(result.dataset_name)}'."
                               + (f" Skipped {len(result.skipped)} without a corrected answer." if result.skipped else ""),
                               icon=":material/check_circle:")
                    page_link("evaluations", "Run an evaluation on it", icon=":material/fact_check:")

# --- charts ----------------------------------------------------------------------------------
with charts_tab:
    cols = st.columns([2, 2, 2, 2])
    chart_agent = cols[0].selectbox("Agent", ["All agents", *agent_names], key="ch_agent")
    chart_window = cols[1].selectbox("Time window", list(WINDOWS), index=2, key="ch_window")
    group_by = cols[2].radio("Split by", ["version", "arm"], horizontal=True, key="ch_by")
    who = cols[3].radio("Sources", ["People", "All sources"], horizontal=True, key="ch_sources",
                        help="People: HUMAN assessments (reviewers, end users). All sources adds LLM judges and code "
                             "on live traces (evaluation runs' scores are left out).")
    end = datetime.now(tz=timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - WINDOWS[chart_window]
    agent_filter = None if chart_agent == "All agents" else chart_agent
    scope = (tuple(dict.fromkeys((*experiments_of.get(chart_agent, ()), *settings.experiment_ids)))
             if agent_filter else experiment_ids)
    frame = read_or(pd.DataFrame(columns=list(fb.FEEDBACK_COLUMNS)), "Cannot read feedback", _feedback, settings,
                    user, scope, int(start.timestamp() * 1000), int(end.timestamp() * 1000), agent_filter,
                    who == "People")
    if frame.empty:
        st.info("No feedback in this window yet. Review some traces, widen the window, or include all sources.",
                icon=":material/inbox:")
    else:
        names = fb.feedback_names(frame)
        st.subheader("Feedback names")
        st.caption(f"{len(frame)} judgement(s) on {frame['trace_id'].nunique()} trace(s): every feedback name "
                   "present, whoever logged it.")
        st.dataframe(names_frame(names), hide_index=True, width="stretch")
        chartable = [n for n, k in zip(names["name"], names["kind"]) if k != str(fb.FeedbackKind.TEXT)]
        if chartable:
            preferred = [n for n in (fb.THUMBS, fb.RATING) if n in chartable]
            chart_name = st.selectbox("Chart", chartable, index=chartable.index(preferred[0]) if preferred else 0,
                                      key=f"ch_name_{chart_agent}")
            kind = dict(zip(names["name"], names["kind"]))[chart_name]
            freq = "h" if chart_window == "Last 24 hours" else "D"
            trend = fb.name_trend(frame, chart_name, group_by, freq)
            st.plotly_chart(name_trend_chart(trend, chart_name, kind), config=PLOT_CONFIG, key="ch_trend")
        st.subheader("Inter-reviewer agreement")
        agreement = fb.reviewer_agreement(frame)
        if int(agreement["traces"].sum()) == 0:
            st.caption("No trace was reviewed by more than one person here. Create a queue with two or more "
                       "reviewers per item to measure agreement.")
        else:
            st.dataframe(agreement_frame(agreement), hide_index=True, column_config={
                "agreement": st.column_config.ProgressColumn("agreement", format="percent", min_value=0, max_value=1),
            })
            st.caption("Share of reviewer pairs on the same trace who agree (same value; ratings within one point).")

# --- label questions -------------------------------------------------------------------------
with labels_tab:
    if not agent_names:
        st.info("Register an agent first; its owner then defines the questions reviewers answer.", icon=":material/inbox:")
    else:
        label_agent = st.selectbox("Agent", agent_names, key="lq_agent")
        current_questions = read_or((), "Cannot read the label questions", _questions, settings, user, label_agent)
        st.caption("Custom questions reviewers answer for this agent, as JSON: a list of "
                   '`{"name": "tone", "prompt": "Is the tone right?", "options": ["ok", "too formal", "rude"]}` '
                   "(leave out options for a free-text answer). Stored on the registered model.")
        text = st.text_area("Questions", value=fb.questions_json(current_questions) if current_questions else "[]",
                            height=200, key=f"lq_text_{label_agent}")
        can_edit_questions = allowed(settings, identity, roles.Action.EDIT_RULES)
        parsed, refused = None, ""
        try:
            parsed = fb.parse_questions(text)
        except AgentOpsError as exc:
            refused = str(exc)
            show_error(exc, what="These questions cannot be saved")

        def _shown(qs) -> dict[str, str]:
            return {q.name: q.prompt + (f" ({' / '.join(q.options)})" if q.options else " (free text)") for q in qs}

        if confirm_box(f"Questions for **{plain(label_agent)}**:\n\n{changes(_shown(current_questions), _shown(parsed))}"
                       if parsed is not None else None,
                       keys=ConfirmKeys(confirm="lq_save"), confirm_label="Save questions", icon=":material/save:",
                       ask_reason=False, actor=user, button_type="secondary",
                       disabled_hint="" if can_edit_questions else role_hint(roles.Action.EDIT_RULES),
                       missing="Fix the questions first." if refused else (
                           NOTHING_CHANGES if _shown(parsed) == _shown(current_questions) else "")).confirmed:
            try:
                fb.set_label_questions(label_agent, parsed, settings, identity=identity)
            except AgentOpsError as exc:
                show_error(exc, what="The questions were not saved")
            else:
                _after_mutation()
                st.success("Saved.", icon=":material/check_circle:")
