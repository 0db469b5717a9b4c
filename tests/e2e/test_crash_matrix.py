"""The crash matrix: nothing depends on the client for money.

The server is killed before the provider call, during it, after the answer and before the outcome
commits. A new server (no client retry) must end with Ballast equal to the provider's truth: the
provider took the payment, so it is decided as the provider decided it, with its ledger entry once;
the provider never saw it, so it expires and is never sent late. The simulator is its own process,
so it outlives every server, and it sends its webhooks to the one HTTP port every server takes.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ballast.common.v1.money_pb2 import Money
from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.db.engine import asyncpg_dsn
from server.db.migrate import migrate_to_head
from server.domain.ledger import PROVIDER_CLEARING
from server.domain.payment_states import EVENT_TARGETS
from server.domain.provider_status import event_for
from server.failpoints import FAILPOINTS, FAILPOINTS_ENV
from tests.e2e.conftest import ServerProcess, free_port, server_environment
from tests.e2e.processes import SimulatorProcess, exit_status, kill, launch_server, start_simulator
from tests.support import scratch_database
from tests.support.requests import create_payment_request

pytestmark = pytest.mark.e2e

SEED = 42
WEBHOOK_SECRET = "whsec_crash_matrix"  # noqa: S105 - the module's own simulator signs with it
PROVIDER = "simulator"
#: Every payment the provider takes succeeds, so each case that reaches the provider checks the ledger.
PROVIDER_SETTINGS: dict[str, Any] = {"success_rate": 1.0}
AMOUNT = Money(value="12.34", currency_code="EUR")
#: Short timings, so a payment is asked about (2 x the provider timeout) and expires within seconds.
TIMINGS = {
    "BALLAST_PROVIDER_TIMEOUT_MS": "1000",
    "BALLAST_PAYMENT_EXPIRY_MS": "4000",
    "BALLAST_PENDING_OVERDUE_MS": "2000",
}
#: The server the test kills during its provider call must still be waiting when the kill comes: a long
#: provider timeout gives the test seconds, not milliseconds, to see that the provider has the payment.
PATIENT_TIMINGS = TIMINGS | {"BALLAST_PROVIDER_TIMEOUT_MS": "5000", "BALLAST_PAYMENT_EXPIRY_MS": "10000"}
#: Far more than the expiry and the resolver's first checks take; a stuck payment fails here.
CONVERGENCE_TIMEOUT_S = 45
CALL_TIMEOUT_S = 10
UNDECIDED_STATES = frozenset({"RECORDED", "PENDING", "UNKNOWN"})


@dataclass(frozen=True)
class CrashPoint:
    name: str
    #: the failpoint the first server is armed with; None: the test kills it during the provider call
    failpoint: str | None
    #: whether the provider has the payment when the server dies
    reaches_provider: bool


CRASH_POINTS = [
    CrashPoint("before_provider_call", "submission.before_provider_call", reaches_provider=False),
    CrashPoint("during_provider_call", None, reaches_provider=True),
    CrashPoint("after_provider_answer", "submission.after_provider_answer", reaches_provider=True),
    CrashPoint("before_outcome_commit", "submission.before_outcome_commit", reaches_provider=True),
]

#: Each crash with the provider's webhooks delivered, and (where the provider has the payment) with every
#: one of them lost: then the resolver alone finds the payment out.
CASES = [
    pytest.param(crash, lost, id=f"{crash.name}-webhooks_{'lost' if lost else 'delivered'}")
    for crash in CRASH_POINTS
    for lost in ((False, True) if crash.reaches_provider else (False,))
]

Launch = Callable[[str | None, str, dict[str, str]], ServerProcess]


@pytest.fixture(scope="module")
def http_port() -> int:
    """The HTTP port every server of this module takes, so a restarted one gets the simulator's webhooks."""
    return free_port()


