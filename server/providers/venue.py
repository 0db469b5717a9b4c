"""The broker venue client: a leg sent to the venue, and the venue's word on it (see http.py for outcomes).

The venue's idempotency key is Ballast's leg id, so a leg sent twice is one order at the venue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from server.domain.order_legs import EXECUTION_ID_LENGTH_MAX
from server.domain.orders import LegSpec, OrderType
from server.providers.http import HttpProvider, OutcomeUnknown, Refused, read_id_and_status


@dataclass(frozen=True)
class VenueExecution:
    """One fill as the venue lists it."""

    execution_id: str
    quantity: Decimal
    price: Decimal
    time: datetime


@dataclass(frozen=True)
class VenueOrder:
    """A definite answer: the venue's order id and its execution type / status for one leg."""

    venue_order_id: str
    status: str
    body: bytes

    @property
    def order(self) -> dict[str, Any]:
        """The venue's order object as it answered (symbol, side, quantities: what fit checks compare)."""
        try:
            order = json.loads(self.body, parse_float=Decimal)  # a quantity sent as a number stays exact
        except (ValueError, RecursionError):
            return {}
        return order if isinstance(order, dict) else {}


class VenueClient(HttpProvider):
    """Talks to one broker venue over a pooled HTTP session."""

    async def submit_leg(self, idempotency_key: str, leg: LegSpec, reference: str, timeout_s: float) -> VenueOrder:
        """Send a leg. Raises NotSent, OutcomeUnknown or Refused (the venue refused it: a rejection)."""
        order = {
            "symbol": leg.instrument_symbol,
            "side": leg.side.value.lower(),
            "type": leg.order_type.value.lower(),
            "quantity": format(leg.quantity, "f"),
            "currency": leg.currency_code,
            "reference": reference,
        }
        if leg.order_type is OrderType.LIMIT and leg.limit_price is not None:
            order["limit_price"] = format(leg.limit_price, "f")
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        reply = await self.call("POST", "/v1/orders", timeout_s, data=json.dumps(order).encode(), headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return VenueOrder(*read_id_and_status(reply.body, self.provider), reply.body)

    async def find_leg(self, idempotency_key: str, timeout_s: float) -> VenueOrder | None:
        """The status inquiry: the venue's order for this leg, None if the venue never saw it."""
        reply = await self.call("GET", "/v1/orders", timeout_s, params={"idempotency_key": idempotency_key})
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return VenueOrder(*read_id_and_status(reply.body, self.provider), reply.body)

    async def executions(self, venue_order_id: str, timeout_s: float) -> list[VenueExecution]:
        """Every fill of a venue order, oldest first: how fills whose webhooks never came are recovered."""
        reply = await self.call("GET", f"/v1/orders/{venue_order_id}/executions", timeout_s)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        try:
            listed = json.loads(reply.body)["data"]
            return [
                VenueExecution(
                    str(item["id"])[:EXECUTION_ID_LENGTH_MAX],
                    Decimal(str(item["quantity"])),
                    Decimal(str(item["price"])),
                    datetime.fromtimestamp(int(item["time"]), UTC),
                )
                for item in listed
            ]
        except (ValueError, KeyError, TypeError, ArithmeticError, OverflowError):
            raise OutcomeUnknown(f"{self.provider}'s executions could not be read: {reply.body[:200]!r}") from None

    async def modify_leg(
        self, venue_order_id: str, idempotency_key: str, terms: dict[str, str], timeout_s: float
    ) -> None:
        """Ask for new terms; the venue answers later (replaced / modify_rejected). Refused if it will not."""
        body = json.dumps(terms).encode()
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        reply = await self.call("POST", f"/v1/orders/{venue_order_id}/modify", timeout_s, data=body, headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)

    async def cancel_leg(self, venue_order_id: str, idempotency_key: str, timeout_s: float) -> None:
        """Cancel a working order or close a filled one. Refused (409) when it is final already."""
        headers = {"Idempotency-Key": idempotency_key}
        reply = await self.call("POST", f"/v1/orders/{venue_order_id}/cancel", timeout_s, headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
