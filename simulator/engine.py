"""The simulated provider: payments, refunds, orders, their webhooks, settlement, and the seeded RNG behind it all.

ONE `random.Random(seed)` drives everything. Request faults are drawn from it as requests arrive;
each new payment, refund or order draws a 64-bit seed from it for its own generator (outcome,
delays, fills, webhook faults, report drift), so background timing never shifts the main sequence:
same seed + same requests => same faults.

With a journal (`--state FILE`), every payment, refund, order, action answer and booking is written
before its answer goes out, and `restore()` takes them back at start: a pending payment or refund
still settles, a working order still fills, on the provider's own clock, after the simulator was
killed. A restored object gets a generator of its own seeded from its id (its draws before the
restart are gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from simulator.broker import Broker
from simulator.faults import RequestFaults, WebhookFaults, draw_request_faults, draw_webhook_faults
from simulator.journal import Journal
from simulator.orders import FINAL
from simulator.payments import (
    DECLINED,
    FAILED,
    PENDING,
    REFUNDED,
    SUCCEEDED,
    Payment,
    PaymentRequest,
)
from simulator.profiles import profile
from simulator.refunds import FAILED as REFUND_FAILED
from simulator.refunds import PENDING as REFUND_PENDING
from simulator.refunds import SUCCEEDED as REFUND_SUCCEEDED
from simulator.refunds import Refund, RefundRefused, RefundRequest
from simulator.settings import FaultSettings
from simulator.settlement import CHARGE, REFUND, Line, SettlementBook, fee_for, minor_unit, settlement_date
from simulator.snapshots import action_from, action_state, booking_id, decode, encode, restore, snapshot
from simulator.store import Answer, Store
from simulator.webhooks import Claim, Event, WebhookDispatcher


class Simulator:
    def __init__(
        self,
        *,
        profile_name: str = "calm",
        seed: int = 0,
        settings: FaultSettings | None = None,
        webhook_url: str | None = None,
        webhook_secret: str,
        journal: Journal | None = None,
    ) -> None:
        self.profile_name = profile_name
        self.settings = settings if settings is not None else profile(profile_name)
        self.seed = seed
        self.rng = random.Random(seed)
        self.store: Store[Payment] = Store()
        self.refunds: Store[Refund] = Store()
        self._refunds_of: dict[str, list[Refund]] = {}  # payment id -> its refunds, oldest first
        self.broker = Broker(self)
        self.settlements = SettlementBook()
        self.webhooks = WebhookDispatcher(webhook_url, webhook_secret)
        self.journal = journal
        self._object_rngs: dict[str, random.Random] = {}  # per payment, refund or order
        self._report_rngs: dict[str, random.Random] = {}  # per payment or refund: its settlement drift
        self._webhook_overrides: dict[str, WebhookFaults | None] = {}
        self.create_faults: dict[str, str] = {}
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

    async def _stop_work(self) -> None:
        """Cancel every settlement, fill and webhook delivery under way."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.webhooks.reset()

    async def reset(self, seed: int | None = None) -> None:
        """Forget every payment, order, event and booking (the journal's too), stop background work,
        restart the RNG."""
        await self._stop_work()
        if self.journal is not None:
            self.journal.clear()
        self.store = Store()
        self.refunds = Store()
        self.broker = Broker(self)
        self.settlements = SettlementBook()
        for table in (
            self._refunds_of,
            self._object_rngs,
            self._report_rngs,
            self._webhook_overrides,
            self.create_faults,
            self._held,
            self._sequences,
        ):
            table.clear()
        if seed is not None:
            self.seed = seed
        self.rng = random.Random(self.seed)

    async def close(self) -> None:
        """Stop: what is under way stays in the journal, to resume at the next start."""
        await self._stop_work()
        await self.webhooks.close()
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # -- shared by payments and orders -----------------------------------------------------------

    def draw_request_faults(self) -> RequestFaults:
        return draw_request_faults(self.rng, self.settings)

    def adopt(self, object_id: str, rng: random.Random, faults: RequestFaults) -> None:
        """Remember a new object's generator and the faults of the request that created it."""
        self._object_rngs[object_id] = rng
        self._webhook_overrides[object_id] = faults.webhooks
        self.create_faults[object_id] = faults.describe()

    def object_rng(self, object_id: str) -> random.Random:
        rng = self._object_rngs.get(object_id)
        if rng is None:  # restored from the journal: a generator of its own, from its id
            rng = self._object_rngs[object_id] = random.Random(f"{self.seed}-restored-{object_id}")
        return rng

    def spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def publish(
        self,
        object_id: str,
        event_type: str,
        status: str,
        data: dict[str, Any],
        *,
        first: bool = False,
        claim: Claim | None = None,
    ) -> None:
        """Record and queue the webhook(s) for an object's new status, with this event's faults.

        `first` marks the opening event (pending, new) that a reorder fault holds back until the
        next one; `claim` is what a contradict fault says before the truth (final events only).
        """
        faults = self._webhook_overrides.get(object_id)
        if faults is None:
            faults = draw_webhook_faults(self.object_rng(object_id), self.settings)
        batch: list[Event] = []
        if claim is not None and faults.contradict:
            batch.append(self._event(object_id, claim.type, claim.status, claim.data, faults, contradictory=True))
        event = self._event(object_id, event_type, status, data, faults)
        if first and faults.reorder:
            event.reordered = True
            self._held.setdefault(object_id, []).append(event)
        else:
            batch.append(event)
            batch.extend(self._held.pop(object_id, []))
        if batch:
            self.webhooks.send(object_id, batch, self.settings)
        # every change a client can see is announced by an event: journal the object with it
        self.save(object_id)

    def _event(
        self,
        object_id: str,
        event_type: str,
        status: str,
        data: dict[str, Any],
        faults: WebhookFaults,
        *,
        contradictory: bool = False,
    ) -> Event:
        sequence = self._sequences.get(object_id, 0) + 1
        self._sequences[object_id] = sequence
        return self.webhooks.record(
            Event(
                object_id=object_id,
                type=event_type,
                sequence=sequence,
                status=status,
                data=data,
                delay_ms=faults.delay_ms,
                duplicated=faults.duplicate,
                contradictory=contradictory,
                dropped=faults.drop,
            )
        )

    # -- payments --------------------------------------------------------------------------------

    def create_payment(self, key: str, request: PaymentRequest, faults: RequestFaults) -> Answer:
        """Create a payment or replay the key's first answer; IdempotencyConflict on a mismatch.

        Synchronous on purpose: the check and the insert cannot interleave with another request.
        """
        saved = self.store.replay(key, request)
        if saved is not None:
            return Answer(saved.status, saved.body, replayed=True)
        payment_seed = self.rng.getrandbits(64)
        payment_rng = random.Random(payment_seed)
        if payment_rng.random() < self.settings.success_rate:
            outcome = SUCCEEDED
        else:
            outcome = payment_rng.choice((FAILED, DECLINED))
        settle_after_ms = payment_rng.randint(self.settings.settle_min_ms, self.settings.settle_max_ms)
        payment = Payment(request=request, idempotency_key=key, outcome=outcome, settle_after_ms=settle_after_ms)
        body = payment.to_json()
        self.store.add(payment, 200, body)
        self.adopt(payment.id, payment_rng, faults)
        # a generator of its own, so settlement drift never shifts the payment's webhook faults
        self._report_rngs[payment.id] = random.Random(f"settlement-{payment_seed}")
        self._emit(payment)
        self.spawn(self._settle(payment, payment.settle_after_ms / 1000))
        return Answer(200, body)

    async def _settle(self, payment: Payment, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        payment.move_to(payment.outcome)
        with self.batch():
            if payment.status == SUCCEEDED:
                self._book(payment, CHARGE, payment.request.amount)
            self._emit(payment)

    def _book(self, payment: Payment, kind: str, gross: Decimal, refund: Refund | None = None) -> None:
        """Book a charge (with its fee) or a refund (with the refund fee; the charge's fee is not
        returned) for the settlement report. A refund's line names the refund as its source."""
        currency = payment.request.currency
        if kind == CHARGE:
            fee = fee_for(gross, currency, self.settings)
        else:
            fee = self.settings.refund_fee_fixed_minor_units * minor_unit(currency)
        source_id = payment.id if refund is None else refund.id
        description = kind if refund is None else f"refund of {payment.id}"
        line = Line(
            kind,
            source_id,
            payment.request.reference,
            currency,
            gross,
            fee,
            settlement_date(self.settings),
            description,
        )
        report_rng = self._report_rngs.get(source_id)
        if report_rng is None:  # restored from the journal
            report_rng = self._report_rngs[source_id] = random.Random(f"settlement-restored-{source_id}")
        for booking in self.settlements.record(line, report_rng, self.settings):
            if self.journal is not None:
                self.journal.put("booking", booking_id(booking), encode(booking), settled=True)

    def _emit(self, payment: Payment) -> None:
        status = payment.status
        claim = None
        if status in (SUCCEEDED, FAILED, DECLINED):
            claimed = FAILED if status == SUCCEEDED else SUCCEEDED
            claim = Claim(f"payment.{claimed}", claimed, payment.to_json(claimed))
        self.publish(payment.id, f"payment.{status}", status, payment.to_json(), first=status == PENDING, claim=claim)

    # -- refunds ---------------------------------------------------------------------------------

    def left_to_refund(self, payment: Payment) -> Decimal:
        """The payment's amount less its succeeded and pending refunds (a failed one frees its amount)."""
        taken = sum(
            (refund.amount for refund in self._refunds_of.get(payment.id, []) if refund.status != REFUND_FAILED),
            Decimal(0),
        )
        return payment.request.amount - taken

    def create_refund(self, key: str, request: RefundRequest, faults: RequestFaults) -> Answer:
        """Create a refund or replay the key's first answer; IdempotencyConflict on a mismatch,
        LookupError for an unknown payment, RefundRefused for one that cannot be refunded so.

        Synchronous on purpose: the key check, what is left to refund and the insert are one step, so
        concurrent refunds never add up to more than the payment. A refusal is not kept under the key.
        """
        saved = self.refunds.replay(key, request)
        if saved is not None:
            return Answer(saved.status, saved.body, replayed=True)
        payment = self.store.get(request.payment_id)
        if payment is None:
            raise LookupError(request.payment_id)
        currency = payment.request.currency
        if request.currency != currency:
            raise RefundRefused(
                400, f"payment {payment.id} is in {currency}, not {request.currency}", "currency", "currency_mismatch"
            )
        if payment.status != SUCCEEDED:
            raise RefundRefused(
                409,
                f"payment {payment.id} is {payment.status}: only succeeded payments can be refunded",
                "id",
                "payment_not_refundable",
            )
        left = self.left_to_refund(payment)
        amount = left if request.amount is None else request.amount
        if amount <= 0 or amount > left:
            raise RefundRefused(
                400,
                f"refund of {amount} {currency} exceeds the {left} {currency} left to refund on payment {payment.id}"
                if amount > 0
                else f"nothing is left to refund on payment {payment.id}",
                "amount",
                "amount_too_large",
            )
        refund_seed = self.rng.getrandbits(64)
        refund_rng = random.Random(refund_seed)
        # a fixed number of draws, whatever is drawn
        fails = refund_rng.random() < self.settings.refund_fail_rate
        stuck = refund_rng.random() < self.settings.refund_stuck_rate
        delay_ms = refund_rng.randint(self.settings.refund_settle_min_ms, self.settings.refund_settle_max_ms)
        refund = Refund(
            request=request,
            idempotency_key=key,
            amount=amount,
            outcome=REFUND_FAILED if fails else REFUND_SUCCEEDED,
            settle_after_ms=self.settings.refund_stuck_ms if stuck else delay_ms,
        )
        body = refund.to_json()
        self.refunds.add(refund, 200, body)
        self._refunds_of.setdefault(payment.id, []).append(refund)
        self.adopt(refund.id, refund_rng, faults)
        self._report_rngs[refund.id] = random.Random(f"settlement-{refund_seed}")
        self._emit_refund(refund)
        self.spawn(self._settle_refund(refund, refund.settle_after_ms / 1000))
        return Answer(200, body)

    async def _settle_refund(self, refund: Refund, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        refund.move_to(refund.outcome)
        # None only when the journal forgot a long-settled payment whose refund was still pending
        payment = self.store.get(refund.payment_id)
        with self.batch():
            if refund.status == REFUND_SUCCEEDED and payment is not None:
                payment.refunded_amount += refund.amount
                self._book(payment, REFUND, -refund.amount, refund)
            self._emit_refund(refund)
            if payment is None:
                return
            if payment.refunded_amount == payment.request.amount and payment.status == SUCCEEDED:
                payment.move_to(REFUNDED)
                self._emit(payment)
            else:
                self.save(payment.id)  # its amount_refunded changed (or not): no event tells of it

    def _emit_refund(self, refund: Refund) -> None:
        status = refund.status
        claim = None
        if status != REFUND_PENDING:
            claimed = REFUND_FAILED if status == REFUND_SUCCEEDED else REFUND_SUCCEEDED
            claim = Claim(f"refund.{claimed}", claimed, refund.to_json(claimed))
        self.publish(
            refund.id, f"refund.{status}", status, refund.to_json(), first=status == REFUND_PENDING, claim=claim
        )

    # -- the journal -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The journal writes inside are committed together (a no-op without a journal)."""
        if self.journal is None:
            yield
            return
        with self.journal.batch():
            yield

    def save(self, object_id: str) -> None:
        """Journal the latest state of a payment, refund or order (publish() does, with every event)."""
        if self.journal is None:
            return
        payment = self.store.get(object_id)
        refund = self.refunds.get(object_id)
        if payment is not None:
            kind, settled = "payment", payment.status != PENDING
            saved_payment = self.store.by_key[payment.idempotency_key]
            state = snapshot(payment, Answer(saved_payment.status, saved_payment.body), *self.beside(object_id))
        elif refund is not None:
            kind, settled = "refund", refund.status != REFUND_PENDING
            saved_refund = self.refunds.by_key[refund.idempotency_key]
            state = snapshot(refund, Answer(saved_refund.status, saved_refund.body), *self.beside(object_id))
        else:
            order = self.broker.store.get(object_id)
            if order is None:
                return
            kind, settled = "order", order.status in FINAL
            saved_order = self.broker.store.by_key[order.idempotency_key]
            state = snapshot(order, Answer(saved_order.status, saved_order.body), *self.beside(object_id))
        self.journal.put(kind, object_id, state, settled=settled)

    def save_action(self, key: str, request: tuple[str, str, object], answer: Answer) -> None:
        """Journal the answer a modify or cancel got under its Idempotency-Key."""
        if self.journal is not None:
            self.journal.put("action", key, action_state(key, request, answer), settled=True)

    def beside(self, object_id: str) -> tuple[int, str]:
        """What the simulator keeps beside an object: its last webhook sequence, its create fault."""
        return self._sequences.get(object_id, 0), self.create_faults.get(object_id, "none")

    def remember(self, object_id: str, sequence: int, create_fault: str) -> None:
        """What the journal kept beside a restored object: its last webhook sequence, its create fault."""
        self._sequences[object_id] = sequence
        self.create_faults[object_id] = create_fault

    def restore(self) -> int:
        """Take back everything the journal holds and resume what was under way; how many objects.

        Call it once, on a running event loop, before serving: a pending payment settles when it
        would have (at once if that time has passed), a working order goes on filling.
        """
        if self.journal is None:
            return 0
        count = 0
        for kind, state in self.journal.load():
            count += 1
            if kind == "booking":
                self.settlements.bookings.append(decode(state))
                continue
            if kind == "action":
                self.broker.restore_action(*action_from(state))
                continue
            restored = restore(state)
            value = restored.object
            stores: dict[str, Store[Any]] = {"payment": self.store, "refund": self.refunds, "order": self.broker.store}
            stores[kind].add(value, restored.answer.status, restored.answer.body)
            self.remember(value.id, restored.sequence, restored.create_fault)
            if kind == "order":
                self.broker.resume(value)
                continue
            due_s = max(value.created + value.settle_after_ms / 1000 - time.time(), 0.0)
            if kind == "refund":
                self._refunds_of.setdefault(value.payment_id, []).append(value)
                if value.status == REFUND_PENDING:
                    self.spawn(self._settle_refund(value, due_s))
            elif value.status == PENDING:
                self.spawn(self._settle(value, due_s))
        return count

    # -- truth -----------------------------------------------------------------------------------

    def events_by_object(self) -> dict[str, list[dict[str, Any]]]:
        events: dict[str, list[dict[str, Any]]] = {}
        for event in self.webhooks.events:
            events.setdefault(event.object_id, []).append(event.to_json())
        return events

    def truth(self) -> dict[str, Any]:
        """Everything the provider really did, for tests and benchmarks to judge Ballast against."""
        events = self.events_by_object()
        return {
            "seed": self.seed,
            "profile": self.profile_name,
            "payments": [
                {
                    **payment.to_json(),
                    "final_status": payment.status,
                    "will_become": payment.outcome if payment.status == PENDING else None,
                    "history": payment.history,
                    "create_fault": self.create_faults.get(payment.id, "none"),
                    "webhooks": events.get(payment.id, []),
                }
                for payment in self.store.objects.values()
            ],
            "refunds": [
                {
                    **refund.to_json(),
                    "final_status": refund.status,
                    "will_become": refund.outcome if refund.status == REFUND_PENDING else None,
                    "history": refund.history,
                    "create_fault": self.create_faults.get(refund.id, "none"),
                    "webhooks": events.get(refund.id, []),
                }
                for refund in self.refunds.objects.values()
            ],
            "orders": self.broker.truth(events),
            "settlement": self.settlements.truth(),
        }
