"""Events reach NATS JetStream from server and relay processes, and a killed relay loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.msg import Msg

from ballast.payments.v1 import payments_pb2_grpc
from server.db.engine import asyncpg_dsn
from server.db.migrate import migrate_to_head
from server.messaging.names import DeploymentNames
from server.outbox.relay import ensure_stream
from tests.e2e.conftest import ROOT, ServerProcess, deployment_of, free_port, server_environment
from tests.e2e.processes import launch_server
from tests.support import scratch_database
from tests.support.requests import create_payment_request

pytestmark = pytest.mark.e2e


async def _poll(check: Callable[[], object], timeout_s: float = 60) -> None:
    """Until `check` holds. Generous: the server's relay and consumer first work through what earlier
    tests left in the shared database and stream, which on a loaded machine takes a while."""
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout_s}s")
        await asyncio.sleep(0.05)


async def test_a_created_payment_is_announced_on_jetstream_and_projected_back_by_the_exposure_consumer(
    start_server: Callable[..., ServerProcess], pool: asyncpg.Pool, nats_url: str, tmp_path: Path
) -> None:
    server = start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        reply = await payments_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
            create_payment_request(value="3.00"),
            metadata=server.metadata,
            timeout=5,
        )
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ballast.outbox"), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    async def published() -> object:
        return await pool.fetchval(
            "SELECT published_at IS NOT NULL FROM outbox WHERE topic = 'payments.recorded' AND message_key = $1",
            reply.payment.id,
        )

    await _poll(published)
    connection = await nats.connect(nats_url)
    try:
        names = DeploymentNames(deployment_of(tmp_path))  # the test's own deployment, as start_server gave it
        message = await connection.jetstream().get_last_msg(names.stream, f"{names.subject_prefix}.payments.recorded")
    finally:
        await connection.close()
    assert json.loads(message.data or b"{}")["payment_id"] == reply.payment.id

    async def projected() -> object:  # the server's own consumer read it back from JetStream
        return await pool.fetchval(
            "SELECT true FROM processed_events p JOIN outbox o ON p.event_id = o.id::text"
            " WHERE p.consumer_group = 'exposures' AND o.topic = 'payments.recorded' AND o.message_key = $1",
            reply.payment.id,
        )

    await _poll(projected)

    # The simulator decides the payment and its webhook makes the server's resolver ask the provider's
    # API, whose word decides it (in a second or two); once the consumer has read that too, the payment's
    # money is no longer in flight and the projection's settled amount is the ledger's balance.
    account = f"merchant_payable:{server.client_id}"

    async def settled() -> object:
        return await pool.fetchval(
            "SELECT e.in_flight = 0 AND e.settled = (SELECT coalesce(sum(amount), 0) FROM ledger_lines"
            "  WHERE account = $1 AND currency_code = 'EUR')"
            " AND (SELECT state FROM payments WHERE id = $2) NOT IN ('RECORDED', 'PENDING', 'UNKNOWN')"
            " FROM exposures e WHERE e.account = $1 AND e.currency_code = 'EUR'",
            account,
            uuid.UUID(reply.payment.id),
        )

    await _poll(settled)
    # posted once: the merchant credited if the provider took the money, nothing if it did not
    assert await pool.fetchval("SELECT count(*) FROM ledger_lines WHERE account = $1", account) in (0, 1)


@pytest.fixture
def relay_database_url(server_database_url: str) -> Iterator[str]:
    """A database of its own: the relay process claims every pending event in it."""
    with scratch_database(server_database_url, "ballast_relay_kill") as url:
        migrate_to_head(url)
        yield url


async def test_a_relay_process_killed_mid_batch_loses_nothing_and_publishes_nothing_twice(
    relay_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    names = DeploymentNames(f"kill{uuid.uuid4().hex[:10]}")
    stream, prefix = names.stream, names.subject_prefix
    url = relay_database_url
    connection = await asyncpg.connect(asyncpg_dsn(url))
    broker = await nats.connect(nats_url)
    js = broker.jetstream()
    try:
        await ensure_stream(js, stream, prefix)
        await connection.execute(
            "INSERT INTO outbox (id, topic, message_key, payload)"
            " SELECT gen_random_uuid(), 'test.event', 'agg-' || (g % 100), jsonb_build_object('g', g)"
            " FROM generate_series(1, 20000) AS g ORDER BY g"
        )
        env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")} | {
            "DATABASE_URL": url,
            "NATS_URL": nats_url,
            "BALLAST_DEPLOYMENT": names.deployment,
            "BALLAST_RELAY_WORKERS": "2",
            "BALLAST_RELAY_BATCH_SIZE": "100",
            "BALLAST_DATA_DIR": str(tmp_path),
            "BALLAST_API_TOKENS": f"{'t' * 20}=c:service",
        }
        command = [sys.executable, "-m", "server", "relay"]
        quiet = asyncio.subprocess.DEVNULL
        first = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env, stdout=quiet, stderr=quiet)

        async def some_published() -> object:
            return await connection.fetchval("SELECT count(*) >= 3000 FROM outbox WHERE published_at IS NOT NULL")

        await _poll(some_published, timeout_s=30)
        first.send_signal(signal.SIGKILL)
        await asyncio.wait_for(first.wait(), timeout=10)
        left = await connection.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert left > 0, "the kill should land before the end"

        second = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env, stdout=quiet, stderr=quiet)
        try:

            async def all_published() -> object:
                return await connection.fetchval("SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL")

            await _poll(all_published, timeout_s=60)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), timeout=20)
        info = await js.stream_info(stream)
        assert info.state.messages == 20000  # re-published copies were dropped by message id
    finally:
        await js.delete_stream(stream)
        await broker.close()
        await connection.close()


async def test_relay_processes_side_by_side_publish_each_event_exactly_once(
    relay_database_url: str, nats_url: str, tmp_path: Path
) -> None:
    """Three relay processes (two relays each) woken by one commit drain it together, and no event is
    published twice: a plain subscription on the stream's subjects sees every publish, including the
    copies the broker's de-duplication would hide from the stream."""
    names = DeploymentNames(f"side{uuid.uuid4().hex[:10]}")
    stream, prefix = names.stream, names.subject_prefix
    connection = await asyncpg.connect(asyncpg_dsn(relay_database_url))
    broker = await nats.connect(nats_url)
    js = broker.jetstream()
    publishes: Counter[str] = Counter()

    async def count(message: Msg) -> None:
        publishes[message.headers.get("Nats-Msg-Id", "") if message.headers else ""] += 1

    processes: list[asyncio.subprocess.Process] = []
    try:
        await ensure_stream(js, stream, prefix)
        await broker.subscribe(f"{prefix}.>", cb=count, pending_msgs_limit=100_000)
        env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")} | {
            "DATABASE_URL": relay_database_url,
            "NATS_URL": nats_url,
            "BALLAST_DEPLOYMENT": names.deployment,
            "BALLAST_RELAY_WORKERS": "2",
            "BALLAST_RELAY_BATCH_SIZE": "100",
            "BALLAST_DATA_DIR": str(tmp_path),
            "BALLAST_API_TOKENS": f"{'t' * 20}=c:service",
        }
        quiet = asyncio.subprocess.DEVNULL
        for _ in range(3):
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "server", "relay", cwd=ROOT, env=env, stdout=quiet, stderr=quiet
                )
            )

        async def all_listening() -> object:  # every relay idle on LISTEN: the commit below wakes them together
            return await connection.fetchval(
                "SELECT count(*) = 6 FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )

        await _poll(all_listening, timeout_s=30)
        ids = await connection.fetch(
            "INSERT INTO outbox (id, topic, message_key, payload)"
            " SELECT gen_random_uuid(), 'test.event', 'agg-' || (g % 1000), jsonb_build_object('g', g)"
            " FROM generate_series(1, 6000) AS g ORDER BY g RETURNING id::text"
        )

        async def all_published() -> object:
            return await connection.fetchval("SELECT count(*) = 0 FROM outbox WHERE published_at IS NULL")

        await _poll(all_published, timeout_s=60)
        # each publish was acknowledged before its row was marked, so its copy is already on its way here
        await broker.flush()
        twice = {message_id: times for message_id, times in publishes.items() if times > 1}
        assert twice == {}, f"{len(twice)} events were published more than once"
        assert set(publishes) == {row["id"] for row in ids}
        assert await connection.fetchval("SELECT max(attempts) FROM outbox") == 1
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), timeout=20)
        await js.delete_stream(stream)
        await broker.close()
        await connection.close()


