"""The shape of every resolver: claim due items in one short transaction (FOR UPDATE SKIP LOCKED,
with a lease so no other worker takes the same items) and check each outside it, at most
`batch_size` checks in flight. The loop claims again as soon as a check finishes, so one slow answer
(a provider that hangs until its time limit) never holds up the others; with nothing due, it polls.
Tests call `run_once` (one batch, checked to the end) directly."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog

from server.db.database import BACKGROUND_BUDGET_S, Budget, Database, in_transaction
from server.domain.backoff import backoff_s
from server.providers.breaker import Breaker

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CheckSettings:
    """What every resolver bounds: its batch, its lease, its wait for the provider, its retries."""

    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    #: Checks without an answer before an investigation case is opened (and checks stop).
    checks_max: int = 12
    #: How long a claimed item is left alone by other workers while this one asks about it.
    lease_s: float = 30.0
    batch_size: int = 20
    provider_timeout_s: float = 5.0
    poll_interval_s: float = 1.0

    def backoff_s(self, attempts: int) -> float:
        """base, 2 x base, 4 x base, ... up to the maximum (server/domain/backoff.py)."""
        return backoff_s(attempts, self.backoff_base_s, self.backoff_max_s)


ClaimedT = TypeVar("ClaimedT")


class CheckLoop(Generic[ClaimedT]):
    """Subclasses set `_database`, `_batch_size` and `_poll_interval_s` and define `_claim` and `_check`."""

    _database: Database
    #: the most checks in flight at once (and the largest claim)
    _batch_size: int
    _poll_interval_s: float

    async def _claim(self, connection: asyncpg.Connection, limit: int) -> list[ClaimedT]:
        """At most `limit` due items, leased to this worker."""
        raise NotImplementedError

    async def _check(self, item: ClaimedT) -> None:
        raise NotImplementedError

    #: the breaker of the provider the checks ask, when there is one: while it refuses calls, nothing
    #: is claimed (each check would fail unasked, and spend the item's lease for nothing)
    _breaker: Breaker | None = None

    def _provider_refuses(self) -> bool:
        return self._breaker is not None and self._breaker.refuses_for_s() > 0

    async def _claimed(self, limit: int) -> list[ClaimedT]:
        async def claim(connection: asyncpg.Connection) -> list[ClaimedT]:
            return await self._claim(connection, limit)

        return await in_transaction(self._database, Budget.within(BACKGROUND_BUDGET_S), claim)

    async def _checked(self, item: ClaimedT) -> None:
        try:
            await self._check(item)
        except Exception as error:  # its lease runs out and another check comes
            log.warning("resolver.check_failed", item=str(item)[:200], error=repr(error)[:300])

    async def run_once(self) -> int:
        """Claim a batch of due items and check each; how many were claimed. Tests call this directly."""
        if self._provider_refuses():
            return 0
        claimed = await self._claimed(self._batch_size)
        await asyncio.gather(*(self._checked(item) for item in claimed))
        return len(claimed)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check due items, at most `batch_size` at a time, until `stopping` is set; then let the checks
        in flight finish (each is bounded by the provider's time limit)."""
        checks: set[asyncio.Task[None]] = set()
        slot_freed = asyncio.Event()

        def finished(task: asyncio.Task[None]) -> None:
            checks.discard(task)
            slot_freed.set()

        while not stopping.is_set():
            free = self._batch_size - len(checks)
            claimed: list[ClaimedT] = []
            if free > 0 and not self._provider_refuses():
                try:
                    claimed = await self._claimed(free)
                except Exception as error:  # the database is away: try again at the next poll
                    log.warning("resolver.error", error=str(error)[:300])
            for item in claimed:
                task = asyncio.create_task(self._checked(item))
                checks.add(task)
                task.add_done_callback(finished)
            if claimed and len(claimed) == free:
                continue  # more may be due: claim again once a slot frees
            slot_freed.clear()
            waits = [asyncio.ensure_future(stopping.wait())]
            if checks and not claimed:
                waits.append(asyncio.ensure_future(slot_freed.wait()))
            _, pending = await asyncio.wait(waits, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
            for waiting in pending:
                waiting.cancel()
        if checks:
            await asyncio.gather(*checks, return_exceptions=True)
