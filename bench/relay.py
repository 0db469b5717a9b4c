"""Outbox relay benchmark: events/s drained to JetStream and commit-to-publish latency, printed beside
the two ceilings measured in the same run on the same machine:

  - raw claim-and-update: the relay's SQL alone (claim a batch FOR UPDATE SKIP LOCKED, mark it), no broker;
  - raw JetStream publish: pipelined publishes with acknowledgements through the relay's publisher, no database.

Targets: at least 20,000 events/s drained, and a commit-to-publish p99 under 100 ms at 1,000 events/s.
Run with `python -m bench.relay` (make bench-relay); DATABASE_URL and NATS_URL are used when set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence

import asyncpg
import nats
from nats.aio.client import Client as NatsClient

from bench.harness import ROOT, Ratio, bench_database, migrate, postgres_server_url, record_ratios, redacted
from server.db.engine import create_pool
from server.outbox.publisher import AckedPublisher, Outgoing
from server.outbox.relay import OutboxRelay, ensure_stream

EVENTS_DEFAULT = 20_000
RELAYS = 3
BATCH_SIZE = 500
AGGREGATES = 2_000
PACED_RATE_PER_S = 1_000
PACED_DURATION_S = 5.0
THROUGHPUT_TARGET_PER_S = 20_000
LATENCY_P99_TARGET_MS = 100.0
#: The relay's throughput as a share of raw JetStream publishing measured in the same run.
PUBLISH_RATIO_TARGET = 0.80


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _insert(pool: asyncpg.Pool, events: int) -> None:
    await pool.execute(
        "INSERT INTO outbox (id, topic, message_key, payload)"
        " SELECT gen_random_uuid(), 'bench.event', 'agg-' || (g % $2), jsonb_build_object('g', g)"
        " FROM generate_series(1, $1) AS g ORDER BY g",
        events,
        AGGREGATES,
    )


async def raw_claim_and_update(pool: asyncpg.Pool, events: int) -> float:
    """Rows/s for the claim-and-mark SQL alone, three workers, no broker."""
    await _insert(pool, events)

    async def worker() -> None:
        while True:
            async with pool.acquire() as connection, connection.transaction():
                ids = await connection.fetch(
                    "SELECT id FROM outbox WHERE published_at IS NULL ORDER BY position LIMIT $1"
                    " FOR UPDATE SKIP LOCKED",
                    BATCH_SIZE,
                )
                if not ids:
                    return
                await connection.execute(
                    "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1::uuid[])",
                    [row["id"] for row in ids],
                )

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(RELAYS)))
    return events / (time.perf_counter() - started)


async def raw_publish(connection: NatsClient, prefix: str, events: int) -> float:
    """Messages/s for JetStream publishes with acknowledgements, BATCH_SIZE in flight at a time, through
    the relay's own publisher and no database: the ceiling the relay can approach."""
    publisher = AckedPublisher(connection)
    started = time.perf_counter()
    for start in range(0, events, BATCH_SIZE):
        batch = [
            Outgoing(f"{prefix}.raw", b'{"g": 1}', str(uuid.uuid4())) for _ in range(min(BATCH_SIZE, events - start))
        ]
        errors = await publisher.publish(batch, timeout_s=10)
        if any(errors):
            raise RuntimeError(f"raw publish failed: {next(error for error in errors if error)}")
    return events / (time.perf_counter() - started)


async def relay_throughput(
    pool: asyncpg.Pool, connection: NatsClient, prefix: str, events: int, batch_size: int
) -> float:
    await _insert(pool, events)
    relays = [OutboxRelay(pool, connection, batch_size=batch_size, subject_prefix=prefix) for _ in range(RELAYS)]

    async def drain(relay: OutboxRelay) -> None:
        idle = 0
        while idle < 3:  # a relay may find nothing due while others hold the heads; look again
            idle = idle + 1 if (await relay.run_once()).claimed == 0 else 0

    started = time.perf_counter()
    await asyncio.gather(*(drain(relay) for relay in relays))
    elapsed_s = time.perf_counter() - started
    left = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    if left:
        raise RuntimeError(f"{left} events were left unpublished")
    return events / elapsed_s


