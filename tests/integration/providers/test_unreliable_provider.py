"""Ballast against the simulator as a real process: honest answers within the deadline, the truth
reached after the resolver runs, nothing charged twice, and a breaker that fails fast and recovers.

A provider that hangs gets callers an honest answer within their deadline and never charges twice; an answer
in a status word Ballast does not know is an unknown outcome, not an error.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from server.api.errors import status_for
from server.db.database import Budget, Database
from server.domain.errors import DeadlineExceeded, ProviderUnavailable
from server.domain.identity import Principal
from server.domain.payment_states import PaymentEvent, PaymentState, Witness
from server.providers.breaker import Breaker, BreakerSettings, BreakerState
from server.providers.gateway import GatewayClient, NotSent
from server.services.payment_events import Evidence
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.provider_health import breaker_announcer
from server.services.submission import create_and_submit
from tests.support import answering_provider, apply_evidence
from tests.support.probes import count_rows, ledger_entries_of
from tests.support.requests import create_payment_command
from tests.support.simulator import simulated_provider, simulator_truth

DEADLINE_S = 1.0
#: what an answer may take beyond the caller's deadline: scheduling on a loaded 2-core machine
DEADLINE_SLACK_S = 0.3
FAST = {
    "settle_min_ms": 5,
    "settle_max_ms": 50,
    "latency_max_ms": 3000,
    "webhook_delay_ms": 200,
    "webhook_retry_base_ms": 20,
    "retry_after_s": 0,
}
TRUE_STATES = {"succeeded": PaymentState.SUCCEEDED, "failed": PaymentState.FAILED, "declined": PaymentState.FAILED}


async def test_monday_morning_every_caller_gets_an_answer_in_time_and_the_resolver_reaches_the_truth(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    async with (
        simulated_provider(tmp_path, database, "monday-morning", **FAST) as url,
        aiohttp.ClientSession() as session,
    ):
        gateway = GatewayClient(
            "simulator", url, session, Breaker("simulator.payments", BreakerSettings(failures_max=1000))
        )
        elapsed: list[float] = []
        answers: dict[str, PaymentState] = {}

        async def caller(key: str) -> None:
            for _ in range(30):  # a caller retries with its key when told to, as the API says it may
                started = time.monotonic()
                try:
                    result = await create_and_submit(
                        database, gateway, principal, create_payment_command(key, "31.00"), Budget.within(DEADLINE_S)
                    )
                except (ProviderUnavailable, DeadlineExceeded):
                    elapsed.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)
                    continue
                elapsed.append(time.monotonic() - started)
                answers[key] = result.payment.state
                return
            raise AssertionError(f"{key} never got a definite answer")

        await asyncio.gather(*(caller(f"monday-{uuid.uuid4()}") for _ in range(40)))
        assert max(elapsed) < DEADLINE_S + DEADLINE_SLACK_S, max(elapsed)
        assert set(answers.values()) <= {PaymentState.PENDING, PaymentState.UNKNOWN, *TRUE_STATES.values()}
        assert PaymentState.UNKNOWN in answers.values()  # the profile did hide outcomes

        # the shared database's other payments (other tests', whose providers are gone) are parked, so
        # that this resolver asks about this test's payments only
        await pool.execute(
            "UPDATE payments SET next_check_at = 'infinity' WHERE client_id <> $1"
            " AND (state IN ('RECORDED', 'UNKNOWN', 'PENDING') OR next_check_at IS NOT NULL)",
            principal.client_id,
        )
        resolver = PaymentResolver(
            database,
            gateway,
            # checks go on (quickly) until the provider answers: this profile hides outcomes often
            PaymentResolverSettings(
                unknown_grace_s=0,
                pending_overdue_s=2,
                backoff_base_s=0.2,
                backoff_max_s=0.5,
                checks_max=1000,
                batch_size=100,
                provider_timeout_s=1.0,
            ),
        )
        deadline = time.monotonic() + 60
        undecided = (
            "SELECT id, state, check_attempts, provider_status FROM payments"
            " WHERE state IN ('UNKNOWN', 'PENDING') AND client_id = $1 AND idempotency_key = ANY($2)"
        )
        while rows := await pool.fetch(undecided, principal.client_id, list(answers)):
            if time.monotonic() > deadline:
                truth = {p["idempotency_key"]: p for p in (await simulator_truth(url))["payments"]}
                stuck = [(dict(row), truth.get(str(row["id"]))) for row in rows]
                raise AssertionError(f"undecided payments remain after 60 s of resolving: {stuck}")
            if not await resolver.run_once():
                await asyncio.sleep(0.1)

        truth = {p["idempotency_key"]: p for p in (await simulator_truth(url))["payments"]}
        rows = await pool.fetch(
            "SELECT p.id, p.state, (SELECT count(*) FROM ledger_entries e WHERE e.payment_id = p.id) AS entries"
            " FROM payments p WHERE p.client_id = $1 AND p.idempotency_key = ANY($2)",
            principal.client_id,
            list(answers),
        )
    assert len(rows) == 40
    for row in rows:
        provider = truth[str(row["id"])]  # the provider was asked with Ballast's payment id, once
        assert PaymentState(row["state"]) is TRUE_STATES[provider["final_status"]], provider
        assert row["entries"] == (1 if row["state"] == "SUCCEEDED" else 0)


async def _set_faults(url: str, **settings: float) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{url}/_sim/profile", json={"settings": settings}) as response,
    ):
        assert response.status == 200, await response.text()


async def test_a_provider_call_that_fails_fast_is_never_followed_by_a_second_charge(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Every first call fails fast: a 5xx or a reset before the provider acts, or an unreadable answer
    after it took the payment. Each caller is told UNKNOWN at once; the resolver, itself meeting 5xx
    and resets, finds or resends each payment under its own key; in the end the provider holds each
    payment exactly once and Ballast says what the provider did."""
    first_calls = {"error_5xx_rate": 0.25, "reset_rate": 0.25, "malformed_rate": 0.5}
    async with (
        simulated_provider(tmp_path, database, "calm", **(FAST | first_calls)) as url,
        aiohttp.ClientSession() as session,
    ):
        gateway = GatewayClient(
            "simulator", url, session, Breaker("simulator.payments", BreakerSettings(failures_max=1000))
        )

        async def create() -> tuple[uuid.UUID, PaymentState, float]:
            started = time.monotonic()
            result = await create_and_submit(
                database, gateway, principal, create_payment_command(amount="31.00"), Budget.within(5)
            )
            return result.payment.id, result.payment.state, time.monotonic() - started

        created = await asyncio.gather(*(create() for _ in range(24)))
        ids = [payment_id for payment_id, _, _ in created]
        assert max(elapsed for _, _, elapsed in created) < 2.5, "each call was to fail fast, not time out"
        taken = {p["reference"]: p["create_fault"] for p in (await simulator_truth(url))["payments"]}
        assert set(taken.values()) == {"malformed"}, taken  # only unreadable answers left a payment there
        # honest answers: UNKNOWN, as each request may have arrived (PENDING where the provider's webhook
        # about a payment it took came first)
        for payment_id, state, _ in created:
            honest = ("UNKNOWN", "PENDING") if str(payment_id) in taken else ("UNKNOWN",)
            assert state.value in honest, (payment_id, state, taken.get(str(payment_id), "not at the provider"))

        await _set_faults(url, error_5xx_rate=0.3, reset_rate=0.2, malformed_rate=0.0)
        await pool.execute(  # the shared database's other payments wait: this resolver asks about these only
            "UPDATE payments SET next_check_at = 'infinity' WHERE client_id <> $1"
            " AND (state IN ('RECORDED', 'UNKNOWN', 'PENDING') OR next_check_at IS NOT NULL)",
            principal.client_id,
        )
        resolver = PaymentResolver(
            database,
            gateway,
            PaymentResolverSettings(
                unknown_grace_s=0,
                pending_overdue_s=0.5,
                backoff_base_s=0.05,
                backoff_max_s=0.2,
                checks_max=1000,
                batch_size=100,
                provider_timeout_s=1.0,
            ),
        )
        deadline = time.monotonic() + 20
        undecided = "SELECT count(*) FROM payments WHERE id = ANY($1) AND state IN ('UNKNOWN', 'PENDING')"
        while await pool.fetchval(undecided, ids) and time.monotonic() < deadline:
            if not await resolver.run_once():
                await asyncio.sleep(0.05)
        truth = (await simulator_truth(url))["payments"]

    charges = {payment_id: [p for p in truth if p["reference"] == str(payment_id)] for payment_id in ids}
    twice = {payment_id: found for payment_id, found in charges.items() if len(found) > 1}
    assert twice == {}, f"{len(twice)} payments were charged more than once"
    assert await pool.fetchval(undecided, ids) == 0, "payments still undecided after 20 s of resolving"
    rows = await pool.fetch(
        "SELECT p.id, p.state, (SELECT count(*) FROM ledger_entries e WHERE e.payment_id = p.id) AS entries"
        " FROM payments p WHERE p.id = ANY($1)",
        ids,
    )
    assert len(rows) == len(ids)
    for row in rows:
        [charge] = charges[row["id"]]  # an UNKNOWN payment the provider never saw is resent, under its own key
        assert charge["idempotency_key"] == str(row["id"])
        assert PaymentState(row["state"]) is TRUE_STATES[charge["final_status"]], charge
        assert row["entries"] == (1 if row["state"] == "SUCCEEDED" else 0)


