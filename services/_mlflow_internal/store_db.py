"""Where the store-side SQL aggregates run: which database, which dialect, which experiments.

The grouped aggregates of this package (``aggregate_traces``, ``trace_tag_values``) read MLflow's
own tables (``trace_info``, ``trace_tags``, ``trace_request_metadata``, ``spans``) with portable
SQLAlchemy statements. They run on:

* the embedded SQL store of a client (``SqlAlchemyStore`` on SQLite or PostgreSQL), through the
  store's engine and its own experiment scoping (workspaces);
* the database behind a remote ``mlflow server`` when the app is given a read-only URL for it
  (``AGENTOPS_STORE_DB_URL``, registered here by ``services._clients.configure_mlflow``). The
  server still decides which experiments the app may read: every id is checked through the
  server's REST API (``get_experiment``, so its auth and workspaces apply) and must name the same
  experiment in the database, or the URL is refused as pointing at another store.

Anything else (REST without a database URL, Databricks, MySQL, MSSQL, a database whose schema is
not the one this MLflow writes) returns ``None`` from ``sql_source`` and callers take the public
``query_trace_metrics`` path.

The connection is read-only: PostgreSQL sessions start with ``default_transaction_read_only``
(a write fails even when the role could write), SQLite files open with ``mode=ro``. On PostgreSQL,
when the role also owns (or may create) the schema ``agentops``, the Monitoring roll-ups
(``rollups``) are kept there through a second, writable connection that touches only that schema.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

_logger = logging.getLogger(__name__)

# Dialects the fast aggregate is tested on (tests/services/test_mlflow_internal.py and
# tests/postgres/). Others take the query_trace_metrics path: MySQL's GROUP_CONCAT truncates at
# group_concat_max_len (1 KB by default).
SQL_AGGREGATE_DIALECTS = ("sqlite", "postgresql")

# Columns the aggregates read; a database without them is not the schema this MLflow writes.
_REQUIRED_COLUMNS = {
    "trace_info": {"request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status", "trace_name",
                   "db_payload_generation",  # the roll-ups' change fingerprint
                   "input_tokens", "output_tokens", "cache_read_input_tokens", "total_cost"},
    "trace_tags": {"request_id", "key", "value"},
    "trace_request_metadata": {"request_id", "key", "value"},
    "spans": {"trace_id", "model_name", "total_cost"},
    "experiments": {"experiment_id", "name"},
}

_lock = threading.Lock()
_urls: dict[str, str] = {}  # tracking URI -> database URL of the server behind it


def register(tracking_uri: str, store_db_url: str | None) -> None:
    """Remember (or forget, with None) the database URL of the server at ``tracking_uri``."""
    with _lock:
        if store_db_url:
            _urls[tracking_uri] = store_db_url
        else:
            _urls.pop(tracking_uri, None)


def registered_url(tracking_uri: str) -> str | None:
    with _lock:
        return _urls.get(tracking_uri)


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown by its scheme only
        return url.split(":", 1)[0] + ":…"


class StoreDatabaseError(RuntimeError):
    """The configured store database cannot be used (unreachable, wrong schema, another store)."""


@lru_cache(maxsize=8)
def readonly_engine(url: str) -> Any:
    """A pooled, read-only SQLAlchemy engine on ``url`` (PostgreSQL or SQLite)."""
    import sqlalchemy as sa

    parsed = sa.engine.make_url(url)
    dialect = parsed.get_backend_name()
    if dialect == "postgresql":
        if parsed.drivername == "postgresql":  # SQLAlchemy's default is psycopg2; psycopg 3 is what we ship
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            parsed, pool_pre_ping=True, pool_size=4,
            connect_args={"options": "-c default_transaction_read_only=on", "connect_timeout": 5},
        )
    if dialect == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise StoreDatabaseError("A SQLite store database URL needs a file path.")
        return sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", pool_pre_ping=True)
    raise StoreDatabaseError(
        f"The store database {safe_url(url)} is {dialect}; the direct aggregates support "
        f"{' and '.join(SQL_AGGREGATE_DIALECTS)}."
    )


@lru_cache(maxsize=8)
def _schema_problem(url: str) -> str | None:
    """Why the database at ``url`` is not an MLflow store this code can read (None when it is)."""
    import sqlalchemy as sa

    inspector = sa.inspect(readonly_engine(url))
    for table, needed in _REQUIRED_COLUMNS.items():
        try:
            have = {c["name"] for c in inspector.get_columns(table)}
        except sa.exc.NoSuchTableError:
            return f"it has no {table} table"
        if missing := needed - have:
            return f"its {table} table lacks {', '.join(sorted(missing))}"
    return None


@dataclass(frozen=True)
class SqlSource:
    """The parts of MLflow's ``SqlAlchemyStore`` the aggregates use, on a read-only engine.

    ``_filter_experiment_ids`` keeps the ids the server lets this client read.
    """

    engine: Any
    visible: Callable[[Sequence[int]], list[int]]

    @property
    def db_type(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def ManagedSessionMaker(self) -> Iterator[None]:  # noqa: N802 - the store's name
        yield None

    def _filter_experiment_ids(self, session: Any, experiment_ids: Sequence[int]) -> list[int]:
        return self.visible(experiment_ids)


def _server_scoped(client: Any, engine: Any, url: str) -> Callable[[Sequence[int]], list[int]]:
    def visible(experiment_ids: Sequence[int]) -> list[int]:
        import sqlalchemy as sa
        from mlflow.exceptions import MlflowException
        from mlflow.store.tracking.dbmodels.models import SqlExperiment

        names: dict[int, str] = {}
        for experiment_id in experiment_ids:
            try:
                names[int(experiment_id)] = client.get_experiment(str(experiment_id)).name
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                    continue  # as the store does: an unknown id has no traces
                raise
        if not names:
            return []
        table = SqlExperiment.__table__
        with engine.connect() as connection:
            stored = dict(connection.execute(
                sa.select(table.c.experiment_id, table.c.name).where(table.c.experiment_id.in_(list(names)))
            ).all())
        for experiment_id, name in names.items():
            if stored.get(experiment_id) != name:
                raise StoreDatabaseError(
                    f"AGENTOPS_STORE_DB_URL ({safe_url(url)}) is not the database of the MLflow server at "
                    f"{client.tracking_uri}: experiment {experiment_id} is {name!r} on the server and "
                    f"{stored.get(experiment_id)!r} in that database. Point it at the server's "
                    "--backend-store-uri, or unset it."
                )
        return list(names)

    return visible


def sql_source(client: Any) -> Any | None:
    """What the SQL aggregates run on for ``client``, or None for the ``query_trace_metrics`` path.

    The embedded SQL store itself when it is SQLite or PostgreSQL; for a remote server with a
    registered database URL, a read-only ``SqlSource`` on that database (None, with a warning in
    the log, when its schema is not the one this MLflow writes).
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from services._mlflow_internal.trace_write import tracking_store

    store = tracking_store(client)
    if isinstance(store, SqlAlchemyStore):
        if hasattr(store, "ManagedSessionMaker") and store.engine.dialect.name in SQL_AGGREGATE_DIALECTS:
            return store
        return None
    url = registered_url(getattr(client, "tracking_uri", "") or "")
    if not url:
        return None
    engine = readonly_engine(url)
    try:
        problem = _schema_problem(url)
    except Exception as exc:  # noqa: BLE001 - unreachable: say so; the caller's error translation names it
        _schema_problem.cache_clear()  # try again next time
        raise StoreDatabaseError(
            f"Cannot read the MLflow store database {safe_url(url)} (AGENTOPS_STORE_DB_URL): "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    if problem:
        _logger.warning("AGENTOPS_STORE_DB_URL %s is not an MLflow store this version reads (%s); "
                        "aggregating through the server's API instead.", safe_url(url), problem)
        return None
    return SqlSource(engine, _server_scoped(client, engine, url))


def check(url: str) -> None:
    """Raise ``StoreDatabaseError`` with a clear message when the database at ``url`` cannot be read."""
    import sqlalchemy as sa

    try:
        with readonly_engine(url).connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except StoreDatabaseError:
        raise
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreDatabaseError(
            f"Cannot reach the MLflow store database {safe_url(url)} (AGENTOPS_STORE_DB_URL): {first}. "
            "Check that PostgreSQL is running and the URL is right, or unset AGENTOPS_STORE_DB_URL."
        ) from None
