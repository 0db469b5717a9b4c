"""Converge on the provider's truth: a load of payments through Ballast against a misbehaving
simulator, then a check that Ballast ended where the provider really is.

The simulator and the server run as their own processes (the simulator first, sending its webhooks
to the HTTP port the server will take), the server with a scratch database of its own, an outbox
relay and the `exposures` consumer (on a JetStream stream of its own), and short timings so a run
takes a minute, not an hour. Clients behave as the README tells them: a retryable error is retried
with the same idempotency key after the server's `RetryInfo` delay, at most ATTEMPTS_MAX times, then
the client gives up. After the load, the run waits (polling, under a deadline) until the simulator
has decided every payment and sent every webhook it will send, and Ballast holds none of the run's
payments undecided outside an open case, and measures how long that took from the end of the load.
The checker then compares Ballast's database with the simulator's `/_sim/truth` and names each
broken invariant with the payments that show it.

    .venv/bin/python -m tests.convergence --profile webhook-storm --payments 300 --in-flight 16
    .venv/bin/python -m tests.convergence --all          # webhook-storm, monday-morning and flaky

DATABASE_URL and NATS_URL are used when set; otherwise an embedded PostgreSQL (under .data/) and an
embedded NATS are started. The exit status is 1 when any profile shows an anomaly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.engine import asyncpg_dsn
from server.messaging.names import DeploymentNames
from tests.e2e.conftest import ROOT, ServerProcess, free_port, server_environment
from tests.e2e.processes import SimulatorProcess, launch_server, start_simulator
from tests.support import scratch_database

PROFILES = ("webhook-storm", "monday-morning", "flaky")
WEBHOOK_SECRET = "whsec_convergence"  # noqa: S105 - the run's own simulator signs with it
#: Each client call's deadline.
CALL_DEADLINE_S = 2.0
#: Calls one client makes for its payment before it gives up (abandons it).
ATTEMPTS_MAX = 6
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
#: The backoff when a retryable error carries no RetryInfo: base, 2 x base, ... up to the maximum.
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0
#: A RetryInfo delay longer than this is cut to it: a client does not wait minutes for one call.
RETRY_DELAY_MAX_S = 5.0
#: Payments in JPY (no minor unit); the rest are EUR.
JPY_SHARE = 0.2
ABANDONED = "ABANDONED"
MIGRATE_TIMEOUT_S = 120
POLL_INTERVAL_S = 0.5

#: States in which a payment is not decided yet.
OPEN_STATES = ("RECORDED", "PENDING", "UNKNOWN")
#: The provider's final word -> the state Ballast must end in.
TRUE_STATES = {"succeeded": "SUCCEEDED", "failed": "FAILED", "declined": "FAILED", "refunded": "REFUNDED"}
#: Where a payment the provider never had may end: expired (its client gave up), or refused outright.
NEVER_AT_THE_PROVIDER = frozenset({"EXPIRED", "REJECTED"})
PROVIDER_CLEARING = "provider_clearing"


@dataclass(frozen=True)
class ServerTimings:
    """Short server settings, so that a run converges in seconds."""

    provider_timeout_ms: int = 3_000
    payment_expiry_ms: int = 20_000
    pending_overdue_ms: int = 3_000
    breaker_open_ms: int = 2_000
    #: checks of a payment the provider did not answer about back off to at most this
    resolver_backoff_max_ms: int = 5_000

    def environment(self) -> dict[str, str]:
        return {
            "BALLAST_RESOLVER_BACKOFF_MAX_MS": str(self.resolver_backoff_max_ms),
            "BALLAST_PROVIDER_TIMEOUT_MS": str(self.provider_timeout_ms),
            "BALLAST_PAYMENT_EXPIRY_MS": str(self.payment_expiry_ms),
            "BALLAST_PENDING_OVERDUE_MS": str(self.pending_overdue_ms),
            "BALLAST_PROVIDER_BREAKER_OPEN_MS": str(self.breaker_open_ms),
        }


@dataclass(frozen=True)
class RunPlan:
    profile: str
    seed: int = 7
    payments: int = 300
    in_flight: int = 16
    timings: ServerTimings = field(default_factory=ServerTimings)
    #: How long after the load the run waits for convergence before it judges what it has.
    convergence_timeout_s: float = 120.0
    #: How long it waits for the outbox and the exposures consumer to catch up.
    drain_timeout_s: float = 30.0


# -- the processes ------------------------------------------------------------------------------


def migrate(database_url: str, log_path: Path) -> None:
    """`python -m server migrate` on the run's database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BALLAST_")}
    env["DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=MIGRATE_TIMEOUT_S,
        check=False,
    )
    log_path.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"migrate exited with {result.returncode}:\n{(result.stdout + result.stderr)[-2000:]}")


