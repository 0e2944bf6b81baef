"""Benchmark: the Monitoring summary on a store of N traces vs plain ``mlflow.search_traces``.

    .venv/bin/python -m bench.bench_monitoring --traces 100000 --data-dir /tmp/agentops-bench

Builds the store once with the direct bulk loader (``_mlflow_internal.bulk_load_traces``:
real MLflow rows, spans, token usage and recorded cost; reused when the folder already holds
it) and checks that MLflow reads it normally: ``mlflow.search_traces``, ``query_trace_metrics``
and the monitoring service count the same traces, and a sampled trace loads with its spans.

Then it times what the Monitoring page computes for its charts, split by version
(``monitoring.monitoring_data``: time series, per-version totals, cost by model), cold and
warm, against the plain approach on the same store in the same run: ``mlflow.search_traces``
without spans over the window, then the same summary in pandas. Both summaries must agree.
Peak memory is reported twice: Python allocations (tracemalloc) and the peak RSS of a fresh
process doing only that work, above a process that only opened the store.

Figures, stores and how they were built: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.stores import STORES, Served, analyze

VERSIONS = ("1", "2", "3")
MODELS = {"1": "gpt-4o-mini", "2": "gpt-4o-mini", "3": "acme-llm"}
EXPERIMENT = "bench-monitoring-model-id"
AGENT = "bench-agent"
TARGET_WARM_S = 2.0
_SERVED: list = []  # the one Served of this process (child processes reuse its server)


def _specs(experiment_id: str, rng: random.Random, count: int, first: int, now_ns: int, span_ns: int,
           model_ids: dict[str, str]):
    from services import _mlflow_internal as internal

    for i in range(first, first + count):
        version = rng.choices(VERSIONS, weights=(70, 25, 5))[0]
        start = now_ns - rng.randrange(span_ns)
        duration = int(rng.lognormvariate(6.3, 0.4) * 1e6)
        end = start + duration
        error = rng.random() < 0.02
        children = [internal.SpanSpec("lookup", "TOOL", start + 10**5, start + 10**6, inputs={"q": i}, outputs="ok")]
        if rng.random() < 0.97:
            inp, out = rng.randint(200, 900), rng.randint(20, 120)
            usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
            if rng.random() < 0.2:
                usage["cache_read_input_tokens"] = rng.randint(0, inp)
            children.append(internal.SpanSpec(
                "llm", "CHAT_MODEL", start + 2 * 10**6, end - 10**5,
                attributes={"mlflow.chat.tokenUsage": usage, "mlflow.llm.model": MODELS[version],
                            "mlflow.llm.provider": "openai"},
            ))
        root = internal.SpanSpec("predict", "AGENT", start, end, inputs={"question": f"q{i}"}, outputs="a",
                                 error="boom" if error else None, children=tuple(children))
        # Linked to its version only as MLflow links it: the LoggedModel id in the trace metadata.
        yield internal.TraceSpec(experiment_id, root, metadata={"mlflow.modelId": model_ids[version]})


def _register(client, experiment_id: str) -> dict[str, str]:
    """``bench-agent`` v1..v3, each registered from a LoggedModel; version -> model id."""
    try:
        existing = client.search_model_versions(f"name='{AGENT}'")
    except Exception:  # noqa: BLE001 - no such model yet
        existing = []
    if len(existing) >= len(VERSIONS):
        return {str(v.version): v.source.removeprefix("models:/") for v in existing}
    client.create_registered_model(AGENT)
    found = {}
    for version in VERSIONS:
        model = client.create_logged_model(experiment_id=experiment_id, name=f"bench-{version}",
                                           params={"llm": MODELS[version]})
        mv = client.create_model_version(AGENT, source=f"models:/{model.model_id}", model_id=model.model_id)
        found[str(mv.version)] = model.model_id
    return found


def _build(settings, n: int, days: int, store_uri: str | None = None, workers: int = 1) -> str:
    """Fill the store at ``store_uri`` (default: the settings' local SQLite store) once."""
    from mlflow import MlflowClient

    from services import _mlflow_internal as internal
    from services._clients import get_or_create_experiment

    client = MlflowClient(tracking_uri=store_uri or settings.tracking_uri,
                          registry_uri=store_uri or settings.registry_uri)
    experiment_id = get_or_create_experiment(client, EXPERIMENT, settings)
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)  # the registry resolves models:/m-... through it
    try:
        model_ids = _register(client, experiment_id)
    finally:
        mlflow.set_tracking_uri(previous)
    marker = settings.data_dir / f"bench-model-id-{n}.done"
    if marker.exists():
        return experiment_id
    if not internal.supports_direct_load(client):
        raise SystemExit("The bench needs a local SQL store (AGENTOPS_BACKEND=local).")
    rng = random.Random(11)  # a local RNG: never seed the global one (trace ids come from it)
    now_ns = time.time_ns()
    started = time.perf_counter()
    chunk = 50_000
    for first in range(0, n, chunk):
        count = min(chunk, n - first)
        internal.bulk_load_traces(client, list(_specs(experiment_id, rng, count, first, now_ns, days * 86400 * 10**9,
                                                      model_ids)), chunk_size=5000, workers=workers)
        print(f"  {first + count:,} traces written ({time.perf_counter() - started:.0f} s)", flush=True)
    analyze(store_uri or settings.tracking_uri)  # planner statistics, as the demo seed does
    elapsed = time.perf_counter() - started
    print(f"built {n:,} traces in {elapsed:.0f} s ({n / elapsed:,.0f} traces/s)", flush=True)
    marker.write_text(json.dumps({"traces": n, "seconds": round(elapsed, 1)}))
    return experiment_id


