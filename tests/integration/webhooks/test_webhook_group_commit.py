"""Webhook intake applies concurrent deliveries in group commits: deliveries that arrive together are
applied together in arrival order, answered after their commit, and one bad event fails alone.

Each test makes a batch happen on purpose: a first delivery is held up behind a payment row lock that
the test holds, so the deliveries sent meanwhile queue up and go to PostgreSQL together. A claimed
outcome moves nothing (it makes the payment due for a check with the provider's API): the tests then
let a resolver ask a provider that answers as they tell it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from server.db.database import Budget, Database
from server.domain.errors import Unavailable
from server.domain.identity import Principal
from server.services.webhook_application import Outcome, WebhookSource
from server.services.webhooks import Intake
from tests.support import answering_provider
from tests.support.faults import allow_inserts, hold_row, refuse_inserts
from tests.support.probes import due_for_check
from tests.support.requests import new_payments
from tests.support.webhooks import payment_event, signed_headers, until_queued

SECRET = "whsec_group_commit_test"  # noqa: S105 - a test secret
SOURCE = WebhookSource("simulator", SECRET)

Receive = Callable[[bytes], Coroutine[Any, Any, Outcome]]


def _object_id(payment_id: uuid.UUID) -> str:
    """The provider's own id for the payment, in its events and its API's answers."""
    return f"pay_{payment_id.hex[:12]}"


@pytest.fixture
async def intake(database: Database) -> AsyncIterator[Intake]:
    intake = Intake(database, writers=1)  # one writer: a held-up batch holds up the next one
    await intake.start()
    yield intake
    await intake.stop()


@pytest.fixture
def receive(intake: Intake) -> Receive:
    async def send(body: bytes) -> Outcome:
        return await intake.receive(SOURCE, signed_headers(body, SECRET), body, Budget.within(10))

    return send


@asynccontextmanager
async def _held_up(pool: asyncpg.Pool, receive: Receive, payment_id: uuid.UUID) -> AsyncIterator[asyncio.Task[Outcome]]:
    """A delivery about `payment_id` (a claim of success) that the writer has taken and cannot finish
    until the block ends."""
    held = await hold_row(pool, "payments", payment_id)
    try:
        first = asyncio.create_task(receive(payment_event(payment_id, "succeeded")))
        await held.waited_for("the first delivery reached the database and waits for the payment's row")
        yield first
    finally:
        await held.release()
    assert await first == Outcome.CONFIRMING


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def _sent_meanwhile(intake: Intake, receive: Receive, bodies: list[bytes]) -> list[asyncio.Task[Outcome]]:
    """`bodies` sent while the writer is held up: each is verified, parsed and queued, waiting for it."""
    tasks = [asyncio.create_task(receive(body)) for body in bodies]
    await until_queued(intake, len(bodies))
    return tasks


async def test_deliveries_that_arrive_together_commit_together_in_arrival_order(
    intake: Intake, receive: Receive, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    blocker, two_events, other = await new_payments(database, principal, 3, "12.50")
    repeated = payment_event(two_events, "succeeded")
    batches_before = _sample("ballast_webhook_batch_deliveries_count")
    async with _held_up(pool, receive, blocker):
        tasks = await _sent_meanwhile(
            intake,
            receive,
            [payment_event(two_events, "pending"), repeated, repeated, payment_event(other, "succeeded")],
        )
        assert not any(task.done() for task in tasks), "answered before anything committed"
    outcomes = [await task for task in tasks]
    assert outcomes == [Outcome.APPLIED, Outcome.CONFIRMING, Outcome.DUPLICATE, Outcome.CONFIRMING]
    assert _sample("ballast_webhook_batch_deliveries_count") - batches_before == 2  # the held-up one, then the rest
    moves = await pool.fetch(
        "SELECT from_state, to_state FROM payment_transitions WHERE payment_id = $1 ORDER BY id", two_events
    )
    assert [(m["from_state"], m["to_state"]) for m in moves] == [("RECORDED", "PENDING")]
    # applied in arrival order: the evidence is kept in that order, and the payment notes the last word
    observed = await pool.fetch("SELECT status FROM provider_statuses WHERE payment_id = $1 ORDER BY id", two_events)
    assert [row["status"] for row in observed] == ["pending", "succeeded"]
    assert await pool.fetchval("SELECT provider_status FROM payments WHERE id = $1", two_events) == "succeeded"
    expected = {blocker: "RECORDED", two_events: "PENDING", other: "RECORDED"}
    for payment_id, state in expected.items():  # the claims of success moved nothing: a check is due
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == state
        assert await due_for_check(pool, payment_id)
        assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    repeated_id = json.loads(repeated)["id"]
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", repeated_id) == 2
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", repeated_id) == 1
    async with answering_provider() as provider:  # the provider's API confirms each claim: it decides
        for payment_id in expected:
            provider.says(
                payment_id, "succeeded", amount="12.50", currency="EUR", provider_payment_id=_object_id(payment_id)
            )
        await provider.settle(database, list(expected))
    moves = await pool.fetch(
        "SELECT from_state, to_state, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", two_events
    )
    assert [(m["from_state"], m["to_state"], m["cause"]) for m in moves] == [
        ("RECORDED", "PENDING", "webhook.simulator"),
        ("PENDING", "SUCCEEDED", "resolver.inquiry"),
    ]
    for payment_id in expected:
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
        assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def test_an_event_that_fails_in_a_batch_fails_alone_and_its_redelivery_applies_it(
    intake: Intake, receive: Receive, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    blocker, bad, *good = await new_payments(database, principal, 5, "12.50")
    # PostgreSQL refuses to keep any provider's word about `bad`: its event fails wherever it is applied
    name = await refuse_inserts(pool, "provider_statuses", "payment_id", bad)
    bad_body = payment_event(bad, "succeeded")
    split_before = _sample("ballast_webhook_batches_split_total")
    try:
        async with _held_up(pool, receive, blocker):
            tasks = await _sent_meanwhile(
                intake,
                receive,
                [payment_event(good[0], "succeeded"), bad_body]
                + [payment_event(payment_id, "succeeded") for payment_id in good[1:]],
            )
        results: list[Any] = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await allow_inserts(pool, name, "provider_statuses")
    assert _sample("ballast_webhook_batches_split_total") - split_before == 1
    assert isinstance(results[1], asyncpg.PostgresError) and "injected failure" in str(results[1])
    assert results[:1] + results[2:] == [Outcome.CONFIRMING] * len(good)
    bad_id = json.loads(bad_body)["id"]
    # nothing of the failed event stayed: no processed row, no delivery, no evidence, no check made due
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", bad_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", bad_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", bad) == 0
    row = await pool.fetchrow("SELECT state, next_check_at FROM payments WHERE id = $1", bad)
    assert (row["state"], row["next_check_at"]) == ("RECORDED", None)
    for payment_id in good:  # its neighbours' claims were kept, each making its payment due for a check
        assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 1
        assert await due_for_check(pool, payment_id)
    assert await receive(bad_body) == Outcome.CONFIRMING  # the provider delivers it again
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", bad_id) == 1
    assert await due_for_check(pool, bad)
    async with answering_provider() as provider:  # and the provider's API confirms every claim
        for payment_id in (blocker, bad, *good):
            provider.says(
                payment_id, "succeeded", amount="12.50", currency="EUR", provider_payment_id=_object_id(payment_id)
            )
        await provider.settle(database, [blocker, bad, *good])
    for payment_id in (blocker, bad, *good):
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
        assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def test_stopping_answers_every_waiting_delivery_as_not_confirmed(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    intake = Intake(database, writers=1)
    await intake.start()

    async def receive(body: bytes) -> Outcome:
        return await intake.receive(SOURCE, signed_headers(body, SECRET), body, Budget.within(10))

    blocker, queued = await new_payments(database, principal, 2, "12.50")
    bodies = [payment_event(blocker, "succeeded"), payment_event(queued, "succeeded")]
    held = await hold_row(pool, "payments", blocker)
    try:
        first = asyncio.create_task(receive(bodies[0]))
        await held.waited_for("the writer took the first delivery and waits for the blocker's row")
        second = asyncio.create_task(receive(bodies[1]))
        await until_queued(intake, 1)
        await intake.stop()
        results = await asyncio.gather(first, second, return_exceptions=True)
    finally:
        await held.release()
    assert all(isinstance(result, Unavailable) for result in results), results
    for payment_id in (blocker, queued):  # nothing kept, nothing made due: the provider delivers them again
        row = await pool.fetchrow("SELECT state, next_check_at FROM payments WHERE id = $1", payment_id)
        assert (row["state"], row["next_check_at"]) == ("RECORDED", None)
        assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 0
    event_ids = [json.loads(body)["id"] for body in bodies]
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = ANY($1)", event_ids) == 0
    with pytest.raises(Unavailable):
        await receive(payment_event(queued, "succeeded"))
