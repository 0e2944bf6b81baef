"""Roll-ups (``_mlflow_internal.rollups``) give the direct aggregate's figures, on SQLite and PostgreSQL.

Each store is a real MLflow store written through the store's ``start_trace`` + ``log_spans``
(``_mlflow_internal.log_traces``), with traces spread over three days: two LoggedModels, evaluation
rows of one of them (``mlflow.sourceRun``), traces linked only by the app's older version tag, an
arm tag, errors, token usage and two LLM models. For each query the roll-up answer is compared with
``aggregate_sql`` on the same store: counts, tokens and cost equal, percentiles within the sketch's
stated 1%. Then traces are added (new ones after the watermark, late ones in closed buckets) and the
comparison is repeated: new traces show at once, late ones after a verification.
"""

from __future__ import annotations

import math
import random
import time

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from services import _mlflow_internal as internal
from services._mlflow_internal import rollups

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _spec(experiment_id: str, rng: random.Random, start_ms: int, model_id: str | None, *, version_tag=None,
          arm=None, eval_run=None) -> internal.TraceSpec:
    start = start_ms * 1_000_000
    duration_ms = int(rng.lognormvariate(5.5, 0.6)) + 1
    end = start + duration_ms * 1_000_000
    children = []
    if rng.random() < 0.85:
        inp, out = rng.randint(10, 500), rng.randint(1, 80)
        children.append(internal.SpanSpec("llm", "CHAT_MODEL", start + 1000, end - 1000, attributes={
            "mlflow.chat.tokenUsage": {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out},
            "mlflow.llm.model": rng.choice(["gpt-4o-mini", "acme-llm"]), "mlflow.llm.provider": "openai"}))
    root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"q": start_ms}, outputs="a",
                             error="boom" if rng.random() < 0.1 else None, children=tuple(children))
    tags = {k: v for k, v in (("agentops.version", version_tag), ("agentops.arm", arm)) if v}
    metadata = {k: v for k, v in (("mlflow.modelId", model_id), ("mlflow.sourceRun", eval_run)) if v}
    return internal.TraceSpec(experiment_id, root, tags=tags, metadata=metadata)