@pytest.fixture(scope="module")
def simulator(http_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    log_path = tmp_path_factory.mktemp("crash-matrix") / "simulator.log"
    webhook_url = f"http://127.0.0.1:{http_port}/webhooks/simulator"
    process = start_simulator(log_path, webhook_url=webhook_url, webhook_secret=WEBHOOK_SECRET, seed=SEED)
    yield process
    process.stop()


@pytest.fixture
def crash_database(server_database_url: str) -> Iterator[str]:
    """A migrated database of the case's own: what one case's servers leave behind never meets another's."""
    with scratch_database(server_database_url, "ballast_crash") as url:
        migrate_to_head(url)
        yield url


@pytest.fixture
def launch(crash_database: str, simulator: SimulatorProcess, http_port: int, tmp_path: Path) -> Iterator[Launch]:
    """launch(failpoint, log_name, timings) -> a serving server of one client, on the shared HTTP port."""
    token, client_id = f"crash-token-{uuid.uuid4().hex}", f"crash-{uuid.uuid4().hex[:8]}"
    started: list[ServerProcess] = []

    def start(failpoint: str | None, log_name: str, timings: dict[str, str]) -> ServerProcess:
        grpc_port = free_port()
        env = server_environment(crash_database, grpc_port, token, client_id, tmp_path / "data")
        env |= timings | {
            "BALLAST_HTTP_PORT": str(http_port),
            "BALLAST_PROVIDER_URL": simulator.url,
            "BALLAST_PROVIDER_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "BALLAST_RELAY_WORKERS": "0",
        }
        if failpoint is not None:
            env[FAILPOINTS_ENV] = failpoint
        server = launch_server(env, f"127.0.0.1:{grpc_port}", token, client_id, tmp_path / f"{log_name}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


def _request(key: str) -> payments_pb2.CreatePaymentRequest:
    return create_payment_request(key, AMOUNT.value, AMOUNT.currency_code)


def _state_name(value: int) -> str:
    try:
        return payments_pb2.PaymentState.Name(value)
    except ValueError:
        return f"a state the stubs do not name ({value})"


async def _create(server: ServerProcess, key: str) -> payments_pb2.CreatePaymentResponse:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        reply: payments_pb2.CreatePaymentResponse = await stub.CreatePayment(
            _request(key), metadata=server.metadata, timeout=CALL_TIMEOUT_S
        )
        return reply


async def _create_on_a_dying_server(server: ServerProcess, key: str, crash: CrashPoint) -> None:
    """The one client call: the server dies under it, so it fails, and nobody calls again."""
    try:
        reply = await _create(server, key)
    except grpc.aio.AioRpcError:
        return
    pytest.fail(
        f"the server armed with {crash.failpoint} answered {_state_name(reply.payment.state)} instead of dying:\n"
        + server.log()[-3000:]
    )


async def _create_and_kill_during_the_provider_call(
    server: ServerProcess, key: str, simulator: SimulatorProcess, provider_settings: dict[str, Any]
) -> None:
    """The provider takes the payment and holds its answer (accept-then-timeout); the server is killed
    as soon as the provider has it, well before the server's own provider timeout would end the wait."""
    await asyncio.to_thread(simulator.set_profile, "calm", provider_settings | {"accept_then_timeout_rate": 1.0})
    call = asyncio.ensure_future(_create(server, key))
    deadline = asyncio.get_running_loop().time() + CALL_TIMEOUT_S
    while not (await asyncio.to_thread(simulator.control, "GET", "/_sim/truth"))["payments"]:
        if call.done():
            pytest.fail(f"the call ended before the provider had the payment: {call.exception() or call.result()}")
        assert asyncio.get_running_loop().time() < deadline, "the provider never received the payment"
        await asyncio.sleep(0.01)
    kill(server.process)
    # the provider never answered: it logs the request as unanswered once it sees the connection gone
    while not simulator.requests_logged("POST", "/v1/payments", status=499):
        assert asyncio.get_running_loop().time() < deadline, "the provider answered the killed server"
        await asyncio.sleep(0.01)
    # the provider answers everything again: the restarted server's questions must not hang
    await asyncio.to_thread(simulator.set_profile, "calm", provider_settings)
    with pytest.raises(grpc.aio.AioRpcError):
        await call


async def _payment_row(connection: asyncpg.Connection, client_id: str, key: str) -> asyncpg.Record | None:
    return await connection.fetchrow(
        "SELECT id, state FROM payments WHERE client_id = $1 AND idempotency_key = $2", client_id, key
    )


async def _ledger(connection: asyncpg.Connection, payment_id: uuid.UUID) -> tuple[int, Decimal]:
    """How many ledger entries the payment has, and what they put on the provider's clearing account."""
    row = await connection.fetchrow(
        """
        SELECT (SELECT count(*) FROM ledger_entries WHERE payment_id = $1) AS entries,
               (SELECT coalesce(sum(l.amount), 0) FROM ledger_lines l JOIN ledger_entries e ON e.id = l.entry_id
                WHERE e.payment_id = $1 AND l.account = $2) AS clearing
        """,
        payment_id,
        PROVIDER_CLEARING,
    )
    assert row is not None
    return int(row["entries"]), Decimal(row["clearing"])


async def _history(connection: asyncpg.Connection, payment_id: uuid.UUID) -> list[tuple[str, str, str]]:
    rows = await connection.fetch(
        "SELECT from_state, to_state, cause FROM payment_transitions WHERE payment_id = $1 ORDER BY id", payment_id
    )
    return [(row["from_state"], row["to_state"], row["cause"]) for row in rows]


async def _converged_state(
    connection: asyncpg.Connection, payment_id: uuid.UUID, server: ServerProcess, simulator: SimulatorProcess
) -> str:
    """The payment's state once it is decided; fails with what it went through if it never is."""
    deadline = asyncio.get_running_loop().time() + CONVERGENCE_TIMEOUT_S
    while True:
        state: str = await connection.fetchval("SELECT state FROM payments WHERE id = $1", payment_id)
        if state not in UNDECIDED_STATES:
            return state
        if asyncio.get_running_loop().time() >= deadline:
            truth = await asyncio.to_thread(simulator.payments_with_key, str(payment_id))
            pytest.fail(
                f"the payment is still {state} {CONVERGENCE_TIMEOUT_S}s after the restart, with no client retry;"
                f" its moves: {await _history(connection, payment_id)};"
                f" the provider has: {[(p['id'], p['final_status']) for p in truth]};"
                f" the restarted server's log ends:\n{server.log()[-3000:]}"
            )
        await asyncio.sleep(0.1)


def test_the_matrix_crashes_the_server_at_every_failpoint() -> None:
    armed = {crash.failpoint for crash in CRASH_POINTS} | {crash.failpoint for crash in REFUND_CRASH_POINTS}
    assert armed - {None} == FAILPOINTS


@pytest.mark.parametrize(("crash", "webhooks_lost"), CASES)
async def test_a_crash_ends_with_ballast_equal_to_the_providers_truth_without_a_client_retry(
    crash: CrashPoint, webhooks_lost: bool, launch: Launch, crash_database: str, simulator: SimulatorProcess
) -> None:
    provider_settings = PROVIDER_SETTINGS | ({"webhook_drop_rate": 1.0} if webhooks_lost else {})
    await asyncio.to_thread(simulator.reset, SEED, "calm", provider_settings)
    key = f"crash-{crash.name}-{uuid.uuid4()}"
    armed = launch(crash.failpoint, "armed-server", TIMINGS if crash.failpoint else PATIENT_TIMINGS)
    if crash.failpoint is None:
        await _create_and_kill_during_the_provider_call(armed, key, simulator, provider_settings)
    else:
        await _create_on_a_dying_server(armed, key, crash)
    assert exit_status(armed.process) == -signal.SIGKILL, f"the server was not killed:\n{armed.log()[-3000:]}"

    connection = await asyncpg.connect(asyncpg_dsn(crash_database))
    try:
        # nothing accepted is lost: the payment was committed before the provider was asked, and
        # nothing of an answer was (a webhook may have said PENDING meanwhile; it decides nothing)
        row = await _payment_row(connection, armed.client_id, key)
        assert row is not None, "the payment was lost with the server"
        payment_id: uuid.UUID = row["id"]
        assert row["state"] in ({"RECORDED", "PENDING"} if crash.reaches_provider else {"RECORDED"}), row["state"]
        provider_payments = await asyncio.to_thread(simulator.payments_with_key, str(payment_id))
        assert len(provider_payments) == int(crash.reaches_provider), provider_payments

        restarted = launch(None, "restarted-server", TIMINGS)  # and no client retry: Ballast finds out on its own
        state = await _converged_state(connection, payment_id, restarted, simulator)

        provider_payments = await asyncio.to_thread(simulator.payments_with_key, str(payment_id))
        assert len(provider_payments) <= 1, f"two provider payments for one key: {provider_payments}"
        entries, clearing = await _ledger(connection, payment_id)
        if provider_payments:
            provider_status = provider_payments[0]["final_status"]
            assert state == EVENT_TARGETS[event_for(PROVIDER, provider_status)].value, (state, provider_status)
        else:
            assert state == "EXPIRED", f"the provider never had the payment, yet Ballast says {state}"
        if webhooks_lost:
            history = await _history(connection, payment_id)
            assert not [move for move in history if move[2].startswith("webhook.")], history
        if state == "SUCCEEDED":
            assert (entries, clearing) == (1, Decimal(AMOUNT.value)), (entries, clearing)
        else:
            assert entries == 0, f"a {state} payment has {entries} ledger entries"

        # the client comes back after all: the same final answer, and nothing new goes to the provider
        truth_before = await asyncio.to_thread(simulator.control, "GET", "/_sim/truth")
        posts_before = simulator.requests_logged("POST", "/v1/payments")
        retried = await _create(restarted, key)
        assert (retried.payment.id, retried.replayed) == (str(payment_id), True)
        assert _state_name(retried.payment.state) == f"PAYMENT_STATE_{state}"
        truth_after = await asyncio.to_thread(simulator.control, "GET", "/_sim/truth")
        assert len(truth_after["payments"]) == len(truth_before["payments"]), "the retry created a provider payment"
        assert simulator.requests_logged("POST", "/v1/payments") == posts_before, "the retry was sent to the provider"
        assert await connection.fetchval("SELECT state FROM payments WHERE id = $1", payment_id) == state
        assert await _ledger(connection, payment_id) == (entries, clearing)
    finally:
        await connection.close()


#: A refund's submission crashed at each of its lines (the payment was captured before).
REFUND_CRASH_POINTS = [
    CrashPoint("refund_before_provider_call", "refund.before_provider_call", reaches_provider=False),
    CrashPoint("refund_after_provider_answer", "refund.after_provider_answer", reaches_provider=True),
    CrashPoint("refund_before_outcome_commit", "refund.before_outcome_commit", reaches_provider=True),
]
REFUND_AMOUNT = Money(value="5.00", currency_code="EUR")


async def _captured_payment(
    server: ServerProcess, key: str, connection: asyncpg.Connection, simulator: SimulatorProcess
) -> uuid.UUID:
    reply = await _create(server, key)
    payment_id = uuid.UUID(reply.payment.id)
    state = await _converged_state(connection, payment_id, server, simulator)
    assert state == "SUCCEEDED", state
    return payment_id


async def _refund(server: ServerProcess, key: str, payment_id: uuid.UUID) -> payments_pb2.RefundPaymentResponse:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        reply: payments_pb2.RefundPaymentResponse = await stub.RefundPayment(
            payments_pb2.RefundPaymentRequest(idempotency_key=key, payment_id=str(payment_id), amount=REFUND_AMOUNT),
            metadata=server.metadata,
            timeout=CALL_TIMEOUT_S,
        )
        return reply


async def _refund_converged(connection: asyncpg.Connection, refund_id: uuid.UUID, server: ServerProcess) -> str:
    deadline = asyncio.get_running_loop().time() + CONVERGENCE_TIMEOUT_S
    while True:
        state: str = await connection.fetchval("SELECT state FROM refunds WHERE id = $1", refund_id)
        if state not in UNDECIDED_STATES:
            return state
        if asyncio.get_running_loop().time() >= deadline:
            pytest.fail(f"the refund is still {state} after the restart; the log ends:\n{server.log()[-3000:]}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("crash", REFUND_CRASH_POINTS, ids=lambda crash: crash.name)
async def test_a_crash_mid_refund_ends_with_the_refund_equal_to_the_providers_truth_without_a_client_retry(
    crash: CrashPoint, launch: Launch, crash_database: str, simulator: SimulatorProcess
) -> None:
    await asyncio.to_thread(
        simulator.reset, SEED, "calm", PROVIDER_SETTINGS | {"refund_fail_rate": 0.0, "refund_stuck_rate": 0.0}
    )
    connection = await asyncpg.connect(asyncpg_dsn(crash_database))
    try:
        healthy = launch(None, "healthy-server", TIMINGS)
        payment_id = await _captured_payment(healthy, f"crash-pay-{uuid.uuid4()}", connection, simulator)
        healthy.stop()

        armed = launch(crash.failpoint, "armed-server", TIMINGS)
        key = f"crash-{crash.name}-{uuid.uuid4()}"
        with pytest.raises(grpc.aio.AioRpcError):
            await _refund(armed, key, payment_id)
        assert exit_status(armed.process) == -signal.SIGKILL, f"the server was not killed:\n{armed.log()[-3000:]}"

        # nothing accepted is lost: the refund was committed, counted against its payment, before the provider
        row = await connection.fetchrow(
            "SELECT id, state FROM refunds WHERE client_id = $1 AND idempotency_key = $2", armed.client_id, key
        )
        assert row is not None, "the refund was lost with the server"
        refund_id: uuid.UUID = row["id"]
        assert row["state"] in ({"RECORDED", "PENDING"} if crash.reaches_provider else {"RECORDED"}), row["state"]
        at_provider = await asyncio.to_thread(simulator.refunds_with_key, str(refund_id))
        assert len(at_provider) == int(crash.reaches_provider), at_provider

        restarted = launch(None, "restarted-server", TIMINGS)  # no client retry: Ballast finds out on its own
        state = await _refund_converged(connection, refund_id, restarted)
        at_provider = await asyncio.to_thread(simulator.refunds_with_key, str(refund_id))
        posted = await connection.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE event_key = $1", f"refund:{refund_id}:succeeded"
        )
        payment = await connection.fetchrow(
            "SELECT state, refunded, refund_held FROM payments WHERE id = $1", payment_id
        )
        if at_provider:
            assert len(at_provider) == 1, f"two provider refunds for one key: {at_provider}"
            assert (state, at_provider[0]["status"]) == ("SUCCEEDED", "succeeded")
            assert posted == 1
            assert (payment["state"], payment["refunded"]) == ("PARTIALLY_REFUNDED", Decimal(REFUND_AMOUNT.value))
        else:
            assert state == "EXPIRED", f"the provider never had the refund, yet Ballast says {state}"
            assert posted == 0
            # an expired refund no longer counts against its payment
            assert (payment["state"], payment["refund_held"]) == ("SUCCEEDED", 0)
    finally:
        await connection.close()
