"""Evidence applied to payments: one path, one transaction, and PostgreSQL refusing every shortcut."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import pytest

from server.db.database import Database
from server.domain.identity import Principal
from server.domain.payment_states import PaymentEvent, PaymentState, Verdict, Witness
from server.services.audit import find_broken_links
from server.services.payment_events import Evidence, PaymentOutcome
from tests.support import apply_evidence
from tests.support.requests import new_payment

E = PaymentEvent
P = PaymentState


async def _apply(database: Database, payment_id: uuid.UUID, event: PaymentEvent, reference: str = "") -> PaymentOutcome:
    """The machine's move, as Ballast's own conclusion: applied wherever the machine has it, else stale."""
    evidence = Evidence(cause="test", reference=reference or f"test:{uuid.uuid4()}", witness=Witness.BALLAST)
    return await apply_evidence(database, payment_id, event, evidence)


async def _state(pool: asyncpg.Pool, payment_id: uuid.UUID) -> str:
    return await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id)


async def test_success_moves_the_payment_posts_once_and_announces_it(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal, "40.00")
    outcome = await _apply(database, payment_id, E.SUCCEEDED, reference="provider-event-1")
    assert (outcome.from_state, outcome.to_state) == (P.RECORDED, P.SUCCEEDED)
    assert await _state(pool, payment_id) == "SUCCEEDED"

    transition = await pool.fetchrow("SELECT * FROM payment_transitions WHERE payment_id = $1", payment_id)
    assert (transition["from_state"], transition["to_state"], transition["evidence_ref"]) == (
        "RECORDED",
        "SUCCEEDED",
        "provider-event-1",
    )
    lines = await pool.fetch(
        "SELECT account, amount FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id WHERE e.payment_id = $1",
        payment_id,
    )
    assert sorted((line["account"], line["amount"]) for line in lines) == [
        ("merchant_payable:" + principal.client_id, Decimal("-40.00")),
        ("provider_clearing", Decimal("40.00")),
    ]
    topics = await pool.fetch(
        "SELECT topic FROM outbox WHERE message_key IN ($1, $2)", str(payment_id), f"payment:{payment_id}:captured"
    )
    assert sorted(row["topic"] for row in topics) == ["ledger.posted", "payments.recorded", "payments.state_changed"]
    audit = await pool.fetch(
        "SELECT sequence, action FROM audit_log"
        " WHERE aggregate_type = 'payment' AND aggregate_id = $1 ORDER BY sequence",
        str(payment_id),
    )
    assert [(row["sequence"], row["action"]) for row in audit] == [
        (1, "payments.recorded"),
        (2, "payments.state_changed"),
    ]


async def test_a_repeated_event_changes_nothing(database: Database, principal: Principal, pool: asyncpg.Pool) -> None:
    payment_id = await new_payment(database, principal, "40.00")
    await _apply(database, payment_id, E.SUCCEEDED)
    again = await _apply(database, payment_id, E.SUCCEEDED)
    assert again.to_state is None
    assert await pool.fetchval("SELECT count(*) FROM payment_transitions WHERE payment_id = $1", payment_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 1


async def test_a_contradiction_moves_nothing_and_keeps_the_providers_word(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal, "40.00")
    await _apply(database, payment_id, E.FAILED)
    evidence = Evidence(
        "webhook.simulator", "evt-late", provider="simulator", provider_status="succeeded", witness=Witness.WEBHOOK
    )
    refused = await apply_evidence(database, payment_id, E.SUCCEEDED, evidence)
    assert (refused.verdict, refused.to_state) == (Verdict.CONFIRM, None)  # only the provider's API may decide
    assert await _state(pool, payment_id) == "FAILED"
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id) == 0
    kept = await pool.fetchrow(
        "SELECT provider, status, evidence_ref FROM provider_statuses WHERE payment_id = $1", payment_id
    )
    assert tuple(kept) == ("simulator", "succeeded", "evt-late")


async def test_fifty_concurrent_conflicting_events_have_exactly_one_winner(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal, "40.00")
    racing = [E.SUCCEEDED, E.FAILED] * 25
    outcomes = await asyncio.gather(*(_apply(database, payment_id, event) for event in racing), return_exceptions=True)
    moved = [o for o in outcomes if isinstance(o, PaymentOutcome) and o.to_state is not None]
    unexpected = [o for o in outcomes if not isinstance(o, PaymentOutcome)]
    assert unexpected == []
    assert len(moved) == 1
    final = await _state(pool, payment_id)
    assert final == moved[0].to_state.value  # type: ignore[union-attr]
    assert await pool.fetchval("SELECT count(*) FROM payment_transitions WHERE payment_id = $1", payment_id) == 1
    entries = await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE payment_id = $1", payment_id)
    assert entries == (1 if final == "SUCCEEDED" else 0)
    assert await pool.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger_lines") == 0


async def test_a_refund_reverses_the_capture_and_the_chain_verifies(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    payment_id = await new_payment(database, principal, amount="12.50")
    for event in (E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.REFUND_FAILED, E.REFUND_REQUESTED, E.REFUND_SUCCEEDED):
        await _apply(database, payment_id, event)
    assert await _state(pool, payment_id) == "REFUNDED"
    owed = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM ledger_lines WHERE account = $1",
        f"merchant_payable:{principal.client_id}",
    )
    assert owed == 0
    async with pool.acquire() as connection:
        assert [link for link in await find_broken_links(connection) if link.aggregate_id == str(payment_id)] == []


class TestPostgresRefusesShortcuts:
    async def test_a_direct_state_update_is_refused(
        self, database: Database, principal: Principal, pool: asyncpg.Pool
    ) -> None:
        payment_id = await new_payment(database, principal, "40.00")
        with pytest.raises(asyncpg.CheckViolationError, match="payment_transitions"):
            await pool.execute("UPDATE payments SET state = 'SUCCEEDED' WHERE id = $1", payment_id)

    async def test_when_a_payment_first_succeeded_is_written_by_its_transitions_only(
        self, database: Database, principal: Principal, pool: asyncpg.Pool
    ) -> None:
        payment_id = await new_payment(database, principal, "40.00")
        assert await pool.fetchval("SELECT succeeded_at FROM payments WHERE id = $1", payment_id) is None
        for event in (E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.REFUND_FAILED):
            await _apply(database, payment_id, event)
        first_success = await pool.fetchval(
            "SELECT min(occurred_at) FROM payment_transitions WHERE payment_id = $1 AND to_state = 'SUCCEEDED'",
            payment_id,
        )
        assert first_success is not None
        assert await pool.fetchval("SELECT succeeded_at FROM payments WHERE id = $1", payment_id) == first_success
        with pytest.raises(asyncpg.CheckViolationError, match="payment_transitions"):
            await pool.execute("UPDATE payments SET succeeded_at = now() WHERE id = $1", payment_id)

    async def test_an_illegal_transition_written_by_raw_sql_is_refused(
        self, database: Database, principal: Principal, pool: asyncpg.Pool
    ) -> None:
        payment_id = await new_payment(database, principal, "40.00")
        await _apply(database, payment_id, E.FAILED)
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await pool.execute(
                "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)"
                " VALUES ($1, 'FAILED', 'SUCCEEDED', 'SUCCEEDED', 'sql', 'none')",
                payment_id,
            )
        assert caught.value.constraint_name == "payment_transition_allowed"
        assert await _state(pool, payment_id) == "FAILED"

    async def test_a_transition_from_a_stale_state_is_refused(
        self, database: Database, principal: Principal, pool: asyncpg.Pool
    ) -> None:
        payment_id = await new_payment(database, principal, "40.00")
        await _apply(database, payment_id, E.ACCEPTED)
        with pytest.raises(asyncpg.SerializationError):
            await pool.execute(
                "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)"
                " VALUES ($1, 'RECORDED', 'SUCCEEDED', 'SUCCEEDED', 'sql', 'none')",
                payment_id,
            )

    @pytest.mark.parametrize(
        "statement", ["UPDATE payment_transitions SET cause = 'x'", "DELETE FROM payment_transitions"]
    )
    async def test_history_cannot_be_rewritten(
        self, database: Database, principal: Principal, pool: asyncpg.Pool, statement: str
    ) -> None:
        payment_id = await new_payment(database, principal, "40.00")
        await _apply(database, payment_id, E.ACCEPTED)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(f"{statement} WHERE payment_id = $1", payment_id)


@pytest.mark.parametrize("assignment", ["amount = 99.99", "currency_code = 'USD'", "client_id = 'someone-else'"])
async def test_a_payments_terms_never_change_so_a_refund_reverses_exactly_what_was_captured(
    database: Database, principal: Principal, pool: asyncpg.Pool, assignment: str
) -> None:
    payment_id = await new_payment(database, principal, "40.00")
    await _apply(database, payment_id, E.SUCCEEDED)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(f"UPDATE payments SET {assignment} WHERE id = $1", payment_id)
    assert caught.value.constraint_name == "payments_terms_immutable"


async def test_one_statement_moves_many_payments_but_each_only_once(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    first, second = await new_payment(database, principal, "40.00"), await new_payment(database, principal, "40.00")
    append = (
        "INSERT INTO payment_transitions (payment_id, from_state, to_state, event, cause, evidence_ref)"
        " SELECT p, 'RECORDED', 'PENDING', 'ACCEPTED', 'test', 'test' FROM unnest($1::uuid[]) AS p"
    )
    await pool.execute(append, [first, second])
    assert [await _state(pool, first), await _state(pool, second)] == ["PENDING", "PENDING"]

    third = await new_payment(database, principal, "40.00")
    with pytest.raises(asyncpg.CheckViolationError, match="moves twice in one statement"):
        # both rows pass the row check against the state before the statement; the statement is refused
        await pool.execute(append, [third, third])
    assert await _state(pool, third) == "RECORDED"
    assert await pool.fetchval("SELECT count(*) FROM payment_transitions WHERE payment_id = $1", third) == 0
