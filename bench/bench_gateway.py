"""Benchmark: the local gateway against calling the loaded model's ``predict`` directly.

    .venv/bin/python -m bench.bench_gateway --requests 300 --clients 4

Registers the demo support agent in a scratch store, then in the same run measures:

* baseline: ``loaded.predict(request)`` in-process, sequentially (tracing on, as in serving);
* gateway: the same requests over HTTP on loopback to a real uvicorn gateway, from N clients;
* sustained traced throughput: requests until every produced trace is confirmed in the store.

Reports the gateway's added latency and its throughput as ratios against the baseline, and
how many traces were produced, recorded and lost (lost must be 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

AGENT_FILE = Path(__file__).resolve().parents[1] / "demo" / "agents" / "support_agent.py"
REQUEST = {"input": [{"role": "user", "content": "How do I reset my password?"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    import httpx
    import mlflow

    from services import registry, serving
    from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client
    from services.settings import load_settings
    from tests.gateway.conftest import RunningGateway

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="agentops-bench-gateway-")
    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": data_dir}))
    client = mlflow_client(settings)
    experiment_id = get_or_create_experiment(client, "bench-gateway", settings)
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.pyfunc.log_model(name="agent", python_model=str(AGENT_FILE), registered_model_name="bench-agent",
                                model_config={"strategy": "hybrid", "llm_model": "gpt-4o-mini"}, pip_requirements=["mlflow"])
    client.set_registered_model_tag("bench-agent", registry.EXPERIMENT_TAG, experiment_id)
    serving.save_local_endpoint(serving.Endpoint(
        "bench", (serving.ServedVersion("bench-agent_1", "bench-agent", "1"),),
        (serving.TrafficRoute("bench-agent_1", 100),), serving.EndpointState.READY), settings)

    mlflow.set_experiment(experiment_id=experiment_id)
    loaded = mlflow.pyfunc.load_model("models:/bench-agent/1")
    loaded.predict(REQUEST)
    direct = []
    started = time.perf_counter()
    for _ in range(args.requests):
        t0 = time.perf_counter()
        loaded.predict(REQUEST)
        direct.append(time.perf_counter() - t0)
    direct_elapsed = time.perf_counter() - started
    mlflow.flush_trace_async_logging()

    running = RunningGateway(settings)
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def worker(count: int) -> None:
        nonlocal failures
        with httpx.Client(base_url=running.url, timeout=120) as http:
            for _ in range(count):
                t0 = time.perf_counter()
                response = http.post("/serving-endpoints/bench/invocations", json=REQUEST)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    failures += response.status_code != 200

    with httpx.Client(base_url=running.url, timeout=120) as http:  # warm: load the model once
        http.post("/serving-endpoints/bench/invocations", json=REQUEST)
    running.gateway.ledger.drain(60)
    per_client = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in per_client]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served_elapsed = time.perf_counter() - started
    ledger = running.gateway.ledger.drain(600)
    traced_elapsed = time.perf_counter() - started
    running.stop()

    direct_p50 = statistics.median(direct) * 1000
    gateway_p50 = statistics.median(latencies) * 1000
    report = {
        "requests": args.requests,
        "clients": args.clients,
        "failures": failures,
        "direct_predict": {"p50_ms": round(direct_p50, 2), "throughput_rps": round(args.requests / direct_elapsed, 1)},
        "gateway": {"p50_ms": round(gateway_p50, 2), "throughput_rps": round(args.requests / served_elapsed, 1)},
        "sustained_traced_throughput_rps": round(args.requests / traced_elapsed, 1),
        "traces": {"produced": ledger.produced - 1, "recorded": ledger.recorded - 1, "pending": ledger.pending, "lost": ledger.lost},
        "ratios": {
            "gateway_p50_over_direct_p50": round(gateway_p50 / direct_p50, 2),
            "gateway_throughput_over_direct": round((args.requests / served_elapsed) / (args.requests / direct_elapsed), 2),
            "traced_throughput_over_direct": round((args.requests / traced_elapsed) / (args.requests / direct_elapsed), 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
