"""Alembic environment: runs migrations over SQLAlchemy's async engine with asyncpg."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from server.db.engine import sqlalchemy_url
from server.db.migrate import FOLDED_REVISIONS, PreBaselineDatabase
from server.db.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    for revision in context.get_context().get_current_heads():
        if revision in FOLDED_REVISIONS:
            raise PreBaselineDatabase(revision)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set DATABASE_URL or run `python -m server migrate`")
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
asyncio.run(_run_online())
