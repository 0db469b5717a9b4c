"""The server as users run it: a separate process, called over gRPC on a real port."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from aiohttp import web
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from server.api.handlers import ANSWER_MARGIN_S
from server.db.engine import asyncpg_dsn
from tests.e2e.conftest import ROOT, ServerProcess, free_port, server_environment
from tests.support import insert_idempotency_key, scratch_database
from tests.support.requests import create_payment_request

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]


def _request(key: str, value: str = "42.00") -> payments_pb2.CreatePaymentRequest:
    return create_payment_request(key, value)


async def test_fifty_concurrent_calls_with_one_key_over_the_network_create_one_payment(
    start_server: StartServer, pool: asyncpg.Pool
) -> None:
    server = start_server()
    key = f"storm-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        calls = [stub.CreatePayment(_request(key), metadata=server.metadata, timeout=10) for _ in range(50)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    responses = [o for o in outcomes if isinstance(o, payments_pb2.CreatePaymentResponse)]
    errors = [o for o in outcomes if not isinstance(o, payments_pb2.CreatePaymentResponse)]
    assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.ABORTED for e in errors), errors
    assert len({response.payment.id for response in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", server.client_id) == 1


def test_reflection_lists_every_service(start_server: StartServer) -> None:
    server = start_server()
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert {
        "ballast.payments.v1.PaymentService",
        "ballast.execution.v1.ExecutionService",
        "ballast.ledger.v1.LedgerService",
        "ballast.reconciliation.v1.ReconciliationService",
        "grpc.health.v1.Health",
    } <= names


def test_reflection_answers_v1_clients_too(start_server: StartServer) -> None:
    """grpc.reflection.v1 (what recent grpcurl and grpc-js ask) answers as v1alpha does: the same messages."""
    server = start_server()
    with grpc.insecure_channel(server.address) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ballast.payments.v1.PaymentService"),
        ]
        listed, described = list(info(iter(requests), timeout=5))
    names = {service.name for service in listed.list_services_response.service}
    assert {"ballast.payments.v1.PaymentService", "grpc.reflection.v1.ServerReflection"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # the contract, to build calls from


async def test_sigterm_refuses_new_calls_and_drains_the_one_in_flight(
    start_server: StartServer, database_url: str
) -> None:
    """A call blocked in the database when SIGTERM arrives still completes; the server then exits 0."""
    server = start_server()
    key = f"draining-{uuid.uuid4()}"
    holder = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        transaction = holder.transaction()
        await transaction.start()
        # Hold the key's index entry so the server's insert waits behind us.
        await insert_idempotency_key(holder, server.client_id, key)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.CreatePayment(_request(key), metadata=server.metadata, timeout=20))
            await _wait_until_blocked_on_a_lock(holder)
            server.process.send_signal(signal.SIGTERM)
            await _wait_for_log(server, "server.draining")
            async with grpc.aio.insecure_channel(server.address) as late_channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await payments_pb2_grpc.PaymentServiceStub(late_channel).CreatePayment(
                        _request(f"late-{uuid.uuid4()}"), metadata=server.metadata, timeout=5
                    )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not in_flight.done()
            await transaction.rollback()  # let the in-flight insert through
            response = await in_flight
    finally:
        await holder.close()
    assert response.payment.idempotency_key == key
    assert await asyncio.to_thread(server.process.wait, 20) == 0


#: The burst: more calls at once than the server's pool has connections, each with a short deadline.
BURST_CALLS = 150
BURST_DEADLINE_S = 0.5


@dataclass
class Counted:
    """What the server's /metrics says of its calls."""

    handled: dict[tuple[str, str], float]  # ballast_grpc_requests_total by (method, code)
    begun: dict[str, float]  # ballast_grpc_requests_started_total by method
    begun_late: dict[str, float]  # begun with less than ANSWER_MARGIN_S of the caller's deadline left


def _counted(metrics_url: str) -> Counted:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - a loopback URL of the test's
        text = response.read().decode()
    counted = Counted({}, {}, {})
    late_bucket = f'le="{ANSWER_MARGIN_S}"'
    for line in text.splitlines():
        if not line.startswith("ballast_grpc_request"):
            continue
        labels, value = line.rsplit(" ", 1)
        method = labels.split('method="', 1)[1].split('"', 1)[0] if 'method="' in labels else ""
        if line.startswith("ballast_grpc_requests_total{"):
            counted.handled[(method, labels.split('code="', 1)[1].split('"', 1)[0])] = float(value)
        elif line.startswith("ballast_grpc_requests_started_total{"):
            counted.begun[method] = float(value)
        elif line.startswith("ballast_grpc_request_slack_seconds_bucket{") and late_bucket in labels:
            counted.begun_late[method] = float(value)
    return counted


