"""Benchmark: the Monitoring summary on a store of N traces vs plain ``mlflow.search_traces``.

    .venv/bin/python -m bench.bench_monitoring --traces 100000 --data-dir /tmp/agentops-bench

Builds the store once with the bulk writer (reused when the folder already holds it), then
times ``monitoring.monitoring_data`` split by version (cold, then warm) and reports it as a
ratio against ``mlflow.search_traces`` over the same window, with peak Python memory of each.
"""

from __future__ import annotations

import argparse
import os
import random
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

VERSIONS = ("1", "2", "3")
MODELS = {"1": "gpt-4o-mini", "2": "gpt-4o-mini", "3": "acme-llm"}


def _build(settings, n: int, days: int) -> str:
    from mlflow import MlflowClient

    from services import _mlflow_internal as internal
    from services._clients import get_or_create_experiment

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = get_or_create_experiment(client, "bench-monitoring", settings)
    marker = settings.data_dir / f"bench-{n}.done"
    if marker.exists():
        return experiment_id
    rng = random.Random(11)
    now_ns = time.time_ns()
    span_ns = days * 86400 * 10**9
    started = time.perf_counter()
    batch = []
    for i in range(n):
        version = rng.choices(VERSIONS, weights=(70, 25, 5))[0]
        start = now_ns - rng.randrange(span_ns)
        duration = int(rng.lognormvariate(6.3, 0.4) * 1e6)
        end = start + duration
        error = rng.random() < 0.02
        children = [internal.SpanSpec("lookup", "TOOL", start + 10**5, start + 10**6, inputs={"q": i}, outputs="ok")]
        if rng.random() < 0.97:
            inp, out = rng.randint(200, 900), rng.randint(20, 120)
            children.append(internal.SpanSpec(
                "llm", "CHAT_MODEL", start + 2 * 10**6, end - 10**5,
                attributes={"mlflow.chat.tokenUsage": {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out},
                            "mlflow.llm.model": MODELS[version], "mlflow.llm.provider": "openai"},
            ))
        root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"question": f"q{i}"}, outputs="a",
                                 error="boom" if error else None, children=tuple(children))
        batch.append(internal.TraceSpec(experiment_id, root, tags={
            "agentops.agent": "bench-agent", "agentops.version": version, "agentops.arm": f"bench-agent-{version}",
            "agentops.alias": "champion" if version == "1" else "challenger", "agentops.endpoint": "bench"}))
        if len(batch) == 2000:
            internal.log_traces(client, batch, chunk_size=2000)
            batch = []
            print(f"  {i + 1:,} traces written ({time.perf_counter() - started:.0f} s)", flush=True)
    internal.log_traces(client, batch, chunk_size=2000)
    print(f"built {n:,} traces in {time.perf_counter() - started:.0f} s", flush=True)
    marker.write_text("ok")
    return experiment_id


def _timed(fn):
    """Result, seconds and peak Python memory: timed without tracemalloc (it slows Python
    code such as SQLite's percentile aggregate several-fold), then run again under it."""
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, elapsed, peak


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--data-dir", default="/tmp/agentops-bench")
    parser.add_argument("--skip-search", action="store_true", help="do not time mlflow.search_traces")
    args = parser.parse_args(argv)

    os.environ["AGENTOPS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    import mlflow

    from services import monitoring as mon
    from services import pricing
    from services._clients import configure_mlflow, get_settings

    settings = configure_mlflow(get_settings())
    experiment_id = _build(settings, args.traces, args.days)
    from services import _mlflow_internal as internal

    if hasattr(internal, "analyze_sqlite"):  # planner statistics, as the demo seed does
        internal.analyze_sqlite(str(settings.db_path))
    end = datetime.now(tz=timezone.utc) + timedelta(minutes=1)
    query = mon.TraceQuery((experiment_id,), end - timedelta(days=args.days + 1), end)
    prices = pricing.DEFAULT_PRICES | {"acme-llm": pricing.ModelPrice(1.0, 4.0, 0.25)}

    def summary():
        return mon.monitoring_data(query, mon.Split.VERSION, VERSIONS, prices=prices, settings=settings)

    data, cold, cold_peak = _timed(summary)
    warm_runs = [_seconds(summary) for _ in range(3)]
    warm = min(warm_runs)
    print(f"monitoring summary: {int(data.totals['requests'].sum()):,} traces, "
          f"{len(data.series)} series rows, cold {cold:.2f} s, warm {warm:.2f} s "
          f"(runs {', '.join(f'{w:.2f}' for w in warm_runs)}), peak Python memory {cold_peak / 2**20:.1f} MiB")
    if not args.skip_search:
        filter_string = f"trace.timestamp_ms >= {query.start_ms} AND trace.timestamp_ms < {query.end_ms}"
        frame, searched, search_peak = _timed(lambda: mlflow.search_traces(
            locations=[experiment_id], filter_string=filter_string))
        print(f"mlflow.search_traces: {len(frame):,} rows in {searched:.2f} s, peak Python memory "
              f"{search_peak / 2**20:.1f} MiB")
        print(f"ratio summary/search: {warm / searched:.4f} (summary is {searched / warm:.0f}x faster), "
              f"memory ratio {cold_peak / max(search_peak, 1):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
