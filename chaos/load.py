"""The load a chaos run drives while its faults play: clients paying through Ballast's gRPC API the way
the README tells clients to, every call recorded in the run's History.

Each client pays one payment after another, each under a new idempotency key, with amounts drawn from
the run's seed. A call answered UNAVAILABLE, DEADLINE_EXCEEDED or ABORTED is repeated with the same
key after the server's RetryInfo delay (or a capped backoff), on the next server replica when there
are several, at most ATTEMPTS_MAX times; then the client gives up on that payment. Every call is an
`invoke` then one completion: `ok` with the state the client was told, `fail` for a definite refusal,
`info` when the outcome is unknown to the client (the request may have landed).

With a load's `refund_share`, a client whose payment was answered SUCCEEDED (or, asking GetPayment for
a bounded while, became SUCCEEDED) asks, for that share of its payments, one or two refunds of it under
keys of their own (`<payment key>-r<k>`): a third of it, then the rest (amount omitted), or one of the
two alone, drawn from the seed. Each refund call is retried and recorded as a payment's is, as a
`refund_payment` operation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from chaos.history import CREATE_PAYMENT, REFUND_PAYMENT, History
from chaos.scenarios import Load

#: Each call's deadline: longer than the servers' provider timeout, so a hang counts against the breaker.
CALL_DEADLINE_S = 3.0
#: Calls one client makes for one payment before it gives up on it.
ATTEMPTS_MAX = 6
#: Codes after which the README says to repeat the call with the same key.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
#: Codes that leave the client not knowing whether the request landed (the rest are definite refusals).
INDETERMINATE = RETRYABLE | {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}
#: The backoff when a retryable error carries no RetryInfo: base, 2 x base, ... up to the maximum.
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0
#: A RetryInfo delay longer than this is cut to it: a client does not wait minutes for one call.
RETRY_DELAY_MAX_S = 3.0
#: Payments in JPY (no minor unit); the rest are EUR.
JPY_SHARE = 0.2
#: An error message kept in the history is cut to this length.
MESSAGE_MAX = 300
#: How long a client asks GetPayment about a payment not yet SUCCEEDED before it gives up refunding it.
REFUND_WAIT_S = 5.0
REFUND_POLL_S = 0.25
#: A payment's refunds, drawn per payment: a third then the rest, a third alone, or all of it at once
#: (None: the amount is omitted, all that is left).
REFUND_PLANS: tuple[tuple[str, ...], ...] = (("third", "rest"), ("third", "rest"), ("third",), ("rest",))


@dataclass(frozen=True)
class Target:
    """One server replica as clients reach it."""

    address: str
    metadata: tuple[tuple[str, str], ...]


def amount(rng: random.Random) -> tuple[str, str]:
    """An (amount, currency) pair: EUR with cents or whole, some JPY."""
    if rng.random() < JPY_SHARE:
        return str(rng.randint(50, 80_000)), "JPY"
    if rng.random() < 0.2:
        return str(rng.randint(1, 900)), "EUR"
    cents = rng.randint(1, 99_999)
    return f"{cents // 100}.{cents % 100:02d}", "EUR"


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The delay a google.rpc.RetryInfo in the error's status details asks for, if there is one."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def state_name(state: int) -> str:
    try:
        return str(payments_pb2.PaymentState.Name(state)).removeprefix("PAYMENT_STATE_")
    except ValueError:  # a state newer than these stubs
        return f"STATE_{state}"


def refund_state_name(state: int) -> str:
    try:
        return str(payments_pb2.RefundState.Name(state)).removeprefix("REFUND_STATE_")
    except ValueError:  # a state newer than these stubs
        return f"STATE_{state}"


def third(value: str, currency: str) -> str | None:
    """A third of the amount, rounded down to the currency's minor unit; None when that is nothing."""
    exponent = Decimal(1) if currency == "JPY" else Decimal("0.01")
    part = (Decimal(value) / 3).quantize(exponent, rounding=ROUND_DOWN)
    return format(part, "f") if part > 0 else None