async def test_a_burst_against_a_hanging_provider_gets_ballasts_own_answers_within_the_deadline(
    start_server: StartServer, pool: asyncpg.Pool
) -> None:
    """Every call of a burst with 0.5 s deadlines, against a provider that never answers, hears Ballast:
    the payment as it stands (UNKNOWN), UNAVAILABLE (the provider was not asked in time), or
    DEADLINE_EXCEEDED saying the outcome is unknown (or that nothing was done: it began too late).
    No call Ballast began is cut by the client's own deadline, and the server counts each by the status it
    answered: none UNKNOWN, none CANCELLED."""
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await released.wait()
        return web.json_response({"error": {"type": "gone"}}, status=503)

    app = web.Application()
    app.router.add_route("*", "/v1/payments", hang)
    app.router.add_route("*", "/v1/orders", hang)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    metrics_port = free_port()
    try:
        server = start_server(
            BALLAST_PROVIDER_URL=f"http://127.0.0.1:{runner.addresses[0][1]}",
            BALLAST_METRICS_PORT=str(metrics_port),
            BALLAST_PROVIDER_BREAKER_FAILURES="1000",
        )
        keys = [f"burst-{uuid.uuid4()}" for _ in range(BURST_CALLS)]
        async with grpc.aio.insecure_channel(server.address) as channel:
            # connected first: the deadlines measure Ballast's answers, not the client's connection set-up
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            stub = payments_pb2_grpc.PaymentServiceStub(channel)

            async def call(key: str) -> tuple[str, str]:
                try:
                    reply = await stub.CreatePayment(_request(key), metadata=server.metadata, timeout=BURST_DEADLINE_S)
                except grpc.aio.AioRpcError as error:
                    return error.code().name, error.details() or ""
                return f"OK {payments_pb2.PaymentState.Name(reply.payment.state)}", ""

            outcomes = await asyncio.gather(*(call(key) for key in keys))
        # Ballast's own DEADLINE_EXCEEDED says the outcome is unknown, or that nothing was done (it could not
        # begin the call in time); the client's own says neither
        cut = [
            o
            for o in outcomes
            if o[0] == "DEADLINE_EXCEEDED" and "outcome is unknown" not in o[1] and "nothing was done" not in o[1]
        ]
        # a call is counted once its answer has gone out, a moment after its caller has it: wait until every
        # call Ballast began has been answered and every call its caller heard Ballast answer is counted
        create = "/ballast.payments.v1.PaymentService/CreatePayment"
        deadline = time.monotonic() + 10
        while True:
            counted = await asyncio.to_thread(_counted, f"http://127.0.0.1:{metrics_port}/metrics")
            answered = sum(value for (method, _), value in counted.handled.items() if method == create)
            if answered == counted.begun.get(create, 0) and answered >= BURST_CALLS - len(cut):
                break
            assert time.monotonic() < deadline, f"not every call was counted: {counted}"
            await asyncio.sleep(0.05)
    finally:
        released.set()
        await runner.cleanup()
    codes = {code: value for (method, code), value in counted.handled.items() if method == create}
    assert not {"CANCELLED", "UNKNOWN"} & codes.keys(), codes
    # Every call Ballast began in time was answered by Ballast. A call is cut by its caller's deadline only
    # while it waits in gRPC to be taken (one at a time: on a loaded machine a burst outruns the server), or
    # when it was taken with less than the answer's margin left. How many of a burst the server begins in
    # time is its capacity (`python -m bench`); ballast_grpc_request_slack_seconds shows operators how late.
    cut_after_begun = answered - (BURST_CALLS - len(cut))
    assert cut_after_begun <= counted.begun_late.get(create, 0), (
        f"{cut_after_begun:.0f} calls Ballast began were cut by their caller's deadline, "
        f"{counted.begun_late.get(create, 0):.0f} of them begun too late for an answer: {cut[:3]}"
    )
    assert answered >= BURST_CALLS // 10, f"Ballast began only {answered:.0f} of {BURST_CALLS} calls: {cut[:3]}"
    assert {code for code, _ in outcomes} <= {"OK PAYMENT_STATE_UNKNOWN", "DEADLINE_EXCEEDED", "UNAVAILABLE"}
    assert all("same idempotency key" in details for code, details in outcomes if code == "UNAVAILABLE"), outcomes
    # what the answers say is true: each key recorded at most one payment
    recorded = await pool.fetch(
        "SELECT count(*) FROM payments WHERE client_id = $1 GROUP BY idempotency_key", server.client_id
    )
    assert {row[0] for row in recorded} <= {1}


