"""Webhook delivery: signed POSTs in the background, retried with exponential backoff.

Events of one object (a payment, an order) go out one after another (a chain of tasks per
object), so "out of order" happens only when a fault says so. Every event, including dropped
ones, is kept for /_sim/truth.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from simulator.logs import log
from simulator.settings import FaultSettings
from simulator.signing import SIGNATURE_HEADER, sign


@dataclass
class Delivery:
    """One POST attempt of one copy of an event."""

    copy: int
    attempt: int
    status: int | None  # None: no HTTP answer (connection error, timeout)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"copy": self.copy, "attempt": self.attempt, "status": self.status, "error": self.error}


@dataclass(frozen=True)
class Claim:
    """A contradictory event: what the provider claims just before it tells the truth."""

    type: str
    status: str
    data: dict[str, Any]


@dataclass
class Event:
    """A webhook event and what the simulator did to it on purpose."""

    object_id: str  # the payment or order the event is about
    type: str
    sequence: int
    status: str  # the status the event claims
    data: dict[str, Any]
    id: str = field(default_factory=lambda: f"evt_{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    delay_ms: int = 0
    duplicated: bool = False
    reordered: bool = False
    contradictory: bool = False
    dropped: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    delivered_copies: int = 0
    # queued -> delivered | gave-up | dropped | no-url: a test or benchmark waits for "not queued"
    outcome: str = "queued"

    def body(self) -> bytes:
        payload = {
            "id": self.id,
            "type": self.type,
            "sequence": self.sequence,
            "created": self.created,
            "data": {"object": self.data},
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "sequence": self.sequence,
            "status": self.status,
            "created": self.created,
            "delay_ms": self.delay_ms,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "contradictory": self.contradictory,
            "dropped": self.dropped,
            "delivered_copies": self.delivered_copies,
            "outcome": self.outcome,
            "deliveries": [delivery.to_json() for delivery in self.deliveries],
        }


class WebhookDispatcher:
    def __init__(self, url: str | None, secret: str) -> None:
        self.url = url
        self.secret = secret
        self.events: list[Event] = []
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        await self.reset()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def reset(self) -> None:
        """Stop every delivery in flight and forget every event (reset and shutdown)."""
        tasks = list(self._chains.values())
        self._chains.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.events.clear()

    def send(self, object_id: str, events: list[Event], settings: FaultSettings) -> None:
        """Queue `events` (already recorded) after this object's earlier ones, in this order."""
        previous = self._chains.get(object_id)
        self._chains[object_id] = asyncio.create_task(self._chain(previous, events, settings))

    def record(self, event: Event) -> Event:
        self.events.append(event)
        return event

    async def _chain(self, previous: asyncio.Task[None] | None, events: list[Event], settings: FaultSettings) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        for event in events:
            if event.dropped:
                event.outcome = "dropped"
                log("webhook", id=event.id, type=event.type, sequence=event.sequence, outcome="dropped")
                continue
            if event.delay_ms:
                await asyncio.sleep(event.delay_ms / 1000)
            outcomes = [await self._deliver(event, copy, settings) for copy in range(1, 3 if event.duplicated else 2)]
            event.outcome = "delivered" if all(outcome == "delivered" for outcome in outcomes) else outcomes[-1]

    async def _deliver(self, event: Event, copy: int, settings: FaultSettings) -> str:
        """POST one copy until a 2xx or the attempts run out; backoff base, 2*base, 4*base..."""
        if self.url is None:
            log("webhook", id=event.id, type=event.type, sequence=event.sequence, outcome="no-url")
            return "no-url"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = event.body()
        timeout = aiohttp.ClientTimeout(total=settings.webhook_timeout_ms / 1000)
        for attempt in range(1, settings.webhook_max_attempts + 1):
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self.secret)}
            delivery = Delivery(copy=copy, attempt=attempt, status=None)
            try:
                async with self._session.post(self.url, data=body, headers=headers, timeout=timeout) as response:
                    delivery.status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                delivery.error = type(error).__name__
            event.deliveries.append(delivery)
            ok = delivery.status is not None and 200 <= delivery.status < 300
            log(
                "webhook",
                id=event.id,
                type=event.type,
                sequence=event.sequence,
                copy=copy,
                attempt=attempt,
                status=delivery.status if delivery.status is not None else "-",
                error=delivery.error or "-",
            )
            if ok:
                event.delivered_copies += 1
                return "delivered"
            if attempt < settings.webhook_max_attempts:
                await asyncio.sleep(settings.webhook_retry_base_ms * 2 ** (attempt - 1) / 1000)
        log("webhook", id=event.id, type=event.type, sequence=event.sequence, copy=copy, outcome="gave-up")
        return "gave-up"
