"""Evidence racing on payments (real PostgreSQL): a hundred concurrent mixed events keep every invariant
(legal moves only, the ledger posted once per business event and balanced, one outbox event and audit
entry per move); racing refund confirmations post the refund once.

Every spec uses clients of its own (the `world` fixture starts an in-process server for brand-new
callers, or a fresh Principal is used with the use cases directly), so nothing here reads or moves
the shared `alpha` and `beta`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal

import asyncpg

from ballast.ledger.v1 import ledger_pb2
from server.db.database import Database
from server.domain.payment_states import PAYMENT_MACHINE, PaymentEvent, PaymentState
from server.domain.provider_status import PROVIDER_STATUS_EVENTS
from server.services.payment_events import PaymentOutcome
from tests.support.evidence import conclude
from tests.support.probes import broken_links, payment_trail
from tests.support.requests import (
    create_payment_request,
    new_payment,
    new_principal,
)
from tests.support.servers import World

E = PaymentEvent
P = PaymentState


# --------------------------------------------------------------------------------------------- payment events


#: A provider status word for each event that has one (OUTCOME_UNKNOWN comes from timeouts, not words).
STATUS_WORD = {event: word for word, event in reversed(PROVIDER_STATUS_EVENTS["simulator"].items())}


class TestPaymentEvents:
    async def test_a_hundred_concurrent_mixed_events_on_two_payments_keep_every_invariant(
        self, database: Database, pool: asyncpg.Pool
    ) -> None:
        principal = new_principal("mixed")
        payment_ids = [await new_payment(database, principal, "25.00") for _ in range(2)]
        mix = [E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.OUTCOME_UNKNOWN, E.REFUND_SUCCEEDED, E.FAILED,
               E.REFUND_FAILED, E.REFUND_REQUESTED, E.REJECTED, E.REFUND_SUCCEEDED]  # fmt: skip
        calls = [
            (payment_id, mix[index % len(mix)], STATUS_WORD.get(mix[index % len(mix)]) if index % 3 else None)
            for payment_id in payment_ids
            for index in range(50)
        ]
        random.Random(11).shuffle(calls)  # noqa: S311 (a fixed, repeatable order)
        outcomes = await asyncio.gather(
            *(conclude(database, payment_id, event, status) for payment_id, event, status in calls),
            return_exceptions=True,
        )
        assert [o for o in outcomes if not isinstance(o, PaymentOutcome)] == []

        for payment_id in payment_ids:
            mine = [o for (p, _, _), o in zip(calls, outcomes, strict=True) if p == payment_id]
            moved = [o for o in mine if isinstance(o, PaymentOutcome) and o.to_state is not None]
            transitions = await pool.fetch(
                "SELECT from_state, to_state FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
            )
            state = "RECORDED"
            for transition in transitions:
                assert transition["from_state"] == state
                assert PAYMENT_MACHINE.allows(P(transition["from_state"]), P(transition["to_state"]))
                state = transition["to_state"]
            assert len(transitions) == len(moved)
            assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == state
            reached = {t["to_state"] for t in transitions}
            keys = sorted(
                await pool.fetch("SELECT event_key FROM ledger_entries WHERE payment_id = $1", payment_id),
                key=lambda row: row["event_key"],
            )
            expected_keys = [f"payment:{payment_id}:captured"] * ("SUCCEEDED" in reached) + [
                f"payment:{payment_id}:refunded"
            ] * ("REFUNDED" in reached)
            assert [row["event_key"] for row in keys] == expected_keys
            assert sum(len(o.ledger_entry_ids) for o in moved) == len(expected_keys)
            owed = await pool.fetchval(
                "SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
                " WHERE e.payment_id = $1 AND l.account = $2",
                payment_id,
                f"merchant_payable:{principal.client_id}",
            )
            assert owed == (Decimal("-25.00") if state in ("SUCCEEDED", "REFUND_PENDING") else 0)
            assert (
                await pool.fetchval(
                    "SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
                    " WHERE e.payment_id = $1",
                    payment_id,
                )
                == 0
            )
            _, _, entries, events, audits = await payment_trail(pool, payment_id)
            assert (entries, events, audits) == (
                len(expected_keys),
                1 + len(transitions) + entries,
                1 + len(transitions),
            )
            statuses = sum(status is not None for p, _, status in calls if p == payment_id)
            assert await pool.fetchval("SELECT count(*) FROM provider_statuses WHERE payment_id = $1", payment_id) == (
                statuses
            )
            assert await broken_links(pool, str(payment_id)) == []

    async def test_racing_refund_confirmations_post_the_refund_once_and_the_merchant_owes_nothing(
        self, world: World, database: Database, pool: asyncpg.Pool
    ) -> None:
        created = await world.payments.CreatePayment(
            create_payment_request(value="999999999999999.99", currency="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        payment_id = uuid.UUID(created.payment.id)
        for event in (E.ACCEPTED, E.SUCCEEDED, E.REFUND_REQUESTED, E.REFUND_FAILED, E.REFUND_REQUESTED):
            await conclude(database, payment_id, event)
        outcomes = await asyncio.gather(
            *(conclude(database, payment_id, E.REFUND_SUCCEEDED, "refunded") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(o, PaymentOutcome) for o in outcomes), outcomes
        assert sum(o.to_state is not None for o in outcomes if isinstance(o, PaymentOutcome)) == 1
        account = f"merchant_payable:{world.merchant.client_id}"
        balance = await world.ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account=account, currency_code="EUR"),
            metadata=world.merchant.metadata,
            timeout=5,
        )
        assert balance.balance.value == "0.00"
        entries = await world.ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(payment_id=str(payment_id)), metadata=world.merchant.metadata, timeout=5
        )
        assert [
            (entry.event_key, [(line.account, line.amount.value) for line in entry.lines]) for entry in entries.entries
        ] == [
            (
                f"payment:{payment_id}:captured",
                [("provider_clearing", "999999999999999.99"), (account, "-999999999999999.99")],
            ),
            (
                f"payment:{payment_id}:refunded",
                [(account, "999999999999999.99"), ("provider_clearing", "-999999999999999.99")],
            ),
        ]
        assert (await payment_trail(pool, payment_id))[:3] == ("REFUNDED", 6, 2)
