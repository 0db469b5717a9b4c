"""`make run`'s embedded PostgreSQL, NATS and provider simulator after the server dies, and beside a second one.

Each spec runs real server processes on a data directory of its own, copied from one migrated once
per module, with DATABASE_URL, NATS_URL and BALLAST_PROVIDER_URL unset, as `make run` runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ballast.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.e2e.conftest import ROOT, ServerProcess, free_port, server_environment
from tests.e2e.processes import embedded_children, kill, launch_server, stop_embedded_children
from tests.support.requests import create_payment_request

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the children in /proc"),
]

TOKEN = f"embedded-token-{uuid.uuid4().hex}"
CLIENT_ID = "embedded"
#: How long children get to be gone after their server stopped.
GONE_TIMEOUT_S = 10

Launch = Callable[..., ServerProcess]


def _environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """`make run`'s: every dependency embedded, with a relay (so NATS too), on free ports."""
    env = server_environment("", free_port(), TOKEN, CLIENT_ID, data_dir) | {"BALLAST_RELAY_WORKERS": "1"} | extra
    for variable in ("DATABASE_URL", "NATS_URL"):
        env.pop(variable, None)
    return env


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose embedded database is migrated (its PostgreSQL stopped again)."""
    data_dir = tmp_path_factory.mktemp("embedded") / "data"
    subprocess.run(
        [sys.executable, "-m", "server", "migrate"],
        cwd=ROOT,
        env=_environment(data_dir),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return data_dir


@pytest.fixture
def data_dir(migrated: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    # cp -a keeps the owner of PostgreSQL's files (the wheel runs it as its own user under root)
    subprocess.run(["cp", "-a", str(migrated), str(copy)], check=True, timeout=60)  # noqa: S607
    return copy


@pytest.fixture
def launch(data_dir: Path, tmp_path: Path) -> Iterator[Launch]:
    """launch(**env) -> a serving server on data_dir; whatever is left running is stopped at the end."""
    started: list[ServerProcess] = []

    def start(**extra: str) -> ServerProcess:
        env = _environment(data_dir, **extra)
        address = f"127.0.0.1:{env['BALLAST_GRPC_PORT']}"
        server = launch_server(env, address, TOKEN, CLIENT_ID, tmp_path / f"server-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()
    stop_embedded_children(data_dir)  # what a failed spec (or a server that failed it) left behind


def _create_payment(server: ServerProcess) -> payments_pb2.Payment:
    request = create_payment_request(f"embedded-{uuid.uuid4()}", "12.34")
    with grpc.insecure_channel(server.address) as channel:
        reply = payments_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
            request, metadata=server.metadata, timeout=10
        )
    payment: payments_pb2.Payment = reply.payment
    return payment


def _one_each(data_dir: Path) -> dict[str, int]:
    children = embedded_children(data_dir)
    assert {name: len(pids) for name, pids in children.items()} == {"nats-server": 1, "postgres": 1, "simulator": 1}
    return {name: pids[0] for name, pids in children.items()}


def _wait_until_none_left(data_dir: Path) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while any(embedded_children(data_dir).values()):
        assert time.monotonic() < deadline, f"left running after a clean stop: {embedded_children(data_dir)}"
        time.sleep(0.05)


def _simulator_url(server: ServerProcess) -> str:
    for line in server.log().splitlines():
        if line.startswith("provider simulator: "):
            return line.split()[2]
    raise AssertionError(f"the server printed no simulator address:\n{server.log()}")


def test_after_a_sigkill_the_next_server_runs_one_of_each_child_and_a_clean_stop_leaves_none(
    data_dir: Path, launch: Launch
) -> None:
    first = launch()
    before = _one_each(data_dir)
    kill(first.process)

    second = launch()
    after = _one_each(data_dir)  # the old broker stopped (or gone with its owner), never two on one store
    assert after["postgres"] == before["postgres"]  # adopted: PostgreSQL recovers nothing, keeps its pid
    assert _create_payment(second).id

    assert second.stop() == 0
    _wait_until_none_left(data_dir)


def test_a_second_server_on_a_data_directory_in_use_is_refused_and_the_first_goes_on(
    data_dir: Path, launch: Launch, tmp_path: Path
) -> None:
    first = launch()
    before = _one_each(data_dir)
    second = subprocess.Popen(
        [sys.executable, "-m", "server", "serve"],
        cwd=ROOT,
        env=_environment(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = second.communicate(timeout=30)
    finally:
        second.kill()
    assert second.returncode == 1
    refusals = [line for line in stderr.splitlines() if line.startswith("start-up error: ")]
    assert len(refusals) == 1, stderr
    assert str(data_dir) in refusals[0]
    assert f"kill -TERM {first.process.pid}" in refusals[0] and "BALLAST_DATA_DIR" in refusals[0]
    assert "Traceback" not in stderr

    assert _one_each(data_dir) == before
    assert _create_payment(first).id
    assert first.stop() == 0
    _wait_until_none_left(data_dir)


def test_a_payment_pending_at_the_simulator_when_the_server_is_killed_is_known_after_the_restart(
    data_dir: Path, launch: Launch
) -> None:
    """The embedded simulator keeps its state in the data directory, as a real provider does not
    forget: the payment settles after the restart, and Ballast learns it."""
    first = launch()
    settings = {"success_rate": 1.0, "settle_min_ms": 2000, "settle_max_ms": 2000}
    _control(_simulator_url(first), "PUT", "/_sim/profile", {"settings": settings})
    payment = _create_payment(first)
    assert payment.state == payments_pb2.PAYMENT_STATE_PENDING
    kill(first.process)

    second = launch()
    known = _control(_simulator_url(second), "GET", f"/v1/payments?idempotency_key={payment.id}")
    assert known["status"] in ("pending", "succeeded") and known["amount"] == "12.34"
    _wait_for_state(second, payment.id, payments_pb2.PAYMENT_STATE_SUCCEEDED)
    assert second.stop() == 0


def _control(url: str, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, object] = json.loads(response.read())
        return answer


def _wait_for_state(server: ServerProcess, payment_id: str, state: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(server.address) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        while True:
            reply = stub.GetPayment(
                payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=server.metadata, timeout=5
            )
            if reply.payment.state == state:
                return
            assert time.monotonic() < deadline, f"payment {payment_id} is {reply.payment.state}:\n{server.log()}"
            time.sleep(0.1)
