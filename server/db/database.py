"""Borrowing a connection within a time budget, and turning driver failures into named errors once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from server.domain.errors import ConcurrencyConflict, DeadlineExceeded, Unavailable

T = TypeVar("T")

#: SQLSTATEs that mean "another transaction got in the way; the same request may succeed if repeated".
_CONFLICT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
}
#: query_canceled: the statement ran into statement_timeout, or a cancel request stopped it (checked before
#: the classes below, although it is of class 57)
_QUERY_CANCELED_SQLSTATE = "57014"
#: connection exceptions (08), insufficient resources such as too many connections (53), operator intervention
#: (57: an administrator's or a crash's shutdown, a server not yet accepting connections)
_UNAVAILABLE_SQLSTATE_CLASSES = {"08", "53", "57"}


@dataclass(frozen=True)
class Budget:
    """An absolute deadline on the monotonic clock; every wait in a request is cut to fit inside it."""

    deadline_monotonic_s: float

    @classmethod
    def within(cls, timeout_s: float) -> Budget:
        return cls(time.monotonic() + timeout_s)

    def remaining_s(self) -> float:
        remaining = self.deadline_monotonic_s - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline ran out before the database answered")
        return remaining


class Database:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def connection(self, budget: Budget) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; raises DeadlineExceeded, ConcurrencyConflict or Unavailable, never a driver error."""
        try:
            async with self.pool.acquire(timeout=budget.remaining_s()) as connection:
                yield connection
        except asyncpg.PostgresError as error:
            sqlstate = getattr(error, "sqlstate", None)
            if sqlstate in _CONFLICT_SQLSTATES:
                raise ConcurrencyConflict(
                    f"a concurrent request collided ({sqlstate}); retry with the same key"
                ) from error
            if sqlstate == _QUERY_CANCELED_SQLSTATE:
                raise DeadlineExceeded("the database statement was cancelled at its time limit") from error
            if sqlstate is not None and sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES:
                raise Unavailable(f"the database cannot serve this now ({sqlstate}); retry later") from error
            raise
        except TimeoutError as error:
            raise DeadlineExceeded("the database did not answer within the request's deadline") from error
        except (OSError, asyncpg.InterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError) as error:
            raise Unavailable(f"the database is unreachable ({type(error).__name__}); retry later") from error


#: How long a background worker (a relay, a consumer, a listener) waits for a pooled connection before
#: it gives up this round and tries again later: a busy pool delays the work, never blocks it forever.
POOL_WAIT_S = 10.0
#: A background worker's transaction: its wait for a connection and its statements (a request's budget
#: is the caller's deadline instead).
BACKGROUND_BUDGET_S = 10.0

#: Attempts for a transaction that lost a serialization or deadlock race before it gives up (ABORTED).
TRANSACTION_ATTEMPTS_MAX = 3


async def in_transaction(database: Database, budget: Budget, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` in one transaction, repeating it (a bounded number of times) if it loses a race.

    `work` must be safe to repeat: it re-reads what it decides on, under the locks it takes.
    """
    for attempt in range(1, TRANSACTION_ATTEMPTS_MAX + 1):
        try:
            async with database.connection(budget) as connection, connection.transaction():
                return await work(connection)
        except ConcurrencyConflict:
            if attempt == TRANSACTION_ATTEMPTS_MAX:
                raise
            await asyncio.sleep(min(0.01 * 2**attempt, budget.remaining_s() / 2))
    raise AssertionError("unreachable")  # the loop returns or raises
