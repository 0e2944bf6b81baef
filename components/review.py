"""Widgets of the Review page: a trace as a conversation, the review form, feedback charts.

Trace content is untrusted: it is shown with ``st.text`` / ``st.code``, or escaped with
``components.tables.plain`` where a widget renders markdown (captions, labels), so a crafted
question, answer or tag cannot inject links, images or markup.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from components.charts import _PALETTE, chart_text, time_axis
from components.confirm import ConfirmKeys, confirm_box
from components.errors import show_error
from components.tables import plain, readable
from services.errors import AgentOpsError
from services.feedback import LabelKind, LabelQuestion, Review, ReviewPartlySavedError
from services.review_queue import Conversation, LabelingSession, QueueProgress

THUMBS_OPTIONS = {"Not judged": None, ":material/thumb_up: Good answer": True, ":material/thumb_down: Bad answer": False}
RATING_OPTIONS = ["—", "1", "2", "3", "4", "5"]
NO_ANSWER = "—"


def render_conversation(conv: Conversation) -> None:
    """User turns, the agent's answer and its tool calls folded away, all as plain text."""
    meta = " · ".join(x for x in (conv.agent, f"version {conv.version}" if conv.version else None,
                                  f"{conv.time:%Y-%m-%d %H:%M} UTC") if x)
    st.caption(plain(meta))  # the agent and version tags are whatever the traced code wrote
    if not conv.turns:
        st.caption("The trace recorded no user message.")
    for turn in conv.turns:
        with st.chat_message("user" if turn.role == "user" else "assistant"):
            st.text(turn.text)
    if conv.tool_calls:
        with st.expander(f"Tool calls ({len(conv.tool_calls)})", icon=":material/build:"):
            for call in conv.tool_calls:
                st.text(f"{call.name}")
                st.code(call.arguments or "(no arguments)", language=None, wrap_lines=True)
                st.code(call.output or "(no output)", language=None, wrap_lines=True)
    with st.chat_message("assistant"):
        if conv.error:
            st.text(f"The agent failed: {conv.error}")
        else:
            st.text(conv.answer or "(no answer recorded)")
        if conv.raw_output and conv.raw_output != conv.answer:
            with st.expander("Raw output (JSON)", icon=":material/data_object:"):
                st.code(conv.raw_output, language="json", wrap_lines=True)


def review_form(key: str, questions: tuple[LabelQuestion, ...], previous: Review | None, *, summary: str = "",
                actor: str = "") -> tuple[bool, Review]:
    """The review form, prefilled with the reviewer's earlier judgement; returns (submitted, review).

    Submitting is the compact confirmation (``confirm_box``): one line says who judges what, then the button.
    """
    previous = previous or Review()
    with st.form(key, clear_on_submit=False, border=True):
        thumbs_labels = list(THUMBS_OPTIONS)
        thumbs_index = thumbs_labels.index(next(k for k, v in THUMBS_OPTIONS.items() if v is previous.thumbs_up))
        thumbs = st.radio("Is the answer good?", thumbs_labels, index=thumbs_index, horizontal=True, key=f"{key}_thumbs")
        rating = st.select_slider("Rating (1 = poor, 5 = excellent)", RATING_OPTIONS,
                                  value=str(previous.rating) if previous.rating else "—", key=f"{key}_rating")
        comment = st.text_area("Comment", value=previous.comment, key=f"{key}_comment",
                               placeholder="What is right or wrong about this answer?")
        corrected = st.text_area("Corrected answer (becomes the expected response when curated)",
                                 value=previous.corrected_answer, key=f"{key}_corrected")
        labels: dict[str, str] = {}
        for q in questions:
            old = previous.labels.get(q.name, "")
            if q.kind == LabelKind.CHOICE:
                options = [NO_ANSWER, *q.options]
                choice = st.selectbox(plain(q.prompt), options, index=options.index(old) if old in options else 0,
                                      key=f"{key}_label_{q.name}")
                labels[q.name] = "" if choice == NO_ANSWER else choice
            else:
                labels[q.name] = st.text_input(plain(q.prompt), value=old, key=f"{key}_label_{q.name}")
        submitted = confirm_box(summary, keys=ConfirmKeys(confirm=f"{key}_submit"), confirm_label="Submit review",
                                icon=":material/send:", actor=actor, compact=True, in_form=True).confirmed
    review = Review(
        thumbs_up=THUMBS_OPTIONS[thumbs], rating=None if rating == "—" else int(rating),
        comment=comment or "", corrected_answer=corrected or "",
        labels={k: v for k, v in labels.items() if v},
    )
    return submitted, review


