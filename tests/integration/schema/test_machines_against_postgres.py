"""Property tests against the real database: random evidence sequences, replayed through the domain
and through PostgreSQL, must agree, and the invariants must hold after every one."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.db.database import Budget, Database
from server.domain.identity import Principal, Role
from server.domain.order_legs import LEG_MACHINE, Fill, LegState
from server.domain.orders import LegSpec, OrderType, Side, SubmitOrder
from server.domain.payment_evidence import judge
from server.domain.payment_states import EVENT_TARGETS, PAYMENT_MACHINE, PaymentEvent, Verdict, Witness
from server.domain.provider_status import VenueReport
from server.services import execution
from server.services.payment_events import Evidence
from server.services.payments import create_payment
from tests.support import apply_evidence, report_to_leg
from tests.support.requests import create_payment_command

PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(events=st.lists(st.sampled_from(list(PaymentEvent)), max_size=8))
async def test_random_payment_evidence_agrees_with_the_domain_and_keeps_the_ledger_balanced(
    database: Database, pool: asyncpg.Pool, events: list[PaymentEvent]
) -> None:
    principal = Principal(f"prop-{uuid.uuid4().hex[:10]}", Role.SERVICE)
    request = create_payment_command("p", "12.34")
    payment_id = (await create_payment(database, principal, request, Budget.within(10))).payment.id
    expected = PAYMENT_MACHINE.initial
    for event in events:
        verdict = judge(expected, event, Witness.BALLAST)  # moved where the machine has the move, else stale
        evidence = Evidence("property", str(event), witness=Witness.BALLAST)
        assert (await apply_evidence(database, payment_id, event, evidence)).verdict is verdict
        if verdict is Verdict.APPLY:
            expected = EVENT_TARGETS[event]
    assert await pool.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == expected.value
    owed = await pool.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM ledger_lines WHERE account = $1",
        f"merchant_payable:{principal.client_id}",
    )
    assert owed == (Decimal("-12.34") if expected.value in ("SUCCEEDED", "REFUND_PENDING") else 0)
    unbalanced = await pool.fetchval(
        "SELECT count(*) FROM (SELECT l.entry_id FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
        " WHERE e.payment_id = $1 GROUP BY l.entry_id, l.currency_code HAVING sum(l.amount) <> 0) AS bad",
        payment_id,
    )
    assert unbalanced == 0


venue_steps = st.one_of(
    # a venue's status reports; a FILL without its execution is the venue's word "filled" alone
    st.sampled_from([VenueReport.ACKNOWLEDGED, VenueReport.REJECTED, VenueReport.CLOSED, VenueReport.FILL]),
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.decimals(min_value=Decimal("0.5"), max_value=Decimal("6"), places=1),
        st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("500"), places=4),
    ),
)


@PROPERTY_SETTINGS
@given(steps=st.lists(venue_steps, max_size=10))
async def test_random_venue_evidence_never_overfills_and_every_fill_applies_once(
    database: Database, pool: asyncpg.Pool, steps: list[VenueReport | tuple[str, Decimal, Decimal]]
) -> None:
    principal = Principal(f"prop-{uuid.uuid4().hex[:10]}", Role.SERVICE)
    spec = LegSpec("XYZ", Side.BUY, Decimal("10"), OrderType.MARKET, None, "USD")
    order = (await execution.submit_order(database, principal, SubmitOrder("o", "", (spec,)), Budget.within(10))).order
    leg_id = order.legs[0].id
    for step in steps:  # refused evidence changes nothing of the leg (a case keeps it): checked below
        if isinstance(step, VenueReport):
            await report_to_leg(database, leg_id, step, "venue")
        else:
            execution_id, quantity, price = step
            await report_to_leg(database, leg_id, VenueReport.FILL, "venue", fill=Fill(execution_id, quantity, price))
        row = await pool.fetchrow("SELECT state, filled_quantity, fill_notional FROM legs WHERE id = $1", leg_id)
        fills = await pool.fetch("SELECT quantity, price FROM leg_fills WHERE leg_id = $1", leg_id)
        assert row["filled_quantity"] == sum((f["quantity"] for f in fills), Decimal(0)) <= Decimal("10")
        assert row["fill_notional"] == sum((f["quantity"] * f["price"] for f in fills), Decimal(0))
    history = await pool.fetch("SELECT from_state, to_state FROM leg_transitions WHERE leg_id = $1 ORDER BY id", leg_id)
    state = LEG_MACHINE.initial.value
    for row in history:
        assert row["from_state"] == state
        assert LEG_MACHINE.allows(LegState(row["from_state"]), LegState(row["to_state"]))
        state = row["to_state"]
    assert await pool.fetchval("SELECT state FROM legs WHERE id = $1", leg_id) == state
