"""Idempotency keys as Stripe defines them, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from server.db.database import Budget, Database
from server.domain.errors import ConcurrencyConflict, IdempotencyKeyReused
from server.domain.identity import Principal, Role
from server.domain.payment_states import PaymentState
from server.domain.payments import CreatePayment, validate_create_payment
from server.services.payments import CreatePaymentResult, create_payment


def _request(key: str, **overrides: Any) -> CreatePayment:
    fields: dict[str, Any] = {
        "idempotency_key": key,
        "amount_value": "25.00",
        "currency_code": "EUR",
        "description": "order 42",
        "merchant_reference": "INV-42",
        "metadata": {"cart": "c-1"},
    }
    return validate_create_payment(**(fields | overrides))


async def _create(database: Database, principal: Principal, request: CreatePayment) -> CreatePaymentResult:
    return await create_payment(database, principal, request, Budget.within(10))


async def _payments_of(pool: asyncpg.Pool, client_id: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", client_id)


async def test_a_new_key_records_one_payment_in_its_first_state(database: Database, principal: Principal) -> None:
    result = await _create(database, principal, _request("k-1"))
    assert not result.replayed
    assert result.payment.state is PaymentState.RECORDED
    assert result.payment.amount.to_decimal_string() == "25.00"
    assert result.payment.client_id == principal.client_id


async def test_the_same_key_and_parameters_return_the_same_payment_and_create_nothing(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    first = await _create(database, principal, _request("k-1"))
    again = await _create(database, principal, _request("k-1", amount_value="25"))
    assert again.replayed
    assert again.payment == first.payment
    assert await _payments_of(pool, principal.client_id) == 1


@pytest.mark.parametrize(
    "changed",
    [{"amount_value": "25.01"}, {"currency_code": "USD"}, {"description": "other"}, {"metadata": {}}],
)
async def test_the_same_key_with_different_parameters_is_refused_naming_the_key(
    database: Database, principal: Principal, pool: asyncpg.Pool, changed: dict[str, Any]
) -> None:
    await _create(database, principal, _request("k-1"))
    with pytest.raises(IdempotencyKeyReused, match="k-1"):
        await _create(database, principal, _request("k-1", **changed))
    assert await _payments_of(pool, principal.client_id) == 1


async def test_keys_are_scoped_to_the_calling_client(database: Database, principal: Principal) -> None:
    other = Principal(f"other-{uuid.uuid4().hex[:8]}", Role.SERVICE)
    mine = await _create(database, principal, _request("shared-key"))
    theirs = await _create(database, other, _request("shared-key", amount_value="99.00"))
    assert not theirs.replayed
    assert theirs.payment.id != mine.payment.id


async def test_fifty_concurrent_calls_with_one_key_create_exactly_one_payment(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    request = _request("contended")
    outcomes = await asyncio.gather(*(_create(database, principal, request) for _ in range(50)), return_exceptions=True)
    payments = [outcome.payment for outcome in outcomes if isinstance(outcome, CreatePaymentResult)]
    unexpected = [o for o in outcomes if not isinstance(o, (CreatePaymentResult, ConcurrencyConflict))]
    assert unexpected == []
    assert len({payment.id for payment in payments}) == 1
    assert sum(not o.replayed for o in outcomes if isinstance(o, CreatePaymentResult)) <= 1
    assert await _payments_of(pool, principal.client_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE client_id = $1", principal.client_id) == 1


async def test_fifty_concurrent_calls_with_one_key_and_mixed_parameters_create_one_payment(
    database: Database, principal: Principal, pool: asyncpg.Pool
) -> None:
    """Whichever request wins, the rest either replay it (same parameters) or are refused (others)."""
    requests = [_request("mixed", amount_value=f"{10 + i % 2}.00") for i in range(50)]
    outcomes = await asyncio.gather(*(_create(database, principal, r) for r in requests), return_exceptions=True)
    winners = {o.payment.id for o in outcomes if isinstance(o, CreatePaymentResult)}
    refused = [o for o in outcomes if isinstance(o, IdempotencyKeyReused)]
    assert len(winners) == 1
    assert len(refused) == 25
    assert await _payments_of(pool, principal.client_id) == 1
