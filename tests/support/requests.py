"""Requests as callers make them: gRPC requests for the services, the domain's commands for the use cases,
and the payments and legs a spec starts from. Valid unless told otherwise; a new idempotency key each."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

from ballast.common.v1.money_pb2 import Money
from ballast.execution.v1 import execution_pb2
from ballast.payments.v1 import payments_pb2
from server.db.database import Budget, Database
from server.domain.identity import Principal, Role
from server.domain.orders import SubmitOrder, validate_submit_order
from server.domain.payments import CreatePayment, validate_create_payment
from server.services.order_submission import submit_and_send
from server.services.payments import create_payment

#: How many payments a spec creates at once: the session's pool is shared by every spec.
CONCURRENT_CREATES_MAX = 20
#: The largest quantity or price the API accepts: 18 integer and 12 fraction digits, 30 significant.
THIRTY_DIGITS = "999999999999999999.999999999999"
#: The time a use case gets in these helpers.
USE_CASE_BUDGET_S = 10


def new_key(prefix: str = "key") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def new_principal(prefix: str = "client") -> Principal:
    """A service nobody else is, as the use cases take it."""
    return Principal(f"{prefix}-{uuid.uuid4().hex[:12]}", Role.SERVICE)


def metadata_at_the_limits(char: str) -> dict[str, str]:
    """50 entries, keys of 40 characters, values of 500: the most the contract allows, in multibyte text."""
    return {f"{index:02d}".ljust(40, char): char * 500 for index in range(50)}


def page_token(cursor: object) -> str:
    """A page token in the server's own encoding (urlsafe base64 of JSON), with any content a spec likes."""
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


# --------------------------------------------------------------------------------------------- over gRPC


def create_payment_request(
    key: str | None = None, value: str = "12.34", currency: str = "EUR", **fields: Any
) -> payments_pb2.CreatePaymentRequest:
    """A CreatePaymentRequest; `fields` are its other fields (description, merchant_reference, metadata)."""
    return payments_pb2.CreatePaymentRequest(
        idempotency_key=key if key is not None else new_key(),
        amount=Money(value=value, currency_code=currency),
        **fields,
    )


def leg_spec(
    quantity: str = "10",
    order_type: str | int = "ORDER_TYPE_LIMIT",
    limit_price: str | None = None,
    *,
    symbol: str = "AAPL",
    side: str | int = "SIDE_BUY",
    currency: str = "USD",
) -> execution_pb2.LegSpec:
    """A leg as SubmitOrder takes it; a LIMIT leg gets a limit price of 101.25 unless told otherwise."""
    if limit_price is None:
        limit_price = "101.25" if order_type == "ORDER_TYPE_LIMIT" else ""
    return execution_pb2.LegSpec(
        instrument_symbol=symbol,
        side=side,  # type: ignore[arg-type]
        quantity=quantity,
        order_type=order_type,  # type: ignore[arg-type]
        limit_price=limit_price,
        currency_code=currency,
    )


def submit_order_request(
    key: str | None = None, legs: list[execution_pb2.LegSpec] | None = None, reference: str = "ref"
) -> execution_pb2.SubmitOrderRequest:
    """A SubmitOrderRequest, of one LIMIT leg unless `legs` are given."""
    return execution_pb2.SubmitOrderRequest(
        idempotency_key=key if key is not None else new_key("order"),
        client_order_reference=reference,
        legs=legs if legs is not None else [leg_spec()],
    )


def modify_leg_request(
    order_id: str, leg_id: str, key: str | None = None, **fields: str
) -> execution_pb2.ModifyLegRequest:
    """A ModifyLegRequest; `fields` are new_quantity and new_limit_price."""
    return execution_pb2.ModifyLegRequest(
        idempotency_key=key if key is not None else new_key("modify"), order_id=order_id, leg_id=leg_id, **fields
    )


def close_leg_request(
    order_id: str, leg_id: str, key: str | None = None, reason: str = "done"
) -> execution_pb2.CloseLegRequest:
    return execution_pb2.CloseLegRequest(
        idempotency_key=key if key is not None else new_key("close"), order_id=order_id, leg_id=leg_id, reason=reason
    )


# --------------------------------------------------------------------------------------------- to the use cases


def create_payment_command(
    key: str | None = None,
    amount: str = "25.00",
    currency: str = "EUR",
    *,
    description: str = "",
    merchant_reference: str = "",
    metadata: dict[str, str] | None = None,
) -> CreatePayment:
    """The domain's CreatePayment, validated as the servicer validates a request."""
    return validate_create_payment(
        idempotency_key=key if key is not None else str(uuid.uuid4()),
        amount_value=amount,
        currency_code=currency,
        description=description,
        merchant_reference=merchant_reference,
        metadata=metadata or {},
    )


def leg_terms(
    quantity: str = "100",
    symbol: str = "ACME",
    *,
    side: str = "BUY",
    order_type: str = "MARKET",
    limit_price: str = "",
    currency: str = "USD",
) -> dict[str, str]:
    """A leg as validate_submit_order takes it (strings off the wire): a MARKET buy of 100 ACME in USD."""
    return {
        "instrument_symbol": symbol,
        "side": side,
        "quantity": quantity,
        "order_type": order_type,
        "limit_price": limit_price,
        "currency_code": currency,
    }


def submit_order_command(legs: list[dict[str, str]], key: str | None = None, reference: str = "ref") -> SubmitOrder:
    """The domain's SubmitOrder, validated as the servicer validates a request."""
    return validate_submit_order(key if key is not None else new_key("o"), reference, legs)


async def new_payment(
    database: Database, principal: Principal, amount: str = "25.00", currency: str = "EUR", key: str | None = None
) -> uuid.UUID:
    """A payment of the principal's, recorded (create_payment) and never sent."""
    request = create_payment_command(key, amount, currency)
    return (await create_payment(database, principal, request, Budget.within(USE_CASE_BUDGET_S))).payment.id


async def new_payments(
    database: Database, principal: Principal, count: int, amount: str = "25.00", currency: str = "EUR"
) -> list[uuid.UUID]:
    """`count` payments of the principal's, recorded a few at a time (CONCURRENT_CREATES_MAX)."""
    ids: list[uuid.UUID] = []
    for start in range(0, count, CONCURRENT_CREATES_MAX):
        batch = min(CONCURRENT_CREATES_MAX, count - start)
        ids += await asyncio.gather(*(new_payment(database, principal, amount, currency) for _ in range(batch)))
    return ids


async def submitted_legs(
    database: Database, principal: Principal, legs: list[dict[str, str]], reference: str = "ref"
) -> list[uuid.UUID]:
    """The legs of a new order of the principal's, recorded and not sent (SUBMITTED, no venue order id)."""
    request = submit_order_command(legs, reference=reference)
    order = (await submit_and_send(database, None, principal, request, Budget.within(USE_CASE_BUDGET_S))).order
    return [leg.id for leg in order.legs]


async def submitted_leg(database: Database, principal: Principal, quantity: str = "100") -> uuid.UUID:
    """A leg of a new order of the principal's (leg_terms: a MARKET buy of ACME), recorded and not sent."""
    (leg_id,) = await submitted_legs(database, principal, [leg_terms(quantity)])
    return leg_id
