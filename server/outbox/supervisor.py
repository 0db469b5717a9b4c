"""Keeps the relays running beside the server: connects to NATS (retrying while it is down), runs the
configured number of relays, and reports the `ballast.outbox` health component.

The gRPC server never waits for the broker: while NATS is unreachable, payments are still accepted and
their events wait in the outbox; only the component turns NOT_SERVING, after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import nats
import structlog
from nats.aio.client import Client as NatsClient

from server.messaging.consumer import ConsumerGroup, ConsumerRunner
from server.messaging.names import DeploymentNames
from server.outbox.maintenance import run_maintenance
from server.outbox.relay import OutboxRelay, ensure_stream

log = structlog.get_logger(__name__)

HEALTH_COMPONENT = "ballast.outbox"
#: How long the broker may be unreachable before the component reports NOT_SERVING.
UNREACHABLE_GRACE_S = 10.0
CONNECT_RETRY_MAX_S = 10.0

SetHealth = Callable[[str, bool], Awaitable[None]]


async def _connect(nats_url: str, stopping: asyncio.Event) -> NatsClient | None:
    delay_s = 0.5
    while not stopping.is_set():
        try:
            return await nats.connect(
                nats_url, connect_timeout=2, allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1
            )
        except Exception as error:  # nats-py raises several kinds for an unreachable server
            log.warning("outbox.broker_unreachable", url=nats_url, error=str(error)[:200], retry_in_s=delay_s)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=delay_s)
            except TimeoutError:
                delay_s = min(delay_s * 2, CONNECT_RETRY_MAX_S)
    return None


async def _report_health(connection: NatsClient, set_health: SetHealth, stopping: asyncio.Event) -> None:
    last_connected = time.monotonic()
    serving = True
    while not stopping.is_set():
        if connection.is_connected:
            last_connected = time.monotonic()
        reachable = time.monotonic() - last_connected < UNREACHABLE_GRACE_S
        if reachable != serving:
            serving = reachable
            log.warning("outbox.health", serving=serving)
            await set_health(HEALTH_COMPONENT, serving)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=1.0)


@dataclass(frozen=True)
class RelayConfig:
    nats_url: str
    workers: int
    batch_size: int
    #: the deployment's stream, subjects and durable consumer names
    names: DeploymentNames = field(default_factory=DeploymentNames)
    #: Ballast's own consumers to run beside the relays (the exposure projection): given by the
    #: composition root (`server/__main__.py`), since the handlers are use cases this layer never imports
    consumers: tuple[ConsumerGroup, ...] = ()
    #: published events are kept this long (the replay window), then pruned
    retention_hours: int = 168


async def run_relays(
    pool: asyncpg.Pool, config: RelayConfig, stopping: asyncio.Event, set_health: SetHealth | None = None
) -> None:
    """Run `config.workers` relays until `stopping` is set."""
    nats_url, workers, batch_size = config.nats_url, config.workers, config.batch_size
    if set_health is not None:
        await set_health(HEALTH_COMPONENT, False)
    connection = await _connect(nats_url, stopping)
    if connection is None:
        return
    try:
        js = connection.jetstream()
        await ensure_stream(js, config.names.stream, config.names.subject_prefix)
        # consumers park poison messages on <prefix>_dead.<group>, in a stream of their own
        await ensure_stream(js, f"{config.names.stream}_DEAD", f"{config.names.subject_prefix}_dead")
        if set_health is not None:
            await set_health(HEALTH_COMPONENT, True)
        log.info("outbox.relaying", workers=workers, batch_size=batch_size)
        relays = [
            OutboxRelay(
                pool,
                connection,
                batch_size=batch_size,
                subject_prefix=config.names.subject_prefix,
                broker_connected=lambda: connection.is_connected,
            )
            for _ in range(workers)
        ]
        tasks = [relay.run(stopping) for relay in relays]
        tasks.append(run_maintenance(pool, config.retention_hours, stopping))
        for consumer in config.consumers:
            runner = ConsumerRunner(
                pool,
                js,
                stream=config.names.stream,
                subject_prefix=config.names.subject_prefix,
                group=consumer.group,
                durable=config.names.durable(consumer.group),
                handler=consumer.handler,
            )
            tasks.append(runner.run(stopping))
        if set_health is not None:
            tasks.append(_report_health(connection, set_health, stopping))
        await asyncio.gather(*tasks)
    finally:
        await connection.close()