async def paced_latency(pool: asyncpg.Pool, connection: NatsClient, prefix: str) -> tuple[float, float]:
    """(p50, p99) ms from commit to publish while events are committed at PACED_RATE_PER_S."""
    await pool.execute("DELETE FROM outbox")
    stopping = asyncio.Event()
    relays = [OutboxRelay(pool, connection, batch_size=BATCH_SIZE, subject_prefix=prefix) for _ in range(RELAYS)]
    running = [asyncio.create_task(relay.run(stopping)) for relay in relays]
    await asyncio.sleep(0.3)
    per_tick = 10  # ten events per commit, a hundred commits a second
    ticks = int(PACED_DURATION_S * PACED_RATE_PER_S / per_tick)
    started = time.perf_counter()
    for tick in range(ticks):
        await pool.execute(
            "INSERT INTO outbox (id, topic, message_key, payload)"
            " SELECT gen_random_uuid(), 'bench.paced', 'paced-' || ($1 * 10 + g), '{}'::jsonb"
            " FROM generate_series(1, $2) AS g",
            tick,
            per_tick,
        )
        await asyncio.sleep(max(0.0, started + (tick + 1) * per_tick / PACED_RATE_PER_S - time.perf_counter()))
    for _ in range(200):
        if not await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            break
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.gather(*running)
    row = await pool.fetchrow(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99"
        " FROM (SELECT extract(epoch FROM published_at - created_at) * 1000 AS ms FROM outbox) AS latency"
    )
    return float(row["p50"]), float(row["p99"])


async def run(database_url: str, nats_url: str, events: int, batch_size: int) -> int:
    pool = await create_pool(database_url, size=RELAYS + 4, statement_timeout_ms=60_000)
    connection = await nats.connect(nats_url)
    js = connection.jetstream()
    stream = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    prefix = stream.lower()
    await ensure_stream(js, stream, prefix)
    try:
        _status("raw claim-and-update...")
        claim_rate = await raw_claim_and_update(pool, events)
        await pool.execute("DELETE FROM outbox")
        _status("raw JetStream publish...")
        publish_rate = await raw_publish(connection, prefix, events)
        _status(f"relay: {RELAYS} relays draining {events} events...")
        relay_rate = await relay_throughput(pool, connection, prefix, events, batch_size)
        _status(f"latency: {PACED_RATE_PER_S} events/s for {PACED_DURATION_S:g} s...")
        p50_ms, p99_ms = await paced_latency(pool, connection, prefix)
    finally:
        await js.delete_stream(stream)
        await connection.close()
        await pool.close()
    print(f"outbox relay, {events} events, {RELAYS} relays, batch {batch_size}, {os.cpu_count()} CPUs")
    print(f"  raw claim-and-update   {claim_rate:>10,.0f} rows/s")
    print(f"  raw JetStream publish  {publish_rate:>10,.0f} msgs/s")
    print(
        f"  relay                  {relay_rate:>10,.0f} events/s  ({relay_rate / publish_rate:.2f} of raw publish"
        f" (target >= {PUBLISH_RATIO_TARGET:.2f}),"
        f" {relay_rate / claim_rate:.2f} of raw claim; target >= {THROUGHPUT_TARGET_PER_S:,})"
    )
    print(
        f"  commit-to-publish at {PACED_RATE_PER_S}/s: p50 {p50_ms:.1f} ms, p99 {p99_ms:.1f} ms"
        f" (target p99 < {LATENCY_P99_TARGET_MS:.0f} ms)"
    )
    record_ratios(
        "make bench-relay",
        [Ratio("relay / raw JetStream publish", relay_rate / publish_rate, PUBLISH_RATIO_TARGET)],
        f"{relay_rate:,.0f} events/s; commit-to-publish p99 {p99_ms:.1f} ms at {PACED_RATE_PER_S}/s",
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--events", type=int, default=EVENTS_DEFAULT, help="events drained (1000 to 200000)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="events per relay batch (1 to 5000)")
    args = parser.parse_args(argv)
    if not 1000 <= args.events <= 200_000:
        parser.error("--events must be from 1000 to 200000")
    if not 1 <= args.batch_size <= 5000:
        parser.error("--batch-size must be from 1 to 5000")
    server_url, source = postgres_server_url()
    nats_url = os.environ.get("NATS_URL", "").strip()
    if not nats_url:
        from server.messaging.embedded_nats import start_embedded_nats

        nats_url = start_embedded_nats(ROOT / ".data" / "bench-nats")
    with bench_database(server_url) as database_url:
        _status(f"database {source}: {redacted(database_url)}; broker {nats_url}; migrating")
        migrate(database_url)
        return asyncio.run(run(database_url, nats_url, args.events, args.batch_size))


if __name__ == "__main__":
    sys.exit(main())
