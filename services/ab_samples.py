"""Reading an endpoint's live traffic per arm: the per-request values A/B judging and guarded rollouts use.

Each arm's traces in a window (metadata only) give its latencies, errors, cost, tokens, reviewer
feedback and scorer outcomes (``sample_from_traces``); each live scorer's results on exactly those
traces come from ``live_quality`` (``live_outcomes``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Sequence

import pandas as pd

from services import live_quality, registry, serving
from services._clients import get_settings
from services.errors import NotFoundError, ValidationError
from services.live_scoring_scorers import LIVE_PREFIX
from services.settings import Settings

POSITIVE_FEEDBACK = "thumbs_up"


@dataclass(frozen=True)
class LiveScorerSample:
    """One live scorer's per-trace results on one arm: 1.0/0.0 for a pass/fail scorer, else its score."""

    scorer: str
    pass_fail: bool
    values: tuple[float, ...]


@dataclass(frozen=True)
class ArmSample:
    """Per-request values of one arm; lists are aligned only within themselves."""

    entity_name: str
    model_name: str
    version: str
    latencies_ms: tuple[float, ...]
    errors: int
    costs: tuple[float, ...]
    tokens: tuple[int, ...]
    feedback: tuple[bool, ...]
    ratings: tuple[float, ...]
    scorer_passes: tuple[bool, ...]  # scorer assessments other than the live scorers' (pooled)
    truncated: bool = False
    live: tuple[LiveScorerSample, ...] = ()  # one entry per live scorer with results on this arm

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def scorer_passes_by_name(self) -> dict[str, tuple[bool, ...]]:
        """Pass/fail live scorers' outcomes, one entry per scorer, by its name (not the ``live_`` assessment name)."""
        return {live.scorer: tuple(v >= 0.5 for v in live.values) for live in self.live if live.pass_fail}


def validate_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationError("Time windows need a time zone.")
    if start >= end:
        raise ValidationError("The window's start must be before its end.")


def arm_samples(endpoint: serving.Endpoint, experiment_ids: Sequence[str], start: datetime, end: datetime,
                *, settings: Settings | None = None) -> list[ArmSample]:
    """Per-arm samples from the endpoint's traces in the window (metadata only, no spans)."""
    return endpoint_samples(endpoint, experiment_ids, start, end, settings=settings)[0]


def endpoint_samples(endpoint: serving.Endpoint, experiment_ids: Sequence[str], start: datetime, end: datetime,
                     *, settings: Settings | None = None) -> tuple[list[ArmSample], int]:
    """Per-arm samples from the endpoint's traces in the window, and how many traces name no arm."""
    validate_window(start, end)
    traffic, unattributed = serving.arm_traffic(endpoint, experiment_ids, start, end, settings=settings)
    live = live_outcomes(traffic, start, end, settings=settings)
    return [replace(_sample(arm), live=live.get(arm.served.entity_name, ())) for arm in traffic], unattributed


def live_outcomes(traffic: Sequence[serving.ArmTraffic], start: datetime, end: datetime, *,
                  settings: Settings | None = None) -> dict[str, tuple[LiveScorerSample, ...]]:
    """Each arm's live-scorer results, per scorer, on exactly the arm's traces in the window.

    Read from the live assessments the arm's own search already returned (``live_quality.result_rows``,
    traces linked to one of the agent's registered versions) and grouped with ``live_quality.outcomes_by``,
    so the live scorers are judged on the same requests as the arm's other measures and no trace is read
    twice. Arms without a registered version (AI Gateway provider models) have no agent and so no live
    scorers. ``start`` and ``end`` are the window the arms were read over.
    """
    settings = settings or get_settings()
    versions_of: dict[str, dict[str, str] | None] = {}  # agent -> LoggedModel id -> version (None: not found)
    rows = []
    for arm in traffic:
        agent = arm.served.model_name
        if not arm.served.model_version or not arm.infos:
            continue
        if agent not in versions_of:
            try:
                links, _ = registry.agent_links(agent, settings)
                versions_of[agent] = {link.model_id: link.version for link in links if link.model_id}
            except NotFoundError:
                versions_of[agent] = None
        if versions_of[agent] is None:
            continue
        for info in arm.infos:
            rows.extend(dict(row, arm=arm.served.entity_name)
                        for row in live_quality.result_rows(info, versions_of[agent]))
    if not rows:
        return {}
    results = pd.DataFrame(rows, columns=live_quality.RESULT_COLUMNS)
    scored = results.dropna(subset=["score"])
    pass_fail = {str(k): bool(v) for k, v in scored.groupby("scorer")["passed"].agg(lambda s: s.notna().all()).items()}
    return {arm: tuple(LiveScorerSample(scorer, pass_fail[scorer], tuple(values))
                       for scorer, values in sorted(by_scorer.items()))
            for arm, by_scorer in live_quality.outcomes_by(results, "arm").items()}


def _sample(arm: serving.ArmTraffic) -> ArmSample:
    sample = sample_from_traces(arm.served, list(arm.infos), truncated=arm.truncated)
    # An AI Gateway arm's error is its own provider call failing, even when a fallback then answered.
    return sample if arm.failed is None else replace(sample, errors=arm.failed)


def sample_from_traces(served: serving.ServedVersion, infos: list[Any], *, truncated: bool) -> ArmSample:
    """An arm's sample from its trace infos (latency, errors, cost, tokens, feedback, scorer passes)."""
    latencies, costs, tokens, feedback, ratings, passes = [], [], [], [], [], []
    errors = 0
    for info in infos:
        latencies.append(float(info.execution_duration or 0))
        if str(info.state).endswith("ERROR"):
            errors += 1
        if info.cost and info.cost.get("total_cost") is not None:
            costs.append(float(info.cost["total_cost"]))
        if info.token_usage and info.token_usage.get("total_tokens") is not None:
            tokens.append(int(info.token_usage["total_tokens"]))
        for assessment in info.assessments or []:
            value = getattr(assessment, "value", None)
            if getattr(assessment, "valid", True) is False or value is None:
                continue
            source = str(getattr(assessment.source, "source_type", ""))
            if assessment.name == POSITIVE_FEEDBACK and isinstance(value, bool):
                feedback.append(value)
            elif assessment.name == "rating" and isinstance(value, (int, float)):
                ratings.append(float(value))
            elif assessment.name.startswith(LIVE_PREFIX):
                continue  # the live scorers: one measure each (live_outcomes)
            elif source.endswith(("CODE", "LLM_JUDGE")) and isinstance(value, (bool, str)):
                passes.append(value is True or str(value).lower() in ("yes", "true", "pass"))
    return ArmSample(served.entity_name, served.model_name, served.model_version, tuple(latencies), errors,
                     tuple(costs), tuple(tokens), tuple(feedback), tuple(ratings), tuple(passes), truncated)
