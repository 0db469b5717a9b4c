"""The simulator's durable state (`--state FILE`): what it accepted comes back after it stops or dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from simulator.app import build_app
from simulator.engine import Simulator
from simulator.journal import Journal
from simulator.profiles import profile
from tests.simulator.conftest import FAST, SECRET, Receiver, Sim, eventually

ROOT = Path(__file__).resolve().parents[2]
#: Long enough that nothing settles during a test unless the test waits for it.
NEVER = {"settle_min_ms": 600_000, "settle_max_ms": 600_000}


@asynccontextmanager
async def running(state: Path, webhook_url: str | None = None, **settings: Any) -> AsyncIterator[Sim]:
    """A simulator keeping its state in `state`, restored before it serves; stopped cleanly on exit."""
    simulator = Simulator(
        seed=42,
        settings=profile("calm").with_overrides({**FAST, **settings}),
        webhook_url=webhook_url,
        webhook_secret=SECRET,
        journal=Journal.open(state),
    )
    simulator.restore()
    runner = web.AppRunner(build_app(simulator), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        try:
            yield Sim(f"http://{host}:{port}", http, simulator)
        finally:
            await runner.cleanup()


def _essentials(truth: dict[str, Any]) -> dict[str, Any]:
    """The truth without the webhook events (deliveries are not kept: a restart sends only new ones)."""
    return {
        "payments": [{k: v for k, v in p.items() if k != "webhooks"} for p in truth["payments"]],
        "refunds": [{k: v for k, v in r.items() if k != "webhooks"} for r in truth["refunds"]],
        "orders": [{k: v for k, v in o.items() if k != "webhooks"} for o in truth["orders"]],
        "settlement": truth["settlement"],
    }


async def test_payments_bookings_and_keyed_answers_come_back_as_they_were(tmp_path: Path) -> None:
    state = tmp_path / "simulator.sqlite3"
    async with running(state, order_reject_rate=0.0, order_rest_rate=1.0) as sim:
        paid = (await sim.pay("paid")).json()
        await eventually(sim.settled, what="the payment to settle")
        assert (await sim.refund(paid["id"], "refund-1")).status == 200
        await eventually(sim.settled, what="the refund to settle")
        resting = (await sim.order("rests")).json()
        canceled = await sim.post(f"/v1/orders/{resting['id']}/cancel", key="cancel-1")
        assert canceled.status == 200
        before = _essentials(await sim.truth())
    async with running(state) as sim:
        after = _essentials(await sim.truth())
        replayed = await sim.pay("paid")
        again = await sim.post(f"/v1/orders/{resting['id']}/cancel", key="cancel-1")
    assert after == before  # the payment and its history, the order, the charge, its fee and the refund
    assert (replayed.status, replayed.headers.get("Idempotent-Replayed")) == (200, "true")
    assert replayed.json()["id"] == paid["id"]
    assert (again.status, again.json()) == (canceled.status, canceled.json())  # not "nothing to cancel"


async def test_what_was_under_way_at_a_stop_goes_on_after_the_restart(tmp_path: Path, receiver: Receiver) -> None:
    """A pending payment settles on the provider's own clock, its next event numbered after the last;
    a modification asked before the stop is answered after it."""
    state = tmp_path / "simulator.sqlite3"
    slow = {"success_rate": 1.0, "settle_min_ms": 1000, "settle_max_ms": 1000, "order_rest_rate": 1.0}
    async with running(state, receiver.url, **slow, order_reject_rate=0.0, modify_reject_rate=0.0) as sim:
        payment = (await sim.pay("pending")).json()
        order = (await sim.order("changes")).json()
        asked = await sim.post(f"/v1/orders/{order['id']}/modify", {"quantity": "150"}, key="modify-1")
        assert asked.status == 202
        await eventually(lambda: _received(receiver, payment["id"], 1), what="the pending event")
    async with running(state, receiver.url, modify_reject_rate=0.0) as sim:
        assert (await sim.get(f"/v1/payments/{payment['id']}"))[0] == 200
        await eventually(lambda: _received(receiver, payment["id"], 2), what="the payment to settle after the restart")
        restored = sim.simulator.broker.store.get(order["id"])
        assert restored is not None
        await eventually(_async(lambda: restored.modification is None), what="the modification to be answered")
        assert restored.quantity == 150
    events = receiver.events(payment["id"])
    assert [(event["type"], event["sequence"]) for event in events] == [
        ("payment.pending", 1),
        ("payment.succeeded", 2),
    ]


def _async(check: Any) -> Any:
    async def checked() -> bool:
        return bool(check())

    return checked


async def _received(receiver: Receiver, object_id: str, count: int) -> bool:
    return len(receiver.events(object_id)) >= count


async def test_a_reset_forgets_the_journal_too(tmp_path: Path) -> None:
    state = tmp_path / "simulator.sqlite3"
    async with running(state, **NEVER) as sim:
        await sim.pay("forgotten")
        assert (await sim.post("/_sim/reset", {})).status == 200
    async with running(state) as sim:
        status, _ = await sim.get("/v1/payments?idempotency_key=forgotten")
    assert status == 404


async def test_the_journal_keeps_every_pending_object_and_the_newest_settled_ones_up_to_its_bound(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path / "simulator.sqlite3")
    try:
        for number in range(10):
            journal.put("payment", f"settled-{number}", {"name": f"settled-{number}"}, settled=True)
            journal.put("payment", f"pending-{number}", {"name": f"pending-{number}"}, settled=False)
        forgotten = journal.prune(4)
        kept = {state["name"] for _, state in journal.load()}
    finally:
        journal.close()
    assert forgotten == 6
    assert kept == {f"pending-{number}" for number in range(10)} | {f"settled-{number}" for number in range(6, 10)}


def _serve(state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", "0", "--profile", "calm", "--state", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("simulator listening on "), line
    return line.split()[3]


def _call(url: str, method: str = "GET", body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - a URL the test built
        url, data=None if body is None else json.dumps(body).encode(), method=method
    )
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Idempotency-Key", key)
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def test_a_payment_pending_when_the_simulator_is_killed_is_known_after_it_starts_again(tmp_path: Path) -> None:
    state = tmp_path / "simulator.sqlite3"
    first = _serve(state)
    try:
        url = _url(first)
        _call(f"{url}/_sim/profile", "PUT", {"settings": NEVER})
        created = _call(f"{url}/v1/payments", "POST", {"amount": "9.99", "currency": "EUR"}, key="left-pending")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _serve(state)
        try:
            found = _call(f"{_url(second)}/v1/payments?idempotency_key=left-pending")
        finally:
            second.terminate()
            second.wait(10)
    finally:
        first.kill()
        first.wait(10)
    assert (found["id"], found["status"]) == (created["id"], "pending")


def test_a_second_simulator_on_the_same_state_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "simulator.sqlite3"
    first = _serve(state)
    try:
        url = _url(first)
        second = _serve(state)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert err.strip() == f"simulator: {state} is in use by another simulator (pid {first.pid}): stop it first"
        with urllib.request.urlopen(f"{url}/_sim/profile", timeout=5) as answer:  # noqa: S310 - loopback
            assert answer.status == 200  # the first is untouched
    finally:
        first.terminate()
        first.wait(10)


def test_an_unreadable_state_file_stops_it_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "simulator.sqlite3"
    state.write_bytes(b"not a database, not at all" * 100)
    process = _serve(state)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.count("\n") == 1 and err.startswith(f"simulator: cannot use the state file {state}"), err
