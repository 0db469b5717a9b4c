"""The simulator's webhook events, read: its JSON (`{"id", "type", "data": {"object": ...}}`) becomes
a ProviderEvent, or Unreadable says why it cannot.

What a provider sends is untrusted even when it is signed: the parser bounds what it accepts (the
nesting, every text's length, characters a text column refuses) and keeps amounts exact (a number
stays a Decimal, never a float). What the event means for a payment, a refund or a leg is decided
elsewhere.

An event is about exactly one kind of object, by its type's prefix: `payment.`, `refund.` or `order.`
(`about_a_payment`, `about_a_refund`, `about_an_order`); any other type is about nothing Ballast keeps.
A refund event is read strictly: its object must be a refund with an id, and the status its type
names must be its object's status.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from server.domain.events import EVENT_ID_LENGTH_MAX
from server.domain.evidence import PROVIDER_ID_LENGTH_MAX, PROVIDER_STATUS_LENGTH_MAX
from server.domain.order_legs import EXECUTION_ID_LENGTH_MAX, Fill

#: The deepest nesting of objects and arrays an event may have; a provider's events are a few levels deep.
NESTING_DEPTH_MAX = 32
#: The most of a venue's reason for a rejection that is kept beside the leg (the raw body keeps it all).
REASON_LENGTH_MAX = 500
#: The most of one header's value kept as evidence.
HEADER_LENGTH_MAX = 1024

#: The type prefixes of the events about each kind of object.
PAYMENT_EVENT_PREFIX = "payment."
REFUND_EVENT_PREFIX = "refund."
ORDER_EVENT_PREFIX = "order."


class Unreadable(Exception):
    """Signed, stored as evidence, but not an event Ballast can read (answer 400: the provider keeps it)."""


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    kind: str
    #: Ballast's own payment, refund or leg id, which it sends as the provider's idempotency key (None:
    #: an object Ballast did not ask for, such as a refund made on the provider's dashboard)
    subject_id: uuid.UUID | None
    #: the provider's id of the object (`pay_...`, `re_...`, an order's id)
    provider_object_id: str | None
    #: a payment's or a refund's status word, or an order's execution type
    status: str | None
    #: an order event's execution (fill), as the venue sent it
    execution: dict[str, Any] | None = None
    #: why a venue rejected an order, or why a refund failed, as the provider put it
    reason: str = ""
    #: the event's object as the provider sent it (amounts, currency, symbol, a refund's payment: what
    #: fit checks compare)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def about_a_payment(self) -> bool:
        return self.kind.startswith(PAYMENT_EVENT_PREFIX)

    @property
    def about_a_refund(self) -> bool:
        """A refund's event: its subject is Ballast's refund id, its object the provider's refund."""
        return self.kind.startswith(REFUND_EVENT_PREFIX)

    @property
    def about_an_order(self) -> bool:
        return self.kind.startswith(ORDER_EVENT_PREFIX)


def provider_text(value: object, length_max: int) -> str | None:
    """A provider's text, fit to be stored in a text column: NUL and lone surrogates (which JSON can
    carry and PostgreSQL refuses) replaced; the raw body keeps the original."""
    if not isinstance(value, str):
        return None
    return value[:length_max].replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def header_text(value: str) -> str:
    """A header's value, fit to be stored in JSON: bytes that were not UTF-8 (which the HTTP server
    hands over as lone surrogates) decoded with replacement characters, NUL replaced."""
    with contextlib.suppress(UnicodeEncodeError):  # a surrogate that stands for no byte: provider_text replaces it
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return cast(str, provider_text(value, HEADER_LENGTH_MAX))


