"""The roll-up tables (SQLAlchemy Core, in the schema ``agentops`` on PostgreSQL) and where they are written.

Two tables of rows keyed by experiment, 15-minute bucket (``BASE_SECONDS``) and trace key (model
id, live or evaluation, status, the app's tags in ``ROLLUP_TAG_KEYS``), one of each closed bucket's
``trace_info`` fingerprint, and one of each experiment's watermark and last verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

BASE_SECONDS = 900
BASE_MS = BASE_SECONDS * 1000
ROLLUP_TAG_KEYS = ("agentops.agent", "agentops.version", "agentops.alias", "agentops.endpoint", "agentops.arm")
TAG_COLUMNS = ("tag_agent", "tag_version", "tag_alias", "tag_endpoint", "tag_arm")
SCHEMA = "agentops"


@lru_cache(maxsize=4)
def tables(schema: str | None) -> dict[str, Any]:
    """The roll-up tables in ``schema`` (None: the engine's default), with their ``MetaData``."""
    import sqlalchemy as sa

    meta = sa.MetaData(schema=schema)
    keys = lambda: [  # noqa: E731 - the same key columns in both tables
        sa.Column("experiment_id", sa.Integer, nullable=False),
        sa.Column("bucket_ms", sa.BigInteger, nullable=False),
        sa.Column("model_id", sa.String(250), nullable=False),
        sa.Column("live", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        *[sa.Column(c, sa.String(250), nullable=False) for c in TAG_COLUMNS],
    ]
    traces = sa.Table(
        "agentops_trace_rollup", meta, *keys(),
        sa.Column("requests", sa.BigInteger, nullable=False), sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False), sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_input_tokens", sa.BigInteger, nullable=False),
        sa.Column("traces_with_tokens", sa.BigInteger, nullable=False), sa.Column("recorded_cost", sa.Float, nullable=False),
        sa.Column("latency_sketch", sa.Text, nullable=False),
        sa.Index("ix_agentops_trace_rollup_bucket", "experiment_id", "bucket_ms"),
    )
    models = sa.Table(
        "agentops_model_rollup", meta, *keys(), sa.Column("model_name", sa.String(500), nullable=False),
        sa.Column("llm_calls", sa.BigInteger, nullable=False), sa.Column("recorded_cost", sa.Float, nullable=False),
        sa.Index("ix_agentops_model_rollup_bucket", "experiment_id", "bucket_ms"),
    )
    buckets = sa.Table(
        "agentops_rollup_bucket", meta,
        sa.Column("experiment_id", sa.Integer, primary_key=True), sa.Column("bucket_ms", sa.BigInteger, primary_key=True),
        sa.Column("traces", sa.BigInteger, nullable=False), sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("duration_sum", sa.BigInteger, nullable=False), sa.Column("generation_sum", sa.BigInteger, nullable=False),
    )
    state = sa.Table(
        "agentops_rollup_state", meta,
        sa.Column("experiment_id", sa.Integer, primary_key=True),
        sa.Column("watermark_ms", sa.BigInteger, nullable=False),
        sa.Column("verified_ms", sa.BigInteger, nullable=False),
    )
    return {"meta": meta, "traces": traces, "models": models, "buckets": buckets, "state": state}


@dataclass(frozen=True)
class RollupStore:
    """Where roll-ups are written (``engine``, writable) and from where traces are read (``source``)."""

    engine: Any
    schema: str | None = None

    @property
    def t(self) -> dict[str, Any]:
        return tables(self.schema)

    def create(self) -> None:
        """Create the schema (on PostgreSQL) and the tables where they are missing."""
        import sqlalchemy as sa

        with self.engine.begin() as connection:
            if (self.schema and connection.dialect.name == "postgresql"
                    and self.schema not in sa.inspect(connection).get_schema_names()):
                connection.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))  # needs CREATE on the database
            self.t["meta"].create_all(connection, checkfirst=True)
