"""The simulated provider: payments, their outcomes, their webhooks, and the seeded RNG behind it all.

ONE `random.Random(seed)` drives everything. Request faults are drawn from it as requests arrive;
each new payment draws a 64-bit seed from it for its own generator (outcome, settle delay, webhook
faults), so background timing never shifts the main sequence: same seed + same requests => same
faults.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from simulator.faults import RequestFaults, WebhookFaults, draw_request_faults, draw_webhook_faults
from simulator.payments import (
    DECLINED,
    FAILED,
    PENDING,
    REFUNDED,
    SUCCEEDED,
    InvalidRequest,
    Payment,
    PaymentRequest,
)
from simulator.profiles import profile
from simulator.settings import FaultSettings
from simulator.store import PaymentStore
from simulator.webhooks import Event, WebhookDispatcher


@dataclass
class Answer:
    """What the API should answer: a status, a JSON body, and whether it is an idempotent replay."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


class Simulator:
    def __init__(
        self,
        *,
        profile_name: str = "calm",
        seed: int = 0,
        settings: FaultSettings | None = None,
        webhook_url: str | None = None,
        webhook_secret: str,
    ) -> None:
        self.profile_name = profile_name
        self.settings = settings if settings is not None else profile(profile_name)
        self.seed = seed
        self.rng = random.Random(seed)
        self.store = PaymentStore()
        self.webhooks = WebhookDispatcher(webhook_url, webhook_secret)
        self._payment_rngs: dict[str, random.Random] = {}
        self._webhook_overrides: dict[str, WebhookFaults | None] = {}
        self._create_faults: dict[str, str] = {}
        self._held: dict[str, list[Event]] = {}  # reordered events waiting for the next one
        self._sequences: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control ---------------------------------------------------------------------------------

    def set_profile(self, name: str | None, overrides: dict[str, Any], seed: int | None) -> None:
        """Switch profile and/or settings; a seed restarts the RNG so the next requests replay a run."""
        base = profile(name) if name is not None else self.settings
        self.settings = base.with_overrides(overrides)
        if name is not None:
            self.profile_name = name
        if overrides:
            self.profile_name = f"{name or self.profile_name.removesuffix('+custom')}+custom"
        if seed is not None:
            self.seed = seed
            self.rng = random.Random(seed)

    async def reset(self, seed: int | None = None) -> None:
        """Forget every payment and event, stop background work, restart the RNG from the seed."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.reset()
        self.store = PaymentStore()
        for table in (self._payment_rngs, self._webhook_overrides, self._create_faults, self._held, self._sequences):
            table.clear()
        if seed is not None:
            self.seed = seed
        self.rng = random.Random(self.seed)

    async def close(self) -> None:
        await self.reset()
        await self.webhooks.close()

    # -- payments --------------------------------------------------------------------------------

    def draw_request_faults(self) -> RequestFaults:
        return draw_request_faults(self.rng, self.settings)

    def create_payment(self, key: str, request: PaymentRequest, faults: RequestFaults) -> Answer:
        """Create a payment or replay the key's first answer; IdempotencyConflict on a mismatch.

        Synchronous on purpose: the check and the insert cannot interleave with another request.
        """
        saved = self.store.replay(key, request)
        if saved is not None:
            return Answer(saved.status, saved.body, replayed=True)
        payment_rng = random.Random(self.rng.getrandbits(64))
        if payment_rng.random() < self.settings.success_rate:
            outcome = SUCCEEDED
        else:
            outcome = payment_rng.choice((FAILED, DECLINED))
        settle_after_ms = payment_rng.randint(self.settings.settle_min_ms, self.settings.settle_max_ms)
        payment = Payment(request=request, idempotency_key=key, outcome=outcome, settle_after_ms=settle_after_ms)
        body = payment.to_json()
        self.store.add(payment, 200, body)
        self._payment_rngs[payment.id] = payment_rng
        self._webhook_overrides[payment.id] = faults.webhooks
        self._create_faults[payment.id] = faults.describe()
        self._emit(payment)
        self._spawn(self._settle(payment))
        return Answer(200, body)

    def refund(self, payment_id: str) -> Answer:
        payment = self.store.get(payment_id)
        if payment is None:
            raise LookupError(payment_id)
        if payment.status != SUCCEEDED:
            raise InvalidRequest(f"payment {payment_id} is {payment.status}: only succeeded payments can be refunded")
        payment.move_to(REFUNDED)
        self._emit(payment)
        return Answer(200, payment.to_json())

    async def _settle(self, payment: Payment) -> None:
        await asyncio.sleep(payment.settle_after_ms / 1000)
        payment.move_to(payment.outcome)
        self._emit(payment)

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- webhooks --------------------------------------------------------------------------------

    def _emit(self, payment: Payment) -> None:
        """Record and queue the webhook(s) for the payment's new status, with this event's faults."""
        faults = self._webhook_overrides.get(payment.id)
        if faults is None:
            faults = draw_webhook_faults(self._payment_rngs[payment.id], self.settings)
        status = payment.status
        batch: list[Event] = []
        if status in (SUCCEEDED, FAILED, DECLINED) and faults.contradict:
            # first a claim of the opposite outcome, then the truth
            claimed = FAILED if status == SUCCEEDED else SUCCEEDED
            batch.append(self._event(payment, claimed, faults, contradictory=True))
        event = self._event(payment, status, faults)
        if status == PENDING and faults.reorder:
            # held back until the payment's next status, then delivered after it
            event.reordered = True
            self._held.setdefault(payment.id, []).append(event)
        else:
            batch.append(event)
            batch.extend(self._held.pop(payment.id, []))
        if batch:
            self.webhooks.send(payment.id, batch, self.settings)

    def _event(self, payment: Payment, status: str, faults: WebhookFaults, *, contradictory: bool = False) -> Event:
        sequence = self._sequences.get(payment.id, 0) + 1
        self._sequences[payment.id] = sequence
        return self.webhooks.record(
            Event(
                payment_id=payment.id,
                type=f"payment.{status}",
                sequence=sequence,
                status=status,
                data=payment.to_json(status),
                delay_ms=faults.delay_ms,
                duplicated=faults.duplicate,
                contradictory=contradictory,
                dropped=faults.drop,
            )
        )

    # -- truth -----------------------------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """Everything the provider really did, for tests and benchmarks to judge Ballast against."""
        events_by_payment: dict[str, list[dict[str, Any]]] = {}
        for event in self.webhooks.events:
            events_by_payment.setdefault(event.payment_id, []).append(event.to_json())
        return {
            "seed": self.seed,
            "profile": self.profile_name,
            "payments": [
                {
                    **payment.to_json(),
                    "final_status": payment.status,
                    "will_become": payment.outcome if payment.status == PENDING else None,
                    "history": payment.history,
                    "create_fault": self._create_faults.get(payment.id, "none"),
                    "webhooks": events_by_payment.get(payment.id, []),
                }
                for payment in self.store.payments.values()
            ],
        }