@dataclass(frozen=True)
class Stream:
    """The run's own deployment name on NATS (its stream, subjects and consumers), so runs sharing one
    NATS never share a consumer."""

    names: DeploymentNames

    @property
    def name(self) -> str:
        return self.names.stream

    @classmethod
    def new(cls) -> Stream:
        return cls(DeploymentNames(f"convergence_{uuid.uuid4().hex[:10]}"))


def start_server(
    database_url: str,
    nats_url: str,
    stream: Stream,
    http_port: int,
    provider_url: str,
    timings: ServerTimings,
    data_dir: Path,
) -> ServerProcess:
    """`python -m server` for one client (service role), with one relay and the exposures consumer."""
    port = free_port()
    token = f"convergence-token-{uuid.uuid4().hex}"
    client_id = f"convergence-{uuid.uuid4().hex[:8]}"
    env = server_environment(database_url, port, token, client_id, data_dir) | timings.environment()
    env.update(
        NATS_URL=nats_url,
        BALLAST_RELAY_WORKERS="1",
        BALLAST_DEPLOYMENT=stream.names.deployment,
        BALLAST_HTTP_PORT=str(http_port),
        BALLAST_PROVIDER_URL=provider_url,
        BALLAST_PROVIDER_WEBHOOK_SECRET=WEBHOOK_SECRET,
        BALLAST_DB_POOL_SIZE="20",
    )
    return launch_server(env, f"127.0.0.1:{port}", token, client_id, data_dir.parent / "server.log")


async def _delete_stream(nats_url: str, stream: Stream) -> None:
    connection = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = connection.jetstream()
        for name in (stream.name, f"{stream.name}_DEAD"):
            with contextlib.suppress(Exception):  # never created, or gone already
                await js.delete_stream(name)
    finally:
        await connection.close()


# -- the load -----------------------------------------------------------------------------------


@dataclass
class ClientHistory:
    """What one client saw: its key, every attempt's status code, and where it ended."""

    key: str
    amount: str
    currency: str
    attempts: list[str] = field(default_factory=list)
    #: The payment id an answer gave, if any did.
    payment_id: str | None = None
    #: The payment state answered, an error's code, or ABANDONED after ATTEMPTS_MAX retryable errors.
    final: str = ""

    @property
    def abandoned(self) -> bool:
        return self.final == ABANDONED


