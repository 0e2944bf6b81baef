"""Benchmark: evaluating N rows with the offline scorers through the app vs a bare evaluate call.

    .venv/bin/python -m bench.bench_evaluations --rows 200 --data-dir /tmp/agentops-bench-eval

Same process, same store, same rows, same in-process predict function and scorers. Times
``services.evaluations.evaluate_rows`` (progress counting, tags, first-row check skipped) plus
reading the per-row results back (``run_rows``), and reports them as a ratio against a bare
``mlflow.genai.evaluate`` inside ``mlflow.start_run``. Alternates the order to spread warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from pathlib import Path


def _rows(n: int) -> list[dict]:
    return [
        {"inputs": {"question": f"What is the status of order A{1000 + i}?"},
         "expectations": {"expected_facts": [f"A{1000 + i}"], "expected_response": f"Order A{1000 + i} has shipped."}}
        for i in range(n)
    ]


def predict_fn(question: str) -> str:
    return f"Order {question.split()[-1].rstrip('?')} has shipped."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--data-dir", default="/tmp/agentops-bench-eval")
    args = parser.parse_args(argv)
    os.environ["AGENTOPS_DATA_DIR"] = str(Path(args.data_dir))
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")

    import logging

    import mlflow

    from services import evaluations, scorers
    from services._clients import configure_mlflow, get_or_create_experiment, mlflow_client

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    settings = configure_mlflow()
    experiment_id = get_or_create_experiment(mlflow_client(settings), "bench-evaluations", settings)
    rows = _rows(args.rows)
    names = ["expected_facts", "expected_answer", "forbidden_content", "latency_budget", "cost_budget"]
    built = scorers.build_scorers(names)

    def bare() -> float:
        started = time.perf_counter()
        with mlflow.start_run(experiment_id=experiment_id, run_name="bare"):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                mlflow.genai.evaluate(data=rows, scorers=built, predict_fn=predict_fn)
        mlflow.clear_active_model()
        return time.perf_counter() - started

    def app() -> float:
        started = time.perf_counter()
        run_id = evaluations.evaluate_rows(rows, predict_fn, built, experiment_id=experiment_id,
                                           run_name="app", tags={"agentops.agent": "bench"}, progress=lambda *_: None)
        frame, _ = evaluations.run_rows(run_id, settings)
        assert len(frame) == len(rows), f"{len(frame)} of {len(rows)} rows stored"
        return time.perf_counter() - started

    bare_times, app_times = [], []
    for i in range(args.repeat):
        order = (bare, app) if i % 2 == 0 else (app, bare)
        for fn in order:
            (bare_times if fn is bare else app_times).append(fn())
    b, a = min(bare_times), min(app_times)
    print(f"rows={args.rows} scorers={len(names)} bare evaluate: {b:.1f} s  app (evaluate + read back): {a:.1f} s  ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
