"""Review queues as runs of the review experiment: creating one (exactly once per request), listing, reading."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from services._clients import (configure_mlflow, get_experiment_by_name, get_or_create_experiment, get_settings,
                              mlflow_client, translate_errors)
from services.errors import BackendUnavailableError, NotFoundError, ValidationError
from services.feedback.reviews import short_cause
from services.review_queue.entities import (AGENT_QUEUE_TAG, CREATOR_TAG, DESCRIPTION_TAG, EXPERIMENTS_TAG,
                                            FINGERPRINT_TAG, KIND_TAG, LABELING_TAG, MAX_ITEMS, NAME_TAG,
                                            PENDING_KIND, QUEUE_TAG, REQUEST_TAG, REVIEWS_TAG, SOURCE_TAG,
                                            QueueSource, QueueSpec, ReviewQueue, labeling_session_from_tag)
from services.review_queue.sources import (candidates, experiment_of, info_of, search, spec_fingerprint,
                                           validate_spec, whole_number)
from services.settings import Settings


def review_experiment_name(settings: Settings | None = None) -> str:
    """The experiment holding the queues: created with the first queue, never by a read."""
    return (settings or get_settings()).review_experiment


def _earlier_attempts(client: Any, experiment_id: str, fingerprint: str) -> list[Any]:
    """Queue runs made for the same spec and creator, oldest first."""
    return list(client.search_runs([experiment_id], filter_string=f"tags.`{FINGERPRINT_TAG}` = '{fingerprint}'",
                                   max_results=100, order_by=["attributes.start_time ASC"]))


def _interrupted(name: str, added: int, total: int, exc: Exception) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"The queue {name!r} was only partly created ({added} of {total} trace(s) added) before the tracking store "
        f"stopped answering ({short_cause(exc)}). It is not listed until it is complete: press Create queue again with the "
        "same settings once the store is back; that finishes this queue, and nothing is added twice."
    )


def create_queue(spec: QueueSpec, created_by: str, settings: Settings | None = None, *,
                 request_id: str | None = None) -> ReviewQueue:
    """Fill a queue from its source and store it; ``ValidationError`` when nothing matches.

    The queue's run is marked usable (``KIND_TAG`` = ``queue``) only after all its traces are
    tagged, so an interrupted creation is never listed. Creating the same spec as the same user
    again finishes such an unfinished queue instead of starting a second one; with the same
    ``request_id`` (the page passes one per confirmation) a finished one is returned as it is.
    """
    validate_spec(spec)
    # From here on the counts are ints (a whole float such as 20.0 would break slicing and sampling).
    spec = replace(spec, size=whole_number(spec.size), reviews_per_item=whole_number(spec.reviews_per_item))
    if request_id is not None and (not isinstance(request_id, str) or not request_id.strip()
                                   or any(c.isspace() or c in "'`" for c in request_id)):
        raise ValidationError(f"{request_id!r} is not a request id.")
    settings = configure_mlflow(settings)
    client = mlflow_client(settings)
    with translate_errors("trace search"):
        infos = [info_of(i) for i in candidates(client, spec)]
    if not infos:
        raise ValidationError(
            "No traces match, so the queue would be empty and was not created. Widen the window, "
            "pick another source, or paste trace ids."
        )
    name = spec.name.strip()
    fingerprint = spec_fingerprint(spec, created_by)
    with translate_errors("the review experiment"):
        experiment_id = get_or_create_experiment(client, review_experiment_name(settings), settings)
        earlier = _earlier_attempts(client, experiment_id, fingerprint)
    if request_id is not None:
        done = [r for r in earlier if r.data.tags.get(REQUEST_TAG) == request_id and r.data.tags.get(KIND_TAG) == "queue"]
        if done:
            return _queue_from_run(done[0])  # this confirmation already made its queue
    unfinished = [r for r in earlier if r.data.tags.get(KIND_TAG) == PENDING_KIND]
    added = 0
    total = len(infos)
    run = None
    try:
        with translate_errors("the review experiment"):
            if unfinished:
                run = unfinished[0]
                queue_id = run.info.run_id
                # Keep what the interrupted attempt added (a sample is drawn afresh), then top up to the size.
                kept = {t.info.trace_id: t.info for t in search(
                    client, tuple(e for e in run.data.tags.get(EXPERIMENTS_TAG, "").split(",") if e) or spec.experiment_ids,
                    f"tag.`{QUEUE_TAG}{queue_id}` = '1'", MAX_ITEMS)}
                fresh = [i for i in infos if i.trace_id not in kept]
                if QueueSource(spec.source) is not QueueSource.HAND_PICKED:
                    fresh = fresh[:max(0, spec.size - len(kept))]
                infos = [*kept.values(), *fresh]
                total = len(infos)
            experiments = tuple(dict.fromkeys(e for e in (experiment_of(i) for i in infos) if e)) or tuple(spec.experiment_ids)
            tags = {
                NAME_TAG: name, SOURCE_TAG: str(QueueSource(spec.source)),
                AGENT_QUEUE_TAG: spec.agent or "", EXPERIMENTS_TAG: ",".join(experiments),
                REVIEWS_TAG: str(int(spec.reviews_per_item)), CREATOR_TAG: created_by,
                DESCRIPTION_TAG: spec.description.strip()[:500], FINGERPRINT_TAG: fingerprint,
                REQUEST_TAG: request_id or "",
            }
            if run is None:
                run = client.create_run(experiment_id, run_name=name, tags={KIND_TAG: PENDING_KIND, **tags})
                queue_id = run.info.run_id
            else:
                changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
                for key, value in changed.items():
                    client.set_tag(queue_id, key, value)
            for info in infos:
                if (getattr(info, "tags", None) or {}).get(QUEUE_TAG + queue_id) != "1":
                    client.set_trace_tag(info.trace_id, QUEUE_TAG + queue_id, "1")
                added += 1
            client.set_terminated(queue_id, "FINISHED")
            # The marker, written last: from here on the queue is listed and can be reviewed.
            client.set_tag(queue_id, KIND_TAG, "queue")
    except BackendUnavailableError as exc:
        if run is None:
            raise BackendUnavailableError(
                f"The queue {name!r} was not created: the tracking store stopped answering ({short_cause(exc)}). Press Create "
                "queue again with the same settings once the store is back; nothing is added twice.") from exc
        raise _interrupted(name, added, total, exc) from exc
    return ReviewQueue(
        queue_id=queue_id, name=name, source=QueueSource(spec.source), agent=spec.agent or None,
        experiment_ids=experiments, reviews_per_item=int(spec.reviews_per_item), created_by=created_by,
        created_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        description=spec.description.strip()[:500], labeling_session=labeling_session_from_tag(run.data.tags.get(LABELING_TAG)),
    )


def _queue_from_run(run: Any) -> ReviewQueue:
    tags = run.data.tags
    return ReviewQueue(
        queue_id=run.info.run_id, name=tags.get(NAME_TAG, run.info.run_name or run.info.run_id),
        source=QueueSource(tags.get(SOURCE_TAG, QueueSource.HAND_PICKED)), agent=tags.get(AGENT_QUEUE_TAG) or None,
        experiment_ids=tuple(e for e in tags.get(EXPERIMENTS_TAG, "").split(",") if e),
        reviews_per_item=int(tags.get(REVIEWS_TAG, "1") or 1), created_by=tags.get(CREATOR_TAG, ""),
        created_at=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
        description=tags.get(DESCRIPTION_TAG, ""),
        labeling_session=labeling_session_from_tag(tags.get(LABELING_TAG)),
    )


def list_queues(settings: Settings | None = None) -> list[ReviewQueue]:
    """All queues, newest first (none when the review experiment does not exist yet)."""
    client = mlflow_client(settings)
    with translate_errors("the review experiment"):
        experiment = get_experiment_by_name(client, review_experiment_name(settings), settings)
        if experiment is None:
            return []
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'queue'",
                                  max_results=1000, order_by=["attributes.start_time DESC"])
    return [_queue_from_run(r) for r in runs]


def get_queue(queue_id: str, settings: Settings | None = None) -> ReviewQueue:
    """One queue by id."""
    if not queue_id or any(c.isspace() or c in "'`" for c in queue_id):
        raise ValidationError(f"{queue_id!r} is not a queue id.")
    client = mlflow_client(settings)
    try:
        with translate_errors(f"review queue {queue_id}"):
            run = client.get_run(queue_id)
    except (NotFoundError, ValidationError, BackendUnavailableError):
        raise NotFoundError(f"Review queue {queue_id} does not exist.") from None
    if run.data.tags.get(KIND_TAG) == PENDING_KIND:
        raise NotFoundError(f"Review queue {queue_id} was not finished being created; create it again with the "
                            "same settings to finish it.")
    if run.data.tags.get(KIND_TAG) != "queue":
        raise NotFoundError(f"Review queue {queue_id} does not exist.")
    return _queue_from_run(run)