def planned_payments(count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (amount, currency) pairs drawn from `seed`: EUR with cents or whole, some JPY."""
    rng = random.Random(seed)  # noqa: S311 - reproducible amounts, not secrets
    planned = []
    for _ in range(count):
        if rng.random() < JPY_SHARE:
            planned.append((str(rng.randint(50, 80_000)), "JPY"))
        elif rng.random() < 0.2:
            planned.append((str(rng.randint(1, 900)), "EUR"))
        else:
            cents = rng.randint(1, 99_999)
            planned.append((f"{cents // 100}.{cents % 100:02d}", "EUR"))
    return planned


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The delay a google.rpc.RetryInfo in the error's status details asks for, if there is one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


def _state_name(state: int) -> str:
    try:
        return str(payments_pb2.PaymentState.Name(state)).removeprefix("PAYMENT_STATE_")
    except ValueError:  # a state newer than these stubs
        return f"STATE_{state}"


async def _pay(
    stub: payments_pb2_grpc.PaymentServiceStub, metadata: Sequence[tuple[str, str]], history: ClientHistory
) -> None:
    request = payments_pb2.CreatePaymentRequest(
        idempotency_key=history.key, amount=Money(value=history.amount, currency_code=history.currency)
    )
    for attempt in range(ATTEMPTS_MAX):
        try:
            reply = await stub.CreatePayment(request, metadata=metadata, timeout=CALL_DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            history.attempts.append(error.code().name)
            if error.code() not in RETRYABLE:
                history.final = error.code().name
                return
            if attempt + 1 < ATTEMPTS_MAX:
                delay_s = retry_delay_s(error)
                if delay_s is None:
                    delay_s = min(BACKOFF_BASE_S * 2**attempt, BACKOFF_MAX_S)
                await asyncio.sleep(min(delay_s, RETRY_DELAY_MAX_S))
            continue
        history.attempts.append("OK")
        history.payment_id = reply.payment.id
        history.final = _state_name(reply.payment.state)
        return
    history.final = ABANDONED


async def drive_load(
    address: str, metadata: Sequence[tuple[str, str]], count: int, in_flight: int, seed: int
) -> list[ClientHistory]:
    """`count` payments, each under a new key, `in_flight` clients at a time; every client's history."""
    run = uuid.uuid4().hex[:8]
    histories = [
        ClientHistory(f"convergence-{run}-{index}", amount, currency)
        for index, (amount, currency) in enumerate(planned_payments(count, seed))
    ]
    waiting = iter(histories)  # shared: each client takes the next payment when it is done with one
    async with grpc.aio.insecure_channel(address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)

        async def client() -> None:
            for history in waiting:
                await _pay(stub, metadata, history)

        await asyncio.gather(*(client() for _ in range(in_flight)))
    return histories


# -- what each side says ------------------------------------------------------------------------


async def fetch_truth(simulator_url: str) -> list[dict[str, Any]]:
    """The simulator's payments as it really holds them."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.get(f"{simulator_url}/_sim/truth") as response,
    ):
        response.raise_for_status()
        truth: dict[str, Any] = await response.json()
    payments: list[dict[str, Any]] = truth["payments"]
    return payments


_UNDECIDED = """
SELECT p.id, p.state FROM payments p
WHERE p.client_id = $1 AND p.state = ANY($2::text[])
  AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.payment_id = p.id AND c.status = 'OPEN')
ORDER BY p.id
"""


async def undecided_payments(connection: asyncpg.Connection, client_id: str) -> list[tuple[str, str]]:
    """The client's payments in RECORDED, PENDING or UNKNOWN that no open case names: (id, state)."""
    rows = await connection.fetch(_UNDECIDED, client_id, list(OPEN_STATES))
    return [(str(row["id"]), row["state"]) for row in rows]


@dataclass
class Convergence:
    converged: bool
    #: From the end of the load until both sides had decided (or until the deadline, when they did not).
    elapsed_s: float
    undecided: list[tuple[str, str]]
    provider_pending: list[str]
    #: provider payments with a webhook still to deliver (delayed, or being retried)
    webhooks_queued: list[str]


async def converge(
    connection: asyncpg.Connection, client_id: str, simulator_url: str, timeout_s: float, load_ended: float
) -> Convergence:
    """Poll until the simulator has decided every payment and sent every webhook it will send, and
    Ballast holds none of the client's payments undecided outside an open case."""
    deadline = load_ended + timeout_s
    while True:
        undecided = await undecided_payments(connection, client_id)
        truth = await fetch_truth(simulator_url)
        pending = sorted(p["idempotency_key"] for p in truth if p["final_status"] == "pending")
        queued = sorted(
            p["idempotency_key"] for p in truth if any(event["outcome"] == "queued" for event in p["webhooks"])
        )
        now = time.monotonic()
        if not undecided and not pending and not queued:
            return Convergence(True, now - load_ended, [], [], [])
        if now > deadline:
            return Convergence(False, now - load_ended, undecided, pending, queued)
        await asyncio.sleep(POLL_INTERVAL_S)


