"""Locust users that behave like Ballast's clients (README, "Calling Ballast"): a payer, a refunder, a
reader, a trader and an operator, their weights set by BALLAST_LOAD_WEIGHTS (`payer=6,reader=3,...`;
WEIGHTS by default; a weight of 0 leaves that user out).

The payer pays under a new idempotency key each time and repeats a call answered UNAVAILABLE,
DEADLINE_EXCEEDED or ABORTED with the *same* key, after the server's RetryInfo delay or a capped
backoff, at most ATTEMPTS_MAX times, as the README tells clients to; the refunder does the same for a
refund of a payment that succeeded. Both record every call in the chaos harness's history when
BALLAST_LOAD_HISTORY names a file, so the run can be judged by its checker.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import uuid
from typing import Any

import gevent
from locust import between, task

from ballast.common.v1.money_pb2 import Money
from ballast.execution.v1 import execution_pb2, execution_pb2_grpc
from ballast.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from ballast.reconciliation.v1 import reconciliation_pb2, reconciliation_pb2_grpc
from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT
from chaos.load import (
    ATTEMPTS_MAX,
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    INDETERMINATE,
    MESSAGE_MAX,
    RETRY_DELAY_MAX_S,
    RETRYABLE,
    amount,
    refund_state_name,
    retry_delay_s,
    state_name,
    third,
)
from loadtests.grpc_user import HISTORY, GrpcUser, Outcome

#: Each user's share of the simulated clients unless BALLAST_LOAD_WEIGHTS says otherwise.
WEIGHTS = {"payer": 6, "reader": 3, "refunder": 1, "trader": 1, "operator": 1}
WEIGHT_MAX = 1000
#: Payments that succeeded, kept for the refunder and the reader to use (the newest this many).
KNOWN_PAYMENTS_MAX = 10_000
#: Each user's pause between two tasks, in seconds.
WAIT_S = (0.0, 0.05)
#: A page of a list call.
PAGE_SIZE = 20
#: How long a user with nothing to do waits before it looks again.
IDLE_S = 0.5


def weights() -> dict[str, int]:
    """The users' weights: WEIGHTS, overridden by BALLAST_LOAD_WEIGHTS (`name=weight,...`)."""
    chosen = dict(WEIGHTS)
    raw = os.environ.get("BALLAST_LOAD_WEIGHTS", "").strip()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in WEIGHTS or not weight.strip().isdigit() or int(weight) > WEIGHT_MAX:
            raise ValueError(
                f"BALLAST_LOAD_WEIGHTS item {item!r}: expected name=weight, a name of {', '.join(WEIGHTS)}"
                f" and a weight of 0 to {WEIGHT_MAX}"
            )
        chosen[name] = int(weight)
    if not any(chosen.values()):
        raise ValueError("BALLAST_LOAD_WEIGHTS leaves no user with a weight above 0")
    return chosen


class KnownPayments:
    """The newest payments this process's payers were answered (id, amount, currency), for the readers."""

    def __init__(self, size: int) -> None:
        self._payments: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, payment_id: str, value: str, currency: str) -> None:
        with self._lock:
            self._payments.append((payment_id, value, currency))

    def any(self, rng: random.Random) -> tuple[str, str, str] | None:
        with self._lock:
            return rng.choice(self._payments) if self._payments else None


class Claimed:
    """Payment ids a refunder of this process took (the newest `size`): each payment is refunded once."""

    def __init__(self, size: int) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._ids: set[str] = set()
        self._size = size
        self._lock = threading.Lock()

    def claim(self, payment_id: str) -> bool:
        with self._lock:
            if payment_id in self._ids:
                return False
            self._ids.add(payment_id)
            self._order.append(payment_id)
            if len(self._order) > self._size:
                self._ids.discard(self._order.popleft())
            return True


KNOWN = KnownPayments(KNOWN_PAYMENTS_MAX)
CLAIMED = Claimed(KNOWN_PAYMENTS_MAX)