class Driver:
    """The run's clients; `run` returns when every client is done."""

    def __init__(self, targets: Sequence[Target], load: Load, seed: int, run_id: str, history: History) -> None:
        if not targets:
            raise ValueError("a load needs at least one server")
        self._targets = list(targets)
        self._load = load
        self._seed = seed
        self._run_id = run_id
        self._history = history
        self._started = 0.0

    def _now(self) -> float:
        return round(time.monotonic() - self._started, 4)

    async def run(self, started: float) -> None:
        """Drive the load from `started` (a time.monotonic() the faults share) for its duration."""
        self._started = started
        channels = [grpc.aio.insecure_channel(target.address) for target in self._targets]
        try:
            stubs = [payments_pb2_grpc.PaymentServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
            await asyncio.gather(*(self._client(number, stubs) for number in range(self._load.clients)))
        finally:
            for channel in channels:
                await channel.close()

    async def _client(self, number: int, stubs: list[payments_pb2_grpc.PaymentServiceStub]) -> None:
        rng = random.Random(f"{self._seed}:client:{number}")  # noqa: S311 - reproducible amounts
        # refunds draw from their own generator: a load with refunds asks the same payments as one without
        refund_rng = random.Random(f"{self._seed}:refunds:{number}")  # noqa: S311 - reproducible refunds
        process = f"client-{number}"
        payment = 0
        while self._now() < self._load.duration_s:
            value, currency = amount(rng)
            key = f"chaos-{self._run_id}-{number}-{payment}"
            answer = await self._pay(process, number + payment, key, value, currency, stubs)
            refunds = refund_rng.random() < self._load.refund_share
            refund_plan = refund_rng.choice(REFUND_PLANS)
            if refunds and answer is not None:
                await self._refund(process, number + payment, key, answer, value, currency, refund_plan, stubs)
            payment += 1

    async def _pay(
        self,
        process: str,
        first_target: int,
        key: str,
        value: str,
        currency: str,
        stubs: list[payments_pb2_grpc.PaymentServiceStub],
    ) -> tuple[str, str] | None:
        """Pay under `key`; the payment's (id, state) the last answer gave, None without one."""
        request = payments_pb2.CreatePaymentRequest(
            idempotency_key=key, amount=Money(value=value, currency_code=currency)
        )

        async def send(target: int) -> tuple[str, str, str | None]:
            reply = await stubs[target].CreatePayment(
                request, metadata=self._targets[target].metadata, timeout=CALL_DEADLINE_S
            )
            return reply.payment.id, state_name(reply.payment.state), None

        answer = await self._call(process, first_target, key, len(stubs), CREATE_PAYMENT, send, value, currency)
        return None if answer is None else (answer[0], answer[1])

    async def _refund(
        self,
        process: str,
        first_target: int,
        payment_key: str,
        answer: tuple[str, str],
        value: str,
        currency: str,
        refund_plan: tuple[str, ...],
        stubs: list[payments_pb2_grpc.PaymentServiceStub],
    ) -> None:
        """Ask the payment's refunds, in order, once it is SUCCEEDED (asking GetPayment for a while)."""
        payment_id, state = answer
        if state != "SUCCEEDED" and not await self._wait_succeeded(first_target, payment_id, stubs):
            return
        for number, part in enumerate(refund_plan):
            asked = third(value, currency) if part == "third" else None
            if part == "third" and asked is None:
                continue
            key = f"{payment_key}-r{number}"
            request = payments_pb2.RefundPaymentRequest(idempotency_key=key, payment_id=payment_id, reason="chaos load")
            if asked is not None:
                request.amount.CopyFrom(Money(value=asked, currency_code=currency))

            async def send(target: int, request: Any = request) -> tuple[str, str, str | None]:
                reply = await stubs[target].RefundPayment(
                    request, metadata=self._targets[target].metadata, timeout=CALL_DEADLINE_S
                )
                return reply.refund.payment_id, refund_state_name(reply.refund.state), reply.refund.id

            await self._call(
                process, first_target + number, key, len(stubs), REFUND_PAYMENT, send, asked, currency, payment_id
            )

    async def _wait_succeeded(
        self, first_target: int, payment_id: str, stubs: list[payments_pb2_grpc.PaymentServiceStub]
    ) -> bool:
        """Ask GetPayment (any error: ask again) until the payment is SUCCEEDED, for REFUND_WAIT_S at most."""
        deadline = time.monotonic() + REFUND_WAIT_S
        attempt = 0
        while time.monotonic() < deadline:
            target = (first_target + attempt) % len(stubs)
            attempt += 1
            try:
                reply = await stubs[target].GetPayment(
                    payments_pb2.GetPaymentRequest(payment_id=payment_id),
                    metadata=self._targets[target].metadata,
                    timeout=CALL_DEADLINE_S,
                )
            except grpc.aio.AioRpcError:
                pass
            else:
                name = state_name(reply.payment.state)
                if name == "SUCCEEDED":
                    return True
                if name not in ("RECORDED", "PENDING", "UNKNOWN"):
                    return False
            await asyncio.sleep(REFUND_POLL_S)
        return False

    async def _call(
        self,
        process: str,
        first_target: int,
        key: str,
        targets: int,
        operation: str,
        send: Callable[[int], Awaitable[tuple[str, str, str | None]]],
        value: str | None,
        currency: str,
        payment_id: str | None = None,
    ) -> tuple[str, str, str | None] | None:
        """One key's calls, retried as the README says; each recorded. The answer (payment id, state,
        refund id), or None when none came."""
        for attempt in range(ATTEMPTS_MAX):
            target = (first_target + attempt) % targets  # a retry tries the next replica
            self._history.invoke(
                process,
                key,
                amount=value,
                currency=currency,
                time_s=self._now(),
                operation=operation,
                payment_id=payment_id,
            )
            try:
                answer = await send(target)
            except grpc.aio.AioRpcError as error:
                code, message = error.code(), (error.details() or "")[:MESSAGE_MAX]
                if code in INDETERMINATE:
                    self._history.info(
                        process, key, code.name, message=message, time_s=self._now(), operation=operation
                    )
                else:
                    self._history.fail(
                        process, key, code.name, message=message, time_s=self._now(), operation=operation
                    )
                if code not in RETRYABLE:
                    return None
                if attempt + 1 < ATTEMPTS_MAX:
                    delay_s = retry_delay_s(error)
                    if delay_s is None:
                        delay_s = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
                    await asyncio.sleep(min(delay_s, RETRY_DELAY_MAX_S))
                continue
            answered_payment, state, refund_id = answer
            self._history.ok(
                process, key, answered_payment, state, time_s=self._now(), operation=operation, refund_id=refund_id
            )
            return answer
        return None
