"""The order of witnesses, end to end against PostgreSQL and a provider over HTTP.

The provider's API, asked by id, decides a payment; a webhook only makes Ballast ask. A decided
state the API contradicts is corrected by the correction table (automatically, or once a person
approves), PostgreSQL refusing any other correction. Evidence that names other terms moves nothing
and opens a case. A RECORDED payment that was never sent and whose client never came back expires,
and is never sent late; one the provider does have is found without the client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from server.db.database import Budget, Database
from server.domain.cases import validate_resolve_case
from server.domain.errors import FailedPrecondition, NotFound
from server.domain.identity import Principal, Role
from server.domain.payment_states import PaymentEvent, PaymentState, Verdict, Witness
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.gateway import GatewayClient
from server.services import cases, exposures
from server.services.case_checks import CaseChecker
from server.services.check_loop import CheckSettings
from server.services.corrections import approve_correction
from server.services.payment_events import Evidence, PaymentOutcome
from server.services.payment_resolver import PaymentResolver, PaymentResolverSettings
from server.services.submission import create_and_submit
from tests.support import apply_evidence
from tests.support.probes import payment_state
from tests.support.requests import create_payment_command


@dataclass
class Provider:
    """A payment gateway speaking the simulator's API, whose answers each spec sets."""

    url: str = ""
    #: idempotency key -> the payment object the provider answers with
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    posts: list[str] = field(default_factory=list)
    #: the status a created payment gets
    status_on_create: str = "pending"

    def has(
        self, payment_id: uuid.UUID, status: str, amount: str = "12.34", currency: str = "EUR", object_id: str = "pay_x"
    ) -> None:
        self.payments[str(payment_id)] = {"id": object_id, "status": status, "amount": amount, "currency": currency}


def _exact_json(value: Any) -> str:
    """JSON with a Decimal written as the exact number it is (a provider that sends amounts as numbers)."""
    return json.dumps(value, default=lambda number: f"@@{number}@@").replace('"@@', "").replace('@@"', "")


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    state = Provider()

    async def find(request: web.Request) -> web.Response:
        found = state.payments.get(request.query.get("idempotency_key", ""))
        return web.json_response(found, dumps=_exact_json) if found else web.json_response({}, status=404)

    async def create(request: web.Request) -> web.Response:
        key, body = request.headers["Idempotency-Key"], await request.json()
        state.posts.append(key)
        if key not in state.payments:
            state.has(uuid.UUID(key), state.status_on_create, body["amount"], body["currency"])
        return web.json_response(state.payments[key])

    app = web.Application()
    app.router.add_get("/v1/payments", find)
    app.router.add_post("/v1/payments", create)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def gateway(provider: Provider) -> AsyncIterator[GatewayClient]:
    async with aiohttp.ClientSession() as session:
        yield GatewayClient("simulator", provider.url, session, Breaker("simulator.payments", BreakerSettings()))


async def _recorded(database: Database, principal: Principal, key: str | None = None) -> uuid.UUID:
    """A payment recorded and never sent (no gateway: as if the provider was never asked)."""
    created = await create_and_submit(database, None, principal, create_payment_command(key, "12.34"), Budget.within(5))
    return created.payment.id


async def _check_now(pool: asyncpg.Pool, resolver: PaymentResolver, payment_id: uuid.UUID) -> None:
    """Run resolver passes until one has checked this payment (put first in line; a pass takes one)."""
    await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = $1", payment_id)
    for _ in range(100):  # others put first in line by earlier specs go before it, one a pass
        await resolver.run_once()
        if await pool.fetchval(
            "SELECT next_check_at IS DISTINCT FROM '-infinity' FROM payments WHERE id = $1", payment_id
        ):
            return
    raise AssertionError(f"the resolver never claimed {payment_id}")


def _resolver(database: Database, gateway: GatewayClient, **settings: Any) -> PaymentResolver:
    return PaymentResolver(database, gateway, PaymentResolverSettings(batch_size=1, **settings))