_OUTBOX_BEHIND = """
SELECT count(*) FILTER (WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL) AS unpublished,
       count(*) FILTER (WHERE o.dead_lettered_at IS NOT NULL) AS dead_lettered,
       count(*) FILTER (WHERE o.published_at IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM processed_events e WHERE e.consumer_group = 'exposures' AND e.event_id = o.id::text
       )) AS unconsumed
FROM outbox o
"""


@dataclass
class Drain:
    drained: bool
    unpublished: int
    dead_lettered: int
    unconsumed: int


async def drain(connection: asyncpg.Connection, timeout_s: float) -> Drain:
    """Poll until the relay has published every outbox event and the exposures consumer applied each."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = await connection.fetchrow(_OUTBOX_BEHIND)
        state = Drain(False, row["unpublished"], row["dead_lettered"], row["unconsumed"])
        if state.unpublished == state.dead_lettered == state.unconsumed == 0:
            state.drained = True
            return state
        if time.monotonic() > deadline or (state.dead_lettered and not state.unpublished):
            return state
        await asyncio.sleep(POLL_INTERVAL_S)


@dataclass
class Snapshot:
    """Ballast's side, read from its database after convergence."""

    client_id: str
    #: id -> {idempotency_key, amount, currency_code, state}
    payments: dict[str, dict[str, Any]]
    #: (kind, status, payment id)
    cases: list[tuple[str, str, str]]
    #: (payment id, account, currency) -> net amount of the payment's ledger lines
    ledger_by_payment: dict[tuple[str, str, str], Decimal]
    #: (account, currency) -> balance of every line
    balances: dict[tuple[str, str], Decimal]
    #: currency -> (in_flight, settled) of the client's merchant_payable account
    exposures: dict[str, tuple[Decimal, Decimal]]
    drain: Drain

    @property
    def merchant_account(self) -> str:
        return f"merchant_payable:{self.client_id}"


async def read_snapshot(connection: asyncpg.Connection, client_id: str, drained: Drain) -> Snapshot:
    payments = {
        str(row["id"]): dict(row)
        for row in await connection.fetch(
            "SELECT id, idempotency_key, amount, currency_code, state FROM payments WHERE client_id = $1", client_id
        )
    }
    cases = [
        (row["kind"], row["status"], str(row["payment_id"]))
        for row in await connection.fetch(
            "SELECT c.kind, c.status, c.payment_id FROM cases c JOIN payments p ON p.id = c.payment_id"
            " WHERE p.client_id = $1",
            client_id,
        )
    ]
    ledger_by_payment = {
        (str(row["payment_id"]), row["account"], row["currency_code"]): row["total"]
        for row in await connection.fetch(
            "SELECT e.payment_id, l.account, l.currency_code, sum(l.amount) AS total"
            " FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id"
            " WHERE e.payment_id IS NOT NULL GROUP BY 1, 2, 3"
        )
    }
    balances = {
        (row["account"], row["currency_code"]): row["total"]
        for row in await connection.fetch(
            "SELECT account, currency_code, sum(amount) AS total FROM ledger_lines GROUP BY 1, 2"
        )
    }
    exposures = {
        row["currency_code"]: (row["in_flight"], row["settled"])
        for row in await connection.fetch(
            "SELECT currency_code, in_flight, settled FROM exposures WHERE account = $1",
            f"merchant_payable:{client_id}",
        )
    }
    return Snapshot(client_id, payments, cases, ledger_by_payment, balances, exposures, drained)


# -- the checker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Witness:
    subject: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.subject}  {self.detail}".rstrip()


@dataclass
class Anomaly:
    name: str
    description: str
    witnesses: list[Witness]


def _expected_states(provider: dict[str, Any] | None) -> frozenset[str]:
    if provider is None:
        return NEVER_AT_THE_PROVIDER
    status = provider["final_status"]
    if status == "pending":
        return frozenset(OPEN_STATES)
    return frozenset({TRUE_STATES.get(status, f"<provider status {status}>")})


