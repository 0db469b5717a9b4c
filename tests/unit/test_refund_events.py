"""Refund webhooks read: a `refund.*` event is about a refund (never a payment or an order), its subject
Ballast's refund id, its object the provider's refund; anything else about it is Unreadable, saying why.
And the simulator's refund status words mapped to the refund machine's events."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from server.domain.provider_status import (
    PROVIDER_REFUND_STATUS_EVENTS,
    UnknownProviderStatus,
    refund_event_for,
)
from server.domain.refund_states import REFUND_EVENTS, RefundEvent, RefundState
from server.providers.simulator_events import NESTING_DEPTH_MAX, REASON_LENGTH_MAX, Unreadable, parse_event
from simulator.refunds import Refund, RefundRequest

REFUND_ID = uuid.UUID("0b7c3f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f")


def _refund(status: str = "pending", **changes: Any) -> dict[str, Any]:
    """A refund object as the simulator's README shows it."""
    refund = {
        "id": "re_3f2a1b0c9d8e7f6a5b4c3d2e",
        "object": "refund",
        "payment": "pay_9a8b7c6d5e4f3a2b1c0d9e8f",
        "amount": "12.34",
        "currency": "EUR",
        "status": status,
        "reason": "requested_by_customer",
        "metadata": {},
        "idempotency_key": str(REFUND_ID),
        "created": 1767225600,
    }
    return refund | changes


def _body(kind: str, refund: object, event_id: str = "evt_1") -> bytes:
    return json.dumps({"id": event_id, "type": kind, "sequence": 1, "data": {"object": refund}}).encode()


@pytest.mark.parametrize("status", ["pending", "succeeded", "failed"])
def test_a_refund_event_is_about_ballasts_refund_and_carries_the_providers_refund(status: str) -> None:
    event = parse_event(_body(f"refund.{status}", _refund(status)))

    assert event.about_a_refund
    assert not event.about_a_payment  # today's intake sends every event about a payment to the payment machine
    assert not event.about_an_order
    assert (event.event_id, event.kind, event.subject_id) == ("evt_1", f"refund.{status}", REFUND_ID)
    assert (event.provider_object_id, event.status) == ("re_3f2a1b0c9d8e7f6a5b4c3d2e", status)
    assert (event.data["amount"], event.data["currency"], event.data["payment"]) == (
        "12.34",
        "EUR",
        "pay_9a8b7c6d5e4f3a2b1c0d9e8f",
    )
    assert event.execution is None
    assert event.reason == ""


def test_the_simulators_own_refund_object_reads() -> None:
    """The body the simulator really sends (simulator/refunds.py), so the parser cannot drift from it."""
    request = RefundRequest("pay_abc", Decimal("5.00"), "EUR", "duplicate", (("case", "7"),))
    refund = Refund(request, str(REFUND_ID), Decimal("5.00"), "succeeded", 10)
    event = parse_event(_body("refund.pending", refund.to_json()))
    assert (event.subject_id, event.provider_object_id, event.status) == (REFUND_ID, refund.id, "pending")
    assert (event.data["amount"], event.data["payment"]) == ("5.00", "pay_abc")
    claimed = parse_event(_body("refund.failed", refund.to_json("failed"), "evt_2"))  # a contradictory claim
    assert (claimed.subject_id, claimed.status) == (REFUND_ID, "failed")


def test_an_amount_sent_as_a_number_stays_exact() -> None:
    event = parse_event(_body("refund.succeeded", _refund("succeeded")).replace(b'"12.34"', b"0.10"))
    assert event.data["amount"] == Decimal("0.10")
    assert isinstance(event.data["amount"], Decimal)


def test_a_contradicting_claim_is_read_as_the_claim_the_provider_made() -> None:
    """The provider says failed after it said succeeded (its contradict fault): the parser reads each
    claim as it is; judging it is the provider's API's job, as for payments."""
    succeeded = parse_event(_body("refund.succeeded", _refund("succeeded"), "evt_1"))
    failed = parse_event(_body("refund.failed", _refund("failed"), "evt_2"))
    assert (succeeded.subject_id, succeeded.status) == (failed.subject_id, "succeeded")
    assert failed.status == "failed"


@pytest.mark.parametrize(("kind", "status"), [("refund.succeeded", "failed"), ("refund.failed", "pending")])
def test_an_event_that_contradicts_itself_is_unreadable(kind: str, status: str) -> None:
    with pytest.raises(Unreadable, match=f"type says '{kind.removeprefix('refund.')}'.*status '{status}'"):
        parse_event(_body(kind, _refund(status)))


@pytest.mark.parametrize(
    "key",
    [
        None,  # missing: a refund made elsewhere (the provider's dashboard)
        "",
        "r-1",
        "urn:uuid:0b7c3f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f",  # one of Ballast's ids, but not as Ballast writes it
        "0B7C3F6E-1D2A-4C5B-9E8F-7A6B5C4D3E2F",
        "0b7c3f6e1d2a4c5b9e8f7a6b5c4d3e2f",
        12345678901234567890123456789012,  # 32 digits: hex to uuid.UUID, but not a key Ballast sent
        ["0b7c3f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f"],
    ],
)
def test_a_refund_without_one_of_ballasts_ids_as_its_key_is_a_refund_of_nobodys(key: object) -> None:
    refund = _refund("succeeded", idempotency_key=key)
    if key is None:
        del refund["idempotency_key"]
    event = parse_event(_body("refund.succeeded", refund))
    assert event.about_a_refund and not event.about_a_payment
    assert event.subject_id is None  # today's intake keeps it and applies nothing (IGNORED)
    assert (event.provider_object_id, event.status) == ("re_3f2a1b0c9d8e7f6a5b4c3d2e", "succeeded")