def summary_by_search(experiment_id: str, query, interval_seconds: int):
    """Per-version totals and per-version/bucket series from ``mlflow.search_traces`` + pandas.

    The version of a trace is found as the app finds it: its ``mlflow.modelId`` -> the registered
    version whose source is that LoggedModel.
    """
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    version_of = {v.source.removeprefix("models:/"): str(v.version)
                  for v in MlflowClient().search_model_versions(f"name='{AGENT}'")}

    frame = mlflow.search_traces(
        locations=[experiment_id], include_spans=False,
        filter_string=f"trace.timestamp_ms >= {query.start_ms} AND trace.timestamp_ms < {query.end_ms}",
    )
    usage = frame["trace_metadata"].map(lambda m: json.loads(m.get("mlflow.trace.tokenUsage", "null")) or {})
    cost = frame["trace_metadata"].map(lambda m: json.loads(m.get("mlflow.trace.cost", "null")) or {})
    flat = pd.DataFrame({
        "group": frame["trace_metadata"].map(lambda m: version_of.get(m.get("mlflow.modelId"))),
        "bucket": frame["request_time"] // (interval_seconds * 1000) * (interval_seconds * 1000),
        "error": frame["state"] == "ERROR",
        "latency": frame["execution_duration"].astype(float),
        "input_tokens": usage.map(lambda u: u.get("input_tokens")),
        "output_tokens": usage.map(lambda u: u.get("output_tokens", 0)),
        "cached_input_tokens": usage.map(lambda u: u.get("cache_read_input_tokens", 0)),
        "recorded_cost": cost.map(lambda c: c.get("total_cost", 0.0)),
    })
    flat = flat[flat["group"].isin(VERSIONS)]

    def summarize(keys):
        grouped = flat.groupby(keys)
        return pd.DataFrame({
            "requests": grouped.size(),
            "errors": grouped["error"].sum(),
            "p50_ms": grouped["latency"].quantile(0.5),
            "p95_ms": grouped["latency"].quantile(0.95),
            "p99_ms": grouped["latency"].quantile(0.99),
            "input_tokens": grouped["input_tokens"].sum(),
            "traces_with_tokens": grouped["input_tokens"].count(),
            "output_tokens": grouped["output_tokens"].sum(),
            "cached_input_tokens": grouped["cached_input_tokens"].sum(),
            "recorded_cost": grouped["recorded_cost"].sum(),
        })

    return len(frame), summarize(["group"]), summarize(["group", "bucket"])


