"""Sending a queue to the Databricks Review App as a labeling session over the same traces.

Teams already using the Review App are not split. databricks-agents builds its own clients from
the environment, so the calls run in a child process (see ``services.serving.run_agents_call``).
The session is recorded on the queue's run, so the queue links to it from then on instead of
creating a second one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

from services import roles
from services._clients import get_settings, mlflow_client, translate_errors
from services.errors import BackendUnavailableError, NotFoundError, PermissionDeniedError, ValidationError
from services.review_queue.entities import LABELING_TAG, QUEUE_TAG, LabelingSession, ReviewQueue
from services.review_queue.queues import get_queue
from services.review_queue.sources import experiment_of, trace_info
from services.serving import run_agents_call
from services.settings import Backend, Settings


def databricks_labeling_session(queue: ReviewQueue, trace_ids: Sequence[str], reviewers: Sequence[str],
                                settings: Settings | None = None, *, created_by: str | None = None,
                                identity: Any = None, user_token: str | None = None,
                                progress: Callable[[str], None] | None = None) -> LabelingSession:
    """The queue's Databricks Review App labeling session: the one already made for it, else a new one.

    A new session gets the queue's ``trace_ids`` and is assigned to ``reviewers`` (who get edit
    access to the traces' experiment, as the Review App requires). Databricks only. Validation
    (traces in the queue, one experiment, reviewers named) happens before anything is sent.
    """
    settings = settings or get_settings()
    say = progress or (lambda _message: None)
    if settings.backend is not Backend.DATABRICKS:
        raise BackendUnavailableError("Review App labeling sessions exist only on Databricks; locally this app's own queue is the whole story.")
    existing = get_queue(queue.queue_id, settings).labeling_session  # fresh: someone may have made it meanwhile
    if existing is not None:
        return existing
    ids = list(dict.fromkeys(t.strip() for t in trace_ids if t and t.strip()))
    if not ids:
        raise ValidationError("The queue has no traces to send to the Review App.")
    users = list(dict.fromkeys(r.strip() for r in reviewers if r and r.strip()))
    if not users or any("@" not in u or any(c.isspace() for c in u) for u in users):
        raise ValidationError("Assign the session to workspace users by e-mail (e.g. ana@example.com).")
    if identity is not None:
        roles.enforce(identity, roles.Action.REVIEW, settings)
        user_token = user_token or getattr(identity, "access_token", None)
    if roles.user_authorization_required() and not user_token:
        raise PermissionDeniedError("User authorization is on, but this request carries no user token; the app will "
                                    "not create a labeling session as its service principal.")
    client = mlflow_client(settings)
    infos = []
    for trace_id in ids:
        try:
            with translate_errors(f"trace {trace_id}"):
                info = trace_info(client, trace_id)
        except (NotFoundError, BackendUnavailableError, ValidationError):
            raise NotFoundError(f"Trace {trace_id} no longer exists; nothing was sent to the Review App.") from None
        if (info.tags or {}).get(QUEUE_TAG + queue.queue_id) != "1":
            raise ValidationError(f"Trace {trace_id} is not in the queue {queue.name!r}; nothing was sent.")
        infos.append(info)
    experiments = sorted({e for e in (experiment_of(i) for i in infos) if e})
    if len(experiments) != 1:
        raise ValidationError(
            "A labeling session belongs to one experiment's Review App, but this queue's traces come from "
            f"{len(experiments) or 'no'} experiments ({', '.join(experiments)}). Make one queue per agent to send it."
        )
    name = f"{queue.name} ({queue.queue_id[:8]})"
    say(f"Creating the labeling session '{name}' with {len(infos)} trace(s)…")
    result = run_agents_call("labeling_session", {
        "name": name, "experiment_id": experiments[0], "assigned_users": users,
        "trace_infos": [i.to_dict() for i in infos],
    }, settings)  # the Review App API is outside every Databricks Apps user scope: run as the app
    session = LabelingSession(result["name"], result.get("url"), result.get("labeling_session_id", ""), experiments[0],
                              tuple(users), len(infos), created_by or getattr(identity, "user", "") or "")
    with translate_errors(f"review queue {queue.name}"):
        client.set_tag(queue.queue_id, LABELING_TAG, json.dumps({
            "name": session.name, "url": session.url, "id": session.labeling_session_id,
            "experiment_id": session.experiment_id, "assigned_users": list(session.assigned_users),
            "traces": session.traces, "created_by": session.created_by, "at": round(time.time(), 3),
        }))
    return session


def child_labeling_session(args: dict[str, Any]) -> dict[str, Any]:
    """Child side of ``databricks_labeling_session``: MLflow 3's labeling API in the traces' experiment.

    Runs in the ``databricks-agents`` child process only (named in ``run_agents_call``'s operations).
    """
    from mlflow.entities import Trace, TraceData, TraceInfo
    from mlflow.genai import labeling

    # The Review App of the active experiment holds the session; in this child that is only ours.
    os.environ["MLFLOW_EXPERIMENT_ID"] = str(args["experiment_id"])
    session = labeling.create_labeling_session(name=args["name"], assigned_users=list(args["assigned_users"]))
    # The traces are already in that experiment, so the session needs their info only (no spans).
    traces = [Trace(info=TraceInfo.from_dict(info), data=TraceData(spans=[])) for info in args["trace_infos"]]
    session = session.add_traces(traces)
    return {"name": session.name, "url": session.url, "labeling_session_id": session.labeling_session_id,
            "mlflow_run_id": session.mlflow_run_id}