#: The stream of calls SIGTERM lands in: more than the server takes at once, for a while before and after.
STREAM_CALLS = 3000
STREAM_CALLS_PER_TICK = 15
STREAM_TICK_S = 0.01
SIGTERM_AFTER_S = 1.0


async def test_sigterm_under_a_stream_of_calls_answers_each_one_and_cancels_none(
    start_server: StartServer, pool: asyncpg.Pool
) -> None:
    """Every call SIGTERM catches is answered: done (OK), or refused UNAVAILABLE with nothing done (safe
    to repeat with its key); gRPC's own stop, which cancels calls that had arrived and not begun, comes
    only after those were refused."""
    server = start_server(BALLAST_PROVIDER_URL="off")
    outcomes: dict[str, tuple[str, str]] = {}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)

        async def call(key: str) -> None:
            try:
                await stub.CreatePayment(_request(key), metadata=server.metadata, timeout=20)
            except grpc.aio.AioRpcError as error:
                outcomes[key] = (error.code().name, error.details() or "")
            else:
                outcomes[key] = ("OK", "")

        async def stream() -> None:
            calls = []
            for index in range(STREAM_CALLS):
                calls.append(asyncio.ensure_future(call(f"stream-{index}-{uuid.uuid4()}")))
                if index % STREAM_CALLS_PER_TICK == 0:
                    await asyncio.sleep(STREAM_TICK_S)
            await asyncio.gather(*calls)

        streaming = asyncio.ensure_future(stream())
        await asyncio.sleep(SIGTERM_AFTER_S)
        server.process.send_signal(signal.SIGTERM)
        await streaming
    assert await asyncio.to_thread(server.process.wait, 30) == 0
    codes = {code for code, _ in outcomes.values()}
    assert "CANCELLED" not in codes, sum(code == "CANCELLED" for code, _ in outcomes.values())
    assert codes <= {"OK", "UNAVAILABLE"}, codes
    refused = [key for key, (code, details) in outcomes.items() if "the server is stopping" in details]
    assert refused, "SIGTERM landed after the stream: nothing was refused"
    done = await pool.fetch(
        "SELECT idempotency_key FROM payments WHERE client_id = $1 AND idempotency_key = ANY($2::text[])",
        server.client_id,
        refused,
    )
    assert not done, f"{len(done)} calls refused as never begun had recorded a payment"
    answered_ok = [key for key, (code, _) in outcomes.items() if code == "OK"]
    assert await pool.fetchval("SELECT count(*) FROM payments WHERE client_id = $1", server.client_id) >= len(
        answered_ok
    )


async def _wait_until_blocked_on_a_lock(connection: asyncpg.Connection, timeout_s: float = 10) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND application_name = 'ballast' AND datname = current_database()"
    )
    for _ in range(int(timeout_s / 0.05)):
        if await connection.fetchval(query):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no server connection waited on a lock within {timeout_s}s")