def _pair_counts(witnesses: list[Witness]) -> str:
    counts = Counter(w.detail for w in witnesses)
    return "; ".join(f"{detail}: {count}" for detail, count in counts.most_common())


def check(snapshot: Snapshot, truth: list[dict[str, Any]], histories: Sequence[ClientHistory]) -> list[Anomaly]:
    """Every invariant the run must keep, broken ones named with the payments that break them."""
    anomalies: list[Anomaly] = []

    def report(name: str, description: str, witnesses: list[Witness]) -> None:
        if witnesses:
            anomalies.append(Anomaly(name, description, witnesses))

    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for provider_payment in truth:
        by_key[provider_payment["idempotency_key"]].append(provider_payment)
    payments = snapshot.payments

    # (a) every payment ends where the provider is
    differs = []
    for payment_id, payment in sorted(payments.items()):
        provider = by_key.get(payment_id, [None])[0]
        if payment["state"] not in _expected_states(provider):
            said = provider["final_status"] if provider else "no such payment"
            differs.append(Witness(payment_id, f"ballast {payment['state']}, provider {said}"))
    report(
        "final_state_differs_from_truth",
        f"the payment's final state is not the provider's truth ({_pair_counts(differs)})",
        differs,
    )

    # (b) nothing left undecided outside an open case
    open_cases = {payment_id for _, status, payment_id in snapshot.cases if status == "OPEN"}
    undecided = [
        Witness(payment_id, f"ballast {payment['state']}")
        for payment_id, payment in sorted(payments.items())
        if payment["state"] in OPEN_STATES and payment_id not in open_cases
    ]
    report("left_undecided", f"still undecided with no open case ({_pair_counts(undecided)})", undecided)

    # (c) no case where the provider's API answers plainly
    needless = [
        Witness(payment_id, f"{kind} open, provider says {by_key[payment_id][0]['final_status']}")
        for kind, status, payment_id in sorted(snapshot.cases)
        if status == "OPEN" and payment_id in by_key and by_key[payment_id][0]["final_status"] != "pending"
    ]
    report(
        "case_despite_a_clear_answer",
        f"an open case though the provider's API answers without doubt ({_pair_counts(needless)})",
        needless,
    )

    # (d) one charge per payment, of its amount, and none Ballast does not know
    twice = [Witness(key, f"{len(found)} provider payments") for key, found in sorted(by_key.items()) if len(found) > 1]
    report("charged_twice", "the provider holds more than one payment for one idempotency key", twice)
    unknown = [
        Witness(key, f"provider {found[0]['final_status']} {found[0]['amount']} {found[0]['currency']}")
        for key, found in sorted(by_key.items())
        if key not in payments
    ]
    report("charge_unknown_to_ballast", "the provider holds a payment no payment of Ballast's sent", unknown)
    amounts = []
    for payment_id, payment in sorted(payments.items()):
        for provider_payment in by_key.get(payment_id, []):
            if (Decimal(provider_payment["amount"]), provider_payment["currency"]) != (
                payment["amount"],
                payment["currency_code"],
            ):
                amounts.append(
                    Witness(
                        payment_id,
                        f"ballast {payment['amount']} {payment['currency_code']},"
                        f" provider {provider_payment['amount']} {provider_payment['currency']}",
                    )
                )
    report("amount_differs", "the provider charged another amount or currency than Ballast recorded", amounts)
    by_client_key: dict[str, list[str]] = defaultdict(list)
    for payment_id, payment in payments.items():
        by_client_key[payment["idempotency_key"]].append(payment_id)
    answered = [
        Witness(h.key, f"answered {h.payment_id}, ballast holds {by_client_key.get(h.key) or 'none'}")
        for h in histories
        if h.payment_id is not None and by_client_key.get(h.key) != [h.payment_id]
    ]
    answered += [Witness(key, f"{len(ids)} payments") for key, ids in sorted(by_client_key.items()) if len(ids) > 1]
    report("one_key_two_payments", "a client's key answered with, or stored as, another payment", answered)

    # (e) the ledger holds what the provider really took
    taken: dict[str, Decimal] = defaultdict(Decimal)
    for key, found in by_key.items():
        if key in payments and found[0]["final_status"] == "succeeded":
            taken[found[0]["currency"]] += Decimal(found[0]["amount"])
    ledger = []
    currencies = sorted(
        set(taken) | {c for (a, c) in snapshot.balances if a in (PROVIDER_CLEARING, snapshot.merchant_account)}
    )
    for currency in currencies:
        merchant = snapshot.balances.get((snapshot.merchant_account, currency), Decimal(0))
        clearing = snapshot.balances.get((PROVIDER_CLEARING, currency), Decimal(0))
        if merchant != -taken[currency] or clearing != taken[currency]:
            ledger.append(
                Witness(
                    currency,
                    f"provider took {taken[currency]}, provider_clearing {clearing}, merchant_payable {merchant}",
                )
            )
    for payment_id, payment in sorted(payments.items()):
        provider = by_key.get(payment_id, [None])[0]
        expected = payment["amount"] if provider and provider["final_status"] == "succeeded" else Decimal(0)
        posted = snapshot.ledger_by_payment.get((payment_id, PROVIDER_CLEARING, payment["currency_code"]), Decimal(0))
        if posted != expected:
            said = provider["final_status"] if provider else "no such payment"
            ledger.append(Witness(payment_id, f"provider_clearing {posted}, provider {said} {payment['amount']}"))
    report("ledger_differs_from_truth", "the ledger does not hold what the provider really took", ledger)

    # (f) no money in flight once every event is consumed
    drained = snapshot.drain
    if not drained.drained:
        report(
            "outbox_not_drained",
            "the relay or the exposures consumer did not catch up",
            [
                Witness(
                    "outbox",
                    f"{drained.unpublished} unpublished, {drained.dead_lettered} dead-lettered,"
                    f" {drained.unconsumed} not consumed by exposures",
                )
            ],
        )
    in_flight = [
        Witness(currency, f"in_flight {values[0]}")
        for currency, values in sorted(snapshot.exposures.items())
        if values[0] != 0
    ]
    report("money_left_in_flight", "exposures show money in flight after the run", in_flight)
    settled = [
        Witness(currency, f"settled {values[1]}, ledger {snapshot.balances.get((snapshot.merchant_account, currency))}")
        for currency, values in sorted(snapshot.exposures.items())
        if values[1] != snapshot.balances.get((snapshot.merchant_account, currency), Decimal(0))
    ]
    report("exposure_differs_from_ledger", "exposures' settled amount is not the ledger's balance", settled)
    return anomalies


