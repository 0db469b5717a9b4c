"""Property: whatever valid amount goes in comes back out of PostgreSQL exactly, as the same Decimal."""

from __future__ import annotations

import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.db.database import Budget, Database
from server.domain.identity import Principal, Role
from server.domain.money import AMOUNT_MAX, MINOR_UNITS
from server.domain.payments import validate_create_payment
from server.services.payments import create_payment, get_payment

PRINCIPAL = Principal(f"round-trip-{uuid.uuid4().hex[:8]}", Role.SERVICE)


@st.composite
def amounts(draw: st.DrawFn) -> tuple[str, str]:
    currency = draw(st.sampled_from(sorted(MINOR_UNITS)))
    digits = MINOR_UNITS[currency]
    smallest = Decimal(1).scaleb(-digits)
    minor = draw(st.integers(min_value=1, max_value=int(AMOUNT_MAX / smallest)))
    return format(Decimal(minor).scaleb(-digits), "f"), currency


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amount=amounts())
async def test_an_amount_round_trips_through_postgresql_exactly(database: Database, amount: tuple[str, str]) -> None:
    value, currency = amount
    request = validate_create_payment(
        idempotency_key=str(uuid.uuid4()),
        amount_value=value,
        currency_code=currency,
        description="",
        merchant_reference="",
        metadata={},
    )
    created = await create_payment(database, PRINCIPAL, request, Budget.within(10))
    stored = await get_payment(database, PRINCIPAL, created.payment.id, Budget.within(10))
    assert stored.amount == created.payment.amount == request.amount
    assert stored.amount.to_decimal_string() == value
