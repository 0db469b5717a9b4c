"""The shape of every resolver: claim a bounded batch in one short transaction (FOR UPDATE SKIP
LOCKED, with a lease so no other worker takes the same items), check each item concurrently outside
it, and loop: straight on while there is work, else poll. Tests call `run_once` directly."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog

from server.db.database import Budget, Database, in_transaction
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
        """base, 2 x base, 4 x base, ... up to the maximum."""
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(attempts - 1, 0)))


ClaimedT = TypeVar("ClaimedT")


class CheckLoop(Generic[ClaimedT]):
    """Subclasses set `_database` and `_poll_interval_s` and define `_claim` and `_check`."""

    _database: Database
    _poll_interval_s: float

    async def _claim(self, connection: asyncpg.Connection) -> list[ClaimedT]:
        raise NotImplementedError

    async def _check(self, item: ClaimedT) -> None:
        raise NotImplementedError

    #: the breaker of the provider the checks ask, when there is one: while it refuses calls, nothing
    #: is claimed (each check would fail unasked, and spend the item's lease for nothing)
    _breaker: Breaker | None = None

    async def run_once(self) -> int:
        """Claim a batch of due items and check each; how many were claimed. Tests call this directly."""
        if self._breaker is not None and self._breaker.refuses_for_s() > 0:
            return 0
        claimed = await in_transaction(self._database, Budget.within(10), self._claim)
        outcomes = await asyncio.gather(*(self._check(item) for item in claimed), return_exceptions=True)
        for item, outcome in zip(claimed, outcomes, strict=True):
            if isinstance(outcome, Exception):  # its lease runs out and another check comes
                log.warning("resolver.check_failed", item=str(item)[:200], error=repr(outcome)[:300])
        return len(claimed)

    async def run(self, stopping: asyncio.Event) -> None:
        """Check due items until `stopping` is set."""
        while not stopping.is_set():
            try:
                claimed = await self.run_once()
            except Exception as error:  # the database is away: try again at the next poll
                log.warning("resolver.error", error=str(error)[:300])
                claimed = 0
            if claimed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._poll_interval_s)
