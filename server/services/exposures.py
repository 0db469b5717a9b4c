"""The exposure projection: per account and currency, money in flight (payments not yet decided)
and settled (the account's ledger balance), kept from events by an idempotent consumer.

At every quiet moment (all events consumed) `settled` equals the ledger's balance of the account.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg

from server.db import exposures_repository
from server.domain import events
from server.domain.ledger import merchant_payable
from server.domain.payment_states import UNDECIDED_STATES
from server.messaging.consumer import EarlierEventPending

CONSUMER_GROUP = "exposures"
#: States in which a payment's money is in flight: asked for, not yet decided.
OPEN_STATES = frozenset(state.value for state in UNDECIDED_STATES)


async def apply_event(connection: asyncpg.Connection, subject: str, payload: dict[str, Any]) -> None:
    """One event's effect on the projection (inside process_if_new's transaction)."""
    kind = payload.get("type")
    if kind == events.PAYMENT_RECORDED:
        account = merchant_payable(payload["client_id"])
        await exposures_repository.add(
            connection, account, payload["currency_code"], Decimal(payload["amount"]), Decimal(0)
        )
    elif kind == events.PAYMENT_STATE_CHANGED:
        if payload["from_state"] not in OPEN_STATES and payload["to_state"] in OPEN_STATES:
            # a correction reopened it (an expired payment the provider did take, approved by a person)
            await exposures_repository.add(
                connection,
                merchant_payable(payload["client_id"]),
                payload["currency_code"],
                Decimal(payload["amount"]),
                Decimal(0),
            )
        elif payload["from_state"] in OPEN_STATES and payload["to_state"] not in OPEN_STATES:
            # The payment's recorded event (same aggregate, published first) put its amount in flight.
            # Redelivery does not keep that order: when the recorded event's delivery failed, this one
            # may come first and find no row, or less in flight than the amount. The sum comes out the
            # same in either order, so this one waits for the other to be applied.
            taken = await exposures_repository.take_in_flight(
                connection, merchant_payable(payload["client_id"]), payload["currency_code"], Decimal(payload["amount"])
            )
            if not taken:
                raise EarlierEventPending(
                    f"payment {payload['payment_id']} decided before its amount was recorded in flight here"
                )
    elif kind == events.LEDGER_POSTED:
        for line in payload["lines"]:
            await exposures_repository.add(
                connection, line["account"], line["currency_code"], Decimal(0), Decimal(line["amount"])
            )