def review_failed(exc: AgentOpsError, *, what: str = "The review was not stored") -> None:
    """Say what happened to a submission that failed; after an interruption, say how much was stored and what to do.

    The form keeps the reviewer's answers (its widgets keep their state), so submitting again is one click.
    """
    if not isinstance(exc, ReviewPartlySavedError):
        show_error(exc, what=what)
        return
    # The message says how much was stored; the title says what kind of failure it was.
    what = ("The review was stored; marking the item done was interrupted" if exc.stored == exc.total
            else "The submission was interrupted")
    show_error(exc, what=what)
    st.info("Your answers are still in the form above. Press **Submit review** again once the store answers: "
            "judgements already stored are skipped, so nothing is stored twice.", icon=":material/replay:")


def progress_block(progress: QueueProgress) -> None:
    """Queue progress: done / in review / left, a bar and a per-reviewer table."""
    cols = st.columns(4)
    cols[0].metric("Items", progress.total)
    cols[1].metric("Done", progress.completed)
    cols[2].metric("Being reviewed", progress.in_progress)
    cols[3].metric("Reviewed by you", progress.mine)
    st.progress(progress.completed / progress.total if progress.total else 0.0,
                text=f"{progress.completed} of {progress.total} items done")
    if len(progress.per_reviewer):
        st.dataframe(progress.per_reviewer, hide_index=True, use_container_width=False)


def trend_chart(trend: pd.DataFrame, column: str, title: str, *, percent: bool = False) -> go.Figure:
    """One line per group over time buckets."""
    figure = go.Figure()
    for index, (group, part) in enumerate(trend.groupby("group", sort=True)):
        figure.add_scatter(x=part["bucket"], y=part[column], mode="lines+markers", name=chart_text(group),
                           line=dict(color=_PALETTE[index % len(_PALETTE)]))
    figure.update_layout(title=title, height=280, margin=dict(l=10, r=10, t=36, b=10),
                         legend=dict(orientation="h", y=-0.2), hovermode="x unified")
    time_axis(figure)
    if percent:
        figure.update_yaxes(tickformat=".0%", range=[0, 1])
    else:
        figure.update_yaxes(range=[0.8, 5.2])
    return figure


def labeling_session_block(session: LabelingSession) -> None:
    """Where a queue's Databricks Review App labeling session is, and a link to open it."""
    who = ", ".join(session.assigned_users) or "nobody yet"
    st.text(f"Labeling session: {session.name}")
    st.caption(plain(f"{session.traces} trace(s) · assigned to {who}"
                     + (f" · created by {session.created_by}" if session.created_by else "")))
    if session.url:
        st.link_button("Open in the Databricks Review App", session.url, icon=":material/open_in_new:")
    else:
        st.caption("The Review App did not return a link; open it from the experiment's Review App tab.")


def names_frame(names: pd.DataFrame) -> pd.DataFrame:
    """The feedback names table: counts per value and per source written out, no empty cells."""
    return readable(names.rename(columns={"values": "counts per value", "sources": "sources (count)"}))


def agreement_frame(agreement: pd.DataFrame) -> pd.DataFrame:
    """Agreement per name; a name no two people judged shows a dash, not nan."""
    return readable(agreement, keep=("agreement",))


def name_trend_chart(trend: pd.DataFrame, name: str, kind: str) -> go.Figure:
    """One feedback name over time: share of true, mean, or count per category; time labels on the x axis."""
    figure = go.Figure()
    for index, (group, part) in enumerate(trend.groupby("group", sort=True)):
        figure.add_scatter(x=part["bucket"], y=part["value"], mode="lines+markers", name=chart_text(group),
                           line=dict(color=_PALETTE[index % len(_PALETTE)]),
                           customdata=part["n"], hovertemplate="%{y} (n=%{customdata})<extra></extra>")
    what = {"boolean": "share true", "numeric": "mean", "categorical": "count per value"}.get(kind, "count")
    figure.update_layout(title=chart_text(f"{name} · {what} (times in UTC)"), height=300, margin=dict(l=10, r=10, t=36, b=10),
                         legend=dict(orientation="h", y=-0.25), hovermode="x unified")
    time_axis(figure)
    if kind == "boolean":
        figure.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return figure
