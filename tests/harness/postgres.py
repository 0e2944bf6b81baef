"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp folder, a free loopback port,
its unix socket in that folder, stopped (fast shutdown) and removed at teardown.

PostgreSQL refuses to run as root. As root (CI, these machines) the cluster runs as ``nobody``
through ``runuser``; the temp folder is handed to that user. As any other user it runs as that user.
The binaries are found on the PATH or in Debian's ``/usr/lib/postgresql/<major>/bin``
(``scripts/test`` installs Debian's ``postgresql`` package when they are missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

SUPERUSER = "postgres"
RUN_AS_WHEN_ROOT = "nobody"


def pg_bin(name: str) -> str | None:
    """Full path of a PostgreSQL server binary (``initdb``, ``pg_ctl``), or None when not installed."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One PostgreSQL cluster in ``root``; ``url(db)`` is a SQLAlchemy URL for the psycopg 3 driver."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        port_file = root / "port"  # kept, so a cluster started again (or by another process) has one URL
        if not port_file.exists():
            port_file.write_text(str(_free_port()))
        self.port = int(port_file.read_text())
        self.log = root / "postgres.log"
        self._as_root = os.geteuid() == 0

    def _run(self, *command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", RUN_AS_WHEN_ROOT, "--"] if self._as_root else []
        return subprocess.run([*prefix, *command], check=check, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root)

    def start(self, *, settings: dict[str, str] | None = None) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("PostgreSQL is not installed: install Debian's 'postgresql' package (scripts/test does).")
        if self._as_root:
            shutil.chown(self.root, user=RUN_AS_WHEN_ROOT)
        if not self.data.exists():
            self._run(initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync",
                      "--locale=C")
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.root),
                   "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        flags = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._run(pg_ctl, "-D", str(self.data), "-o", flags, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl and (self.data / "postmaster.pid").exists():
            self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        pg_ctl = pg_bin("pg_ctl")
        return bool(pg_ctl) and self._run(pg_ctl, "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "db") -> str:
        """Create an empty database with a fresh name; return its URL."""
        self._made = getattr(self, "_made", 0) + 1
        return self.create_database(f"{prefix}_{self._made}")

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_reader(self, database: str, role: str = "agentops_reader", *, rollup_schema: str | None = None) -> str:
        """A login role that may only read ``database``'s tables; return a URL for it.

        With ``rollup_schema``, the role also owns that (new) schema, where the app keeps its
        Monitoring roll-ups (``services._mlflow_internal.rollups``); MLflow's tables stay read-only.
        """
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=database,
                             autocommit=True) as connection:
            connection.execute(f"CREATE ROLE {role} LOGIN")
            connection.execute(f"GRANT CONNECT ON DATABASE \"{database}\" TO {role}")
            connection.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            connection.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
            if rollup_schema:
                connection.execute(f'CREATE SCHEMA "{rollup_schema}" AUTHORIZATION {role}')
        return f"postgresql+psycopg://{role}@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def running_postgres(root: Path | None = None) -> Iterator[PostgresCluster]:
    """A started cluster in ``root`` (a new temp folder by default), stopped and removed afterwards."""
    made = root is None
    root = Path(tempfile.mkdtemp(prefix="agentops-pg-")) if made else root
    cluster = PostgresCluster(root)
    try:
        started = time.monotonic()
        cluster.start()
        cluster.started_s = time.monotonic() - started
        yield cluster
    finally:
        cluster.stop()
        if made:
            shutil.rmtree(root, ignore_errors=True)