@pytest.fixture
async def two_databases(server_database_url: str) -> AsyncIterator[list[str]]:
    """Two deployments' databases, migrated (made and dropped off the event loop: each runs a loop of its own)."""
    stack = contextlib.ExitStack()
    try:
        urls = [
            await asyncio.to_thread(stack.enter_context, scratch_database(server_database_url, f"ballast_{name}"))
            for name in ("red", "blue")
        ]
        for url in urls:
            await asyncio.to_thread(migrate_to_head, url)
        yield urls
    finally:
        await asyncio.to_thread(stack.close)


async def test_two_deployments_on_one_nats_never_read_each_others_events(
    two_databases: list[str], nats_url: str, tmp_path: Path
) -> None:
    """Each deployment's stream, subjects and durable consumers carry its own name: a server's consumer
    never receives another deployment's events (which its database does not have: it would dead-letter
    them), so each applies exactly its own, and no event is dead-lettered."""
    deployments = [DeploymentNames(f"two_{name}_{uuid.uuid4().hex[:8]}") for name in ("red", "blue")]
    servers: list[ServerProcess] = []
    payment_ids: list[str] = []
    urls = two_databases
    try:
        for url, names in zip(urls, deployments, strict=True):
            port, token = free_port(), f"token-{uuid.uuid4().hex}"
            data_dir = tmp_path / names.deployment
            env = server_environment(url, port, token, "two", data_dir) | {
                "NATS_URL": nats_url,
                "BALLAST_DEPLOYMENT": names.deployment,
                "BALLAST_RELAY_WORKERS": "1",
                "BALLAST_PROVIDER_URL": "off",
            }
            server = launch_server(env, f"127.0.0.1:{port}", token, "two", tmp_path / f"{names.deployment}.log")
            servers.append(server)
            async with grpc.aio.insecure_channel(server.address) as channel:
                reply = await payments_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
                    create_payment_request(value="3.00"),
                    metadata=server.metadata,
                    timeout=5,
                )
            payment_ids.append(reply.payment.id)
        for url, payment_id in zip(urls, payment_ids, strict=True):
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:

                async def applied(connection: asyncpg.Connection = connection, key: str = payment_id) -> object:
                    return await connection.fetchval(
                        "SELECT count(*) FROM processed_events p JOIN outbox o ON p.event_id = o.id::text"
                        " WHERE p.consumer_group = 'exposures' AND o.message_key = $1",
                        key,
                    )

                await _poll(applied, timeout_s=30)  # its own consumer applied its own event
                # ... and nothing of the other deployment's: every event it applied is one of its own
                assert not await connection.fetchval(
                    "SELECT count(*) FROM processed_events p WHERE p.consumer_group = 'exposures'"
                    " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.id::text = p.event_id)"
                )
            finally:
                await connection.close()
    finally:
        for server in servers:
            server.stop()
    broker = await nats.connect(nats_url)
    try:
        js = broker.jetstream()
        for names, payment_id in zip(deployments, payment_ids, strict=True):
            recorded = await js.get_last_msg(names.stream, f"{names.subject_prefix}.payments.recorded")
            assert json.loads(recorded.data or b"{}")["payment_id"] == payment_id
            consumer = await js.consumer_info(names.stream, names.durable("exposures"))
            assert consumer.num_pending == 0
            assert (await js.stream_info(f"{names.stream}_DEAD")).state.messages == 0
            for stream in (names.stream, f"{names.stream}_DEAD"):
                await js.delete_stream(stream)
    finally:
        await broker.close()
