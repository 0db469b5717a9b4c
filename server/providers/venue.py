"""The broker venue client: a leg sent to the venue, and the venue's word on it (see http.py for outcomes).

The venue's idempotency key is Ballast's leg id, so a leg sent twice is one order at the venue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from server.domain.orders import LegSpec, OrderType
from server.providers.http import HttpProvider, Refused, read_id_and_status


@dataclass(frozen=True)
class VenueOrder:
    """A definite answer: the venue's order id and its execution type / status for one leg."""

    venue_order_id: str
    status: str
    body: bytes


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
