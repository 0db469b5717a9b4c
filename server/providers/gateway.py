"""The payment gateway client: a payment's or a refund's status from the provider, or why there is none (http.py).

An answer (`ProviderPayment`, `ProviderRefund`) is the provider's status word and its id, evidence to
apply. `NotSent` leaves the payment or refund recorded and unsent; `OutcomeUnknown` makes it UNKNOWN
until someone asks the provider by idempotency key; `Refused` is the provider's definite no, whose
reason `refusal_code` reads. The provider's idempotency key is Ballast's payment id (a refund's: its
refund id), so a second submission can never charge or refund twice.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from urllib.parse import quote

import aiohttp

from server.domain.stated import stated
from server.providers.http import HttpProvider, NotSent, OutcomeUnknown, Refused, read_id_and_status

__all__ = [
    "GatewayClient",
    "NotSent",
    "OutcomeUnknown",
    "ProviderPayment",
    "ProviderRefund",
    "RefundRefusal",
    "Refused",
    "ReportUnavailable",
    "refusal_code",
]

#: What a provider's id may look like where it goes into a URL's path (`pay_...`, `re_...`): no
#: slash, query, fragment, percent sign or space, and never a dot segment, so it names one resource.
_PATH_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.:\-]{0,254}")


class _StatedTerms:
    """The terms a provider's answer states about its object, read from the raw body it keeps."""

    body: bytes

    @property
    def amount(self) -> str | None:
        """The amount the provider says the object is for, verbatim (None if it states none)."""
        return _stated(self.body, "amount")

    @property
    def currency_code(self) -> str | None:
        return _stated(self.body, "currency")


@dataclass(frozen=True)
class ProviderPayment(_StatedTerms):
    """A definite answer: the provider's id and status for one payment, and the raw body as evidence."""

    provider_payment_id: str
    status: str
    body: bytes


@dataclass(frozen=True)
class ProviderRefund(_StatedTerms):
    """A definite answer: the provider's id and status for one refund, and the raw body as evidence."""

    provider_refund_id: str
    status: str
    body: bytes

    @property
    def provider_payment_id(self) -> str | None:
        """The provider's id of the payment it says the refund is of (its `payment`)."""
        return _stated(self.body, "payment")


class RefundRefusal(enum.StrEnum):
    """Why the provider refused a refund, in its words (`refusal_code` of the Refused's body)."""

    #: more than is left to refund of the payment (or nothing is left)
    AMOUNT_TOO_LARGE = "amount_too_large"
    #: not the payment's currency
    CURRENCY_MISMATCH = "currency_mismatch"
    #: the payment cannot be refunded (not captured, failed, already refunded in full)
    PAYMENT_NOT_REFUNDABLE = "payment_not_refundable"
    #: the idempotency key was used before with other parameters
    IDEMPOTENCY_CONFLICT = "idempotency_error"


#: The error type of an idempotency conflict, which carries no code of its own.
_IDEMPOTENCY_ERROR_TYPE = "idempotency_error"


def refusal_code(body: bytes) -> str | None:
    """The machine-readable reason of a refusal's body (`{"error": {"type", "message", "param", "code"}}`):
    its `code`, or `idempotency_error` for an idempotency conflict (which has only its type); None when
    the body names no reason (a bad parameter, no such payment) or cannot be read. Compare it with
    RefundRefusal."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if isinstance(code, str) and code:
        return stated(code)
    return _IDEMPOTENCY_ERROR_TYPE if error.get("type") == _IDEMPOTENCY_ERROR_TYPE else None


def _stated(body: bytes, name: str) -> str | None:
    """A term the provider's JSON object states, as server/domain/stated.py reads any provider value."""
    try:
        parsed = json.loads(body, parse_float=Decimal)  # a number stays exact
    except (ValueError, RecursionError):
        return None
    return stated(parsed.get(name)) if isinstance(parsed, dict) else None


def _decimal_text(amount: Decimal) -> str:
    """An amount as the provider reads it: plain decimal digits, exactly (never an exponent, never a float)."""
    if not amount.is_finite():
        raise ValueError(f"{amount} is not an amount")
    return format(amount, "f")


def _path_id(provider_id: str) -> str | None:
    """The provider's id fit to be one segment of a URL's path, or None when it cannot be one of its ids."""
    return quote(provider_id, safe="") if _PATH_ID.fullmatch(provider_id) else None


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

    async def create_refund(
        self,
        idempotency_key: str,
        provider_payment_id: str,
        amount: Decimal,
        currency_code: str,
        reason: str,
        timeout_s: float,
    ) -> ProviderRefund:
        """Ask the provider to refund `amount` of the payment it knows as `provider_payment_id`, under
        Ballast's refund id as the idempotency key. Raises NotSent, OutcomeUnknown or Refused (its
        reason: refusal_code); ValueError, before anything is sent, for an id the provider never gives."""
        path_id = _path_id(provider_payment_id)
        if path_id is None:
            raise ValueError(f"{provider_payment_id[:64]!r} is not a provider's payment id")
        fields = {"amount": _decimal_text(amount), "currency": currency_code}
        if reason:  # the provider takes a reason of 1 character or more, or none
            fields["reason"] = reason
        headers = {"Idempotency-Key": idempotency_key, "Content-Type": "application/json"}
        path = f"/v1/payments/{path_id}/refunds"
        reply = await self.call("POST", path, timeout_s, data=json.dumps(fields).encode(), headers=headers)
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return ProviderRefund(*read_id_and_status(reply.body, self.provider), reply.body)

    async def get_refund(self, provider_refund_id: str, timeout_s: float) -> ProviderRefund | None:
        """The refund the provider knows by this id now; None if it knows none (an id it never gives is
        not asked about)."""
        path_id = _path_id(provider_refund_id)
        if path_id is None:
            return None
        reply = await self.call("GET", f"/v1/refunds/{path_id}", timeout_s)
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return ProviderRefund(*read_id_and_status(reply.body, self.provider), reply.body)

    async def find_refund(self, idempotency_key: str, timeout_s: float) -> ProviderRefund | None:
        """The status inquiry after a timeout: the refund created with this key, None if the provider never saw it."""
        reply = await self.call("GET", "/v1/refunds", timeout_s, params={"idempotency_key": idempotency_key})
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise Refused(reply.status, reply.body)
        return ProviderRefund(*read_id_and_status(reply.body, self.provider), reply.body)

    @contextlib.asynccontextmanager
    async def settlement_report(self, day: date, timeout_s: float) -> AsyncIterator[AsyncIterator[bytes]]:
        """The provider's settlement report (CSV) of one day, as it streams in (never all in memory);
        ReportUnavailable when the provider does not serve it. Not under the payments' breaker: a report
        is not on any payment's path."""
        params = {"from": day.isoformat(), "to": day.isoformat(), "format": "csv"}
        try:
            async with self._session.get(
                f"{self._base_url}/v1/reports/settlement",
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                if response.status != 200:
                    body = await response.content.read(200)
                    raise ReportUnavailable(f"the provider answered HTTP {response.status}: {body!r}")
                yield response.content.iter_chunked(REPORT_CHUNK_BYTES)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ReportUnavailable(f"the provider's report could not be read: {error!r}") from None


#: A pulled report is read in chunks of this size.
REPORT_CHUNK_BYTES = 1024 * 1024


class ReportUnavailable(Exception):
    """The provider's settlement report could not be read (nothing was ingested)."""
