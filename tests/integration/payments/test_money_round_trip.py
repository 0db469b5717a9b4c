"""Property: whatever valid amount goes in comes back out of PostgreSQL exactly, as the same Decimal."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.db.database import Budget, Database
from server.domain.identity import Principal, Role
from server.domain.money import AMOUNT_MAX, MINOR_UNITS
from server.providers.breaker import Breaker, BreakerSettings
from server.providers.embedded_simulator import embedded_simulator
from server.providers.gateway import GatewayClient
from server.providers.http import Refused
from server.services.payments import create_payment, get_payment
from tests.support.requests import create_payment_command

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
    request = create_payment_command(amount=value, currency=currency)
    created = await create_payment(database, PRINCIPAL, request, Budget.within(10))
    stored = await get_payment(database, PRINCIPAL, created.payment.id, Budget.within(10))
    assert stored.amount == created.payment.amount == request.amount
    assert stored.amount.to_decimal_string() == value


async def test_the_simulator_takes_every_currency_ballast_takes_and_states_the_amount_back_exactly(
    tmp_path: Path,
) -> None:
    """The fake provider knows the same ISO 4217 minor units as Ballast: KWD 1.234 and JPY 1 are taken,
    and what it states back is the same Decimal, never a rounded one."""
    async with (
        embedded_simulator(
            tmp_path,
            webhook_url="http://127.0.0.1:9/webhooks/simulator",
            webhook_secret="whsec_x",  # noqa: S106 - a test secret
            profile="calm",
        ) as url,
        aiohttp.ClientSession() as session,
    ):
        gateway = GatewayClient("simulator", url, session, Breaker("money.round_trip", BreakerSettings()))
        for currency, digits in sorted(MINOR_UNITS.items()):
            amount = Decimal(1) + Decimal(1).scaleb(-digits) if digits else Decimal(7)  # "1.001", "1.01", "7"
            key = str(uuid.uuid4())
            answer = await gateway.create_payment(key, amount, currency, key, timeout_s=5)
            assert answer.status == "pending", (currency, answer)
            assert answer.amount is not None and Decimal(answer.amount) == amount, (currency, answer.amount)
            assert answer.currency_code == currency
            too_fine = amount + Decimal(1).scaleb(-digits - 1)
            with pytest.raises(Refused):
                await gateway.create_payment(str(uuid.uuid4()), too_fine, currency, key, timeout_s=5)
