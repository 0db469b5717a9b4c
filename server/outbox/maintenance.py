"""Outbox housekeeping beside the relays: gauges for Prometheus, and pruning published events after
their retention period (in bounded batches, so no statement holds locks for long)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog
from prometheus_client import Gauge

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL_S = 5.0
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH_SIZE = 10_000
PRUNE_BATCHES_MAX = 100  # per round: at most a million rows, then the next round continues

PENDING = Gauge("ballast_outbox_pending", "Outbox events not yet published (dead letters excluded)")
OLDEST_PENDING_AGE = Gauge("ballast_outbox_oldest_pending_age_seconds", "Age of the oldest unpublished event")
DEAD_LETTERED = Gauge("ballast_outbox_dead_lettered", "Outbox events parked as dead letters")

_SAMPLE = """
SELECT count(*) FILTER (WHERE dead_lettered_at IS NULL) AS pending,
       count(*) FILTER (WHERE dead_lettered_at IS NOT NULL) AS dead,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE dead_lettered_at IS NULL)), 0) AS age_s
FROM outbox WHERE published_at IS NULL
"""

_PRUNE = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox WHERE published_at < now() - make_interval(hours => $1) LIMIT $2
)
"""


async def sample(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(_SAMPLE)
    PENDING.set(row["pending"])
    DEAD_LETTERED.set(row["dead"])
    OLDEST_PENDING_AGE.set(float(row["age_s"]))


async def prune(pool: asyncpg.Pool, retention_hours: int) -> int:
    """Delete published events older than the retention; returns how many."""
    deleted = 0
    for _ in range(PRUNE_BATCHES_MAX):
        result: str = await pool.execute(_PRUNE, retention_hours, PRUNE_BATCH_SIZE)
        count = int(result.split()[-1])
        deleted += count
        if count < PRUNE_BATCH_SIZE:
            break
    if deleted:
        log.info("outbox.pruned", deleted=deleted, retention_hours=retention_hours)
    return deleted


async def run_maintenance(pool: asyncpg.Pool, retention_hours: int, stopping: asyncio.Event) -> None:
    next_prune = 0.0
    loop = asyncio.get_running_loop()
    while not stopping.is_set():
        try:
            await sample(pool)
            if loop.time() >= next_prune:
                await prune(pool, retention_hours)
                next_prune = loop.time() + PRUNE_INTERVAL_S
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("outbox.maintenance_error", error=str(error)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=SAMPLE_INTERVAL_S)