# -- a run --------------------------------------------------------------------------------------


@dataclass
class Report:
    plan: RunPlan
    load_s: float
    convergence: Convergence
    states: Counter[str]
    abandoned: int
    #: keys that never became a payment of Ballast's
    never_recorded: int
    #: kind -> Counter of status
    cases: dict[str, Counter[str]]
    #: every call's status code ("OK" included), over all clients
    calls: Counter[str]
    #: where each client ended: the state answered, an error's code, or ABANDONED
    answers: Counter[str]
    #: the simulator's webhook events by outcome (delivered, dropped on purpose, gave-up after retries)
    webhooks: Counter[str]
    #: clients told a decided state that the provider's truth contradicts (information, not an anomaly)
    contradicted_answers: list[Witness]
    anomalies: list[Anomaly]
    logs: Path

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def summary(self) -> str:
        converged = (
            f"converged in {self.convergence.elapsed_s:.1f}s"
            if self.convergence.converged
            else f"NOT converged after {self.convergence.elapsed_s:.1f}s"
        )
        return f"{self.plan.profile}: {converged} after {self.load_s:.1f}s of load, {len(self.anomalies)} anomalies"

    def render(self, witnesses_max: int | None = None) -> str:
        plan = self.plan
        lines = [
            f"== {plan.profile} (seed {plan.seed}, {plan.payments} payments, {plan.in_flight} in flight,"
            f" expiry {plan.timings.payment_expiry_ms} ms, provider timeout {plan.timings.provider_timeout_ms} ms,"
            f" pending overdue {plan.timings.pending_overdue_ms} ms)",
            f"   {self.summary()}",
            "   final states: " + ", ".join(f"{state} {count}" for state, count in sorted(self.states.items())),
            "   calls: " + ", ".join(f"{code} {count}" for code, count in self.calls.most_common()),
            "   answers: " + ", ".join(f"{final} {count}" for final, count in self.answers.most_common()),
            "   webhook events: " + ", ".join(f"{outcome} {count}" for outcome, count in self.webhooks.most_common()),
            f"   clients that gave up: {self.abandoned}; keys never recorded: {self.never_recorded}",
            "   cases by kind: "
            + (
                ", ".join(
                    f"{kind} " + "/".join(f"{count} {status.lower()}" for status, count in sorted(statuses.items()))
                    for kind, statuses in sorted(self.cases.items())
                )
                or "none"
            ),
            f"   answers the truth contradicts: {len(self.contradicted_answers)}",
        ]
        if not self.convergence.converged:
            lines.append(
                f"   still undecided: {len(self.convergence.undecided)} in Ballast,"
                f" {len(self.convergence.provider_pending)} pending at the provider,"
                f" {len(self.convergence.webhooks_queued)} with a webhook still queued"
            )
        for anomaly in self.anomalies:
            lines.append(f"   ANOMALY {anomaly.name}: {len(anomaly.witnesses)} - {anomaly.description}")
            shown = anomaly.witnesses if witnesses_max is None else anomaly.witnesses[:witnesses_max]
            lines.extend(f"      {witness}" for witness in shown)
            if len(shown) < len(anomaly.witnesses):
                lines.append(f"      ... and {len(anomaly.witnesses) - len(shown)} more")
        if self.anomalies:
            lines.append(f"   logs: {self.logs}")
        return "\n".join(lines)


