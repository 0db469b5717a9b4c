"""The payment gateway client: a payment's status from the provider, or why there is none (http.py).

An answer (`ProviderPayment`) is the provider's status word and its id, evidence to apply. `NotSent`
leaves the payment recorded and unsent; `OutcomeUnknown` makes it UNKNOWN until someone asks the
provider by idempotency key. The provider's idempotency key is Ballast's payment id, so a second
submission can never charge twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from server.domain.stated import stated
from server.providers.http import HttpProvider, NotSent, OutcomeUnknown, Refused, read_id_and_status

__all__ = ["GatewayClient", "NotSent", "OutcomeUnknown", "ProviderPayment", "Refused"]


@dataclass(frozen=True)
class ProviderPayment:
    """A definite answer: the provider's id and status for one payment, and the raw body as evidence."""

    provider_payment_id: str
    status: str
    body: bytes

    @property
    def amount(self) -> str | None:
        """The amount the provider says the payment is for, verbatim (None if it states none)."""
        return _stated(self.body, "amount")

    @property
    def currency_code(self) -> str | None:
        return _stated(self.body, "currency")


def _stated(body: bytes, name: str) -> str | None:
    """A term the provider's JSON object states, as server/domain/stated.py reads any provider value."""
    try:
        parsed = json.loads(body, parse_float=Decimal)  # a number stays exact
    except (ValueError, RecursionError):
        return None
    return stated(parsed.get(name)) if isinstance(parsed, dict) else None


class GatewayClient(HttpProvider):
    """Talks to one payment gateway over a pooled HTTP session."""

    async def create_payment(
        self, idempotency_key: str, amount: Decimal, currency_code: str, reference: str, timeout_s: float
    ) -> ProviderPayment:
        """Ask the provider to take a payment. Raises NotSent, OutcomeUnknown or Refused."""
        body = json.dumps({"amount": str(amount), "currency": currency_code, "reference": reference}).encode()
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        reply = await self.call("POST", "/v1/payments", timeout_s, data=body, headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return ProviderPayment(*read_id_and_status(reply.body, self.provider), reply.body)

    async def find_payment(self, idempotency_key: str, timeout_s: float) -> ProviderPayment | None:
        """The status inquiry after a timeout: the payment created with this key, None if the provider never saw it."""
        reply = await self.call("GET", "/v1/payments", timeout_s, params={"idempotency_key": idempotency_key})
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return ProviderPayment(*read_id_and_status(reply.body, self.provider), reply.body)