def _agree(data, by_search) -> list[str]:
    """Differences between the service's summary and the pandas one (empty when they agree)."""
    import math

    from services._mlflow_internal import rollups

    def tolerance(column: str) -> float:
        # Roll-ups keep latency as a sketch: percentiles within its stated bound; everything else exact.
        return rollups.ALPHA if data.aggregation_path == "rollup" and column.endswith("_ms") else 1e-9

    problems = []
    _, totals, series = by_search
    service = data.totals.set_index("group")
    for group, row in totals.iterrows():
        for column, value in row.items():
            mine = float(service.loc[group, column])
            if not math.isclose(mine, float(value), rel_tol=tolerance(column), abs_tol=1e-9):
                problems.append(f"version {group} {column}: service {mine} vs pandas {value}")
    buckets = data.series.assign(bucket=data.series["bucket"].map(lambda b: int(b.timestamp() * 1000)))
    buckets = buckets[buckets["requests"] > 0].set_index(["group", "bucket"])
    if len(buckets) != len(series):
        problems.append(f"{len(buckets)} non-empty series rows vs {len(series)} in pandas")
    for key, row in series.iterrows():
        for column in ("requests", "errors", "p95_ms", "input_tokens", "recorded_cost"):
            mine = float(buckets.loc[key, column]) if key in buckets.index else math.nan
            if not math.isclose(mine, float(row[column]), rel_tol=tolerance(column), abs_tol=1e-9):
                problems.append(f"series {key} {column}: service {mine} vs pandas {row[column]}")
    return problems


# --- measuring -------------------------------------------------------------------------------------


def _timed(fn):
    """Result, seconds and peak Python memory: timed without tracemalloc (it slows Python code
    several-fold), then run again under it."""
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, elapsed, peak


