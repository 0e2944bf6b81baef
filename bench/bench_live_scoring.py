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
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