class RetryingUser(GrpcUser):
    """A client that repeats a call with the same key as the README says, recording each attempt."""

    abstract = True

    def keyed_call(
        self, method: str, operation: str, key: str, send: Any, request: Any, **recorded: str | None
    ) -> Outcome:
        """`send(request)` under `key`, repeated on a retryable status at most ATTEMPTS_MAX times; the last
        outcome. Each attempt is an `invoke` and one completion in the history."""
        outcome: Outcome | None = None
        for attempt in range(ATTEMPTS_MAX):
            HISTORY.record("invoke", self.process, key, operation=operation, **recorded)
            try:
                outcome = self.call(method, send, request)
            except gevent.GreenletExit:  # stopped mid-call by the load's end: the request may have landed
                HISTORY.record("info", self.process, key, operation=operation, error="CANCELLED")
                raise
            if outcome.ok:
                return outcome
            kind = "info" if outcome.code in INDETERMINATE else "fail"
            HISTORY.record(
                kind,
                self.process,
                key,
                operation=operation,
                error=outcome.code.name,
                message=outcome.details[:MESSAGE_MAX],
            )
            if outcome.code not in RETRYABLE or attempt + 1 == ATTEMPTS_MAX:
                return outcome
            delay_s = retry_delay_s(outcome.error) if outcome.error is not None else None
            if delay_s is None:
                delay_s = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
            self.wait_s(min(delay_s, RETRY_DELAY_MAX_S))
        assert outcome is not None
        return outcome

    def wait_s(self, seconds: float) -> None:
        gevent.sleep(seconds)


class Payer(RetryingUser):
    """Pays, one payment after another, each under a new key."""

    wait_time = between(*WAIT_S)

    def make_stubs(self) -> None:
        self.payments = payments_pb2_grpc.PaymentServiceStub(self.channel)
        self.rng = random.Random()  # noqa: S311 - amounts, not secrets

    @task
    def pay(self) -> None:
        value, currency = amount(self.rng)
        key = f"load-{uuid.uuid4()}"
        request = payments_pb2.CreatePaymentRequest(
            idempotency_key=key, amount=Money(value=value, currency_code=currency), description="load"
        )
        outcome = self.keyed_call(
            "CreatePayment",
            CREATE_PAYMENT,
            key,
            self.payments.CreatePayment,
            request,
            amount=value,
            currency=currency,
        )
        if outcome.ok:
            payment = outcome.response.payment
            state = state_name(payment.state)
            HISTORY.record("ok", self.process, key, operation=CREATE_PAYMENT, payment_id=payment.id, state=state)
            KNOWN.add(payment.id, value, currency)


class Refunder(RetryingUser):
    """Refunds a third of a payment that succeeded (the newest it finds; each payment once), under a key of
    its own."""

    wait_time = between(*WAIT_S)

    def make_stubs(self) -> None:
        self.payments = payments_pb2_grpc.PaymentServiceStub(self.channel)

    @task
    def refund(self) -> None:
        listed = self.call(
            "ListPayments",
            self.payments.ListPayments,
            payments_pb2.ListPaymentsRequest(page_size=PAGE_SIZE, state=payments_pb2.PAYMENT_STATE_SUCCEEDED),
        )
        payment = next((p for p in listed.response.payments if CLAIMED.claim(p.id)), None) if listed.ok else None
        if payment is None:
            self.wait_s(IDLE_S)  # nothing new to refund yet
            return
        value, currency = payment.amount.value, payment.amount.currency_code
        part = third(value, currency)
        key = f"load-refund-{uuid.uuid4()}"
        request = payments_pb2.RefundPaymentRequest(
            idempotency_key=key,
            payment_id=payment.id,
            amount=Money(value=part, currency_code=currency) if part else None,
            reason="load",
        )
        outcome = self.keyed_call(
            "RefundPayment",
            REFUND_PAYMENT,
            key,
            self.payments.RefundPayment,
            request,
            amount=part,
            currency=currency,
            payment_id=payment.id,
        )
        if outcome.ok:
            refund = outcome.response.refund
            HISTORY.record(
                "ok",
                self.process,
                key,
                operation=REFUND_PAYMENT,
                payment_id=payment.id,
                state=refund_state_name(refund.state),
                refund_id=refund.id,
            )