@pytest.mark.parametrize(
    ("kind", "refund", "why"),
    [
        ("refund.pending", [_refund()], "object is not a refund"),
        ("refund.pending", "re_1", "object is not a refund"),
        ("refund.pending", _refund(object="payment"), "object is not a refund"),
        ("refund.pending", {k: v for k, v in _refund().items() if k != "object"}, "object is not a refund"),
        ("refund.pending", {k: v for k, v in _refund().items() if k != "id"}, "refund's id is not a text"),
        ("refund.pending", _refund(id=""), "refund's id is not a text"),
        ("refund.pending", _refund(id=17), "refund's id is not a text"),
        ("refund.pending", _refund(id="re_" + "x" * 300), "refund's id is not a text"),
        ("refund.pending", _refund(id="re_\x00"), "refund's id is not a text"),
        ("refund.pending", _refund(id="re_\ud800"), "refund's id is not a text"),
        ("refund.pending", {k: v for k, v in _refund().items() if k != "status"}, "status is not a text"),
        ("refund.pending", _refund(status=None), "status is not a text"),
        ("refund.pending", _refund(status=["pending"]), "status is not a text"),
        ("refund.pending\x00", _refund(status="pending\x00"), "status is not a text"),
        ("refund." + "p" * 65, _refund(status="p" * 65), "status is not a text"),
        ("refund.pending", _refund(status="Pending"), "type says 'pending'"),
        ("refund.", _refund(status=""), "status is not a text"),
    ],
)
def test_a_refund_event_that_is_not_what_it_says_is_unreadable_and_says_why(
    kind: str, refund: object, why: str
) -> None:
    with pytest.raises(Unreadable, match=why) as unreadable:
        parse_event(_body(kind, refund))
    assert "evt_1" in str(unreadable.value)


def test_hostile_text_in_a_refund_event() -> None:
    # a reason is cut and made fit for a text column; the raw body keeps it all
    event = parse_event(_body("refund.failed", _refund("failed", failure_reason="no\x00" + "x" * 1000)))
    assert event.reason == ("no\ufffd" + "x" * 1000)[:REASON_LENGTH_MAX]
    # nesting past the bound, and a body that is not JSON or not an event, are never a refund event
    deep: object = "x"
    for _ in range(NESTING_DEPTH_MAX + 1):
        deep = [deep]
    with pytest.raises(Unreadable, match="nests deeper"):
        parse_event(_body("refund.pending", _refund(metadata=deep)))
    with pytest.raises(Unreadable, match="not JSON"):
        parse_event(b'{"id": "evt_1", "type": "refund.pending", "data": {"object": {')
    with pytest.raises(Unreadable, match="not a provider event"):
        parse_event(json.dumps({"id": "evt_1", "type": "refund.pending", "object": _refund()}).encode())
    with pytest.raises(Unreadable, match="event id"):
        parse_event(_body("refund.pending", _refund(), event_id="evt_\x00"))


def test_events_about_payments_and_orders_are_not_about_refunds() -> None:
    payment = parse_event(_body("payment.refunded", {"id": "pay_1", "status": "refunded", "object": "payment"}))
    order = parse_event(_body("order.fill", {"id": "ord_1", "exec_type": "fill"}))
    other = parse_event(_body("charge.dispute.created", {"id": "dp_1"}))
    assert (payment.about_a_payment, payment.about_a_refund, payment.about_an_order) == (True, False, False)
    assert (order.about_a_payment, order.about_a_refund, order.about_an_order) == (False, False, True)
    assert (other.about_a_payment, other.about_a_refund, other.about_an_order) == (False, False, False)


def test_the_simulators_refund_words_map_to_the_refund_machines_events() -> None:
    assert PROVIDER_REFUND_STATUS_EVENTS["simulator"] == {
        "pending": RefundEvent.ACCEPTED,
        "succeeded": RefundEvent.SUCCEEDED,
        "failed": RefundEvent.FAILED,
    }
    assert refund_event_for("simulator", " Succeeded ") is RefundEvent.SUCCEEDED
    # each word moves a refund Ballast sent (RECORDED, or UNKNOWN after a timeout) somewhere
    for event in PROVIDER_REFUND_STATUS_EVENTS["simulator"].values():
        assert event in REFUND_EVENTS[RefundState.RECORDED] and event in REFUND_EVENTS[RefundState.UNKNOWN]
    for word in ("refunded", "canceled", "requires_action", ""):
        with pytest.raises(UnknownProviderStatus):
            refund_event_for("simulator", word)
    with pytest.raises(UnknownProviderStatus):
        refund_event_for("another-provider", "succeeded")
