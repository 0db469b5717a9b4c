"""Faults a spec injects into the real database: a statement that fails, a pool of one held connection,
a row a transaction of the spec's own holds, an insert PostgreSQL refuses, a database that notes the
races it lost. Each is undone by the spec (release, allow_inserts) or dies with it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.db.database import Budget, Database
from server.domain.errors import ConcurrencyConflict
from tests.support.probes import sessions_waiting_for
from tests.support.waiting import until


class Injected(Exception):
    """The failure a spec injects into one statement of a use case."""


class ConnectionFailingOn:
    """A connection that fails every statement doing `prefix` (on its own, or as one part of a statement
    that writes several tables at once); everything else is the real one."""

    def __init__(self, connection: asyncpg.Connection, prefix: str) -> None:
        self._connection = connection
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if self._prefix in " ".join(query.split()):
            raise Injected(f"injected failure of: {query[:60]}")
        return await self._connection.execute(query, *args, **kwargs)


class DatabaseFailingOn(Database):
    """The real database, whose connections fail every statement doing `prefix` (ConnectionFailingOn)."""

    def __init__(self, pool: asyncpg.Pool, prefix: str) -> None:
        super().__init__(pool)
        self._prefix = prefix

    @asynccontextmanager
    async def connection(self, budget: Budget) -> AsyncIterator[Any]:
        async with super().connection(budget) as connection:
            yield ConnectionFailingOn(connection, self._prefix)


class OneConnectionPool:
    """Stands in for asyncpg.Pool: lends every caller the one connection a spec holds a transaction open on,
    so that the server reads rows the spec never commits (and nothing is left behind for other specs)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    @asynccontextmanager
    async def acquire(self, **_: Any) -> AsyncIterator[asyncpg.Connection]:
        yield self._connection


class ConflictsNoted(Database):
    """The real database, noting every transaction that lost a deadlock or serialization race on the way
    out (in_transaction repeats those silently, so a caller would never see one)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.conflicts: list[ConcurrencyConflict] = []

    @asynccontextmanager
    async def connection(self, budget: Budget) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with super().connection(budget) as connection:
                yield connection
        except ConcurrencyConflict as conflict:
            self.conflicts.append(conflict)
            raise


@dataclass
class Held:
    """A row lock (or an uncommitted insert) held by a transaction of the spec's own, until released."""

    pool: asyncpg.Pool
    connection: asyncpg.Connection
    transaction: Any
    pid: int
    released: bool = False

    async def waiters(self) -> int:
        """How many sessions wait for what this transaction holds."""
        async with self.pool.acquire() as connection:
            return await sessions_waiting_for(connection, self.pid)

    async def waited_for(self, what: str, count: int = 1) -> None:
        """Until `count` sessions wait for it; `what` names the wait when it never comes."""

        async def waiting() -> bool:
            return await self.waiters() >= count

        await until(waiting, what)

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.transaction.rollback()
            await self.pool.release(self.connection)


async def holding(pool: asyncpg.Pool, statement: str, *arguments: object) -> Held:
    """`statement` run in a transaction of the spec's own, left open: what it locks stays locked."""
    connection = await pool.acquire()
    transaction = connection.transaction()
    try:
        await transaction.start()
        await connection.execute(statement, *arguments)
        return Held(pool, connection, transaction, int(await connection.fetchval("SELECT pg_backend_pid()")))
    except BaseException:
        await pool.release(connection)
        raise


async def hold_row(pool: asyncpg.Pool, table: str, row_id: uuid.UUID) -> Held:
    """The row `row_id` of `table`, locked FOR UPDATE by a transaction of the spec's own."""
    return await holding(pool, f"SELECT 1 FROM {table} WHERE id = $1 FOR UPDATE", row_id)


async def refuse_inserts(pool: asyncpg.Pool, table: str, column: str, subject: uuid.UUID, *, once: bool = False) -> str:
    """PostgreSQL refuses every insert into `table` whose `column` is `subject` (only the first one, when
    `once`: a sequence counts them, and survives the rollback) with 'injected failure'; returns the name
    to give allow_inserts."""
    name = f"refuse_{subject.hex}"
    condition = f"NEW.{column} = '{subject}'"
    if once:
        await pool.execute(f"CREATE SEQUENCE {name}")
        condition += f" AND nextval('{name}') = 1"
    await pool.execute(
        f"""
        CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN
                RAISE EXCEPTION 'injected failure' USING ERRCODE = 'internal_error';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    await pool.execute(f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
    return name


async def allow_inserts(pool: asyncpg.Pool, name: str, table: str) -> None:
    """Undo refuse_inserts."""
    await pool.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    await pool.execute(f"DROP FUNCTION IF EXISTS {name}()")
    await pool.execute(f"DROP SEQUENCE IF EXISTS {name}")
