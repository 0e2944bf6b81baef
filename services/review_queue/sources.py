"""Filling a new queue: checking its spec and drawing its traces from the chosen source."""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any, Callable, Sequence

from services import _mlflow_internal as internal
from services._clients import translate_errors
from services.errors import BackendUnavailableError, NotFoundError, ValidationError
from services.links import ModelIndex
from services.review_queue.entities import MAX_ITEMS, QueueSource, QueueSpec
from services.traces import AGENT_TAG


def whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (3 or 3.0), else ``None`` (2.7, NaN, inf, text, bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def validate_spec(spec: QueueSpec) -> None:
    """Refuse a spec that cannot make a queue, with a message naming what to fix (before any I/O)."""
    name = (spec.name or "").strip()
    if not name or len(name) > 100 or any(c in name for c in "\n\r"):
        raise ValidationError("Give the queue a name (one line, at most 100 characters).")
    try:
        source = QueueSource(spec.source)
    except ValueError:
        raise ValidationError(f"A queue is filled from one of: {', '.join(QueueSource)}.") from None
    size = whole_number(spec.size)
    if size is None or not 1 <= size <= MAX_ITEMS:
        raise ValidationError(f"A queue holds a whole number of traces between 1 and {MAX_ITEMS} (got {spec.size!r}).")
    reviews = whole_number(spec.reviews_per_item)
    if reviews is None or not 1 <= reviews <= 10:
        raise ValidationError(f"Each item needs a whole number of reviewers between 1 and 10 "
                              f"(got {spec.reviews_per_item!r}).")
    if source is QueueSource.HAND_PICKED:
        ids = [t.strip() for t in spec.trace_ids if t.strip()]
        if not ids:
            raise ValidationError("The hand-picked list is empty; paste at least one trace id.")
        if len(ids) > MAX_ITEMS:
            raise ValidationError(f"A queue holds at most {MAX_ITEMS} traces (got {len(ids)}).")
        bad = [t for t in ids if any(c.isspace() or c in "'`" for c in t)]
        if bad:
            raise ValidationError(f"{bad[0]!r} is not a trace id.")
        return
    if not spec.experiment_ids:
        raise ValidationError("There are no trace experiments to draw the queue from; register an agent first.")
    if spec.start_ms is None or spec.end_ms is None or spec.start_ms >= spec.end_ms:
        raise ValidationError("Pick a time window whose start is before its end.")
    if spec.agent is not None and any(c in spec.agent for c in "'`\n"):
        raise ValidationError(f"{spec.agent!r} is not an agent name.")
    if source is QueueSource.LOW_SCORES:
        if not spec.scorer or any(c in spec.scorer for c in "'`\n"):
            raise ValidationError("Name the scorer whose low results should be reviewed.")
    if source is QueueSource.NEGATIVE_FEEDBACK and spec.feedback_name is not None:
        if not isinstance(spec.feedback_name, str) or not spec.feedback_name.strip() or len(spec.feedback_name) > 200 \
                or any(c in spec.feedback_name for c in "'`\n"):
            raise ValidationError("Name the feedback whose negative values should be reviewed (e.g. thumbs_up).")
    if not isinstance(spec.threshold, (int, float)) or isinstance(spec.threshold, bool) or not math.isfinite(spec.threshold):
        raise ValidationError(f"The threshold must be a number (got {spec.threshold!r}).")


def _window_clauses(spec: QueueSpec) -> list[str]:
    return [f"trace.timestamp_ms >= {int(spec.start_ms or 0)}", f"trace.timestamp_ms < {int(spec.end_ms or 0)}"]


def search(client: Any, experiment_ids: Sequence[str], filter_string: str, limit: int) -> list[Any]:
    """Up to ``limit`` traces (no spans) of the experiments matching ``filter_string``, newest first."""
    found: list[Any] = []
    token = None
    while len(found) < limit:
        page = client.search_traces(locations=list(experiment_ids), filter_string=filter_string,
                                    max_results=min(500, limit - len(found)), page_token=token,
                                    include_spans=False, order_by=["timestamp_ms DESC"])
        found.extend(page)
        token = page.token
        if not token:
            break
    return found


def _is_low(value: Any, threshold: float, negative: set[str] | None = None) -> bool:
    """Whether a feedback value is negative: false, below the threshold, or one of the ``negative`` values."""
    if negative and not isinstance(value, (int, float)):
        return str(value).strip().lower() in negative
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return float(value) < threshold
    return str(value).strip().lower() in ("no", "false", "fail", "failed")


def candidates(client: Any, spec: QueueSpec) -> list[Any]:
    """Trace infos for a new queue (no spans read)."""
    source = QueueSource(spec.source)
    if source is QueueSource.HAND_PICKED:
        infos = []
        for trace_id in dict.fromkeys(t.strip() for t in spec.trace_ids if t.strip()):
            try:
                with translate_errors(f"trace {trace_id}"):
                    infos.append(trace_info(client, trace_id))
            except (NotFoundError, BackendUnavailableError, ValidationError):
                raise NotFoundError(f"Trace {trace_id} does not exist; check the id. No queue was created.") from None
        return infos
    clauses = _window_clauses(spec)
    # The agent is not a search clause: traces written by other code carry no app tag. Traces of the
    # agent's experiments count, except those linked (tag or mlflow.modelId) to another agent.
    mine = _agent_filter(client, spec.agent if source is not QueueSource.LOW_SCORES else None)
    feedback_name = (spec.feedback_name or "").strip() or "thumbs_up"
    if source is QueueSource.NEGATIVE_FEEDBACK and feedback_name == "thumbs_up" and not spec.negative_values:
        # The fast path MLflow's search answers itself.
        found = search(client, spec.experiment_ids, " AND ".join(clauses + ["feedback.`thumbs_up` = 'false'"]),
                        MAX_ITEMS * 4 if spec.agent else spec.size)
        return [t for t in found if mine(info_of(t))][:spec.size]
    if source is QueueSource.SAMPLE:
        pool = [t for t in search(client, spec.experiment_ids, " AND ".join(clauses), min(MAX_ITEMS * 4, spec.size * 10))
                if mine(info_of(t))]
        return random.Random().sample(pool, min(spec.size, len(pool)))
    name = spec.scorer if source is QueueSource.LOW_SCORES else feedback_name
    negative = {v.strip().lower() for v in spec.negative_values if v.strip()}
    pool = search(client, spec.experiment_ids, " AND ".join(clauses), 5000)
    low = []
    for info in (t.info for t in pool):
        if not mine(info):
            continue
        results = [a for a in (info.assessments or []) if a.name == name and a.valid is not False
                   and getattr(a, "feedback", None) is not None]
        if any(_is_low(a.feedback.value, spec.threshold, negative) for a in results):
            low.append(info)
        if len(low) >= spec.size:
            break
    return low


def _agent_filter(client: Any, agent: str | None) -> Callable[[Any], bool]:
    """Whether a trace info may belong to ``agent``: no link to another agent (app tag or model id)."""
    if not agent:
        return lambda info: True
    index = ModelIndex(client)

    def keep(info: Any) -> bool:
        tagged = (getattr(info, "tags", None) or {}).get(AGENT_TAG)
        if tagged:
            return tagged == agent
        model_id = (getattr(info, "trace_metadata", None) or {}).get("mlflow.modelId")
        found = index.version_of(model_id) if model_id else None
        return found is None or found[0] == agent

    return keep


def trace_info(client: Any, trace_id: str) -> Any:
    """The trace's info (tags, assessments) without its spans."""
    return internal.trace_info(client, trace_id)


def info_of(item: Any) -> Any:
    """The info of a trace, or the item itself when it already is one."""
    return getattr(item, "info", item)


def experiment_of(info: Any) -> str | None:
    """The experiment a trace is stored in, if its info says."""
    location = getattr(info, "trace_location", None)
    experiment = getattr(getattr(location, "mlflow_experiment", None), "experiment_id", None)
    return str(experiment) if experiment else getattr(info, "experiment_id", None)


def spec_fingerprint(spec: QueueSpec, created_by: str) -> str:
    """What makes two create_queue calls the same request (the time window aside: a retry is a little later)."""
    data = {
        "name": spec.name.strip(), "source": str(QueueSource(spec.source)), "agent": spec.agent or "",
        "experiments": sorted(str(e) for e in spec.experiment_ids), "size": spec.size, "scorer": spec.scorer or "",
        "threshold": repr(spec.threshold), "reviews": spec.reviews_per_item,
        **({"feedback": spec.feedback_name, "negative": sorted(spec.negative_values)}
           if spec.feedback_name or spec.negative_values else {}), "description": spec.description.strip()[:500],
        "trace_ids": sorted({t.strip() for t in spec.trace_ids if t.strip()}), "by": created_by,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

