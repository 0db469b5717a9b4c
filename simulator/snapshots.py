"""The simulator's objects as JSON and back, for the journal: exactly the value that was written.

Any dataclass of the simulator's (payment, refund, order, their requests, fills, modifications, settlement
lines and bookings) is written field by field with its class name, Decimals as decimal strings,
dates in ISO 8601 and tuples marked as such, so a field added to one of them is kept without a
change here. Only the classes listed below are ever built back: the journal names no code to run.
A payment's, refund's or order's record also carries what the simulator keeps beside it: the answer its key
replays, its last webhook sequence number, the fault of the request that created it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from simulator.orders import Execution, Modification, Order, OrderRequest
from simulator.payments import Payment, PaymentRequest
from simulator.refunds import Refund, RefundRequest
from simulator.settlement import Booking, Line
from simulator.store import Answer

_CLASSES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Payment,
        PaymentRequest,
        Refund,
        RefundRequest,
        Order,
        OrderRequest,
        Execution,
        Modification,
        Line,
        Booking,
    )
}
_TAG = "$"  # never a key of the API's JSON bodies, which the records hold as they are


def encode(value: Any) -> Any:
    """A JSON-ready form of value: one of the classes above, a Decimal, a date, a tuple, or plain JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _CLASSES:
            raise TypeError(f"{name} is not a class the journal keeps")
        fields = {field.name: encode(getattr(value, field.name)) for field in dataclasses.fields(value) if field.init}
        return {_TAG: name, **fields}
    if isinstance(value, Decimal):
        return {_TAG: "Decimal", "value": str(value)}
    if isinstance(value, date):
        return {_TAG: "date", "value": value.isoformat()}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "value": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    return value


def decode(value: Any) -> Any:
    """The value encode() was given."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return {key: decode(item) for key, item in value.items()}
    if tag == "Decimal":
        return Decimal(value["value"])
    if tag == "date":
        return date.fromisoformat(value["value"])
    if tag == "tuple":
        return tuple(decode(item) for item in value["value"])
    return _CLASSES[tag](**{key: decode(item) for key, item in value.items() if key != _TAG})


@dataclass
class Restored:
    """A payment, refund or order read back, with what the simulator kept beside it."""

    object: Any  # Payment | Refund | Order
    answer: Answer  # the first answer, replayed to a repeated idempotency key
    sequence: int  # the sequence number of its last webhook event
    create_fault: str


def snapshot(value: Payment | Refund | Order, answer: Answer, sequence: int, create_fault: str) -> dict[str, Any]:
    return {
        "object": encode(value),
        "answer": {"status": answer.status, "body": answer.body},
        "sequence": sequence,
        "create_fault": create_fault,
    }


def restore(state: dict[str, Any]) -> Restored:
    answer = Answer(state["answer"]["status"], state["answer"]["body"])
    return Restored(decode(state["object"]), answer, state["sequence"], state["create_fault"])


def action_state(key: str, request: tuple[str, str, object], answer: Answer) -> dict[str, Any]:
    """The answer a modify or cancel got under an Idempotency-Key, and what it asked (the body as sent)."""
    order_id, action, body = request
    answer_state = {"status": answer.status, "body": answer.body}
    return {"key": key, "order_id": order_id, "action": action, "body": body, "answer": answer_state}


def action_from(state: dict[str, Any]) -> tuple[str, tuple[str, str, object], Answer]:
    request = (state["order_id"], state["action"], state["body"])
    return state["key"], request, Answer(state["answer"]["status"], state["answer"]["body"])


def booking_id(booking: Booking) -> str:
    """The journal's key for a booking: its true line's id, or its invented line's."""
    return booking.true.id if booking.true is not None else booking.reported[0].id
