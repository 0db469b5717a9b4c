"""Shared fixtures: a real PostgreSQL database, migrated from empty, for the whole test session.

DATABASE_URL set: a fresh database is created on that server and dropped afterwards.
DATABASE_URL unset: the embedded PostgreSQL (under .data/) is started and used the same way.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from server.db.engine import asyncpg_dsn, create_pool
from server.db.migrate import migrate_to_head

ROOT = Path(__file__).resolve().parent.parent


def _server_url() -> str:
    configured = os.environ.get("DATABASE_URL", "").strip()
    if configured:
        return configured
    from server.db.embedded import start_embedded_postgres

    return start_embedded_postgres(ROOT / ".data", database="postgres")


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_database_url() -> str:
    """A URL of the PostgreSQL server the tests use (its maintenance database)."""
    return _server_url()


@pytest.fixture(scope="session")
def empty_database_url(server_database_url: str) -> Iterator[str]:
    """A brand-new, empty database for this test session; dropped at the end."""
    import asyncio

    name = f"ballast_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_database_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server_database_url, name)
    finally:
        asyncio.run(_admin(server_database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(empty_database_url: str) -> str:
    """The session's database, migrated from empty to head."""
    migrate_to_head(empty_database_url)
    return empty_database_url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, size=60, statement_timeout_ms=10_000)
    try:
        yield pool
    finally:
        await pool.close()
