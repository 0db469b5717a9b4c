"""The payment gateway client: what the provider answered, sorted by what Ballast may conclude from it.

Three kinds of outcome, because a caller must never be told more than is known:

- an answer (`ProviderPayment`): the provider's status word and its id, evidence to apply;
- `NotSent`: the request never reached the provider (the breaker is open, the connection was
  refused, it said 429 before processing): nothing happened there, the payment stays recorded;
- `OutcomeUnknown`: the request may have reached it (a timeout, a reset after sending, a 5xx, an
  unreadable answer): the payment is UNKNOWN until someone asks the provider by idempotency key.

The provider's idempotency key is Ballast's payment id, so a second submission can never charge twice.
Every call runs under the gateway's circuit breaker with a time limit inside the caller's budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from server.providers.breaker import Breaker, BreakerOpen, Neutral

#: Below this much time left there is no point asking: the answer could not come back in time.
CALL_TIME_MIN_S = 0.05


@dataclass(frozen=True)
class ProviderPayment:
    """A definite answer: the provider's id and status for one payment, and the raw body as evidence."""

    provider_payment_id: str
    status: str
    body: bytes


class NotSent(Exception):
    """The provider did not get the request; nothing happened there."""

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class OutcomeUnknown(Exception):
    """The request may have reached the provider; only asking it (by idempotency key) will tell."""


class Refused(Exception):
    """The provider refused the request itself (4xx): a definite answer, and not a sign of an outage."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the provider refused the request with HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


class _ServerError(Exception):
    """A 5xx: counted by the breaker; whether the provider acted is unknown."""


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]


class GatewayClient:
    """Talks to one payment gateway over a pooled HTTP session."""

    def __init__(self, provider: str, base_url: str, session: aiohttp.ClientSession, breaker: Breaker) -> None:
        self.provider = provider
        self._base_url = base_url.rstrip("/")
        self._session = session
        self.breaker = breaker

    async def create_payment(
        self, idempotency_key: str, amount: Decimal, currency_code: str, reference: str, timeout_s: float
    ) -> ProviderPayment:
        """Ask the provider to take a payment. Raises NotSent, OutcomeUnknown or Refused."""
        body = json.dumps({"amount": str(amount), "currency": currency_code, "reference": reference}).encode()
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        reply = await self._call("POST", "/v1/payments", timeout_s, data=body, headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return _payment(reply.body)

    async def find_payment(self, idempotency_key: str, timeout_s: float) -> ProviderPayment | None:
        """The status inquiry after a timeout: the payment created with this key, None if the provider never saw it."""
        reply = await self._call("GET", "/v1/payments", timeout_s, params={"idempotency_key": idempotency_key})
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return _payment(reply.body)

    async def _call(self, method: str, path: str, timeout_s: float, **request: Any) -> _Reply:
        if timeout_s < CALL_TIME_MIN_S:
            raise NotSent("too little of the caller's deadline was left to ask the provider", 0.0)

        async def send() -> _Reply | Neutral[_Reply]:
            async with self._session.request(method, self._base_url + path, **request) as response:
                reply = _Reply(response.status, await response.read(), dict(response.headers))
            if reply.status >= 500:
                raise _ServerError(f"HTTP {reply.status}")
            if reply.status == 429 or 400 <= reply.status < 500:
                return Neutral(reply)  # an answer: the provider is up, whatever it thinks of the request
            return reply

        try:
            reply = await self.breaker.call(send, timeout_s)
        except BreakerOpen as error:
            raise NotSent(str(error), error.retry_after_s) from None
        except aiohttp.ClientConnectorError as error:  # the connection was never made: nothing was sent
            raise NotSent(f"cannot connect to {self.provider}: {error.os_error.strerror or error}", 1.0) from None
        except (TimeoutError, aiohttp.ClientError, _ServerError) as error:
            raise OutcomeUnknown(f"{type(error).__name__}: {error}"[:300]) from None
        if reply.status == 429:
            raise NotSent(f"{self.provider} is rate limiting", _retry_after_s(reply.headers))
        return reply


def _retry_after_s(headers: dict[str, str]) -> float:
    try:
        return max(float(headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0


def _payment(body: bytes) -> ProviderPayment:
    """Read a payment object; an unreadable one leaves the outcome unknown."""
    try:
        parsed = json.loads(body)
        provider_payment_id, status = parsed["id"], parsed["status"]
    except (ValueError, KeyError, TypeError):
        raise OutcomeUnknown(f"the provider's answer could not be read: {body[:200]!r}") from None
    if not isinstance(provider_payment_id, str) or not isinstance(status, str):
        raise OutcomeUnknown(f"the provider's answer has no id or status: {body[:200]!r}")
    return ProviderPayment(provider_payment_id[:255], status[:64], body)
