"""Connections: an asyncpg pool for the request paths, URLs for SQLAlchemy and Alembic."""

from __future__ import annotations

import json

import asyncpg
from sqlalchemy.engine import make_url


def sqlalchemy_url(database_url: str) -> str:
    """postgresql://... -> postgresql+asyncpg://... (SQLAlchemy's async driver name)."""
    url = make_url(database_url)
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(database_url: str) -> str:
    """The libpq-style URL asyncpg accepts (drops a SQLAlchemy driver suffix if present)."""
    url = make_url(database_url)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _after_release(connection: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool.

    By default asyncpg resets every returned connection with a query (UNLISTEN *, RESET ALL, CLOSE
    ALL, advisory unlocks): a round trip per borrow, on every request. Ballast leaves no session
    state behind (no SET, cursors or advisory locks; its one listener unlistens itself), and the
    pool still rolls back a transaction left open, so that query is skipped.
    """


async def create_pool(database_url: str, *, size: int, statement_timeout_ms: int, warm: bool = False) -> asyncpg.Pool:
    """A pool of `size` connections; every statement is bounded by statement_timeout_ms server-side.

    A `warm` pool (the API server's) opens all its connections at start-up and keeps them open: a
    burst of calls finds them ready, instead of waiting for new ones to be opened (tens of
    milliseconds each on a busy database) out of the callers' deadlines. Other pools open their
    connections as they need them.
    """
    pool = await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=size if warm else min(size, 2),
        max_size=size,
        max_inactive_connection_lifetime=0 if warm else 300.0,
        init=_init_connection,
        reset=_after_release,
        server_settings={
            "application_name": "ballast",
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 10_000)),
        },
    )
    if pool is None:  # asyncpg types it as Optional; it is never None when awaited
        raise RuntimeError("asyncpg.create_pool returned no pool")
    return pool
