"""Shared fixtures: a real PostgreSQL database, migrated from empty, for the whole test session.

DATABASE_URL set: a fresh database is created on that server and dropped afterwards.
DATABASE_URL unset: the embedded PostgreSQL (under .data/) is started and used the same way.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.domain.identity import Principal
from tests.support import scratch_database
from tests.support.requests import new_principal

ROOT = Path(__file__).resolve().parent.parent


def _server_url() -> str:
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        return configured
    from server.db.embedded import start_embedded_postgres

    return start_embedded_postgres(ROOT / ".data", database="postgres")


@pytest.fixture(scope="session")
def server_database_url() -> str:
    """A URL of the PostgreSQL server the tests use (its maintenance database)."""
    return _server_url()


@pytest.fixture(scope="session")
def empty_database_url(server_database_url: str) -> Iterator[str]:
    """A brand-new, empty database for this test session; dropped at the end."""
    with scratch_database(server_database_url, "ballast_test") as url:
        yield url


@pytest.fixture(scope="session")
def database_url(empty_database_url: str) -> str:
    """The session's database, migrated from empty to head."""
    migrate_to_head(empty_database_url)
    return empty_database_url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # 30 connections: enough for real races, and room on a default max_connections=100 server for the
    # e2e tests' server processes.
    pool = await create_pool(database_url, size=30, statement_timeout_ms=10_000)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def database(pool: asyncpg.Pool) -> Database:
    """The session's database as the use cases take it."""
    return Database(pool)


@pytest.fixture
def principal() -> Principal:
    """A service of this test's own, as the use cases take it."""
    return new_principal()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """NATS_URL if set, else an embedded NATS with JetStream for this test session."""
    configured = os.environ.get("NATS_URL", "").strip()
    if configured:
        return configured
    from server.messaging.embedded_nats import start_embedded_nats

    return start_embedded_nats(tmp_path_factory.mktemp("nats"))