def _deeper_than(value: object, depth_max: int) -> bool:
    """Whether `value` nests objects and arrays deeper than `depth_max` (walked without recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > depth_max:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def parse_event(body: bytes) -> ProviderEvent:
    """The event a signed body carries; Unreadable (saying why) if it carries none Ballast can read."""
    try:
        parsed = json.loads(body, parse_float=Decimal)  # an amount sent as a number stays exact
    except RecursionError:  # nested deeper than the parser goes: not an event, but kept as evidence
        raise Unreadable(f"the body nests deeper than {NESTING_DEPTH_MAX} levels") from None
    except ValueError:
        raise Unreadable("the body is not JSON") from None
    if _deeper_than(parsed, NESTING_DEPTH_MAX):
        raise Unreadable(f"the body nests deeper than {NESTING_DEPTH_MAX} levels")
    try:
        event_id, kind, data = parsed["id"], parsed["type"], parsed["data"]["object"]
    except (KeyError, TypeError):
        raise Unreadable("the body is not a provider event (id, type, data.object)") from None
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= EVENT_ID_LENGTH_MAX or not isinstance(kind, str):
        raise Unreadable(f"the event id must be a string of 1 to {EVENT_ID_LENGTH_MAX} characters")
    if provider_text(event_id, EVENT_ID_LENGTH_MAX) != event_id:
        raise Unreadable("the event id holds characters no id has (NUL, lone surrogates)")
    if kind.startswith(REFUND_EVENT_PREFIX):
        return _refund_event(event_id, kind, data)
    if not kind.startswith((PAYMENT_EVENT_PREFIX, ORDER_EVENT_PREFIX)) or not isinstance(data, dict):
        return ProviderEvent(event_id, kind, None, None, None)
    try:
        subject_id = uuid.UUID(str(data.get("idempotency_key", "")))
    except ValueError:
        subject_id = None
    is_order = kind.startswith(ORDER_EVENT_PREFIX)
    execution = data.get("execution") if is_order else None
    return ProviderEvent(
        event_id,
        kind,
        subject_id,
        provider_text(data.get("id"), PROVIDER_ID_LENGTH_MAX),
        provider_text(data.get("exec_type") if is_order else data.get("status"), PROVIDER_STATUS_LENGTH_MAX),
        execution if isinstance(execution, dict) else None,
        provider_text(data.get("reject_reason"), REASON_LENGTH_MAX) or "",
        data,
    )


def _refund_event(event_id: str, kind: str, data: object) -> ProviderEvent:
    """A refund event, read strictly: Unreadable unless its object is a refund with an id and the
    status its type names. Its subject is the refund's idempotency key when that is one of Ballast's
    ids (a UUID, as Ballast writes it), else None: a refund Ballast did not ask for."""
    if not isinstance(data, dict) or data.get("object") != "refund":
        raise Unreadable(f"event {event_id}: a refund event whose object is not a refund")
    refund_id, status = data.get("id"), data.get("status")
    if not _fit(refund_id, PROVIDER_ID_LENGTH_MAX):
        raise Unreadable(f"event {event_id}: the refund's id is not a text of 1 to {PROVIDER_ID_LENGTH_MAX} characters")
    if not _fit(status, PROVIDER_STATUS_LENGTH_MAX):
        raise Unreadable(
            f"event {event_id}: the refund's status is not a text of 1 to {PROVIDER_STATUS_LENGTH_MAX} characters"
        )
    named = kind.removeprefix(REFUND_EVENT_PREFIX)
    if status != named:  # which of the two the provider meant cannot be told: neither is taken
        said = provider_text(named, PROVIDER_STATUS_LENGTH_MAX)
        raise Unreadable(f"event {event_id}: its type says {said!r} and its refund's status {status!r}")
    return ProviderEvent(
        event_id,
        kind,
        _ballast_id(data.get("idempotency_key")),
        refund_id,
        status,
        None,
        provider_text(data.get("failure_reason"), REASON_LENGTH_MAX) or "",
        data,
    )


def _fit(value: object, length_max: int) -> bool:
    """Whether a provider's value is a text of 1 to `length_max` characters a text column takes as it is."""
    return isinstance(value, str) and 1 <= len(value) <= length_max and provider_text(value, length_max) == value


def _ballast_id(key: object) -> uuid.UUID | None:
    """The id of Ballast's that an idempotency key is: a UUID written as Ballast writes one (str(uuid)),
    else None (another sender's key)."""
    if not isinstance(key, str):
        return None
    try:
        parsed = uuid.UUID(key)
    except ValueError:
        return None
    return parsed if str(parsed) == key else None


def fill_of(event: ProviderEvent) -> tuple[Fill, datetime]:
    """The fill an order event carries; Unreadable if it carries none a leg could take."""
    execution = event.execution or {}
    try:
        execution_id = provider_text(str(execution["id"]), EXECUTION_ID_LENGTH_MAX) or ""
        fill = Fill(execution_id, Decimal(str(execution["quantity"])), Decimal(str(execution["price"])))
        fill_time = datetime.fromtimestamp(int(execution["time"]), UTC)
    except (KeyError, ValueError, TypeError, ArithmeticError, OverflowError):
        raise Unreadable(f"event {event.event_id}: a fill without a readable execution") from None
    return fill, fill_time
