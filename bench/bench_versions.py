"""Benchmark: the Versions page's reads on an agent with N registered versions.

    .venv/bin/python -m bench.bench_versions --versions 500 --data-dir /tmp/agentops-bench-versions

Builds the agent once (LoggedModels with params, versions with git tags, one evaluation run per
version; reused when the folder already holds it), then times ``versions.list_versions`` (the
whole listing the page caches), ``version_detail``, ``plan_promotion`` and one ``promote``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

AGENT = "bench-agent"


def _build(settings, n: int) -> None:
    from mlflow import MlflowClient

    from services import registry
    from services._clients import get_or_create_experiment

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    if client.search_registered_models(filter_string=f"name='{AGENT}'"):
        return
    experiment_id = get_or_create_experiment(client, f"agentops-{AGENT}", settings)
    client.create_registered_model(AGENT, tags={registry.EXPERIMENT_TAG: experiment_id})
    started = time.perf_counter()
    for i in range(1, n + 1):
        model = client.create_logged_model(experiment_id, name="agent",
                                           params={"temperature": f"{i % 10 / 10}", "build": str(i)})
        client.create_model_version(AGENT, source=f"models:/{model.model_id}", model_id=model.model_id,
                                    tags={registry.GIT_COMMIT_TAG: f"{i:040x}"})
        run = client.create_run(experiment_id, run_name=f"eval v{i}", tags={
            "mlflow.runType": "genai_evaluate", "agentops.agent": AGENT, "agentops.version": str(i),
            "agentops.dataset": "bench-golden"})
        client.log_metric(run.info.run_id, "expected_facts/mean", 0.5 + (i % 50) / 100)
        client.set_terminated(run.info.run_id)
        if i % 100 == 0:
            print(f"  {i} versions ({time.perf_counter() - started:.0f} s)", flush=True)
    client.set_registered_model_alias(AGENT, "champion", "1")


def _timed(label: str, fn):
    started = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - started:.2f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=500)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/agentops-bench-versions"))
    args = parser.parse_args(argv)
    os.environ["AGENTOPS_DATA_DIR"] = str(args.data_dir)

    from services import releases, versions
    from services.promotion import PromotionRequest, RollbackRequest
    from services._clients import configure_mlflow
    from services.identity import Identity, IdentitySource
    from services.settings import load_settings

    settings = configure_mlflow(load_settings())
    _timed(f"build {args.versions} versions", lambda: _build(settings, args.versions))
    frame = _timed("list_versions (all rows, what the page caches)", lambda: versions.list_versions(AGENT, settings))
    print(f"  {len(frame)} versions, {frame['metrics'].map(bool).sum()} with evaluations, "
          f"{frame['params'].map(bool).sum()} with params")
    _timed("version_detail", lambda: versions.version_detail(AGENT, str(len(frame)), settings))
    _timed("plan_promotion", lambda: releases.plan_promotion(AGENT, "champion", "2", settings))
    who = Identity("bench", "bench", IdentitySource.OS_USER)
    _timed("promote", lambda: releases.promote(PromotionRequest(AGENT, "champion", "2"), who, settings=settings))
    _timed("rollback", lambda: releases.rollback(RollbackRequest(AGENT, "champion"), who, settings=settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
