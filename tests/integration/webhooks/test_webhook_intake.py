"""Webhook intake over real HTTP against PostgreSQL: authentic events applied once, evidence kept,
forgeries and replays refused, failures redelivered. A webhook is a signal, not the witness that
decides: a claimed outcome makes Ballast ask the provider's API (here a provider that answers as the
test tells it), whose answer decides, corrects, or goes to a person."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from server.db.database import Database
from server.domain.identity import Principal
from server.services.webhooks import INTAKE_FULL_RETRY_AFTER_S, Intake
from tests.support import answering_provider, until
from tests.support.faults import allow_inserts, refuse_inserts
from tests.support.probes import count_rows, due_for_check, sessions_waiting_for
from tests.support.requests import new_payment
from tests.support.webhooks import PROVIDER, payment_event, sign, signed_headers, webhook_endpoint

SECRET = "whsec_intake_test"  # noqa: S105 - a test secret
#: the provider's own id for every payment in these events (its API must name the same one)
OBJECT_ID = "pay_test"

Post = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


def _event(payment_id: uuid.UUID, status: str, event_id: str | None = None, sequence: int = 1) -> bytes:
    return payment_event(payment_id, status, event_id, object_id=OBJECT_ID, sequence=sequence)


@pytest.fixture
async def post(database: Database) -> AsyncIterator[Post]:
    async with webhook_endpoint(database, SECRET) as endpoint:
        yield endpoint.post


async def test_a_hundred_concurrent_deliveries_of_one_event_apply_it_once(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    body = _event(payment_id, "succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    event_id = json.loads(body)["id"]
    replies = await asyncio.gather(*(post(body) for _ in range(100)))
    assert {status for status, _ in replies} == {200}
    outcomes = sorted(reply["outcome"] for _, reply in replies)
    assert outcomes.count("confirming") == 1 and outcomes.count("duplicate") == 99, outcomes
    # the claim is kept once, moves nothing, and makes the payment due for a check with the provider's API
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "RECORDED"
    assert await due_for_check(pool, payment_id)
    assert await count_rows(pool, "SELECT count(*) FROM payment_transitions WHERE payment_id = $1", payment_id) == 0
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    assert await count_rows(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", event_id) == 100
    assert await count_rows(pool, "SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 1
    observed = "SELECT count(*) FROM provider_statuses WHERE payment_id = $1 AND evidence_ref = $2"
    assert await count_rows(pool, observed, payment_id, f"{PROVIDER}:{event_id}") == 1
    async with answering_provider() as provider:  # the provider's API confirms the claim: it decides
        provider.says(payment_id, "succeeded", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await provider.settle(database, [payment_id])
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    moves = await pool.fetch("SELECT to_state, cause FROM payment_transitions WHERE payment_id = $1", payment_id)
    assert [(m["to_state"], m["cause"]) for m in moves] == [("SUCCEEDED", "resolver.inquiry")]
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1
    # the provider delivers it again, a hundred times: nothing more happens
    replies = await asyncio.gather(*(post(body) for _ in range(100)))
    assert {reply["outcome"] for _, reply in replies} == {"duplicate"}
    assert not await due_for_check(pool, payment_id)
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def test_a_forged_or_replayed_webhook_is_refused_and_stores_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    body = _event(payment_id, "succeeded")
    before = await count_rows(
        pool,
        "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
        str(payment_id),
    )
    for signature in (
        "",
        "t=1,v1=00",
        sign(body, "whsec_wrong"),
        sign(body, SECRET, timestamp=int(time.time()) - 3600),
    ):
        status, _ = await post(body, signature=signature)
        assert status == 401, signature
    tampered = body.replace(b"succeeded", b"failed")
    assert (await post(tampered, signature=sign(body, SECRET)))[0] == 401
    assert (
        await count_rows(
            pool,
            "SELECT count(*) FROM webhook_deliveries WHERE position(convert_to($1, 'UTF8') IN body) > 0",
            str(payment_id),
        )
        == before
    )
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "RECORDED"
    assert (await post(body, provider="nobody"))[0] == 404


async def test_pending_failed_succeeded_webhooks_only_make_ballast_ask_and_the_providers_answer_decides(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    outcomes = []
    for sequence, status in enumerate(("pending", "failed", "succeeded", "succeeded", "pending"), start=1):
        _, reply = await post(_event(payment_id, status, sequence=sequence))
        outcomes.append(reply["outcome"])
    assert outcomes == ["applied", "confirming", "confirming", "confirming", "repeat"]
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "PENDING"
    assert await due_for_check(pool, payment_id)
    observed = await pool.fetch("SELECT status FROM provider_statuses WHERE payment_id = $1 ORDER BY id", payment_id)
    assert [row["status"] for row in observed] == ["pending", "failed", "succeeded", "succeeded", "pending"]
    async with answering_provider() as provider:
        provider.says(
            payment_id, "failed", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID
        )  # the provider's truth
        await provider.settle(database, [payment_id])
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "FAILED"
        # a late claim of success is kept and makes Ballast ask again; the provider stands by its word
        _, reply = await post(_event(payment_id, "succeeded", sequence=6))
        assert reply["outcome"] == "confirming"
        assert await due_for_check(pool, payment_id)
        await provider.settle(database, [payment_id])
        assert provider.times_asked(payment_id) == 2
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "FAILED"
    moves = await pool.fetch(
        "SELECT from_state, to_state, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
    )
    assert [(m["from_state"], m["to_state"], m["cause"]) for m in moves] == [
        ("RECORDED", "PENDING", "webhook.simulator"),
        ("PENDING", "FAILED", "resolver.inquiry"),
    ]
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
    assert (
        await count_rows(
            pool, "SELECT count(*) FROM outbox WHERE topic = 'cases.opened' AND message_key = $1", str(payment_id)
        )
        == 0
    )


async def test_the_provider_took_the_money_pending_failed_succeeded_webhooks_end_succeeded_once_with_no_case(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """The provider took the money; its webhooks said pending, failed, succeeded, in that order. The
    failed claim decides nothing: Ballast asks, and the provider's API answer decides."""
    payment_id = await new_payment(database, principal)
    outcomes = []
    for sequence, status in enumerate(("pending", "failed", "succeeded"), start=1):
        status_code, reply = await post(_event(payment_id, status, sequence=sequence))
        assert status_code == 200, reply
        outcomes.append(reply["outcome"])
    assert outcomes == ["applied", "confirming", "confirming"]
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "PENDING"
    assert await due_for_check(pool, payment_id)
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    async with answering_provider() as provider:
        provider.says(payment_id, "succeeded", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await provider.settle(database, [payment_id])
        assert provider.times_asked(payment_id) == 1
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    decided = await pool.fetchrow(
        "SELECT from_state, event, cause, evidence_ref FROM payment_transitions"
        " WHERE payment_id = $1 AND to_state = 'SUCCEEDED'",
        payment_id,
    )
    assert dict(decided) == {
        "from_state": "PENDING",
        "event": "SUCCEEDED",
        "cause": "resolver.inquiry",
        "evidence_ref": f"simulator:{OBJECT_ID}",
    }
    answer = await pool.fetchrow(
        "SELECT status FROM provider_statuses WHERE payment_id = $1 AND evidence_ref = $2",
        payment_id,
        f"simulator:{OBJECT_ID}",
    )
    assert answer is not None and answer["status"] == "succeeded"  # the evidence that decided it, kept
    assert await count_rows(pool, "SELECT count(*) FROM payment_transitions WHERE payment_id = $1", payment_id) == 2
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1
    assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
    assert not await due_for_check(pool, payment_id)


async def test_a_late_pending_webhook_keeps_the_check_a_claim_asked_for(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Webhooks come out of order: the final one, then the pending one (the simulator's reorder fault).
    The pending one may move the payment, but the claim of success is still unconfirmed: its check
    stays due now."""
    payment_id = await new_payment(database, principal)
    outcomes = [(await post(_event(payment_id, status)))[1]["outcome"] for status in ("succeeded", "pending")]
    assert outcomes == ["confirming", "applied"]
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "PENDING"
    assert await due_for_check(pool, payment_id)
    async with answering_provider() as provider:
        provider.says(payment_id, "succeeded", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await provider.settle(database, [payment_id])
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def test_a_provider_that_changes_its_mind_is_corrected_once_then_sent_to_a_person(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    async with answering_provider() as provider:

        async def claim_and_ask(status: str) -> None:
            _, reply = await post(_event(payment_id, status))
            assert reply["outcome"] == "confirming", reply
            assert await due_for_check(pool, payment_id)
            await provider.settle(database, [payment_id])

        provider.says(payment_id, "failed", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await claim_and_ask("failed")
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "FAILED"
        # the provider's API now says it took the money: corrected without a person, the capture posted
        provider.says(payment_id, "succeeded", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await claim_and_ask("succeeded")
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
        assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1
        assert await count_rows(pool, "SELECT count(*) FROM cases WHERE payment_id = $1", payment_id) == 0
        # and back to failed, twice: taking the money back from the merchant waits for a person
        provider.says(payment_id, "failed", amount="25.00", currency="EUR", provider_payment_id=OBJECT_ID)
        await claim_and_ask("failed")
        await claim_and_ask("failed")
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "SUCCEEDED"
    moves = await pool.fetch(
        "SELECT from_state, to_state, event, approved_by FROM payment_transitions WHERE payment_id = $1 ORDER BY id",
        payment_id,
    )
    assert [tuple(m.values()) for m in moves] == [
        ("RECORDED", "FAILED", "FAILED", None),
        ("FAILED", "SUCCEEDED", "CORRECTION", None),
    ]
    assert await count_rows(pool, "SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1
    cases = await pool.fetch("SELECT kind, status, evidence FROM cases WHERE payment_id = $1", payment_id)
    assert len(cases) == 1
    assert (cases[0]["kind"], cases[0]["status"]) == ("CORRECTION_NEEDS_APPROVAL", "OPEN")
    pieces = cases[0]["evidence"]
    assert [(piece["claim"], piece["cause"], piece["witness"]) for piece in pieces] == [
        ("FAILED", "resolver.inquiry", "api"),
        ("FAILED", "resolver.inquiry", "api"),
    ]
    assert {(piece["proposed_correction"]["to_state"], piece["approval"]) for piece in pieces} == {("FAILED", "PERSON")}
    assert (
        await count_rows(
            pool, "SELECT count(*) FROM outbox WHERE topic = 'cases.opened' AND message_key = $1", str(payment_id)
        )
        == 2
    )


@pytest.mark.parametrize(
    ("status", "failing_table", "outcome", "state"),
    [
        ("pending", "payment_transitions", "applied", "PENDING"),  # news a webhook may apply: it moves
        ("succeeded", "provider_statuses", "confirming", "RECORDED"),  # a claim: kept, and a check made due
    ],
)
async def test_a_failing_handler_leaves_no_processed_row_and_the_redelivery_applies_it(
    post: Post,
    database: Database,
    principal: Principal,
    pool: asyncpg.Pool,
    status: str,
    failing_table: str,
    outcome: str,
    state: str,
) -> None:
    payment_id = await new_payment(database, principal)
    body = _event(payment_id, status, event_id=f"evt_{uuid.uuid4().hex}")
    event_id = json.loads(body)["id"]
    # PostgreSQL itself fails the handler's work, once, for this payment (a sequence survives the rollback)
    name = await refuse_inserts(pool, failing_table, "payment_id", payment_id, once=True)
    try:
        status_code, _ = await post(body)
        assert status_code >= 500
        processed = "SELECT count(*) FROM processed_events WHERE event_id = $1"
        assert await count_rows(pool, processed, event_id) == 0
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == "RECORDED"
        # nothing of it stayed: no evidence, no check made due
        assert await count_rows(pool, "SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 0
        assert await pool.fetchval("SELECT next_check_at FROM payments WHERE id = $1", payment_id) is None
        status_code, reply = await post(body)  # the provider delivers it again
        assert (status_code, reply["outcome"]) == (200, outcome)
        assert await count_rows(pool, processed, event_id) == 1
        assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == state
        assert await count_rows(pool, "SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 1
        assert await due_for_check(pool, payment_id) is (outcome == "confirming")
    finally:
        await allow_inserts(pool, name, failing_table)


async def test_an_event_about_nothing_of_ours_is_kept_and_acknowledged(post: Post, pool: asyncpg.Pool) -> None:
    body = _event(uuid.uuid4(), "succeeded")
    status, reply = await post(body)
    assert (status, reply["outcome"]) == (200, "ignored")
    assert (
        await count_rows(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", json.loads(body)["id"])
        == 1
    )
    status, _ = await post(b"not json")
    assert status == 400


async def test_an_event_about_a_refund_ballast_does_not_have_is_kept_and_ignored_never_taken_for_a_legs_report(
    post: Post, pool: asyncpg.Pool
) -> None:
    refund_id = uuid.uuid4()
    refund = {
        "id": "re_0123456789",
        "object": "refund",
        "payment": "pay_0123456789",
        "amount": "5.00",
        "currency": "EUR",
        "status": "succeeded",
        "idempotency_key": str(refund_id),
    }
    body = json.dumps(
        {"id": f"evt_{uuid.uuid4().hex}", "type": "refund.succeeded", "sequence": 2, "data": {"object": refund}}
    ).encode()
    legs_before = await count_rows(pool, "SELECT count(*) FROM leg_transitions")
    status, reply = await post(body)
    assert (status, reply["outcome"]) == (200, "ignored")
    assert (
        await count_rows(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", json.loads(body)["id"])
        == 1
    )
    assert await count_rows(pool, "SELECT count(*) FROM leg_transitions") == legs_before


def _queued() -> float:
    return REGISTRY.get_sample_value("ballast_webhook_intake_queued") or 0.0


async def test_a_full_intake_refuses_at_once_with_retry_after_and_keeps_nothing_of_what_it_refused(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """One writer, two places in the queue: while the writer waits on the database, two deliveries wait
    for it and a fourth is refused 503 with Retry-After, stored nowhere; delivered again once the intake
    has room, it is applied like any other."""
    intake = Intake(database, writers=1, batch_max=1, queue_max=2)
    bodies = [_event(await new_payment(database, principal), "pending") for _ in range(4)]
    async with webhook_endpoint(database, SECRET, intake) as endpoint:

        async def deliver(body: bytes) -> tuple[int, str | None]:
            headers = signed_headers(body, SECRET)
            async with endpoint.session.post(endpoint.url(), data=body, headers=headers) as reply:
                return reply.status, reply.headers.get("Retry-After")

        async with pool.acquire() as holder, holder.transaction():
            await holder.execute("LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE")  # the writer waits here
            first = asyncio.ensure_future(deliver(bodies[0]))
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")

            async def writer_waits() -> bool:
                return await sessions_waiting_for(holder, holder_pid) >= 1

            await until(writer_waits, "the writer reached the database and waits for the table")
            waiting = [asyncio.ensure_future(deliver(body)) for body in bodies[1:3]]
            await until(lambda: _queued() >= 2, "the two deliveries queued")
            assert await deliver(bodies[3]) == (503, str(INTAKE_FULL_RETRY_AFTER_S))
        assert [(await reply)[0] for reply in (first, *waiting)] == [200, 200, 200]
        refused_id = json.loads(bodies[3])["id"]
        assert not await count_rows(pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1", refused_id)
        assert await deliver(bodies[3]) == (200, None)  # the provider's redelivery, once there is room
        assert await count_rows(pool, "SELECT count(*) FROM processed_events WHERE event_id = $1", refused_id) == 1


async def test_a_refund_ballast_never_asked_for_opens_a_case_on_its_payment_and_moves_nothing(
    post: Post, database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal)
    provider_payment_id = f"pay_{uuid.uuid4().hex}"
    await pool.execute("UPDATE payments SET provider_payment_id = $2 WHERE id = $1", payment_id, provider_payment_id)
    refund = {
        "id": f"re_{uuid.uuid4().hex}",
        "object": "refund",
        "payment": provider_payment_id,
        "amount": "6.00",
        "currency": "EUR",
        "status": "succeeded",
        "idempotency_key": "made-on-the-dashboard",
    }
    body = json.dumps(
        {"id": f"evt_{uuid.uuid4().hex}", "type": "refund.succeeded", "sequence": 1, "data": {"object": refund}}
    ).encode()
    status, reply = await post(body)
    assert (status, reply["outcome"]) == (200, "unasked")
    case = await pool.fetchrow("SELECT kind, status, evidence FROM cases WHERE payment_id = $1", payment_id)
    assert case is not None and (case["kind"], case["status"]) == ("UNASKED_REFUND", "OPEN")
    assert case["evidence"][0]["provider_refund_id"] == refund["id"]
    row = await pool.fetchrow("SELECT state, refunded, refund_held FROM payments WHERE id = $1", payment_id)
    assert (row["state"], row["refunded"], row["refund_held"]) == ("RECORDED", 0, 0)
    # the same event again is a duplicate; about a payment Ballast does not have, it is ignored
    assert (await post(body))[1]["outcome"] == "duplicate"
    stranger = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "type": "refund.succeeded",
            "sequence": 1,
            "data": {"object": refund | {"payment": "pay_not_ours"}},
        }
    ).encode()
    assert (await post(stranger))[1]["outcome"] == "ignored"
