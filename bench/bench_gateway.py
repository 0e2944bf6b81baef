"""Benchmark: the local gateway's traced throughput against calling the loaded model's ``predict``.

    .venv/bin/python -m bench.bench_gateway --requests 2000 --clients 8 [--compare-exporter 300]
    .venv/bin/python -m bench.bench_gateway --store server-postgres --requests 1000 --clients 8 --compare-exporter 300

Registers the demo support agent in a scratch store, then in the same run measures:

* baseline: ``loaded.predict(request)`` in-process, sequentially, tracing on (MLflow's default
  export, not waited for);
* added latency: the same request over HTTP on loopback to a real uvicorn gateway
  (``gateway.runner``), one client, one request at a time, so no queueing is in the number;
* throughput: ``--requests`` from ``--clients`` concurrent clients, traces batched into the
  store (``gateway.trace_writer`` + ``gateway.trace_process``): on the embedded store with its
  bulk path, with ``--store server-postgres`` through the ``mlflow server`` (one ``start_trace``
  per trace and one OTLP span request per batch, ``services._mlflow_internal.rest_trace_batch``);
* sustained traced throughput: requests divided by the time until every produced trace is
  confirmed stored (the gateway's ledger; the store is also counted by search, ``in_store``);
* with ``--compare-exporter N``: the same for N requests through a gateway that leaves traces
  to MLflow's exporter (its fallback when batching is not possible), for the improvement in the
  same run.

The direct baseline runs ``--direct-requests`` predictions (default: ``--requests``, at most 500:
the rate is steady by then, and on a remote store each baseline trace also goes through MLflow's
exporter before the gateway is measured). The report carries the load average before and after.

Reports added latency (p50/p95, gateway minus direct ``predict``) and throughput as ratios
against the baseline, and traces produced / recorded / lost / in the store (lost must be 0).

Measured 2026-11-23 (2 cores shared with other jobs, load average 3.5-7; 2,000 requests from
8 clients, ``--compare-exporter 300``), two runs::

                                        run 1 (load ~7)   run 2 (load ~3.5)
    direct predict            p50/p95     4.3 / 16.8 ms      5.9 / 15.5 ms     130 / 135 rps
    gateway, 1 client         p50/p95    11.7 / 15.8 ms      6.2 / 27.5 ms
    added latency             p50/p95    +7.4 / -1.0 ms     +0.3 / +12.1 ms
    gateway, 8 clients        responses   105 rps (0.81x)     97 rps (0.72x)
    sustained traced throughput           57 rps (0.44x)      65 rps (0.48x)   every trace stored:
                                                                               2000/2000, lost 0
    same run, MLflow's exporter path      11.9 rps            13.6 rps         -> batched is 4.8x

Before batching the gateway reached ~15 traced rps on a quiet machine (0.06x direct predict);
on the loaded machine above the old code measured 2.9 rps and lost 46 of 200 traces (it rebuilt
MLflow's tracer provider on every request, dropping spans of concurrent requests).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

AGENT_FILE = Path(__file__).resolve().parents[1] / "demo" / "agents" / "support_agent.py"
REQUEST = {"input": [{"role": "user", "content": "How do I reset my password?"}]}
ENDPOINT = "bench"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _serve_on_postgres(data_dir: str) -> dict[str, str]:
    """A throwaway PostgreSQL and a real ``mlflow server`` on it (both stopped at exit); the app's
    environment for the ``mlflow`` backend on that server."""
    import atexit

    from tests.harness.mlflow_server import free_port, start_mlflow_server, stop_mlflow_server
    from tests.harness.postgres import PostgresCluster

    root = Path(data_dir) / "postgres"
    root.mkdir(parents=True, exist_ok=True)
    cluster = PostgresCluster(root)
    cluster.start()
    atexit.register(cluster.stop)
    store_uri = cluster.create_database("mlflow")
    port = free_port()
    log = (Path(data_dir) / "mlflow-server.log").open("ab")
    server = start_mlflow_server(port, Path(data_dir) / "server", backend_store_uri=store_uri, workers=2,
                                 env={"MLFLOW_MODEL_CATALOG_URI": ""}, log=log, timeout_s=300)
    atexit.register(stop_mlflow_server, server)
    return {"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": f"http://127.0.0.1:{port}"}


def _setup(data_dir: str, env: dict[str, str] | None = None) -> tuple[Any, str]:
    import mlflow

    from services import registry, serving
    from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
    from services.settings import load_settings

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": data_dir, **(env or {})}))
    client = mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, "bench-gateway", settings)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pyfunc.log_model(name="agent", python_model=str(AGENT_FILE), registered_model_name="bench-agent",
                                model_config={"strategy": "hybrid", "llm_model": "gpt-4o-mini"}, pip_requirements=["mlflow"])
    client.set_registered_model_tag("bench-agent", registry.EXPERIMENT_TAG, experiment_id)
    serving.save_local_endpoint(serving.Endpoint(
        ENDPOINT, (serving.ServedVersion("bench-agent_1", "bench-agent", "1"),),
        (serving.TrafficRoute("bench-agent_1", 100),), serving.EndpointState.READY), settings)
    return settings, experiment_id


def _direct(requests: int, experiment_id: str) -> dict[str, Any]:
    import mlflow

    mlflow.set_experiment(experiment_id=experiment_id)
    loaded = mlflow.pyfunc.load_model("models:/bench-agent/1")
    loaded.predict(REQUEST)
    latencies = []
    started = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        loaded.predict(REQUEST)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    mlflow.flush_trace_async_logging()
    return {"latencies": latencies, "rps": requests / elapsed}


def _through_gateway(settings: Any, experiment_id: str, requests: int, clients: int, latency_requests: int,
                     **options: Any) -> dict[str, Any]:
    import httpx

    from gateway.runner import RunningGateway

    path = f"/serving-endpoints/{ENDPOINT}/invocations"
    with RunningGateway(settings, **options) as running:
        gateway = running.gateway
        with httpx.Client(base_url=running.url, timeout=120) as http:
            for _ in range(5):  # warm: load the model, open the connection
                http.post(path, json=REQUEST)
            # Added latency: one client, one request at a time, so no queueing in the number.
            single = []
            for _ in range(latency_requests):
                t0 = time.perf_counter()
                http.post(path, json=REQUEST)
                single.append(time.perf_counter() - t0)
        before = gateway.drain(600)
        in_store_before = _store_count(settings, experiment_id)

        latencies: list[float] = []
        failures = 0
        lock = threading.Lock()

        def worker(count: int) -> None:
            nonlocal failures
            with httpx.Client(base_url=running.url, timeout=120) as http:
                for _ in range(count):
                    t0 = time.perf_counter()
                    response = http.post(path, json=REQUEST)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        failures += response.status_code != 200

        per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n,)) for n in per_client]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        served_elapsed = time.perf_counter() - started
        after = gateway.drain(900)
        traced_elapsed = time.perf_counter() - started
        writer = gateway.stats()["trace_writer"]
    return {
        "single_client_latencies": single,
        "latencies": latencies,
        "failures": failures,
        "rps": requests / served_elapsed,
        "traced_rps": requests / traced_elapsed,
        "traces": {
            "produced": after.produced - before.produced,
            "recorded": after.recorded - before.recorded,
            "pending": after.pending,
            "lost": after.lost,
            "in_store": _store_count(settings, experiment_id) - in_store_before,
        },
        "writer": writer,
    }


def _store_count(settings: Any, experiment_id: str) -> int:
    from services._clients import mlflow_client

    client = mlflow_client(settings)
    total, token = 0, None
    while True:
        page = client.search_traces(locations=[experiment_id], filter_string=f"tag.`agentops.endpoint` = '{ENDPOINT}'",
                                    max_results=500, include_spans=False, page_token=token)
        total += len(page)
        token = page.token
        if not token:
            return total


def _ms(values: list[float], q: float) -> float:
    return round(_percentile(values, q) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--latency-requests", type=int, default=200, help="sequential requests for added latency")
    parser.add_argument("--direct-requests", type=int, default=None,
                        help="sequential predictions for the baseline (default: --requests, at most 500)")
    parser.add_argument("--compare-exporter", type=int, default=0, metavar="N",
                        help="also send N requests through a gateway using MLflow's exporter (slow path)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--store", choices=("embedded", "server-postgres"), default="embedded",
                        help="the embedded SQLite store (default) or a real `mlflow server` on a throwaway PostgreSQL "
                             "(the app on the mlflow backend; traces written in batches through the server's REST API)")
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="agentops-bench-gateway-")
    env = _serve_on_postgres(data_dir) if args.store == "server-postgres" else {}
    settings, experiment_id = _setup(data_dir, env)
    load_before = [round(x, 2) for x in os.getloadavg()]
    direct_requests = args.direct_requests or max(args.latency_requests, min(args.requests, 500))
    direct = _direct(direct_requests, experiment_id)
    batched = _through_gateway(settings, experiment_id, args.requests, args.clients, args.latency_requests)

    d50, d95 = _ms(direct["latencies"], 0.5), _ms(direct["latencies"], 0.95)
    s50, s95 = _ms(batched["single_client_latencies"], 0.5), _ms(batched["single_client_latencies"], 0.95)
    report: dict[str, Any] = {
        "store": args.store,
        "requests": args.requests,
        "clients": args.clients,
        "failures": batched["failures"],
        "direct_predict": {"requests": direct_requests, "p50_ms": d50, "p95_ms": d95,
                           "throughput_rps": round(direct["rps"], 1)},
        "gateway_one_client": {"p50_ms": s50, "p95_ms": s95},
        "gateway_added_latency_ms": {"p50": round(s50 - d50, 2), "p95": round(s95 - d95, 2)},
        f"gateway_{args.clients}_clients": {
            "p50_ms": _ms(batched["latencies"], 0.5), "p95_ms": _ms(batched["latencies"], 0.95),
            "throughput_rps": round(batched["rps"], 1),
        },
        "sustained_traced_throughput_rps": round(batched["traced_rps"], 1),
        "traces": batched["traces"],
        "trace_writer": batched["writer"],
        "ratios": {
            "gateway_one_client_p50_over_direct_p50": round(s50 / d50, 2),
            "gateway_throughput_over_direct": round(batched["rps"] / direct["rps"], 3),
            "traced_throughput_over_direct": round(batched["traced_rps"] / direct["rps"], 3),
        },
    }
    if args.compare_exporter:
        exporter = _through_gateway(settings, experiment_id, args.compare_exporter, args.clients,
                                    min(50, args.latency_requests), batch_traces=False)
        report["mlflow_exporter_path"] = {
            "requests": args.compare_exporter,
            "failures": exporter["failures"],
            "one_client_p50_ms": _ms(exporter["single_client_latencies"], 0.5),
            "throughput_rps": round(exporter["rps"], 1),
            "sustained_traced_throughput_rps": round(exporter["traced_rps"], 1),
            "traces": exporter["traces"],
        }
        report["ratios"]["batched_over_exporter_traced_throughput"] = round(
            batched["traced_rps"] / exporter["traced_rps"], 2)
    report["load_average"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
