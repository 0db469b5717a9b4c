"""Provider breaker state changes, announced: metrics, and an outbox event other services can follow."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter, Gauge

from server.db.database import Budget, Database
from server.db.outbox_writer import write_event
from server.domain import events
from server.providers.breaker import BreakerState, StateListener

log = structlog.get_logger(__name__)

BREAKER_STATE = Gauge(
    "ballast_provider_breaker_state", "A provider breaker's state: 0 closed, 1 half-open, 2 open", ["breaker"]
)
BREAKER_CHANGES = Counter("ballast_provider_breaker_changes", "Provider breaker state changes", ["breaker", "to"])
_LEVELS = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
ANNOUNCE_TIMEOUT_S = 5.0


def breaker_announcer(database: Database) -> StateListener:
    """A breaker listener: counts the change at once and writes its outbox event in the background."""
    pending: set[asyncio.Task[None]] = set()

    def on_change(name: str, old: BreakerState, new: BreakerState) -> None:
        BREAKER_STATE.labels(name).set(_LEVELS[new])
        BREAKER_CHANGES.labels(name, new.value).inc()
        task = asyncio.get_running_loop().create_task(_announce(database, name, old, new))
        pending.add(task)
        task.add_done_callback(pending.discard)

    return on_change


async def _announce(database: Database, name: str, old: BreakerState, new: BreakerState) -> None:
    try:
        async with database.connection(Budget.within(ANNOUNCE_TIMEOUT_S)) as connection:
            await write_event(
                connection, events.BREAKER_STATE_CHANGED, name, {"breaker": name, "from": old.value, "to": new.value}
            )
    except Exception as error:  # the change is logged and counted; the event is best effort
        log.warning("provider.breaker_event_not_written", breaker=name, error=str(error)[:300])
