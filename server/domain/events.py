"""The events Ballast announces (through the outbox) and records (in the audit chain), as plain data."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

PAYMENT_RECORDED = "payments.recorded"
PAYMENT_STATE_CHANGED = "payments.state_changed"
LEDGER_POSTED = "ledger.posted"
CASE_OPENED = "cases.opened"
CASE_RESOLVED = "cases.resolved"
BREAKER_STATE_CHANGED = "providers.breaker_state_changed"

#: An announced event's topic, and the key of the aggregate it is about (its events publish in order).
TOPIC_LENGTH_MAX = 128
MESSAGE_KEY_LENGTH_MAX = 256
#: An event's id, as a consumer group remembers it (an outbox id, a provider's webhook event id).
EVENT_ID_LENGTH_MAX = 256
CONSUMER_GROUP_LENGTH_MAX = 128
#: A recorded change: what was done, and by whom (a client id, or a part of Ballast).
AUDIT_ACTION_LENGTH_MAX = 64
ACTOR_LENGTH_MAX = 128


def payment_recorded(
    payment_id: uuid.UUID, client_id: str, amount: Decimal, currency_code: str, state: str
) -> dict[str, Any]:
    return {
        "type": PAYMENT_RECORDED,
        "payment_id": str(payment_id),
        "client_id": client_id,
        "amount": format(amount, "f"),
        "currency_code": currency_code,
        "state": state,
    }


def payment_state_changed(
    payment_id: uuid.UUID,
    from_state: str,
    to_state: str,
    event: str,
    cause: str,
    evidence_ref: str,
    *,
    client_id: str,
    amount: Decimal,
    currency_code: str,
) -> dict[str, Any]:
    return {
        "type": PAYMENT_STATE_CHANGED,
        "payment_id": str(payment_id),
        "client_id": client_id,
        "amount": format(amount, "f"),
        "currency_code": currency_code,
        "from_state": from_state,
        "to_state": to_state,
        "event": event,
        "cause": cause,
        "evidence_ref": evidence_ref,
    }


def ledger_posted(entry_id: uuid.UUID, event_key: str, lines: list[tuple[str, Decimal, str]]) -> dict[str, Any]:
    return {
        "type": LEDGER_POSTED,
        "entry_id": str(entry_id),
        "event_key": event_key,
        "lines": [
            {"account": account, "amount": format(amount, "f"), "currency_code": currency}
            for account, amount, currency in lines
        ],
    }


REFUND_RECORDED = "refunds.recorded"
REFUND_STATE_CHANGED = "refunds.state_changed"


def refund_recorded(
    refund_id: uuid.UUID, payment_id: uuid.UUID, client_id: str, amount: Decimal, currency_code: str, state: str
) -> dict[str, Any]:
    return {
        "type": REFUND_RECORDED,
        "refund_id": str(refund_id),
        "payment_id": str(payment_id),
        "client_id": client_id,
        "amount": format(amount, "f"),
        "currency_code": currency_code,
        "state": state,
    }


def refund_state_changed(
    refund_id: uuid.UUID,
    payment_id: uuid.UUID,
    from_state: str,
    to_state: str,
    event: str,
    cause: str,
    evidence_ref: str,
    *,
    client_id: str,
    amount: Decimal,
    currency_code: str,
) -> dict[str, Any]:
    return {
        "type": REFUND_STATE_CHANGED,
        "refund_id": str(refund_id),
        "payment_id": str(payment_id),
        "client_id": client_id,
        "amount": format(amount, "f"),
        "currency_code": currency_code,
        "from_state": from_state,
        "to_state": to_state,
        "event": event,
        "cause": cause,
        "evidence_ref": evidence_ref,
    }