class Reader(GrpcUser):
    """Reads: a payment, its timeline, the newest page of payments, the client's balance."""

    wait_time = between(*WAIT_S)

    def make_stubs(self) -> None:
        self.payments = payments_pb2_grpc.PaymentServiceStub(self.channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self.channel)
        self.rng = random.Random()  # noqa: S311
        self.client_id: str | None = None

    @task(3)
    def get_payment(self) -> None:
        known = KNOWN.any(self.rng)
        if known is not None:
            self.call("GetPayment", self.payments.GetPayment, payments_pb2.GetPaymentRequest(payment_id=known[0]))

    @task(2)
    def timeline(self) -> None:
        known = KNOWN.any(self.rng)
        if known is not None:
            request = payments_pb2.GetPaymentTimelineRequest(payment_id=known[0], page_size=PAGE_SIZE)
            self.call("GetPaymentTimeline", self.payments.GetPaymentTimeline, request)

    @task(2)
    def list_payments(self) -> None:
        outcome = self.call(
            "ListPayments", self.payments.ListPayments, payments_pb2.ListPaymentsRequest(page_size=PAGE_SIZE)
        )
        if outcome.ok and outcome.response.payments:
            self.client_id = outcome.response.payments[0].client_id or self.client_id

    @task(1)
    def balance(self) -> None:
        if self.client_id is None:
            return
        request = ledger_pb2.GetBalanceRequest(account=f"merchant_payable:{self.client_id}", currency_code="EUR")
        self.call("GetBalance", self.ledger.GetBalance, request)


class Trader(GrpcUser):
    """Trades: an order of one limit leg, then a modification of it or its close."""

    wait_time = between(*WAIT_S)

    def make_stubs(self) -> None:
        self.execution = execution_pb2_grpc.ExecutionServiceStub(self.channel)
        self.rng = random.Random()  # noqa: S311

    @task
    def trade(self) -> None:
        leg = execution_pb2.LegSpec(
            instrument_symbol="AAPL",
            side=execution_pb2.SIDE_BUY,
            quantity=str(self.rng.randint(1, 100)),
            order_type=execution_pb2.ORDER_TYPE_LIMIT,
            limit_price="101.25",
            currency_code="USD",
        )
        submitted = self.call(
            "SubmitOrder",
            self.execution.SubmitOrder,
            execution_pb2.SubmitOrderRequest(
                idempotency_key=f"load-order-{uuid.uuid4()}", client_order_reference="load", legs=[leg]
            ),
        )
        if not submitted.ok or not submitted.response.order.legs:
            return
        order = submitted.response.order
        leg_id = order.legs[0].id
        if self.rng.random() < 0.5:
            request = execution_pb2.ModifyLegRequest(
                idempotency_key=f"load-modify-{uuid.uuid4()}",
                order_id=order.id,
                leg_id=leg_id,
                new_limit_price="101.50",
            )
            self.call("ModifyLeg", self.execution.ModifyLeg, request)
        else:
            request_close = execution_pb2.CloseLegRequest(
                idempotency_key=f"load-close-{uuid.uuid4()}", order_id=order.id, leg_id=leg_id, reason="load"
            )
            self.call("CloseLeg", self.execution.CloseLeg, request_close)


class Operator(GrpcUser):
    """Works reconciliation cases: the open cases, page by page, and one of them in full."""

    wait_time = between(*WAIT_S)
    bearer_from = "BALLAST_OPERATOR_TOKEN"

    def make_stubs(self) -> None:
        self.reconciliation = reconciliation_pb2_grpc.ReconciliationServiceStub(self.channel)

    @task
    def cases(self) -> None:
        listed = self.call(
            "ListCases",
            self.reconciliation.ListCases,
            reconciliation_pb2.ListCasesRequest(page_size=PAGE_SIZE, status=reconciliation_pb2.CASE_STATUS_OPEN),
        )
        if listed.ok and listed.response.cases:
            case_id = listed.response.cases[0].id
            self.call("GetCase", self.reconciliation.GetCase, reconciliation_pb2.GetCaseRequest(case_id=case_id))


#: Each user by its name in BALLAST_LOAD_WEIGHTS.
USERS: dict[str, type[GrpcUser]] = {
    "payer": Payer,
    "reader": Reader,
    "refunder": Refunder,
    "trader": Trader,
    "operator": Operator,
}