def _api(status: str, amount: str | None = "12.34", currency: str | None = "EUR", object_id: str = "pay_x") -> Evidence:
    return Evidence(
        "resolver.inquiry",
        f"simulator:{object_id}",
        provider="simulator",
        provider_status=status,
        provider_payment_id=object_id,
        witness=Witness.API,
        amount=amount,
        currency_code=currency,
    )


def _webhook(
    status: str, amount: str | None = "12.34", currency: str | None = "EUR", object_id: str = "pay_x"
) -> Evidence:
    return Evidence(
        "webhook.simulator",
        f"simulator:evt_{uuid.uuid4().hex[:12]}",
        provider="simulator",
        provider_status=status,
        provider_payment_id=object_id,
        witness=Witness.WEBHOOK,
        amount=amount,
        currency_code=currency,
    )


async def _concluded(database: Database, payment_id: uuid.UUID, event: PaymentEvent, cause: str) -> None:
    """Ballast's own conclusion about a payment (no answer came; it expired)."""
    await apply_evidence(database, payment_id, event, Evidence(cause, "t", witness=Witness.BALLAST))


async def _clearing(pool: asyncpg.Pool, payment_id: uuid.UUID) -> Decimal:
    total = await pool.fetchval(
        "SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
        " WHERE e.payment_id = $1 AND l.account = 'provider_clearing'",
        payment_id,
    )
    return Decimal(total)


async def _cases(pool: asyncpg.Pool, payment_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await pool.fetch("SELECT * FROM cases WHERE payment_id = $1 ORDER BY opened_at", payment_id))


# -- a webhook is a signal, the API decides ----------------------------------------------------------


async def test_a_webhook_claiming_an_outcome_moves_nothing_and_makes_the_payment_due_at_once(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    judged = await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _webhook("succeeded"))
    assert judged.verdict is Verdict.CONFIRM
    row = await pool.fetchrow(
        "SELECT state, provider_status, next_check_at <= now() AS due FROM payments WHERE id = $1", payment_id
    )
    assert (row["state"], row["provider_status"], row["due"]) == ("RECORDED", "succeeded", True)
    assert await _clearing(pool, payment_id) == 0

    provider.has(payment_id, "failed")  # the API, asked, says otherwise: it decides
    await _check_now(pool, _resolver(database, gateway), payment_id)
    assert await payment_state(pool, payment_id) == "FAILED"
    assert await _clearing(pool, payment_id) == 0
    assert await _cases(pool, payment_id) == []


# -- corrections -------------------------------------------------------------------------------------


async def test_the_api_contradicting_a_failure_corrects_it_and_posts_the_capture_once(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    assert await payment_state(pool, payment_id) == "FAILED"
    # a late webhook says succeeded: Ballast asks, and the API stands by the success
    assert (
        await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _webhook("succeeded"))
    ).verdict is Verdict.CONFIRM
    provider.has(payment_id, "succeeded")
    await _check_now(pool, _resolver(database, gateway), payment_id)
    moves = await pool.fetch(
        "SELECT from_state, to_state, event, cause, approved_by FROM payment_transitions"
        " WHERE payment_id = $1 ORDER BY id",
        payment_id,
    )
    assert [tuple(move) for move in moves][-1] == ("FAILED", "SUCCEEDED", "CORRECTION", "resolver.inquiry", None)
    assert await _clearing(pool, payment_id) == Decimal("12.34")
    keys = await pool.fetch("SELECT event_key FROM ledger_entries WHERE payment_id = $1", payment_id)
    assert [row["event_key"] for row in keys] == [f"payment:{payment_id}:correction:1:captured"]
    announced = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE message_key = $1 AND payload->>'event' = 'CORRECTION'", str(payment_id)
    )
    assert announced == 1
    assert await _cases(pool, payment_id) == []
    # the same answer again is a repeat: nothing more is posted
    await _check_now(pool, _resolver(database, gateway), payment_id)
    assert await _clearing(pool, payment_id) == Decimal("12.34")


