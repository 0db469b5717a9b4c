"""Webhooks as the provider simulator sends them: its events, signed with its own signer, and Ballast's
HTTP endpoint for them on a free port.

The signature is the simulator's (`simulator.signing.sign`, Stripe's scheme): a test signs what it sends
exactly as the provider does, and Ballast's verifier (`server/providers/signatures.py`) is what is tested.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from server.api.http_app import build_http_app
from server.db.database import Database
from server.services.webhook_application import WebhookSource
from server.services.webhooks import Intake
from simulator.signing import SIGNATURE_HEADER, sign
from tests.support.waiting import until

#: The provider whose webhooks these are (its parser and status words).
PROVIDER = "simulator"

__all__ = [
    "PROVIDER",
    "SIGNATURE_HEADER",
    "WebhookEndpoint",
    "event",
    "event_id_of",
    "fill_execution",
    "mac",
    "new_event_id",
    "order_event",
    "payment_event",
    "sign",
    "signed_headers",
    "until_queued",
    "webhook_endpoint",
]


def signed_headers(body: bytes, secret: str) -> dict[str, str]:
    """The headers the provider sends `body` with: its signature, signed now, and the content type."""
    return {SIGNATURE_HEADER: sign(body, secret), "Content-Type": "application/json"}


def mac(body: bytes, secret: str, timestamp: int) -> str:
    """The bare HMAC (hex) of a signature at `timestamp`, for headers a test puts together itself."""
    return sign(body, secret, timestamp).split("v1=", 1)[1]


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def event_id_of(body: bytes) -> str:
    """The id of the event in `body`."""
    return str(json.loads(body)["id"])


def event(kind: str, subject: Mapping[str, Any], event_id: str | None = None, **fields: Any) -> bytes:
    """An event of type `kind` about `subject` (its data.object), with a new id unless given; `fields` are
    more top-level fields (e.g. the provider's `sequence`)."""
    body = {"id": event_id or new_event_id(), "type": kind, **fields, "data": {"object": dict(subject)}}
    return json.dumps(body).encode()


def payment_event(
    payment_id: uuid.UUID, status: str, event_id: str | None = None, *, object_id: str | None = None, **fields: Any
) -> bytes:
    """The provider's event saying `status` about Ballast's payment (its idempotency key); its own id for the
    payment is `object_id`, pay_<12 hex digits of the payment id> unless given."""
    subject = {
        "id": object_id or f"pay_{payment_id.hex[:12]}",
        "status": status,
        "idempotency_key": str(payment_id),
    }
    return event(f"payment.{status.strip().lower()}", subject, event_id, **fields)


def fill_execution(quantity: Any, price: Any = "10.5", execution_id: str | None = None) -> dict[str, Any]:
    """A venue's execution as an order event carries it (a new id unless given, made now)."""
    return {
        "id": execution_id or f"exec_{uuid.uuid4().hex}",
        "quantity": quantity,
        "price": price,
        "time": int(time.time()),
    }


def order_event(
    leg_id: uuid.UUID,
    exec_type: str,
    event_id: str | None = None,
    *,
    object_id: str | None = None,
    execution: dict[str, Any] | None = None,
    **fields: Any,
) -> bytes:
    """The venue's event of `exec_type` about Ballast's leg (its idempotency key), with an execution when
    given; the venue's own order id is `object_id`, ord_<12 hex digits of the leg id> unless given, and
    `fields` are more fields of the order."""
    subject: dict[str, Any] = {
        "id": object_id or f"ord_{leg_id.hex[:12]}",
        "exec_type": exec_type,
        "idempotency_key": str(leg_id),
        **fields,
    }
    if execution is not None:
        subject["execution"] = execution
    return event(f"order.{exec_type}", subject, event_id)


@dataclass(frozen=True)
class WebhookEndpoint:
    """Ballast's webhook endpoint on a free port, and a client session to post to it."""

    port: int
    secret: str
    session: aiohttp.ClientSession

    def url(self, provider: str = PROVIDER) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/{provider}"

    async def post(
        self,
        body: bytes,
        signature: str | None = None,
        headers: Any = None,
        provider: str = PROVIDER,
    ) -> tuple[int, dict[str, Any]]:
        """POST `body` signed now with the endpoint's secret (or with `signature`, or with exactly
        `headers`); the HTTP status and the JSON answer ({"raw": text} when it is not JSON)."""
        if headers is None:
            headers = signed_headers(body, self.secret)
            if signature is not None:
                headers[SIGNATURE_HEADER] = signature
        async with self.session.post(self.url(provider), data=body, headers=headers) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, {"raw": text}


@asynccontextmanager
async def webhook_endpoint(
    database: Database, secret: str, intake: Intake | None = None, provider: str = PROVIDER
) -> AsyncIterator[WebhookEndpoint]:
    """Ballast's HTTP app (build_http_app) on a free loopback port, taking `provider`'s webhooks signed with
    `secret` (through `intake` when given, else its own); stopped on exit."""
    runner = web.AppRunner(
        build_http_app(database, {provider: WebhookSource(provider, secret)}, intake), access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield WebhookEndpoint(runner.addresses[0][1], secret, session)
    finally:
        await runner.cleanup()


async def until_queued(intake: Intake, count: int) -> None:
    """Until `count` deliveries wait in the intake's queue (verified, parsed, not taken by a writer)."""

    def waiting() -> bool:
        return intake._queue.qsize() >= count  # nothing public tells; a delivery is queued with no await

    await until(waiting, f"{count} deliveries are queued")
