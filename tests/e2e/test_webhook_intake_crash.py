"""A server stopped mid-storm of webhooks, as a separate process (SIGKILL or SIGTERM), against its own
PostgreSQL database: every delivery it acknowledged was applied, and the provider's redelivery of
every event to a new server applies each event once.

A webhook is a signal, not the deciding witness: a `pending` moves a RECORDED payment to PENDING, a
claimed success only makes the payment due for a check with the provider's API, which then decides.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from server.db.database import Database
from server.db.engine import create_pool
from server.db.migrate import migrate_to_head
from server.domain.identity import Principal
from server.services.webhook_application import Outcome, WebhookSource
from tests.e2e.conftest import ROOT, ServerProcess, free_port, server_environment, wait_until_serving
from tests.support import scratch_database, until
from tests.support.probes import (
    allowed_payment_moves,
    claim_waits,
    due_for_check,
    kept_deliveries,
    ledger_entries_of,
    payment_moves,
    payment_state,
    processed_events,
    provider_statuses,
)
from tests.support.providers import decided_by_the_api
from tests.support.requests import new_payments
from tests.support.webhooks import (
    PROVIDER,
    event_id_of,
    payment_event,
    signed_headers,
)

SECRET = "whsec_adversarial_group_commit"  # noqa: S105 - a test secret
SOURCE = WebhookSource(PROVIDER, SECRET)
GROUP = SOURCE.consumer_group


#: the outcomes, short (Q: confirming, the provider's API is queried)
A, D, Q = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.CONFIRMING
#: what every payment here is for, as the provider's API states it
AMOUNT, CURRENCY = "12.50", "EUR"


# --------------------------------------------------------------------------------------------- a real crash


def _start_server(database_url: str, data_dir: Path, log_path: Path) -> tuple[ServerProcess, str]:
    """A server process with webhooks on a port of its own and no provider; (process, webhook URL)."""
    port, http_port = free_port(), free_port()
    token, client_id = f"crash-token-{uuid.uuid4().hex}", f"crash-{uuid.uuid4().hex[:8]}"
    env = server_environment(database_url, port, token, client_id, data_dir) | {
        "BALLAST_HTTP_PORT": str(http_port),
        "BALLAST_PROVIDER_URL": "off",
        "BALLAST_PROVIDER_WEBHOOK_SECRET": SECRET,
        "BALLAST_RELAY_WORKERS": "0",
    }
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
    server = ServerProcess(process, f"127.0.0.1:{port}", token, client_id, log_path)
    try:
        wait_until_serving(server)
    except BaseException:
        process.kill()
        raise
    return server, f"http://127.0.0.1:{http_port}/webhooks/{PROVIDER}"


def _no_backend_at_work(pool: asyncpg.Pool) -> Callable[[], Awaitable[bool]]:
    """True once no other session of this database is running a statement or inside a transaction: a
    COMMIT the killed process wrote just before it died is then either applied or never will be."""

    async def idle() -> bool:
        busy = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'"
        )
        return int(busy) == 0

    return idle


@pytest.fixture(scope="module")
def crash_database_url(server_database_url: str) -> Iterator[str]:
    """A database of the crash tests' own: their servers relay nothing, and the thousands of outbox
    events of their payments must not queue up in front of the session database's other relay tests."""
    with scratch_database(server_database_url, "ballast_group_commit_crash") as url:
        migrate_to_head(url)
        yield url