async def _wait_for_log(server: ServerProcess, event: str, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if event in server.log():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{event} not logged within {timeout_s}s:\n{server.log()}")


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BALLAST_GRPC_PORT", "not-a-port"), ("BALLAST_DB_POOL_SIZE", "-3"), ("BALLAST_ENV", "prod")],
)
def test_a_wrong_setting_stops_start_up_with_one_line_naming_it(
    database_url: str, tmp_path: Path, variable: str, value: str
) -> None:
    env = server_environment(database_url, free_port(), "t" * 20, "c", tmp_path) | {variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


def test_the_token_command_prints_no_token_the_server_would_refuse(database_url: str, tmp_path: Path) -> None:
    configured = server_environment(database_url, free_port(), "t" * 20, "c", tmp_path)
    refused = subprocess.run(
        [sys.executable, "-m", "server", "token"], cwd=ROOT, env=configured, capture_output=True, text=True, timeout=30
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "BALLAST_API_TOKENS" in refused.stderr
    development = {name: value for name, value in configured.items() if name != "BALLAST_API_TOKENS"}
    printed = subprocess.run(
        [sys.executable, "-m", "server", "token"], cwd=ROOT, env=development, capture_output=True, text=True, timeout=30
    )
    assert printed.returncode == 0
    assert printed.stdout.strip() == (tmp_path / "dev-token").read_text().strip()


def test_the_server_refuses_to_start_on_an_unmigrated_database(server_database_url: str, tmp_path: Path) -> None:
    with scratch_database(server_database_url, "ballast_unmigrated") as unmigrated_url:
        env = server_environment(unmigrated_url, free_port(), "t" * 20, "c", tmp_path)
        result = subprocess.run(
            [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "python -m server migrate" in result.stderr


def test_metrics_count_calls_by_method_and_code(start_server: StartServer) -> None:
    metrics_port = free_port()
    server = start_server(BALLAST_METRICS_PORT=str(metrics_port))
    with grpc.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        stub.CreatePayment(_request(f"metered-{uuid.uuid4()}"), metadata=server.metadata, timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.CreatePayment(_request(f"metered-{uuid.uuid4()}"), timeout=5)
    method = "/ballast.payments.v1.PaymentService/CreatePayment"
    expected = [
        f'ballast_grpc_requests_total{{code="OK",method="{method}"}} 1.0',
        f'ballast_grpc_requests_total{{code="UNAUTHENTICATED",method="{method}"}} 1.0',
        f'ballast_grpc_request_duration_seconds_count{{method="{method}"}} 2.0',
    ]
    # An aborted call's status reaches the caller before the server's handler unwinds and counts it,
    # so a scrape is eventually (not instantly) complete, as it is for Prometheus.
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        missing = [line for line in expected if line not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert missing == [], text


@pytest.mark.parametrize("variable", ["BALLAST_GRPC_PORT", "BALLAST_METRICS_PORT"])
def test_a_port_in_use_stops_start_up_with_one_line_naming_the_setting(
    database_url: str, tmp_path: Path, variable: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = server_environment(database_url, free_port(), "t" * 20, "c", tmp_path) | {
            "BALLAST_METRICS_PORT": str(free_port()),
            variable: str(taken.getsockname()[1]),
        }
        result = subprocess.run(
            [sys.executable, "-m", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("start-up error:") and variable in last_line, result.stderr


def test_verify_audit_passes_on_intact_chains_and_names_the_first_broken_link(
    server_database_url: str, tmp_path: Path
) -> None:
    from server.db.migrate import migrate_to_head

    async def write_chain(url: str, tamper: bool) -> None:
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            for action in ("opened", "approved", "settled"):
                await connection.execute(
                    "INSERT INTO audit_log (aggregate_type, aggregate_id, action, actor, payload)"
                    " VALUES ('case', 'c-1', $1, 'ops', '{}')",
                    action,
                )
            if tamper:
                await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
                await connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE sequence = 2")
        finally:
            await connection.close()

    def verify(url: str) -> subprocess.CompletedProcess[str]:
        env = server_environment(url, free_port(), "t" * 20, "c", tmp_path)
        return subprocess.run(
            [sys.executable, "-m", "server", "verify-audit"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    with scratch_database(server_database_url, "ballast_audit") as url:
        migrate_to_head(url)
        asyncio.run(write_chain(url, tamper=False))
        intact = verify(url)
        asyncio.run(write_chain(url, tamper=True))
        broken = verify(url)
    assert intact.returncode == 0, intact.stderr
    assert "all audit chains verify (3 entries)" in intact.stdout
    assert broken.returncode == 1
    assert "audit chain case/c-1 broken at sequence 2" in broken.stdout


def test_a_killed_server_takes_its_simulator_with_it(database_url: str, tmp_path: Path) -> None:
    """SIGKILL leaves no handler to run: the simulator notices its parent is gone by itself."""
    env = server_environment(database_url, free_port(), "t" * 20, "c", tmp_path)
    server = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + 60
        line = ""
        while not line.startswith("provider simulator: "):
            assert time.monotonic() < deadline and server.poll() is None, "the server never started its simulator"
            line = server.stderr.readline()
        url = line.split()[2]
        with urllib.request.urlopen(f"{url}/_sim/profile", timeout=5) as answer:  # noqa: S310 - loopback
            assert answer.status == 200
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{url}/_sim/profile", timeout=1).close()  # noqa: S310 - loopback
            except OSError:
                break  # gone
            assert time.monotonic() < deadline, f"the simulator at {url} outlived its server"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
