"""The non-public MLflow parts live scoring relies on (services/_mlflow_internal/online_scoring.py):
fail loudly here when an MLflow upgrade changes them."""

from __future__ import annotations

import inspect

from services._mlflow_internal import online_scoring


def test_mlflow_online_processor_still_has_what_we_override():
    from mlflow.genai.scorers.online import OnlineTraceScoringProcessor

    assert online_scoring.supports_processor(), "MLflow's online trace processor changed: see online_scoring.py"
    assert list(inspect.signature(OnlineTraceScoringProcessor._build_scoring_tasks).parameters) == [
        "self", "time_window", "checkpoint"]
    assert list(inspect.signature(OnlineTraceScoringProcessor._execute_scoring).parameters) == ["self", "tasks"]
    assert list(inspect.signature(OnlineTraceScoringProcessor.__init__).parameters) == [
        "self", "trace_loader", "checkpoint_manager", "sampler", "experiment_id"]


def test_checkpoint_tag_and_eval_run_filter_are_mlflows():
    from mlflow.genai.scorers.online.constants import EXCLUDE_EVAL_RUN_TRACES_FILTER
    from mlflow.utils.mlflow_tags import MLFLOW_LATEST_ONLINE_SCORING_TRACE_CHECKPOINT

    assert online_scoring.CHECKPOINT_TAG == MLFLOW_LATEST_ONLINE_SCORING_TRACE_CHECKPOINT
    # The worker keeps its own position, apart from MLflow's jobs' (see online_scoring.py).
    assert online_scoring.APP_CHECKPOINT_TAG != MLFLOW_LATEST_ONLINE_SCORING_TRACE_CHECKPOINT
    assert online_scoring.EVAL_RUN_FILTER == EXCLUDE_EVAL_RUN_TRACES_FILTER


def test_fallback_sampling_is_mlflows_sampling_for_one_scorer(monkeypatch):
    import json

    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS", "true")
    from mlflow.genai.scorers import scorer
    from mlflow.genai.scorers.online import OnlineScorer, OnlineScorerSampler, OnlineScoringConfig

    @scorer(name="probe")
    def probe(outputs):
        return True

    sampler = OnlineScorerSampler([OnlineScorer("probe", json.dumps(probe.model_dump()),
                                                OnlineScoringConfig("c", "probe", 0.3, "1"))])
    (loaded,) = sampler.group_scorers_by_filter(session_level=False)[None]
    ids = [f"tr-{i:032x}" for i in range(200)]
    assert [bool(sampler.sample(t, [loaded])) for t in ids] == [online_scoring.sampled(t, "probe", 0.3) for t in ids]
