"""Databases of a run's own (a test's, a benchmark's, a chaos run's): created empty on a PostgreSQL
server, dropped on exit, so runs sharing one server never see each other's rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.engine import make_url

from server.db.engine import asyncpg_dsn

#: Creating or dropping a database waits this long at most (a DROP ... WITH (FORCE) ends its sessions).
ADMIN_TIMEOUT_S = 60.0


async def _admin(url: str, sql: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(url), timeout=ADMIN_TIMEOUT_S)
    try:
        await connection.execute(sql, timeout=ADMIN_TIMEOUT_S)
    finally:
        await connection.close()


@contextmanager
def scratch_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database `<prefix>_<random>` on the server of `server_url`, empty or a copy of the database
    named `template` (which nobody may be connected to), dropped on exit (its sessions ended); yields
    its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = "" if template is None else f' TEMPLATE "{template}"'
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
