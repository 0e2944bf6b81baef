"""Grow the PostgreSQL bench store N-fold inside PostgreSQL (the 1,000,000-trace store in minutes).

    .venv/bin/python -m bench.replicate_pg --data-dir /tmp/b-pg --from 100000 --times 10

Copies every trace of the ``--from`` store ``--times - 1`` more times with fresh request ids
(``'tr-' || md5(request_id || copy)``), the same timestamps, tags, metadata and spans, in
``INSERT ... SELECT`` statements, then writes the bench's marker for the new size and drops the
app's roll-ups (``agentops`` schema) so the next run builds them from scratch. Span ``content``
keeps the original trace's ids (aggregates do not read it; a copied trace loads with the original's
span JSON). The loader itself (``bulk_load_traces``, COPY on PostgreSQL) is what writes rows
identical to MLflow's; this only multiplies them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--from", dest="source", type=int, default=100_000)
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args(argv)
    import psycopg

    from tests.harness.postgres import SUPERUSER, PostgresCluster

    root = Path(args.data_dir).resolve()
    if not (root / f"bench-model-id-{args.source}.done").exists():
        raise SystemExit(f"No {args.source}-trace bench store in {root}: run bench.bench_monitoring first.")
    cluster = PostgresCluster(root / "postgres")
    started_here = not cluster.running()
    if started_here:
        cluster.start(settings={"shared_buffers": "1GB", "work_mem": "64MB", "max_wal_size": "4GB"})
    try:
        started = time.perf_counter()
        with psycopg.connect(host="127.0.0.1", port=cluster.port, user=SUPERUSER, dbname="mlflow",
                             autocommit=True) as connection:
            count = connection.execute("SELECT count(*) FROM trace_info").fetchone()[0]
            if count != args.source:
                raise SystemExit(f"The store holds {count:,} traces, not {args.source:,}; nothing copied.")
            connection.execute("CREATE TEMP TABLE originals AS SELECT request_id FROM trace_info")
            connection.execute("ALTER TABLE originals ADD PRIMARY KEY (request_id)")
            for k in range(1, args.times):
                s = f"'{k}'"
                new = f"'tr-' || md5(request_id || {s})"
                with connection.transaction():
                    connection.execute(
                        "INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, execution_time_ms, status, "
                        "client_request_id, request_preview, response_preview, db_payload_generation, trace_name, "
                        "session_id, input_tokens, output_tokens, total_tokens, cache_read_input_tokens, "
                        "cache_creation_input_tokens, cache_creation_input_tokens_above_1hr, input_cost, output_cost, "
                        f"total_cost) SELECT {new}, experiment_id, timestamp_ms, execution_time_ms, status, "
                        "client_request_id, request_preview, response_preview, db_payload_generation, trace_name, "
                        "session_id, input_tokens, output_tokens, total_tokens, cache_read_input_tokens, "
                        "cache_creation_input_tokens, cache_creation_input_tokens_above_1hr, input_cost, output_cost, "
                        "total_cost FROM trace_info WHERE request_id IN (SELECT request_id FROM originals)")
                    for table in ("trace_tags", "trace_request_metadata"):
                        connection.execute(
                            f"INSERT INTO {table} (key, value, request_id) SELECT key, value, {new} FROM {table} "
                            "WHERE request_id IN (SELECT request_id FROM originals)")
                    connection.execute(
                        "INSERT INTO spans (trace_id, experiment_id, span_id, parent_span_id, name, type, status, "
                        "start_time_unix_nano, end_time_unix_nano, content, input_cost, output_cost, total_cost, "
                        f"model_name, model_provider) SELECT 'tr-' || md5(trace_id || {s}), experiment_id, span_id, "
                        "parent_span_id, name, type, status, start_time_unix_nano, end_time_unix_nano, content, "
                        "input_cost, output_cost, total_cost, model_name, model_provider FROM spans WHERE trace_id IN "
                        "(SELECT request_id FROM originals)")
                print(f"  copy {k}: {(k + 1) * args.source:,} traces ({time.perf_counter() - started:.0f} s)", flush=True)
            connection.execute("DROP SCHEMA IF EXISTS agentops CASCADE")
            connection.execute("CREATE SCHEMA agentops AUTHORIZATION agentops_reader")
            connection.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO agentops_reader")
            connection.execute("ANALYZE")
        total = args.source * args.times
        elapsed = time.perf_counter() - started
        (root / f"bench-model-id-{total}.done").write_text(json.dumps(
            {"traces": total, "seconds": round(elapsed, 1), "replicated_from": args.source}))
        print(f"replicated to {total:,} traces in {elapsed:.0f} s", flush=True)
    finally:
        if started_here:
            cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