async def test_a_dead_provider_opens_the_breaker_calls_fail_fast_and_a_probe_closes_it(
    tmp_path: Path, database: Database
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    changes: list[str] = []
    breaker = Breaker(
        "simulator.payments",
        BreakerSettings(failures_max=3, open_s=0.5),
        on_change=lambda _, old, new: changes.append(f"{old.value}->{new.value}"),
    )
    async with aiohttp.ClientSession() as session:
        gateway = GatewayClient("simulator", f"http://127.0.0.1:{port}", session, breaker)
        for _ in range(3):  # nothing listens: connection refused, nothing sent, counted
            with pytest.raises(NotSent):
                await gateway.create_payment(str(uuid.uuid4()), Decimal("1.00"), "EUR", "r", timeout_s=1)
        assert breaker.state is BreakerState.OPEN
        latencies = []
        for _ in range(200):
            started = time.perf_counter()
            with pytest.raises(NotSent) as refused:
                await gateway.create_payment(str(uuid.uuid4()), Decimal("1.00"), "EUR", "r", timeout_s=1)
            latencies.append(time.perf_counter() - started)
        assert 0 < refused.value.retry_after_s <= 0.5
        assert statistics.quantiles(latencies, n=100)[98] < 0.001  # p99 under a millisecond

        # the provider comes back on that port; after the open period one probe closes the breaker
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulator", "--port", str(port), "--seed", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            await asyncio.wait_for(process.stdout.readline(), 15)
            await asyncio.sleep(0.5)  # the breaker's open period (open_s) passes: the behaviour under test
            answer = await gateway.create_payment(str(uuid.uuid4()), Decimal("1.00"), "EUR", "r", timeout_s=2)
            assert answer.status == "pending"
            assert breaker.state is BreakerState.CLOSED
        finally:
            process.terminate()
            await process.wait()
    assert changes == ["closed->open", "open->half_open", "half_open->closed"]


async def _unknown_payments(database: Database, principal: Principal, count: int) -> list[uuid.UUID]:
    ids = []
    for _ in range(count):
        created = await create_and_submit(
            database, None, principal, create_payment_command(amount="31.00"), Budget.within(5)
        )
        no_answer = Evidence("test.timeout", "t", witness=Witness.BALLAST)
        await apply_evidence(database, created.payment.id, PaymentEvent.OUTCOME_UNKNOWN, no_answer)
        ids.append(created.payment.id)
    return ids


async def test_two_resolvers_never_ask_about_the_same_payment_at_once(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    asked: list[str] = []

    class Counting(GatewayClient):
        async def find_payment(self, idempotency_key: str, timeout_s: float) -> Any:
            asked.append(idempotency_key)
            return await super().find_payment(idempotency_key, timeout_s)

    ids = await _unknown_payments(database, principal, 30)
    # no webhooks: a webhook's claim would make a payment due for another check, on purpose
    quiet = FAST | {"webhook_drop_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **quiet) as url, aiohttp.ClientSession() as session:
        gateway = Counting("simulator", url, session, Breaker("simulator.payments", BreakerSettings()))
        settings = PaymentResolverSettings(unknown_grace_s=0, batch_size=10, lease_s=60)
        resolvers = [PaymentResolver(database, gateway, settings), PaymentResolver(database, gateway, settings)]
        while await pool.fetchval(
            "SELECT count(*) FROM payments WHERE id = ANY($1) AND state = 'UNKNOWN' AND next_check_at IS NULL", ids
        ):
            await asyncio.gather(*(resolver.run_once() for resolver in resolvers))
    mine = [key for key in asked if uuid.UUID(key) in set(ids)]
    assert sorted(mine) == sorted(str(payment_id) for payment_id in ids)  # each asked about exactly once
    states = await pool.fetch("SELECT state FROM payments WHERE id = ANY($1)", ids)
    assert {row["state"] for row in states} <= {"PENDING", "SUCCEEDED", "FAILED"}  # resubmitted, under its key


async def test_a_resolver_checks_the_other_due_payments_at_once_while_one_is_locked_by_another_transaction(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Resolvers skip a payment another transaction holds (a webhook, a refund, another worker's claim):
    they never wait for its lock before checking the rest."""
    locked, *others = await _unknown_payments(database, principal, 6)
    # due before any other test's payment, so that this resolver's batch holds them all
    await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = ANY($1)", [locked, *others])
    async with answering_provider() as provider:
        for payment_id in (locked, *others):
            provider.says(payment_id, "succeeded", amount="31.00", currency="EUR")
        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("SELECT 1 FROM payments WHERE id = $1 FOR UPDATE", locked)
            await asyncio.wait_for(provider.resolver(database).run_once(), 5)
            states = await pool.fetch("SELECT id, state FROM payments WHERE id = ANY($1)", [locked, *others])
            assert {row["id"]: row["state"] for row in states} == {locked: "UNKNOWN"} | dict.fromkeys(
                others, "SUCCEEDED"
            )
            assert provider.times_asked(locked) == 0
        await provider.settle(database, [locked])  # the lock gone, the next check takes it
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", locked) == "SUCCEEDED"


async def test_a_payment_the_provider_never_answers_for_ends_in_one_case(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    [payment_id] = await _unknown_payments(database, principal, 1)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    async with aiohttp.ClientSession() as session:
        gateway = GatewayClient("simulator", dead, session, Breaker("dead", BreakerSettings(failures_max=1000)))
        resolver = PaymentResolver(
            database, gateway, PaymentResolverSettings(unknown_grace_s=0, backoff_base_s=0, checks_max=3)
        )
        for _ in range(5):
            await pool.execute(
                "UPDATE payments SET next_check_at = now() WHERE id = $1 AND next_check_at <> 'infinity'", payment_id
            )
            await resolver.run_once()
    row = await pool.fetchrow("SELECT state, check_attempts, next_check_at FROM payments WHERE id = $1", payment_id)
    assert (row["state"], row["check_attempts"]) == ("UNKNOWN", 3)
    cases = await pool.fetch("SELECT kind, status FROM cases WHERE payment_id = $1", payment_id)
    assert [(case["kind"], case["status"]) for case in cases] == [("UNRESOLVED_OUTCOME", "OPEN")]


async def test_contradictory_webhooks_never_decide_a_payment_the_providers_api_does(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    # every final webhook is preceded by a claim of the opposite outcome: "failed", then "succeeded"
    settings = FAST | {"success_rate": 1.0, "webhook_contradict_rate": 1.0}
    async with simulated_provider(tmp_path, database, "calm", **settings) as url, aiohttp.ClientSession() as session:
        gateway = GatewayClient("simulator", url, session, Breaker("simulator.payments", BreakerSettings()))
        payment = (
            await create_and_submit(
                database, gateway, principal, create_payment_command(amount="31.00"), Budget.within(5)
            )
        ).payment
        deadline = time.monotonic() + 20
        while (
            await pool.fetchval(
                "SELECT count(DISTINCT status) FROM provider_statuses WHERE payment_id = $1 AND status <> 'pending'",
                payment.id,
            )
            < 2
        ):
            assert time.monotonic() < deadline, "the contradictory webhooks did not arrive"
            await asyncio.sleep(0.05)
        row = await pool.fetchrow("SELECT state, next_check_at <= now() AS due FROM payments WHERE id = $1", payment.id)
        assert (row["state"], row["due"]) == ("PENDING", True)  # the webhooks moved nothing; Ballast must ask
        # the other tests' due payments wait; this one is checked first
        await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = $1", payment.id)
        await PaymentResolver(database, gateway).run_once()
    transitions = await pool.fetch(
        "SELECT to_state, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment.id
    )
    assert [(t["to_state"], t["cause"]) for t in transitions] == [
        ("PENDING", "provider.response"),
        ("SUCCEEDED", "resolver.inquiry"),  # the provider's API, asked by id, decided
    ]
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment.id) == 1
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE payment_id = $1", payment.id) == 0


async def test_an_open_breaker_records_the_payment_unsent_answers_unavailable_and_announces_itself(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    name = f"dead-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        breaker = Breaker(name, BreakerSettings(failures_max=1, open_s=60), on_change=breaker_announcer(database))
        gateway = GatewayClient("simulator", dead, session, breaker)
        key = str(uuid.uuid4())
        with pytest.raises(ProviderUnavailable):  # refused connection: not sent, and the breaker opens
            await create_and_submit(
                database, gateway, principal, create_payment_command(key, "31.00"), Budget.within(2)
            )
        with pytest.raises(ProviderUnavailable) as refused:  # the retry, with its key, fails fast
            await create_and_submit(
                database, gateway, principal, create_payment_command(key, "31.00"), Budget.within(2)
            )
    assert 0 < refused.value.retry_after_s <= 60
    code, message, trailers = status_for(refused.value)
    assert code is grpc.StatusCode.UNAVAILABLE and "retryable" in message
    details = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"]).details
    retry = error_details_pb2.RetryInfo()
    assert details[0].Unpack(retry) and retry.retry_delay.seconds > 0
    state = await pool.fetchval(
        "SELECT state FROM payments WHERE client_id = $1 AND idempotency_key = $2", principal.client_id, key
    )
    assert state == "RECORDED"  # recorded, not sent: distinct from UNKNOWN
    deadline = time.monotonic() + 5
    while not await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = 'providers.breaker_state_changed' AND message_key = $1", name
    ):
        assert time.monotonic() < deadline, "the breaker's opening was not announced"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Honest deadlines and never charging twice
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["hang_rate", "accept_then_timeout_rate"])
async def test_create_payment_against_a_hanging_provider_answers_in_time_and_never_charges_twice(
    tmp_path: Path, database: Database, principal: Principal, pool: asyncpg.Pool, fault: str
) -> None:
    # the provider decides only after the caller's deadline, so no webhook can answer for it first
    settings = {
        "settle_min_ms": 2000,
        "settle_max_ms": 2500,
        "webhook_retry_base_ms": 20,
        "success_rate": 1.0,
        fault: 1.0,
    }
    async with simulated_provider(tmp_path, database, "calm", **settings) as url, aiohttp.ClientSession() as session:
        gateway = GatewayClient(
            "simulator", url, session, Breaker(f"adv.{fault}", BreakerSettings(failures_max=10_000))
        )
        keys = [f"hang-{uuid.uuid4()}" for _ in range(10)]
        elapsed: list[float] = []
        states: list[PaymentState] = []

        async def call(key: str) -> None:
            started = time.monotonic()
            try:
                result = await create_and_submit(
                    database, gateway, principal, create_payment_command(key, "31.00"), Budget.within(DEADLINE_S)
                )
                states.append(result.payment.state)
            except (ProviderUnavailable, DeadlineExceeded):
                states.append(PaymentState.RECORDED)
            elapsed.append(time.monotonic() - started)

        # every key called three times (retries after each deadline), concurrently
        for _ in range(3):
            await asyncio.gather(*(call(key) for key in keys))
        assert max(elapsed) < DEADLINE_S + DEADLINE_SLACK_S, max(elapsed)
        # an honest answer: unknown (or unsent), or what a webhook already said meanwhile
        # (accept-then-timeout: the provider's own "pending" webhook may arrive before the timeout)
        if fault == "hang_rate":
            assert PaymentState.UNKNOWN in states[:10], states
        assert set(states) <= {PaymentState.UNKNOWN, PaymentState.RECORDED, PaymentState.PENDING}, states

        # the provider recovers; the resolver (and more retries) settle everything
        async with session.put(f"{url}/_sim/profile", json={"settings": {fault: 0.0}}) as response:
            assert response.status == 200
        resolver = PaymentResolver(
            database,
            gateway,
            PaymentResolverSettings(
                unknown_grace_s=0, pending_overdue_s=0, backoff_base_s=0, batch_size=200, provider_timeout_s=2
            ),
        )
        deadline = time.monotonic() + 30
        while await count_rows(
            pool,
            "SELECT count(*) FROM payments WHERE client_id = $1 AND state NOT IN ('SUCCEEDED')",
            principal.client_id,
        ):
            assert time.monotonic() < deadline, await pool.fetch(
                "SELECT state, count(*) FROM payments WHERE client_id = $1 GROUP BY state", principal.client_id
            )
            await pool.execute(
                "UPDATE payments SET next_check_at = '-infinity' WHERE id IN (SELECT id FROM payments"
                " WHERE client_id = $1 AND state IN ('PENDING', 'UNKNOWN') FOR UPDATE SKIP LOCKED)",
                principal.client_id,
            )
            await asyncio.gather(resolver.run_once(), *(call(key) for key in keys))
            await asyncio.sleep(0.05)
        truth = await simulator_truth(url)
    ids = [row["id"] for row in await pool.fetch("SELECT id FROM payments WHERE client_id = $1", principal.client_id)]
    assert len(ids) == 10
    mine = {str(i) for i in ids}
    provider_keys = [p["idempotency_key"] for p in truth["payments"] if p["idempotency_key"] in mine]
    assert sorted(provider_keys) == sorted(mine)  # one provider payment per idempotency key
    for payment_id in ids:
        assert await ledger_entries_of(pool, payment_id) == 1


async def test_a_provider_answer_in_a_status_ballast_does_not_know_is_an_unknown_outcome_not_an_error(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """The provider took the request and answered a status word with no mapping: whether it took the
    money is unknown, so the payment is UNKNOWN (the resolver asks), the caller is answered, and the
    word is kept beside the move as what the provider said. Never INTERNAL, never a guess."""

    async def mystery(request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        return web.json_response({"id": f"pay_{key[:8]}", "status": "teleported", "idempotency_key": key})

    app = web.Application()
    app.router.add_post("/v1/payments", mystery)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            gateway = GatewayClient("simulator", url, session, Breaker("adv.mystery", BreakerSettings()))
            result = await create_and_submit(
                database,
                gateway,
                principal,
                create_payment_command(f"mystery-{uuid.uuid4()}", "31.00"),
                Budget.within(5),
            )
    finally:
        await runner.cleanup()
    assert result.payment.state is PaymentState.UNKNOWN
    assert (
        await count_rows(
            pool,
            "SELECT count(*) FROM payment_transitions WHERE payment_id = $1 AND to_state = 'UNKNOWN'"
            " AND cause = 'provider.unknown_status' AND evidence_ref LIKE '%teleported%'",
            result.payment.id,
        )
        == 1
    )
