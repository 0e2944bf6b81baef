"""Where a benchmark's store lives: embedded SQLite, or behind a real `mlflow server` on SQLite or on a
throwaway PostgreSQL in the data folder (stopped at exit)."""

from __future__ import annotations


def analyze(store_uri: str) -> None:
    """Planner statistics after a bulk load (as the demo seed does)."""
    import sqlalchemy as sa

    engine = sa.create_engine(store_uri)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()


STORES = ("embedded", "server-sqlite", "server-postgres")


class Served:
    """The store of ``--store`` and the app's settings on it; started servers stop at exit."""

    def __init__(self, args) -> None:
        import atexit

        from services._clients import get_settings
        from services.settings import load_settings

        self.local = get_settings()  # AGENTOPS_DATA_DIR is the bench folder
        self.kind = args.store
        self.store_uri = self.local.tracking_uri
        self.reader_uri = self.store_uri
        self.cluster = self.server = None
        if self.kind == "server-postgres":
            from tests.harness.postgres import PostgresCluster

            root = self.local.data_dir / "postgres"
            root.mkdir(parents=True, exist_ok=True)
            from mlflow import MlflowClient

            self.cluster = PostgresCluster(root)
            fresh = not (root / "data").exists()
            if not self.cluster.running():
                self.cluster.start(settings={"shared_buffers": "1GB", "work_mem": "64MB", "max_wal_size": "4GB"})
                atexit.register(self.cluster.stop)
            self.store_uri = self.cluster.url("mlflow")
            if fresh:
                self.cluster.create_database("mlflow")
                MlflowClient(tracking_uri=self.store_uri).search_experiments()  # MLflow creates its tables
                self.cluster.create_reader("mlflow", rollup_schema="agentops")  # roll-ups: services/_mlflow_internal/rollups.py
            self.reader_uri = self.store_uri.replace("postgres@", "agentops_reader@")
        self.app = self.local
        if self.kind != "embedded":
            if args.reuse_server:
                self.url = args.reuse_server
            else:
                self.url = self._start_server(args)
                atexit.register(self.stop)

            def app_settings(**extra):
                return load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": self.url,
                                      "AGENTOPS_DATA_DIR": str(self.local.data_dir / "app"), **extra})

            self.app = app_settings(AGENTOPS_STORE_DB_URL=self.reader_uri)
            self.app_api_only = app_settings()

    def _start_server(self, args) -> str:
        from tests.harness.mlflow_server import free_port, start_mlflow_server

        port = free_port()
        log = (self.local.data_dir / "mlflow-server.log").open("ab")
        self.server = start_mlflow_server(port, self.local.data_dir / "server", backend_store_uri=self.store_uri,
                                          workers=args.server_workers, env={"MLFLOW_MODEL_CATALOG_URI": ""}, log=log,
                                          timeout_s=300)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        from tests.harness.mlflow_server import stop_mlflow_server

        stop_mlflow_server(self.server)