def _contradicted_answers(histories: Sequence[ClientHistory], truth: list[dict[str, Any]]) -> list[Witness]:
    by_key = {p["idempotency_key"]: p for p in truth}
    decided = {"SUCCEEDED", "FAILED", "REFUNDED"}
    contradicted = []
    for history in histories:
        if history.payment_id is None or history.final not in decided | {"REJECTED"}:
            continue
        provider = by_key.get(history.payment_id)
        if history.final not in _expected_states(provider):
            said = provider["final_status"] if provider else "no such payment"
            contradicted.append(Witness(history.payment_id, f"told {history.final}, provider {said}"))
    return contradicted


async def _exercise(
    plan: RunPlan, server: ServerProcess, simulator: SimulatorProcess, database_url: str, logs: Path
) -> Report:
    started = time.monotonic()
    histories = await drive_load(server.address, server.metadata, plan.payments, plan.in_flight, plan.seed)
    load_ended = time.monotonic()
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        convergence = await converge(
            connection, server.client_id, simulator.url, plan.convergence_timeout_s, load_ended
        )
        drained = await drain(connection, plan.drain_timeout_s)
        snapshot = await read_snapshot(connection, server.client_id, drained)
    finally:
        await connection.close()
    truth = await fetch_truth(simulator.url)
    anomalies = check(snapshot, truth, histories)
    if not convergence.converged:
        witnesses = [Witness(payment_id, f"ballast {state}") for payment_id, state in convergence.undecided]
        witnesses += [Witness(key, "provider pending") for key in convergence.provider_pending]
        witnesses += [Witness(key, "provider webhook still queued") for key in convergence.webhooks_queued]
        anomalies.insert(
            0,
            Anomaly(
                "not_converged",
                f"undecided payments remained {plan.convergence_timeout_s:.0f}s after the load",
                witnesses,
            ),
        )
    cases: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, status, _ in snapshot.cases:
        cases[kind][status] += 1
    recorded_keys = {payment["idempotency_key"] for payment in snapshot.payments.values()}
    return Report(
        plan=plan,
        load_s=load_ended - started,
        convergence=convergence,
        states=Counter(payment["state"] for payment in snapshot.payments.values()),
        abandoned=sum(history.abandoned for history in histories),
        never_recorded=sum(history.key not in recorded_keys for history in histories),
        cases=dict(cases),
        calls=Counter(code for history in histories for code in history.attempts),
        answers=Counter(history.final for history in histories),
        webhooks=Counter(event["outcome"] for payment in truth for event in payment["webhooks"]),
        contradicted_answers=_contradicted_answers(histories, truth),
        anomalies=anomalies,
        logs=logs,
    )


