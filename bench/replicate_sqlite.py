"""Grow a SQLite bench store N-fold inside SQLite (the 1,000,000-trace store in minutes).

    .venv/bin/python -m bench.replicate_sqlite --from-dir /tmp/b-100k --data-dir /tmp/b-1m --from 100000 --times 10

Copies the ``--from`` store of ``--from-dir`` into ``--data-dir`` (database file and the bench's
registered model) and then every trace ``--times - 1`` more times with fresh request ids (copy k:
``tr-`` + k in two hex digits + the first 30 hex digits of the original; the primary keys refuse a
collision), the same timestamps, tags, metadata and spans, in ``INSERT ... SELECT`` statements, and
writes the bench's marker for the new size. As ``bench/replicate_pg.py``: span ``content`` keeps the
original trace's ids (aggregates do not read it); the loader (``bulk_load_traces``) is what writes
rows identical to MLflow's, this only multiplies them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import time
from pathlib import Path

TRACE_INFO_COLUMNS = (
    "experiment_id, timestamp_ms, execution_time_ms, status, client_request_id, request_preview, response_preview, "
    "db_payload_generation, trace_name, session_id, input_tokens, output_tokens, total_tokens, "
    "cache_read_input_tokens, cache_creation_input_tokens, cache_creation_input_tokens_above_1hr, input_cost, "
    "output_cost, total_cost")
SPAN_COLUMNS = ("experiment_id, span_id, parent_span_id, name, type, status, start_time_unix_nano, end_time_unix_nano, "
                "content, input_cost, output_cost, total_cost, model_name, model_provider")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-dir", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--from", dest="source", type=int, default=100_000)
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args(argv)
    if not 2 <= args.times <= 256:
        raise SystemExit("--times must be 2..256 (copy k is stamped into two hex digits)")
    source, target = Path(args.from_dir).resolve(), Path(args.data_dir).resolve()
    if not (source / f"bench-model-id-{args.source}.done").exists():
        raise SystemExit(f"No {args.source}-trace bench store in {source}: run bench.bench_monitoring first.")
    databases = list(source.glob("*.db"))
    if len(databases) != 1:
        raise SystemExit(f"Expected one SQLite store in {source}, found {[p.name for p in databases]}.")
    if target.exists():
        raise SystemExit(f"{target} exists: give a new folder.")
    started = time.perf_counter()
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.done", "app", "server", "*.log"))
    database = target / databases[0].name
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        count = connection.execute("SELECT count(*) FROM trace_info").fetchone()[0]
        if count != args.source:
            raise SystemExit(f"The store holds {count:,} traces, not {args.source:,}; nothing copied.")
        connection.execute("CREATE TEMP TABLE originals AS SELECT request_id FROM trace_info")
        for k in range(1, args.times):
            new = f"'tr-' || printf('%02x', {k}) || substr({{col}}, 4, 30)"
            connection.execute("BEGIN")
            connection.execute(
                f"INSERT INTO trace_info (request_id, {TRACE_INFO_COLUMNS}) SELECT {new.format(col='request_id')}, "
                f"{TRACE_INFO_COLUMNS} FROM trace_info WHERE request_id IN (SELECT request_id FROM originals)")
            for table in ("trace_tags", "trace_request_metadata"):
                connection.execute(
                    f"INSERT INTO {table} (key, value, request_id) SELECT key, value, {new.format(col='request_id')} "
                    f"FROM {table} WHERE request_id IN (SELECT request_id FROM originals)")
            connection.execute(
                f"INSERT INTO spans (trace_id, {SPAN_COLUMNS}) SELECT {new.format(col='trace_id')}, {SPAN_COLUMNS} "
                "FROM spans WHERE trace_id IN (SELECT request_id FROM originals)")
            connection.execute("COMMIT")
            print(f"  copy {k}: {(k + 1) * args.source:,} traces ({time.perf_counter() - started:.0f} s)", flush=True)
        connection.execute("ANALYZE")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    total = args.source * args.times
    elapsed = time.perf_counter() - started
    (target / f"bench-model-id-{total}.done").write_text(json.dumps(
        {"traces": total, "seconds": round(elapsed, 1), "replicated_from": args.source}))
    print(f"replicated to {total:,} traces in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
