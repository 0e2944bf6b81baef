"""Benchmark: live scoring (MLflow's online processor run by the worker) vs ``mlflow.genai.evaluate``.

    .venv/bin/python -m bench.bench_live_scoring --traces 200 --data-dir /tmp/agentops-bench-live

Same process, same store, same traces, same scorer. For each live code scorer, a fresh experiment
gets ``--traces`` finished traces (written in bulk); then

* **live**: ``services._mlflow_internal.online_scoring.score_new_traces`` in batches of
  ``--batch-size`` until the checkpoint has passed every trace (what one worker pass does per
  experiment, rate limiter off, ``--threads`` threads);
* **evaluate**: ``mlflow.genai.evaluate(data=<the same traces>, scorers=[same scorer])`` inside a
  run (``MLFLOW_GENAI_EVAL_MAX_WORKERS`` = ``--threads``).

Reports traces scored per second for each and the ratio live / evaluate.

With ``--gateway N``, also the gateway's traced throughput with live scoring on vs off, same run,
same load (``bench.bench_gateway``'s setup and driver: N requests from ``--clients`` clients, the
throughput counted until every trace is confirmed stored). The agent has live scoring configured
(the three live code scorers at sample rate 1); *off* is the gateway alone, *on* is the gateway with
the worker (``python -m agentops worker``, its default limits: ``--max-rate`` 20 scorer calls/s,
``--threads`` 2; ``--interval 1 --completion-buffer 0`` so it scores while the load runs) started
beforehand and caught up. ``--rounds`` alternates off/on to spread drift in the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scorers", default="latency_budget,forbidden_content,cost_budget")
    parser.add_argument("--data-dir", default="/tmp/agentops-bench-live")
    parser.add_argument("--gateway", type=int, default=0, metavar="N",
                        help="also measure the gateway's traced throughput with live scoring on vs off (N requests)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.gateway:
        # Before anything else in this process configures MLflow on the scorer bench's data dir.
        gateway_on_off(args)
        if not args.scorers:
            return 0
    os.environ["AGENTOPS_DATA_DIR"] = str(Path(args.data_dir))
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    os.environ["MLFLOW_SERVER_ENABLE_CUSTOM_SCORERS"] = "true"
    os.environ["MLFLOW_ONLINE_SCORING_DEFAULT_TRACE_COMPLETION_BUFFER_SECONDS"] = "0"
    os.environ["MLFLOW_GENAI_EVAL_SCORER_RATE_LIMIT"] = "0"
    os.environ["MLFLOW_ONLINE_SCORING_MAX_WORKER_THREADS"] = str(args.threads)
    os.environ["MLFLOW_GENAI_EVAL_MAX_WORKERS"] = str(args.threads)

    import mlflow

    from services import _mlflow_internal as internal
    from services._clients import configure_mlflow, mlflow_client
    from services._mlflow_internal import online_scoring
    from services.live_scoring_scorers import live_name, serialized_code_scorer
    from services.scorers import ScorerOptions, build_scorers

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    settings = configure_mlflow()
    client = mlflow_client(settings)
    options = {"latency_budget": {"latency_budget_ms": 2000.0}, "cost_budget": {"cost_budget_usd": 0.01},
               "forbidden_content": {"forbidden_terms": ["refund"]}}
    print(f"{'scorer':<20} {'traces':>6} {'live s':>8} {'live tr/s':>10} {'evaluate s':>11} {'eval tr/s':>10} {'ratio':>7}")
    for name in args.scorers.split(","):
        experiment_id = client.create_experiment(f"bench-live-{name}-{time.time_ns()}",
                                                 artifact_location=str(settings.artifact_root / "bench-live"))
        now_ns = time.time_ns() - 5_000_000_000
        specs = []
        for i in range(args.traces):
            start = now_ns - (args.traces - i) * 1_000_000_000
            root = internal.SpanSpec("agent", "AGENT", start, start + 150_000_000,
                                     inputs={"input": [{"role": "user", "content": f"question {i}"}]},
                                     outputs={"output": [{"type": "message", "content": [
                                         {"type": "output_text", "text": f"Answer {i}: refunds take 5 days."}]}]})
            specs.append(internal.TraceSpec(experiment_id, root, metadata={"mlflow.modelId": "m-bench"}))
        internal.log_traces(client, specs)

        scorer = online_scoring.LiveScorer(live_name(name), serialized_code_scorer(name, options.get(name, {})), 1.0)
        started = time.perf_counter()
        scored = 0
        while True:
            report = online_scoring.score_new_traces(client, experiment_id, [scorer], batch_size=args.batch_size)
            scored += report.traces_scored
            if report.traces_scored == 0:
                break
        live_s = time.perf_counter() - started

        traces = mlflow.search_traces(locations=[experiment_id], max_results=args.traces + 10)
        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in options.get(name, {}).items()}
        built = build_scorers([name], ScorerOptions(**opts))
        started = time.perf_counter()
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"bench-evaluate-{name}"):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mlflow.genai.evaluate(data=traces, scorers=built)
        eval_s = time.perf_counter() - started
        live_tps, eval_tps = scored / live_s, len(traces) / eval_s
        assert scored == args.traces == len(traces), (scored, len(traces))
        print(f"{name:<20} {scored:>6} {live_s:>8.2f} {live_tps:>10.1f} {eval_s:>11.2f} {eval_tps:>10.1f} "
              f"{live_tps / eval_tps:>7.2f}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


def _worker_status(data_dir: Path) -> dict:
    import json

    try:
        return json.loads((data_dir / "live_scoring_status.json").read_text())
    except (OSError, ValueError):
        return {}


def gateway_on_off(args: argparse.Namespace) -> None:
    """The gateway's sustained traced throughput with the live-scoring worker running vs not."""
    import json
    import signal
    import subprocess
    import sys
    import tempfile

    from bench.bench_gateway import _setup, _through_gateway
    from services import live_scoring
    from services.identity import Identity, IdentitySource

    data_dir = Path(tempfile.mkdtemp(prefix="agentops-bench-live-gateway-"))
    os.environ["AGENTOPS_DATA_DIR"] = str(data_dir)
    (data_dir / "roles.json").write_text(json.dumps({"users": {"bench@example.com": "operator"}, "default": "viewer"}))
    settings, experiment_id = _setup(str(data_dir))
    config = live_scoring.LiveScoringConfig(scorers=("latency_budget", "forbidden_content", "cost_budget"),
                                            sample_rate=1.0, forbidden_terms=("refund",))
    live_scoring.save_config("bench-agent", config, identity=Identity("bench@example.com", "bench", IdentitySource.OS_USER),
                             settings=settings)
    env = {**os.environ, "AGENTOPS_DATA_DIR": str(data_dir), "MLFLOW_MODEL_CATALOG_URI": ""}
    rows = []
    for round_no in range(1, args.rounds + 1):
        for mode in ("off", "on"):
            worker = None
            if mode == "on":
                worker = subprocess.Popen([sys.executable, "-m", "agentops", "worker", "--interval", "1",
                                           "--completion-buffer", "0"], env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=(data_dir / "worker.log").open("ab"))
                # Started and caught up with the traces of the earlier segments: a pass that scored nothing.
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    status = _worker_status(data_dir)
                    if status.get("pid") == worker.pid and status.get("traces_scored_last") == 0:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"the worker exited ({worker.returncode}); see {data_dir / 'worker.log'}")
                    time.sleep(0.5)
                else:
                    raise RuntimeError("the worker did not catch up within 600 s")
            before = _worker_status(data_dir).get("traces_scored_total", 0)
            load = os.getloadavg()[0]
            try:
                result = _through_gateway(settings, experiment_id, args.gateway, args.clients, 20)
            finally:
                scored = _worker_status(data_dir).get("traces_scored_total", 0) - before
                if worker is not None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    worker.wait(timeout=120)
            rows.append((round_no, mode, result, scored, load))
            print(f"round {round_no} live scoring {mode:<3}: {result['rps']:6.1f} rps served, "
                  f"{result['traced_rps']:6.1f} traced rps, failures {result['failures']}, "
                  f"traces {result['traces']}, worker scored {scored} traces meanwhile, load {load:.2f}", flush=True)
    mean = {mode: sum(r[2]["traced_rps"] for r in rows if r[1] == mode) / args.rounds for mode in ("off", "on")}
    print(f"gateway traced throughput, mean of {args.rounds} rounds: off {mean['off']:.1f} rps, on {mean['on']:.1f} rps, "
          f"on / off = {mean['on'] / mean['off']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