def run_profile(plan: RunPlan, server_database_url: str, nats_url: str, work_dir: Path) -> Report:
    """One run: a scratch database, the simulator, the server, the load, convergence and the check."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stream = Stream.new()
    with scratch_database(server_database_url, "ballast_convergence") as database_url:
        migrate(database_url, work_dir / "migrate.log")
        http_port = free_port()  # the server's, known before the simulator starts: its webhooks go there
        simulator = start_simulator(
            work_dir / "simulator.log",
            webhook_url=f"http://127.0.0.1:{http_port}/webhooks/simulator",
            webhook_secret=WEBHOOK_SECRET,
            profile=plan.profile,
            seed=plan.seed,
        )
        try:
            server = start_server(
                database_url, nats_url, stream, http_port, simulator.url, plan.timings, work_dir / "data"
            )
            try:
                return asyncio.run(_exercise(plan, server, simulator, database_url, work_dir))
            finally:
                server.stop()
        finally:
            simulator.stop()
            with contextlib.suppress(Exception):  # tidiness only: the stream belongs to this run
                asyncio.run(_delete_stream(nats_url, stream))


# -- the command --------------------------------------------------------------------------------


@contextlib.contextmanager
def _services(work_dir: Path) -> Iterator[tuple[str, str]]:
    """DATABASE_URL's and NATS_URL's servers, or embedded ones (stopped when this process exits)."""
    database = os.environ.get("DATABASE_URL", "").strip()
    if not database:
        from server.db.embedded import start_embedded_postgres

        database = start_embedded_postgres(ROOT / ".data", database="postgres")
    nats_url = os.environ.get("NATS_URL", "").strip()
    if nats_url:
        yield database, nats_url
        return
    from server.messaging.embedded_nats import start_nats_process

    nats_url, broker = start_nats_process(work_dir / "nats")
    try:
        yield database, nats_url
    finally:
        broker.terminate()
        broker.wait(10)


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.convergence",
        description="Load Ballast against the simulator, wait for convergence, check it against the truth.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", choices=(*PROFILES, "calm", "report-drift"), help="one simulator profile")
    which.add_argument("--all", action="store_true", help=f"every profile: {', '.join(PROFILES)}")
    parser.add_argument("--payments", type=int, default=300, help="payments per profile (default 300)")
    parser.add_argument("--in-flight", type=int, default=16, help="clients at a time (default 16)")
    parser.add_argument("--seed", type=int, default=7, help="the simulator's and the amounts' seed (default 7)")
    parser.add_argument(
        "--convergence-timeout", type=float, default=300.0, help="seconds to wait for convergence (default 300)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    arguments = _arguments(argv)
    profiles = PROFILES if arguments.all else (arguments.profile,)
    work_dir = Path(tempfile.mkdtemp(prefix="ballast-convergence-"))
    reports = []
    with _services(work_dir) as (database_url, nats_url):
        for profile in profiles:
            plan = RunPlan(
                profile=profile,
                seed=arguments.seed,
                payments=arguments.payments,
                in_flight=arguments.in_flight,
                convergence_timeout_s=arguments.convergence_timeout,
            )
            print(f"running {profile} ...", flush=True)
            report = run_profile(plan, database_url, nats_url, work_dir / profile)
            print(report.render(), flush=True)
            reports.append(report)
    print()
    for report in reports:
        print(report.summary())
    if all(report.ok for report in reports):
        shutil.rmtree(work_dir, ignore_errors=True)
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