@pytest.fixture
async def crash_pool(crash_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(crash_database_url, size=10, statement_timeout_ms=10_000)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.e2e
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_a_server_stopped_mid_storm_kept_every_acknowledged_delivery_and_redeliveries_apply_each_event_once(
    principal: Principal,
    crash_pool: asyncpg.Pool,
    crash_database_url: str,
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    """Killed (SIGKILL) or stopped (SIGTERM, which drains the deliveries in flight) mid-storm, a server
    has applied every delivery it answered 2xx: a pending moved its payment, a claimed success left it
    due for a check with the provider's API, each event's status kept once. The provider's redelivery
    of every event to a new server applies each event once: a duplicate exactly when it had been
    applied before. The provider's API, asked once about each payment, then decides it once."""
    pool, database_url = crash_pool, crash_database_url
    payments = await new_payments(Database(pool), principal, 300, AMOUNT, CURRENCY)
    bodies = [payment_event(p, status) for p in payments for status in ("pending", "succeeded")]
    subject_of = {event_id_of(body): p for body, p in zip(bodies, [p for p in payments for _ in range(2)], strict=True)}
    deliveries = bodies + bodies[::7]  # some delivered twice
    random.Random(7).shuffle(deliveries)  # noqa: S311 - a reproducible shuffle
    acknowledged: list[tuple[str, Outcome]] = []
    answered: Counter[int] = Counter()  # HTTP status, 0 for no answer
    servers: list[ServerProcess] = []
    try:
        server, url = await asyncio.to_thread(_start_server, database_url, tmp_path / "data", tmp_path / "first.log")
        servers.append(server)
        async with aiohttp.ClientSession() as session:
            semaphore = asyncio.Semaphore(64)

            async def deliver(body: bytes) -> None:
                async with semaphore:
                    try:
                        async with session.post(url, data=body, headers=signed_headers(body, SECRET)) as response:
                            answered[response.status] += 1
                            if response.status == 200:
                                acknowledged.append((event_id_of(body), Outcome((await response.json())["outcome"])))
                    except aiohttp.ClientError:  # refused, or cut off: the provider will deliver it again
                        answered[0] += 1

            load = asyncio.gather(*(deliver(body) for body in deliveries))

            async def enough() -> bool:
                return len(acknowledged) >= 100

            await until(enough, "a hundred deliveries were acknowledged", timeout_s=20)
            server.process.send_signal(stop_signal)
            await load
        returncode = await asyncio.to_thread(server.process.wait, 20)
        assert len(acknowledged) < len(deliveries), "the stop should land mid-storm"
        assert set(answered) <= {0, 200, 503}, answered  # never a 500
        await until(_no_backend_at_work(pool), "the stopped server's sessions finished what they had received")

        # nothing acknowledged was lost: each is processed, an applied one moved its payment, a confirming
        # one left its payment due; every processed event's status was kept, once, with its claim
        assert {outcome for _, outcome in acknowledged} <= {A, Q, D}, acknowledged
        processed = await processed_events(pool, GROUP, [event_id_of(body) for body in bodies])
        assert all(processed[event_id] == 1 for event_id, _ in acknowledged)
        references = {
            row["evidence_ref"]
            for row in await pool.fetch(
                "SELECT evidence_ref FROM payment_transitions WHERE payment_id = ANY($1::uuid[])", payments
            )
        }
        assert all(f"{PROVIDER}:{event_id}" in references for event_id, outcome in acknowledged if outcome is A)
        observed = Counter(
            row["evidence_ref"]
            for row in await pool.fetch(
                "SELECT evidence_ref FROM provider_statuses WHERE payment_id = ANY($1::uuid[])", payments
            )
        )
        assert observed == Counter(f"{PROVIDER}:{event_id}" for event_id in processed)
        for payment_id in {subject_of[event_id] for event_id, outcome in acknowledged if outcome is Q}:
            assert not await claim_waits(pool, payment_id) or await due_for_check(pool, payment_id), payment_id
        kept = await kept_deliveries(pool, PROVIDER, processed)
        assert all(kept[event_id] >= 1 for event_id, _ in acknowledged)
        if stop_signal is signal.SIGTERM:  # drained: whatever it applied, it answered
            assert returncode == 0
            unanswered = set(processed) - {event_id for event_id, _ in acknowledged}
            assert unanswered == set(), f"{len(unanswered)} events applied but never answered 2xx"

        replacement, url = await asyncio.to_thread(
            _start_server, database_url, tmp_path / "data", tmp_path / "replacement.log"
        )
        servers.append(replacement)
        async with aiohttp.ClientSession() as session:
            semaphore = asyncio.Semaphore(64)

            async def redeliver(body: bytes) -> tuple[int, str]:
                async with semaphore, session.post(url, data=body, headers=signed_headers(body, SECRET)) as response:
                    return response.status, str((await response.json()).get("outcome", ""))

            replies = await asyncio.gather(*(redeliver(body) for body in bodies))
    finally:
        for started in servers:
            if started.process.poll() is None:
                await asyncio.to_thread(started.stop)
    for body, (status, outcome) in zip(bodies, replies, strict=True):
        assert status == 200, (body, status)
        assert (outcome == D.value) == (processed[event_id_of(body)] == 1), (body, outcome)  # done before: a duplicate
    assert await processed_events(pool, GROUP, [event_id_of(body) for body in bodies]) == Counter(
        dict.fromkeys(map(event_id_of, bodies), 1)
    )
    for payment_id in payments:  # moved by its pending; its claimed success waits for the provider's API
        assert await payment_moves(pool, payment_id) == [("RECORDED", "PENDING")]
        assert sorted(await provider_statuses(pool, payment_id)) == ["pending", "succeeded"]
        assert await ledger_entries_of(pool, payment_id) == 0
    await decided_by_the_api(Database(pool), dict.fromkeys(payments, "succeeded"), AMOUNT, CURRENCY)
    allowed = await allowed_payment_moves(pool)
    for payment_id in payments:
        assert await payment_state(pool, payment_id) == "SUCCEEDED"
        assert await ledger_entries_of(pool, payment_id) == 1
        moves = await payment_moves(pool, payment_id)
        assert moves == [("RECORDED", "PENDING"), ("PENDING", "SUCCEEDED")] and set(moves) <= allowed, moves