async def test_fifty_concurrent_api_answers_correct_a_payment_once(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    results = await asyncio.gather(
        *(apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded")) for _ in range(50)),
        return_exceptions=True,
    )
    verdicts = [r.verdict for r in results if isinstance(r, PaymentOutcome)]
    assert verdicts.count(Verdict.CORRECT) == 1
    assert set(verdicts) <= {Verdict.CORRECT, Verdict.REPEAT}
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await _clearing(pool, payment_id) == Decimal("12.34")
    corrections = await pool.fetchval(
        "SELECT count(*) FROM payment_transitions WHERE payment_id = $1 AND event = 'CORRECTION'", payment_id
    )
    assert corrections == 1


async def test_taking_money_back_from_a_merchant_waits_for_a_person_who_approves_it_once(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    judged = await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    assert judged.verdict is Verdict.HOLD and judged.case_id is not None
    assert await payment_state(pool, payment_id) == "SUCCEEDED"  # nothing moved
    [case] = await _cases(pool, payment_id)
    assert (case["kind"], case["status"]) == ("CORRECTION_NEEDS_APPROVAL", "OPEN")
    assert case["evidence"][-1]["proposed_correction"] == {"from_state": "SUCCEEDED", "to_state": "FAILED"}

    approved = await approve_correction(
        database, case["id"], PaymentState.FAILED, "ops.alice", "provider confirmed the decline", Budget.within(5)
    )
    assert (approved.outcome.from_state.value, approved.outcome.to_state and approved.outcome.to_state.value) == (
        "SUCCEEDED",
        "FAILED",
    )
    assert await payment_state(pool, payment_id) == "FAILED"
    assert await _clearing(pool, payment_id) == 0  # captured, then the capture reversed
    last = await pool.fetchrow(
        "SELECT event, approved_by, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id DESC LIMIT 1",
        payment_id,
    )
    assert tuple(last) == ("CORRECTION", "ops.alice", "case.approved")
    [case] = await _cases(pool, payment_id)
    assert case["status"] == "RESOLVED" and case["evidence"][-1]["approved_by"] == "ops.alice"
    with pytest.raises(NotFound):  # approved once: the case is closed
        await approve_correction(database, case["id"], PaymentState.FAILED, "ops.bob", "again", Budget.within(5))


async def test_an_approval_of_a_case_whose_payment_moved_since_is_refused_and_the_case_stays_open(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    judged = await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    await apply_evidence(database, payment_id, PaymentEvent.REFUND_REQUESTED, Evidence("test.refund", "r"))
    assert judged.case_id is not None
    with pytest.raises(FailedPrecondition):
        await approve_correction(
            database, judged.case_id, PaymentState.FAILED, "ops.alice", "stale proposal", Budget.within(5)
        )
    assert await payment_state(pool, payment_id) == "REFUND_PENDING"
    assert [case["status"] for case in await _cases(pool, payment_id)] == ["OPEN"]


async def test_a_payment_corrected_once_needs_a_person_for_the_next_correction(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    assert (
        await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    ).verdict is Verdict.CORRECT
    held = await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    assert held.verdict is Verdict.HOLD
    assert held.case_id is not None
    await approve_correction(
        database, held.case_id, PaymentState.FAILED, "ops.alice", "the provider reversed it", Budget.within(5)
    )
    # and a third word of the provider is held again, even the automatic kind
    again = await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    assert again.verdict is Verdict.HOLD
    assert await payment_state(pool, payment_id) == "FAILED"
    assert await _clearing(pool, payment_id) == 0


@pytest.mark.parametrize(
    ("event", "from_to", "approved_by", "constraint"),
    [
        ("CORRECTION", ("FAILED", "REJECTED"), None, "payment_correction_allowed"),  # not in the table
        ("CORRECTION", ("SUCCEEDED", "FAILED"), None, "payment_correction_approved"),  # needs a person
        ("SUCCEEDED", ("FAILED", "SUCCEEDED"), None, "payment_transition_allowed"),  # a correction is not an event
    ],
)
async def test_postgresql_refuses_corrections_the_table_does_not_allow(
    database: Database,
    principal: Principal,
    pool: asyncpg.Pool,
    event: str,
    from_to: tuple[str, str],
    approved_by: str | None,
    constraint: str,
) -> None:
    payment_id = await _recorded(database, principal)
    first = PaymentEvent.FAILED if from_to[0] == "FAILED" else PaymentEvent.SUCCEEDED
    await apply_evidence(database, payment_id, first, _api(from_to[0].lower()))
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await pool.execute(
            "INSERT INTO payment_transitions"
            " (payment_id, from_state, to_state, event, cause, evidence_ref, approved_by)"
            " VALUES ($1, $2, $3, $4, 'test', 'test', $5)",
            payment_id,
            *from_to,
            event,
            approved_by,
        )
    assert refused.value.constraint_name == constraint
    assert await payment_state(pool, payment_id) == from_to[0]


async def test_postgresql_refuses_a_second_automatic_correction_without_a_person(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.REJECTED, _api("rejected"))
    insert = (
        "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref, approved_by)"
        " VALUES ($1, $2, $3, 'CORRECTION', 'test', 'test', $4)"
    )
    await pool.execute(insert, payment_id, "REJECTED", "SUCCEEDED", None)  # the automatic kind, once
    await pool.execute(insert, payment_id, "SUCCEEDED", "FAILED", "ops.alice")  # a person's
    # FAILED -> SUCCEEDED is automatic in the table, but not for a payment corrected before
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await pool.execute(insert, payment_id, "FAILED", "SUCCEEDED", None)
    assert refused.value.constraint_name == "payment_correction_approved"


# -- evidence that does not fit ----------------------------------------------------------------------


@pytest.mark.parametrize("witness", [Witness.WEBHOOK, Witness.API])
async def test_evidence_naming_another_amount_or_currency_moves_nothing_and_opens_a_case(
    database: Database, principal: Principal, pool: asyncpg.Pool, witness: Witness
) -> None:
    payment_id = await _recorded(database, principal)
    claim = (_webhook if witness is Witness.WEBHOOK else _api)("succeeded", amount="99999.00", currency="USD")
    judged = await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, claim)
    assert judged.verdict is Verdict.MISFIT
    row = await pool.fetchrow(
        "SELECT state, provider_status, provider_payment_id, next_check_at FROM payments WHERE id = $1", payment_id
    )
    assert tuple(row) == ("RECORDED", None, None, None)  # not noted, not due, not moved
    assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == 1  # kept
    [case] = await _cases(pool, payment_id)
    assert case["kind"] == "EVIDENCE_MISMATCH"
    differing = {d["field"]: (d["ballast"], d["provider"]) for d in case["evidence"][-1]["differing"]}
    assert differing == {"amount": ("12.34", "99999.00"), "currency_code": ("EUR", "USD")}
    assert await _clearing(pool, payment_id) == 0


async def test_a_webhook_misfits_case_gets_the_providers_own_answer_and_nothing_moves(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    judged = await apply_evidence(
        database, payment_id, PaymentEvent.SUCCEEDED, _webhook("succeeded", amount="99999.00")
    )
    assert judged.verdict is Verdict.MISFIT
    [case] = await _cases(pool, payment_id)
    assert case["provider_check_due_at"] is not None  # the provider's own word is wanted
    provider.has(payment_id, "succeeded", object_id="pay_real")
    checker = CaseChecker(database, gateway, CheckSettings(batch_size=500))
    for _ in range(20):  # cases other specs left due go first
        await checker.run_once()
        [case] = await _cases(pool, payment_id)
        if case["provider_check_due_at"] is None:
            break
    assert case["provider_check_due_at"] is None  # asked once: the case is a person's now
    assert case["evidence"][-1] == {
        "claim": "SUCCEEDED",
        "cause": "case_check.inquiry",
        "evidence_ref": "simulator:pay_real",
        "provider_status": "succeeded",
    }
    kept = await pool.fetch("SELECT status, evidence_ref FROM provider_statuses WHERE payment_id = $1", payment_id)
    assert ("succeeded", "simulator:pay_real") in [tuple(row) for row in kept]
    assert await payment_state(pool, payment_id) == "RECORDED"  # nothing moves: settling the case is a person's call
    assert await _clearing(pool, payment_id) == 0


async def test_evidence_about_another_provider_object_moves_nothing(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.ACCEPTED, _api("pending", object_id="pay_mine"))
    judged = await apply_evidence(
        database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded", object_id="pay_other")
    )
    assert judged.verdict is Verdict.MISFIT
    assert await pool.fetchval("SELECT provider_payment_id FROM payments WHERE id = $1", payment_id) == "pay_mine"
    assert await payment_state(pool, payment_id) == "PENDING"
    [case] = await _cases(pool, payment_id)
    assert [d["field"] for d in case["evidence"][-1]["differing"]] == ["provider_payment_id"]
    # a second misfit joins the open case
    await apply_evidence(
        database, payment_id, PaymentEvent.SUCCEEDED, _webhook("succeeded", amount="1.00", object_id="pay_mine")
    )
    [case] = await _cases(pool, payment_id)
    assert len(case["evidence"]) == 2


# -- nothing depends on the client --------------------------------------------------------------------


async def test_a_recorded_payment_the_provider_has_is_found_without_the_client(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)  # as if the server died after the provider took it
    provider.has(payment_id, "succeeded")
    await pool.execute("UPDATE payments SET created_at = now() - interval '1 minute' WHERE id = $1", payment_id)
    await _check_now(pool, _resolver(database, gateway, provider_timeout_s=1.0), payment_id)
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await _clearing(pool, payment_id) == Decimal("12.34")
    assert provider.posts == []  # found, never sent by Ballast on its own


async def test_an_abandoned_recorded_payment_expires_and_a_retry_is_answered_expired_never_sent(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    key = str(uuid.uuid4())
    payment_id = await _recorded(database, principal, key)
    resolver = _resolver(database, gateway, provider_timeout_s=1.0, expiry_s=60.0)
    # younger than the expiry: asked about, unknown to the provider, left until it would expire
    await pool.execute("UPDATE payments SET created_at = now() - interval '10 seconds' WHERE id = $1", payment_id)
    await _check_now(pool, resolver, payment_id)
    row = await pool.fetchrow(
        "SELECT state, next_check_at - created_at AS wait FROM payments WHERE id = $1", payment_id
    )
    assert row["state"] == "RECORDED" and row["wait"].total_seconds() == pytest.approx(60, abs=0.01)
    # older: expires
    await pool.execute("UPDATE payments SET created_at = now() - interval '2 minutes' WHERE id = $1", payment_id)
    await _check_now(pool, resolver, payment_id)
    assert await payment_state(pool, payment_id) == "EXPIRED"
    announced = await pool.fetchval(
        "SELECT payload FROM outbox WHERE message_key = $1 AND topic = 'payments.state_changed'", str(payment_id)
    )
    assert (announced["from_state"], announced["to_state"]) == ("RECORDED", "EXPIRED")
    retried = await create_and_submit(
        database, gateway, principal, create_payment_command(key, "12.34"), Budget.within(5)
    )
    assert (retried.payment.state.value, retried.replayed) == ("EXPIRED", True)
    assert provider.posts == []


async def test_a_retry_racing_the_expiry_is_either_sent_or_expired_never_both(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    outcomes = set()
    for _ in range(12):
        key = str(uuid.uuid4())
        payment_id = await _recorded(database, principal, key)
        await pool.execute("UPDATE payments SET created_at = now() - interval '2 minutes' WHERE id = $1", payment_id)
        await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = $1", payment_id)
        resolver = _resolver(database, gateway, provider_timeout_s=1.0, expiry_s=60.0)
        retry, _ = await asyncio.gather(
            create_and_submit(database, gateway, principal, create_payment_command(key, "12.34"), Budget.within(5)),
            resolver.run_once(),
        )
        state = await payment_state(pool, payment_id)
        sent = str(payment_id) in provider.posts
        assert (state == "EXPIRED") is not sent, (state, sent)
        assert retry.payment.state.value == state or (sent and state == "PENDING")
        outcomes.add(state)
    assert outcomes <= {"EXPIRED", "PENDING"}


async def test_an_expired_payment_leaves_the_exposure(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    account = f"merchant_payable:{principal.client_id}"
    async with pool.acquire() as connection:
        recorded = await connection.fetchval(
            "SELECT payload FROM outbox WHERE message_key = $1 AND topic = 'payments.recorded'", str(payment_id)
        )
        await exposures.apply_event(connection, str(payment_id), recorded)
    await _concluded(database, payment_id, PaymentEvent.EXPIRED, "resolver.expired")
    async with pool.acquire() as connection:
        changed = await connection.fetchval(
            "SELECT payload FROM outbox WHERE message_key = $1 AND topic = 'payments.state_changed'", str(payment_id)
        )
        await exposures.apply_event(connection, str(payment_id), changed)
        in_flight = await connection.fetchval("SELECT in_flight FROM exposures WHERE account = $1", account)
    assert in_flight == 0
    assert json.loads(json.dumps(changed))["to_state"] == "EXPIRED"


async def test_an_approval_must_name_the_correction_the_case_proposes_now(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    first = await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    later = await apply_evidence(database, payment_id, PaymentEvent.REFUND_SUCCEEDED, _api("refunded"))
    assert first.case_id == later.case_id and first.case_id is not None
    [case] = await _cases(pool, payment_id)
    assert "REFUNDED" in case["summary"]  # the summary follows the latest proposal
    with pytest.raises(FailedPrecondition):  # approving what the case first proposed is refused
        await approve_correction(
            database, first.case_id, PaymentState.FAILED, "ops.alice", "reversal", Budget.within(5)
        )
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    await approve_correction(database, first.case_id, PaymentState.REFUNDED, "ops.alice", "refunded", Budget.within(5))
    assert await payment_state(pool, payment_id) == "REFUNDED"
    assert await _clearing(pool, payment_id) == 0


async def test_a_webhook_never_decides_which_provider_object_the_api_answers_about(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(
        database, payment_id, PaymentEvent.ACCEPTED, _webhook("pending", object_id="pay_from_a_webhook")
    )
    assert await pool.fetchval("SELECT provider_payment_id FROM payments WHERE id = $1", payment_id) is None
    provider.has(payment_id, "succeeded", object_id="pay_real")
    await _check_now(pool, _resolver(database, gateway), payment_id)
    assert await payment_state(pool, payment_id) == "SUCCEEDED"
    assert await pool.fetchval("SELECT provider_payment_id FROM payments WHERE id = $1", payment_id) == "pay_real"
    assert await _cases(pool, payment_id) == []


@pytest.mark.parametrize("stated", [99999, 12.35, {"value": "12.34"}, [12.34], True])
async def test_an_api_answer_stating_its_amount_in_another_json_type_is_still_compared(
    database: Database,
    principal: Principal,
    pool: asyncpg.Pool,
    provider: Provider,
    gateway: GatewayClient,
    stated: Any,
) -> None:
    payment_id = await _recorded(database, principal)
    provider.has(payment_id, "succeeded")
    provider.payments[str(payment_id)]["amount"] = stated
    await _check_now(pool, _resolver(database, gateway), payment_id)
    assert await payment_state(pool, payment_id) == "RECORDED"
    [case] = await _cases(pool, payment_id)
    assert case["kind"] == "EVIDENCE_MISMATCH"
    assert [d["field"] for d in case["evidence"][-1]["differing"]] == ["amount"]


async def test_an_api_answer_stating_the_amount_as_an_exact_number_fits(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    provider.has(payment_id, "succeeded")
    provider.payments[str(payment_id)]["amount"] = Decimal("12.34")  # sent as the JSON number 12.34
    await _check_now(pool, _resolver(database, gateway), payment_id)
    assert await payment_state(pool, payment_id) == "SUCCEEDED"


async def test_postgresql_refuses_a_blank_approver(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO payment_transitions"
            " (payment_id, from_state, to_state, event, cause, evidence_ref, approved_by)"
            " VALUES ($1, 'SUCCEEDED', 'FAILED', 'CORRECTION', 'test', 'test', '   ')",
            payment_id,
        )


async def test_a_claim_about_an_expired_payment_the_provider_does_not_have_ends_its_checks(
    database: Database, principal: Principal, pool: asyncpg.Pool, gateway: GatewayClient
) -> None:
    payment_id = await _recorded(database, principal)
    await _concluded(database, payment_id, PaymentEvent.EXPIRED, "resolver.expired")
    assert (
        await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _webhook("succeeded"))
    ).verdict is Verdict.CONFIRM
    await _check_now(pool, _resolver(database, gateway), payment_id)  # the provider has no such payment
    row = await pool.fetchrow("SELECT state, next_check_at FROM payments WHERE id = $1", payment_id)
    assert tuple(row) == ("EXPIRED", None)
    assert await _cases(pool, payment_id) == []


async def test_a_check_that_could_not_ask_the_provider_does_not_count(
    database: Database, principal: Principal, pool: asyncpg.Pool, provider: Provider
) -> None:
    payment_id = await _recorded(database, principal)
    await _concluded(database, payment_id, PaymentEvent.OUTCOME_UNKNOWN, "test.timeout")
    async with aiohttp.ClientSession() as session:
        breaker = Breaker("simulator.payments", BreakerSettings(failures_max=1, open_s=60))
        gateway = GatewayClient("simulator", provider.url, session, breaker)
        resolver = _resolver(database, gateway)
        with pytest.raises(Exception):  # noqa: B017 - any failure opens it: a closed port refuses
            await GatewayClient("simulator", "http://127.0.0.1:9", session, breaker).find_payment("x", 1.0)
        assert await resolver.run_once() == 0  # the breaker refuses calls: nothing is claimed
        # a check that meets the open breaker (claimed before it opened) gives its attempt back
        await pool.execute("UPDATE payments SET next_check_at = '-infinity' WHERE id = $1", payment_id)
        for _ in range(100):  # one claim and its check at a time, as run() does; earlier specs' go first
            [item] = await resolver._claimed(1)
            await resolver._checked(item)
            if item.id == payment_id:
                break
    row = await pool.fetchrow(
        "SELECT state, check_attempts, next_check_at - now() AS wait FROM payments WHERE id = $1", payment_id
    )
    assert (row["state"], row["check_attempts"]) == ("UNKNOWN", 0)
    assert row["wait"].total_seconds() > 50  # when the breaker may let a call through, not a backoff


async def test_an_operator_accepting_the_providers_version_applies_the_held_correction_through_resolve_case(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await _recorded(database, principal)
    await apply_evidence(database, payment_id, PaymentEvent.SUCCEEDED, _api("succeeded"))
    await apply_evidence(database, payment_id, PaymentEvent.FAILED, _api("failed"))
    [case] = await _cases(pool, payment_id)
    operator = Principal(f"ops-{uuid.uuid4().hex[:8]}", Role.OPERATOR)
    command = validate_resolve_case(
        idempotency_key=f"resolve-{uuid.uuid4()}",
        case_id=str(case["id"]),
        resolution="PROVIDER_CORRECT",
        note="the provider confirmed the decline",
        evidence_refs=[],
        difference=None,
    )
    resolved = await cases.resolve_case(database, operator, command, Budget.within(5))
    assert resolved.detail.case.status == "RESOLVED" and not resolved.replayed
    assert await payment_state(pool, payment_id) == "FAILED"  # corrected, as approve-correction does
    assert await _clearing(pool, payment_id) == 0
    last = await pool.fetchrow(
        "SELECT event, approved_by FROM payment_transitions WHERE payment_id = $1 ORDER BY id DESC LIMIT 1", payment_id
    )
    assert tuple(last) == ("CORRECTION", operator.client_id)
    again = await cases.resolve_case(database, operator, command, Budget.within(5))
    assert again.replayed and await payment_state(pool, payment_id) == "FAILED"