def _traces(experiment_id, models, run_id, rng, count, lo_ms, hi_ms):
    out = []
    for _ in range(count):
        kind = rng.random()
        at = rng.randrange(lo_ms, hi_ms)
        if kind < 0.55:
            out.append(_spec(experiment_id, rng, at, models[0], arm=rng.choice(["a", "b"])))
        elif kind < 0.8:
            out.append(_spec(experiment_id, rng, at, models[1], arm="b"))
        elif kind < 0.88:
            out.append(_spec(experiment_id, rng, at, models[0], eval_run=run_id))
        else:
            out.append(_spec(experiment_id, rng, at, None, version_tag=rng.choice(["1", "2"])))
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    """A store on each dialect, and a roll-up store beside it (PostgreSQL: schema ``agentops`` in the
    same database; SQLite: a separate file, as the app keeps SQLite stores on the direct path)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database("rollups")
    else:
        url = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("rollups", artifact_location=(tmp_path / "artifacts").as_uri())
    models = [client.create_logged_model(experiment_id, name=f"v{i}").model_id for i in (1, 2)]
    run_id = client.create_run(experiment_id).info.run_id
    source = internal.tracking_store(client)
    if request.param == "postgresql":
        target = rollups.rollup_store_for(source, None)
    else:
        target = rollups.RollupStore(sa.create_engine(f"sqlite:///{tmp_path / 'rollups.db'}"))
        target.create()
    assert target is not None
    yield client, source, target, experiment_id, models, run_id
    rollups._targets.clear()


def _queries(models):
    versions = {"1": internal.TraceLink((models[0],), (("agentops.version", "1"),)),
                "2": internal.TraceLink((models[1],), (("agentops.version", "2"),))}
    both = internal.TraceLink(tuple(models), (("agentops.agent", "x"),))
    return [
        dict(interval=3 * 3600, group_links=versions, tag_pairs=(), status=None, links=()),
        dict(interval=3600, group_links={}, tag_pairs=(), status=None, links=()),
        dict(interval=86400, group_links=versions, tag_pairs=(("agentops.arm", "b"),), status=None, links=(both,)),
        dict(interval=1800, group_links={}, tag_pairs=(), status="ERROR", links=(versions["1"],)),
        dict(interval=6 * 3600, group_links={"x": internal.TraceLink(tags=(("agentops.arm", "a"),)),
                                             "y": internal.TraceLink(tags=(("agentops.arm", "b"),))},
             tag_pairs=(), status=None, links=()),
    ]


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= rollups.ALPHA * abs(b) + 1e-9


def _assert_same(rolled: internal.TraceAggregates, direct: internal.TraceAggregates) -> None:
    assert rolled.path == "rollup" and direct.path == "sql"
    key = lambda r: (r.group, r.bucket_ms)  # noqa: E731
    got, want = {key(r): r for r in rolled.rows}, {key(r): r for r in direct.rows}
    assert got.keys() == want.keys()
    assert want, "the query matched no traces: the comparison would prove nothing"
    for k, w in want.items():
        g = got[k]
        assert (g.requests, g.errors, g.input_tokens, g.output_tokens, g.cached_input_tokens,
                g.traces_with_tokens) == (w.requests, w.errors, w.input_tokens, w.output_tokens,
                                          w.cached_input_tokens, w.traces_with_tokens), k
        assert math.isclose(g.recorded_cost, w.recorded_cost, rel_tol=1e-9, abs_tol=1e-12), k
        for p in ("p50_ms", "p95_ms", "p99_ms"):
            assert _close(getattr(g, p), getattr(w, p)), (k, p, getattr(g, p), getattr(w, p))
    gm = {(m.group, m.model): m for m in rolled.models}
    wm = {(m.group, m.model): m for m in direct.models}
    assert gm.keys() == wm.keys()
    for k, w in wm.items():
        assert gm[k].llm_calls == w.llm_calls and math.isclose(gm[k].recorded_cost, w.recorded_cost, rel_tol=1e-9,
                                                               abs_tol=1e-12), k


def _compare(source, target, experiment_id, models, start_ms, end_ms) -> None:
    for q in _queries(models):
        with source.ManagedSessionMaker() as session:
            ids = source._filter_experiment_ids(session, [int(experiment_id)])
        rolled = rollups.aggregate(target, source, ids, start_ms, end_ms, q["interval"], q["group_links"],
                                   q["tag_pairs"], q["status"], True, q["links"])
        direct = internal.aggregate_sql._aggregate_sql(source, [experiment_id], start_ms, end_ms, q["interval"],
                                                       q["group_links"], q["tag_pairs"], q["status"], True, q["links"])
        _assert_same(rolled, direct)


def test_rollups_equal_the_direct_aggregate_and_follow_new_and_late_traces(world, monkeypatch):
    client, source, target, experiment_id, models, run_id = world
    rng = random.Random(5)
    now = int(time.time() * 1000)
    start_ms, end_ms = now - 3 * DAY_MS - 7 * 60_000, now + 60_000  # edges fall inside buckets
    # 400 traces over three days, and 30 in the last ten minutes (the open tail, scanned live).
    internal.log_traces(client, _traces(experiment_id, models, run_id, rng, 400, start_ms - HOUR_MS, now - HOUR_MS))
    internal.log_traces(client, _traces(experiment_id, models, run_id, rng, 30, now - 10 * 60_000, now))
    _compare(source, target, experiment_id, models, start_ms, end_ms)
    with target.engine.connect() as connection:
        stored = connection.execute(sa.select(sa.func.sum(target.t["traces"].c.requests))).scalar()
    assert 0 < stored < 430, "closed buckets are stored, the open tail is not"

    # Incremental: later traces in the tail show at once; late ones in closed buckets after a verification.
    monkeypatch.setattr(rollups, "VERIFY_SECONDS", 3600)
    internal.log_traces(client, _traces(experiment_id, models, run_id, rng, 20, now - 5 * 60_000, now))
    late = _traces(experiment_id, models, run_id, rng, 25, now - 2 * DAY_MS, now - DAY_MS)
    internal.log_traces(client, late)
    with source.ManagedSessionMaker() as session:
        ids = source._filter_experiment_ids(session, [int(experiment_id)])
    q = _queries(models)[1]
    stale = rollups.aggregate(target, source, ids, start_ms, end_ms, q["interval"], {}, (), None, True, ())
    fresh = internal.aggregate_sql._aggregate_sql(source, [experiment_id], start_ms, end_ms, q["interval"], {}, (),
                                                  None, True, ())
    total = lambda agg: sum(r.requests for r in agg.rows if r.bucket_ms is None)  # noqa: E731
    assert total(fresh) - total(stale) == len(late), "only traces since the watermark are scanned until a verification"
    monkeypatch.setattr(rollups, "VERIFY_SECONDS", 0)
    _compare(source, target, experiment_id, models, start_ms, end_ms)


def test_windows_ending_in_the_past_and_inside_one_bucket(world):
    client, source, target, experiment_id, models, run_id = world
    rng = random.Random(9)
    now = int(time.time() * 1000)
    internal.log_traces(client, _traces(experiment_id, models, run_id, rng, 150, now - 2 * DAY_MS, now - HOUR_MS))
    # A window closing mid-bucket a day ago (closed buckets on both sides), and one within a single bucket.
    _compare(source, target, experiment_id, models, now - 2 * DAY_MS - 11 * 60_000, now - DAY_MS + 7 * 60_000)
    rollups_bucket = (now - 30 * HOUR_MS) // rollups.BASE_MS * rollups.BASE_MS
    for q in _queries(models)[1:2]:
        with source.ManagedSessionMaker() as session:
            ids = source._filter_experiment_ids(session, [int(experiment_id)])
        lo, hi = rollups_bucket + 60_000, rollups_bucket + 14 * 60_000
        rolled = rollups.aggregate(target, source, ids, lo, hi, 900, {}, (), None, True, ())
        direct = internal.aggregate_sql._aggregate_sql(source, [experiment_id], lo, hi, 900, {}, (), None, True, ())
        assert [r.requests for r in rolled.rows] == [r.requests for r in direct.rows]


def test_the_sketch_bound_holds_on_skewed_durations():
    import numpy as np

    rng = np.random.default_rng(3)
    for sample in (rng.lognormal(6, 1.5, 5000), rng.integers(1, 5, 200), np.array([0, 0, 7, 1e6])):
        exact = np.percentile(sample, internal.PERCENTILES)
        got = rollups.sketch_percentiles(rollups.sketch_of(sample))
        for g, e in zip(got, exact):
            assert abs(g - e) <= rollups.ALPHA * e + 1e-9, (g, e)
