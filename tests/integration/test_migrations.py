"""Migrations build the schema from an empty database, match the declared tables, and go back down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from server.db.engine import asyncpg_dsn, sqlalchemy_url
from server.db.migrate import alembic_config, migrate_to_head
from server.db.schema import metadata
from tests.support import scratch_database


@pytest.fixture
def scratch_database_url(server_database_url: str) -> Iterator[str]:
    with scratch_database(server_database_url, "ballast_migrations") as url:
        yield url


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def _schema_differences(url: str) -> list[object]:
    engine = create_async_engine(sqlalchemy_url(url))

    def compare(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


def test_migrations_run_from_empty_to_head_and_back(scratch_database_url: str) -> None:
    assert asyncio.run(_tables(scratch_database_url)) == set()
    migrate_to_head(scratch_database_url)
    assert {"payments", "idempotency_keys", "alembic_version"} <= asyncio.run(_tables(scratch_database_url))

    command.downgrade(alembic_config(scratch_database_url), "base")
    assert asyncio.run(_tables(scratch_database_url)) == {"alembic_version"}
    migrate_to_head(scratch_database_url)  # and up again: migrations are repeatable
    migrate_to_head(scratch_database_url)  # a second upgrade at head changes nothing


def test_the_migrated_schema_matches_the_declared_tables(database_url: str) -> None:
    assert asyncio.run(_schema_differences(database_url)) == []