def _seconds(fn) -> tuple[float, float]:
    """Wall and CPU seconds of this process (CPU counts every thread: SQLite runs in two)."""
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def _setup(args):
    os.environ["AGENTOPS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    from services import monitoring as mon
    from services import pricing
    from services._clients import configure_mlflow

    served = Served(args)
    experiment_id = _build(served.local, args.traces, args.days, served.store_uri, args.load_workers)
    settings = configure_mlflow(served.app)
    end = datetime.now(tz=timezone.utc) + timedelta(minutes=1)
    query = mon.TraceQuery((experiment_id,), end - timedelta(days=args.days + 1), end, agent=AGENT)
    prices = pricing.DEFAULT_PRICES | {"acme-llm": pricing.ModelPrice(1.0, 4.0, 0.25)}

    def summary(app_settings=settings, which=query):
        return mon.monitoring_data(which, mon.Split.VERSION, VERSIONS, prices=prices, settings=app_settings)

    summary.served = served
    _SERVED[:] = [served]
    return settings, experiment_id, query, summary


def _rss_child(args, what: str) -> dict[str, int]:
    """Memory of a fresh process that opens the store and then does ``what``."""
    command = [sys.executable, "-m", "bench.bench_monitoring", "--traces", str(args.traces), "--days", str(args.days),
               "--data-dir", args.data_dir, "--store", args.store, "--rss-of", what]
    if args.store != "embedded":
        command += ["--reuse-server", _SERVED[0].url]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1]).stdout
    return json.loads(out.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _rss_only(args) -> int:
    """Run one piece of work and print its memory as JSON: the peak of anonymous RSS (heap,
    sampled every 5 ms; memory-mapped database pages are page cache, not counted) and VmHWM,
    the peak of all RSS including mapped file pages. Both belong to this address space, so
    unlike ``ru_maxrss`` they do not inherit the parent's high-water mark across fork + exec."""
    import threading

    settings, experiment_id, query, summary = _setup(args)
    from services import _mlflow_internal as internal
    from services import monitoring as mon
    from services._clients import mlflow_client

    internal.query_trace_metrics(mlflow_client(settings), [experiment_id], "trace_count", ["COUNT"])  # store open
    peak, done = [_status_kib("RssAnon")], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _status_kib("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.rss_of == "summary":
        summary()
    elif args.rss_of == "search":
        started = time.perf_counter()
        by_search = summary_by_search(experiment_id, query, mon.choose_interval(query.start, query.end))
        extra = {"seconds": time.perf_counter() - started, "rows": by_search[0]}
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _status_kib("RssAnon"))
    if args.rss_of == "search":  # after the peak: the service summary it is checked against
        extra["problems"] = _agree(summary(), by_search)
    print(json.dumps({"anon": peak[0] * 1024, "hwm": _status_kib("VmHWM") * 1024, **(locals().get("extra") or {})}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--data-dir", default="/tmp/agentops-bench")
    parser.add_argument("--skip-search", action="store_true", help="do not time the mlflow.search_traces baseline")
    parser.add_argument("--skip-rss", action="store_true", help="do not measure peak RSS in child processes")
    parser.add_argument("--one-search", action="store_true",
                        help="run the search baseline once, in the fresh process that measures its memory")
    parser.add_argument("--search-fraction", type=float, default=0.0, metavar="F",
                        help="time the search baseline over only the last F of the window (0 < F < 1; for 1M "
                             "stores, where the whole search takes hours) and extrapolate to the whole window")
    parser.add_argument("--skip-api", action="store_true", help="server stores: do not time the query_trace_metrics path")
    parser.add_argument("--store", choices=STORES, default="embedded",
                        help="embedded SQLite (default), or the store behind a real `mlflow server` on SQLite or on "
                             "a throwaway PostgreSQL in the data folder; the app then uses the mlflow backend with "
                             "AGENTOPS_STORE_DB_URL, and the query_trace_metrics path is timed too")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--warm-runs", type=int, default=5, help="warm summaries timed (the best is reported)")
    parser.add_argument("--load-workers", type=int, default=os.cpu_count() or 1,
                        help="processes building the rows of the bulk load (default: one per CPU)")
    parser.add_argument("--reuse-server", help=argparse.SUPPRESS)
    parser.add_argument("--rss-of", choices=("baseline", "summary", "search"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_of:
        return _rss_only(args)

    settings, experiment_id, query, summary = _setup(args)
    import mlflow
    from mlflow import MlflowClient

    from services import _mlflow_internal as internal

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    print(f"store: {args.store}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before timing",
          flush=True)
    data, cold, summary_peak = _timed(summary)
    # How much of each warm run is the store-side aggregate itself (the rest: version -> model id
    # resolution through the registry, pandas).
    aggregate_s: list[float] = []
    aggregate = internal.aggregate_traces

    def timed_aggregate(*a, **k):
        started = time.perf_counter()
        try:
            return aggregate(*a, **k)
        finally:
            aggregate_s.append(time.perf_counter() - started)

    internal.aggregate_traces = timed_aggregate
    warm_runs = [_seconds(summary) for _ in range(args.warm_runs)]
    internal.aggregate_traces = aggregate
    warm, warm_cpu = min(w for w, _ in warm_runs), min(c for _, c in warm_runs)
    requests = int(data.totals["requests"].sum())
    print(f"monitoring summary ({data.aggregation_path}, {data.store_queries} store queries): {requests:,} traces, "
          f"{len(data.series)} series rows, cold {cold:.2f} s, warm {warm:.2f} s wall / {warm_cpu:.2f} s CPU "
          f"(runs {', '.join(f'{w:.2f}' for w, _ in warm_runs)}), peak Python memory {summary_peak / 2**20:.1f} MiB, "
          f"load average {os.getloadavg()[0]:.1f}; of which aggregate_traces {min(aggregate_s):.2f} s (best)",
          flush=True)

    if data.aggregation_path == "rollup":
        # The same summary from the direct statements (what the roll-ups replace), once.
        def direct_aggregate(*a, **k):
            return aggregate(*a, **k, use_rollups=False)

        internal.aggregate_traces = direct_aggregate
        direct_s = _seconds(summary)
        direct = summary()
        internal.aggregate_traces = aggregate
        import numpy as np

        same = direct.totals[["requests", "errors", "input_tokens", "output_tokens"]].equals(
            data.totals[["requests", "errors", "input_tokens", "output_tokens"]]) and bool(np.allclose(
                direct.totals["recorded_cost"], data.totals["recorded_cost"], rtol=1e-9, atol=1e-12))
        worst = float(((data.totals["p95_ms"] - direct.totals["p95_ms"]).abs() / direct.totals["p95_ms"]).max())
        print(f"same summary from the direct statements ({direct.aggregation_path}): {direct_s[0]:.2f} s wall / "
              f"{direct_s[1]:.2f} s CPU, load average {os.getloadavg()[0]:.1f}; counts, tokens and cost equal: {same}; "
              f"largest p95 difference {worst:.4%} (bound 1%)", flush=True)
        ok_rollup = same and worst <= 0.01
        from services._mlflow_internal import rollups

        every, rollups.VERIFY_SECONDS = rollups.VERIFY_SECONDS, 0
        verified = _seconds(summary)
        rollups.VERIFY_SECONDS = every
        print(f"summary with a verification of every closed bucket (late/changed traces; at most every "
              f"{every} s): {verified[0]:.2f} s wall / {verified[1]:.2f} s CPU, load average {os.getloadavg()[0]:.1f}",
              flush=True)
    else:
        ok_rollup = True

    # The store reads like any other: counts agree and a sampled trace loads with spans.
    counted = internal.query_trace_metrics(client, [experiment_id], "trace_count", ["COUNT"],
                                           start_time_ms=query.start_ms, end_time_ms=query.end_ms - 1)
    stored = int(counted[0].values["COUNT"]) if counted else 0
    sample = mlflow.search_traces(locations=[experiment_id], max_results=1, return_type="list")[0]
    trace = client.get_trace(sample.info.trace_id)
    print(f"checks: query_trace_metrics counts {stored:,}, service {requests:,}; a sampled trace has "
          f"{len(trace.data.spans)} spans, token usage {trace.info.token_usage}")
    ok = stored == requests == args.traces and len(trace.data.spans) >= 2 and ok_rollup

    if args.store != "embedded" and not args.skip_api:
        api_only = summary.served.app_api_only
        api_runs = [_seconds(lambda: summary(api_only)) for _ in range(2)]
        api = summary(api_only)
        print(f"same summary through the server's API only ({api.aggregation_path}, {api.store_queries} requests): "
              f"warm {min(w for w, _ in api_runs):.2f} s wall / {min(c for _, c in api_runs):.2f} s CPU here "
              f"(runs {', '.join(f'{w:.2f}' for w, _ in api_runs)}); totals equal: "
              f"{api.totals[['requests', 'errors', 'input_tokens']].equals(data.totals[['requests', 'errors', 'input_tokens']])}",
              flush=True)
    if args.one_search and not args.skip_search:
        # The baseline runs once, in a fresh process: time, peak RSS and agreement from there.
        base = _rss_child(args, "baseline")
        found = _rss_child(args, "search")
        mine = _rss_child(args, "summary")
        problems = found["problems"]
        for problem in problems[:10]:
            print("  DISAGREE", problem)
        ok = ok and found["rows"] == requests and not problems
        print(f"mlflow.search_traces (no spans) + pandas: {found['rows']:,} traces in {found['seconds']:.2f} s "
              f"(fresh process); summaries agree: {not problems}")
        print(f"ratio warm summary / search+pandas: {warm / found['seconds']:.4f} ({found['seconds'] / warm:.0f}x "
              f"faster); cold {cold / found['seconds']:.4f}")
        print(f"peak memory above a process that only opened the store (fresh process each): summary "
              f"{(mine['anon'] - base['anon']) / 2**20:.0f} MiB anonymous ({(mine['hwm'] - base['hwm']) / 2**20:.0f} MiB "
              f"VmHWM), search+pandas {(found['anon'] - base['anon']) / 2**20:.0f} MiB anonymous "
              f"({(found['hwm'] - base['hwm']) / 2**20:.0f} MiB VmHWM); idle process {base['anon'] / 2**20:.0f} MiB")
        args.skip_search = args.skip_rss = True
    if args.search_fraction and not args.skip_search:
        # The whole window would take hours: the baseline over its last fraction, checked against the
        # service's summary of that same narrower window, then scaled to the whole window's traces.
        import dataclasses

        narrow = dataclasses.replace(query, start=query.end - (query.end - query.start) * args.search_fraction)
        narrow_data = summary(which=narrow)
        started = time.perf_counter()
        by_search = summary_by_search(experiment_id, narrow, narrow_data.interval_seconds)
        searched = time.perf_counter() - started
        problems = _agree(narrow_data, by_search)
        for problem in problems[:10]:
            print("  DISAGREE", problem)
        ok = ok and by_search[0] == int(narrow_data.totals["requests"].sum()) and not problems
        whole = searched * requests / max(by_search[0], 1)
        print(f"mlflow.search_traces (no spans) + pandas over the last {args.search_fraction:.0%} of the window: "
              f"{by_search[0]:,} traces in {searched:.2f} s ({by_search[0] / searched:,.0f} traces/s), load average "
              f"{os.getloadavg()[0]:.1f}; summaries of that window agree: {not problems}")
        print(f"search+pandas over the whole window extrapolated linearly (an estimate, not a measurement): "
              f"{whole:,.0f} s; ratio warm summary / search+pandas ~{warm / whole:.6f} ({whole / warm:,.0f}x faster)")
        args.skip_search = True
    if not args.skip_search:
        by_search, searched, search_peak = _timed(lambda: summary_by_search(experiment_id, query, data.interval_seconds))
        rows = by_search[0]
        print(f"mlflow.search_traces (no spans) + pandas: {rows:,} traces in {searched:.2f} s, "
              f"peak Python memory {search_peak / 2**20:.1f} MiB")
        problems = _agree(data, by_search)
        for problem in problems[:10]:
            print("  DISAGREE", problem)
        ok = ok and rows == requests and not problems
        print(f"summaries agree: {not problems}")
        print(f"ratio warm summary / search+pandas: {warm / searched:.4f} ({searched / warm:.0f}x faster); "
              f"cold {cold / searched:.4f}; Python peak memory ratio {summary_peak / max(search_peak, 1):.4f}")
    if not args.skip_rss:
        base = _rss_child(args, "baseline")
        # With --skip-search (1M: the search would take hours) only the summary's peak is measured.
        mib = {what: {k: (v - base[k]) / 2**20 for k, v in _rss_child(args, what).items() if k in base}
               for what in (("summary",) if args.skip_search else ("summary", "search"))}
        searched_mib = (f"search+pandas {mib['search']['anon']:.0f} MiB anonymous ({mib['search']['hwm']:.0f} MiB)"
                        if "search" in mib else "search+pandas not run")
        print(f"peak memory above a process that only opened the store (fresh process each): "
              f"summary {mib['summary']['anon']:.0f} MiB anonymous ({mib['summary']['hwm']:.0f} MiB incl. mapped "
              f"database pages), {searched_mib}; idle process {base['anon'] / 2**20:.0f} MiB anonymous")
    print(f"warm summary under {TARGET_WARM_S:.0f} s: {warm < TARGET_WARM_S}; checks passed: {ok}")
    return 0 if ok and warm < TARGET_WARM_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
