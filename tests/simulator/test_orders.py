"""The broker venue over real HTTP: acknowledgements, fills in parts, modify, cancel, idempotency, faults."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from tests.simulator.conftest import Receiver, StartSim, eventually


def _by_id(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {order["id"]: order for order in truth["orders"]}


async def test_an_order_is_acknowledged_then_filled_in_parts_that_add_up(
    start_sim: StartSim, receiver: Receiver
) -> None:
    sim = await start_sim(order_reject_rate=0.0, order_fill_parts_max=4, webhook_url=receiver.url)
    reply = await sim.order("o-1", quantity="100")
    assert reply.status == 200
    order = reply.json()
    assert (order["status"], order["filled_quantity"], order["leaves_quantity"]) == ("new", "0", "100")
    await eventually(sim.orders_settled, what="the order to fill")

    truth = _by_id(await sim.truth())[order["id"]]
    assert truth["final_status"] == "filled"
    executions = truth["executions"]
    assert sum(Decimal(e["quantity"]) for e in executions) == Decimal(100)
    assert len({e["id"] for e in executions}) == len(executions)
    assert [Decimal(e["cumulative_quantity"]) for e in executions] == sorted(
        {Decimal(e["cumulative_quantity"]) for e in executions}
    )
    assert [e["exec_type"] for e in executions] == ["partial_fill"] * (len(executions) - 1) + ["fill"]
    notional = sum(Decimal(e["quantity"]) * Decimal(e["price"]) for e in executions)
    assert Decimal(truth["average_price"]) == (notional / 100).quantize(Decimal("0.00000001"))

    status, listed = await sim.get(f"/v1/orders/{order['id']}/executions")
    assert status == 200
    assert [e["id"] for e in listed["data"]] == [e["id"] for e in executions]

    events = receiver.events(order["id"])
    assert [e["type"] for e in events] == ["order.new"] + [f"order.{e['exec_type']}" for e in executions]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["object"]["execution"]["id"] for e in events[1:]] == [e["id"] for e in executions]


async def test_a_limit_order_fills_at_its_limit_or_better(start_sim: StartSim) -> None:
    sim = await start_sim(order_reject_rate=0.0)
    buy = (await sim.order("buy", type="limit", limit_price="50.005", quantity="7.5")).json()
    sell = (await sim.order("sell", side="sell", type="limit", limit_price="50.005", quantity="3")).json()
    await eventually(sim.orders_settled, what="both orders to fill")
    truth = _by_id(await sim.truth())
    assert all(Decimal(e["price"]) <= Decimal("50.005") for e in truth[buy["id"]]["executions"])
    assert all(Decimal(e["price"]) >= Decimal("50.005") for e in truth[sell["id"]]["executions"])
    # parts are whole multiples of the quantity's smallest unit
    assert all(Decimal(e["quantity"]) % Decimal("0.1") == 0 for e in truth[buy["id"]]["executions"])


async def test_the_same_seed_gives_the_same_fills(start_sim: StartSim) -> None:
    def plan(truth: dict[str, Any]) -> list[list[tuple[str, str]]]:
        return [[(e["quantity"], e["price"]) for e in order["executions"]] for order in truth["orders"]]

    plans = []
    for _ in range(2):
        sim = await start_sim(seed=11, order_reject_rate=0.2, order_fill_parts_max=5)
        for n in range(8):
            await sim.order(f"seeded-{n}", quantity="1000", symbol=f"SYM{n}")
        await eventually(sim.orders_settled, what="the orders to finish")
        truth = await sim.truth()
        plans.append((plan(truth), [order["final_status"] for order in truth["orders"]]))
    assert plans[0] == plans[1]
    assert any(len(fills) > 1 for fills in plans[0][0])


async def test_an_idempotency_key_creates_one_order_even_under_50_concurrent_submits(start_sim: StartSim) -> None:
    sim = await start_sim(order_rest_rate=1.0, order_reject_rate=0.0)
    replies = await asyncio.gather(*(sim.order("same") for _ in range(50)))
    assert {reply.status for reply in replies} == {200}
    assert len({reply.json()["id"] for reply in replies}) == 1
    assert sum(reply.headers.get("Idempotent-Replayed") == "true" for reply in replies) == 49
    assert len((await sim.truth())["orders"]) == 1
    conflict = await sim.order("same", quantity="5")
    assert conflict.status == 409
    assert conflict.json()["error"]["param"] == "Idempotency-Key"
    status, found = await sim.get("/v1/orders?idempotency_key=same")
    assert (status, found["id"]) == (200, replies[0].json()["id"])
    assert (await sim.get("/v1/orders?idempotency_key=never-sent"))[0] == 404


async def test_bad_orders_are_refused_naming_the_field(start_sim: StartSim) -> None:
    sim = await start_sim()
    cases = {
        "quantity": {"quantity": "-1"},
        "limit_price": {"type": "market", "limit_price": "10"},
        "side": {"side": "short"},
        "symbol": {"symbol": "lower case"},
        "currency": {"currency": "usd"},
    }
    for param, fields in cases.items():
        reply = await sim.order(f"bad-{param}", **fields)
        assert reply.status == 400, param
        assert reply.json()["error"]["param"] == param
    assert (await sim.post("/v1/orders", {"symbol": "ACME"})).status == 400  # no key
    assert (await sim.truth())["orders"] == []


async def test_a_rejected_order_never_fills(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(order_reject_rate=1.0, webhook_url=receiver.url)
    order = (await sim.order("refused")).json()
    await eventually(sim.orders_settled, what="the rejection")
    truth = _by_id(await sim.truth())[order["id"]]
    assert (truth["final_status"], truth["executions"], truth["reject_reason"] is not None) == ("rejected", [], True)
    assert [e["type"] for e in receiver.events(order["id"])] == ["order.new", "order.rejected"]


async def test_cancel_stops_a_working_order_and_closes_a_filled_one(start_sim: StartSim) -> None:
    sim = await start_sim(order_rest_rate=1.0, order_reject_rate=0.0)
    resting = (await sim.order("rest")).json()
    canceled = await sim.post(f"/v1/orders/{resting['id']}/cancel")
    assert (canceled.status, canceled.json()["status"], canceled.json()["leaves_quantity"]) == (200, "canceled", "0")
    assert (await sim.post(f"/v1/orders/{resting['id']}/cancel")).status == 409
    assert (await sim.post("/v1/orders/ord_unknown/cancel")).status == 404

    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": {"order_rest_rate": 0.0}}) as response:
        assert response.status == 200
    filled = (await sim.order("fill")).json()
    await eventually(sim.orders_settled, what="the order to fill")
    closed = await sim.post(f"/v1/orders/{filled['id']}/cancel", key="close-1")
    assert (closed.status, closed.json()["status"]) == (200, "closed")
    again = await sim.post(f"/v1/orders/{filled['id']}/cancel", key="close-1")
    assert (again.status, again.json()) == (200, closed.json())  # the key replays the first answer


async def test_a_modification_is_confirmed_or_refused_later(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(order_rest_rate=1.0, order_reject_rate=0.0, modify_reject_rate=0.0, webhook_url=receiver.url)
    order = (await sim.order("mod", type="limit", limit_price="10.00")).json()
    pending = await sim.post(f"/v1/orders/{order['id']}/modify", {"limit_price": "10.50", "quantity": "120"})
    assert pending.status == 202
    assert pending.json()["modification"]["status"] == "pending"
    busy = await sim.post(f"/v1/orders/{order['id']}/modify", {"limit_price": "11"})
    assert busy.status == 409  # one change at a time

    async def replaced() -> bool:
        return any(e["type"] == "order.replaced" for e in receiver.events(order["id"]))

    await eventually(replaced, what="the replace")
    status, now = await sim.get(f"/v1/orders/{order['id']}")
    assert (status, now["limit_price"], now["quantity"]) == (200, "10.50", "120")

    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": {"modify_reject_rate": 1.0}}) as response:
        assert response.status == 200
    assert (await sim.post(f"/v1/orders/{order['id']}/modify", {"quantity": "90"})).status == 202

    async def refused() -> bool:
        return any(e["type"] == "order.modify_rejected" for e in receiver.events(order["id"]))

    await eventually(refused, what="the refusal")
    assert (await sim.get(f"/v1/orders/{order['id']}"))[1]["quantity"] == "120"

    market = (await sim.order("mkt")).json()
    no_limit = await sim.post(f"/v1/orders/{market['id']}/modify", {"limit_price": "1"})
    assert (no_limit.status, no_limit.json()["error"]["param"]) == (400, "limit_price")


async def test_a_larger_quantity_makes_a_filled_order_work_again(start_sim: StartSim) -> None:
    sim = await start_sim(order_reject_rate=0.0, modify_reject_rate=0.0)
    order = (await sim.order("grow", quantity="10")).json()
    await eventually(sim.orders_settled, what="the first fill")
    below = await sim.post(f"/v1/orders/{order['id']}/modify", {"quantity": "5"})
    assert (below.status, below.json()["error"]["param"]) == (400, "quantity")
    assert (await sim.post(f"/v1/orders/{order['id']}/modify", {"quantity": "25"})).status == 202

    async def refilled() -> bool:
        status, now = await sim.get(f"/v1/orders/{order['id']}")
        return bool(status == 200 and now["status"] == "filled" and now["filled_quantity"] == "25")

    await eventually(refilled, what="the order to fill its new quantity")


async def test_order_webhooks_take_the_same_faults_as_payments(start_sim: StartSim, receiver: Receiver) -> None:
    sim = await start_sim(order_reject_rate=0.0, order_fill_parts_max=1, webhook_url=receiver.url)
    order = (await sim.order("c", fault="webhook-contradict, webhook-duplicate")).json()
    await eventually(sim.orders_settled, what="the webhooks")
    events = receiver.events(order["id"])
    # each event twice; before the fill, the venue first claims the order was rejected
    expected = ["order.new", "order.rejected", "order.fill"]
    assert [e["type"] for e in events] == [kind for kind in expected for _ in range(2)]
    truth = _by_id(await sim.truth())[order["id"]]
    assert [e["contradictory"] for e in truth["webhooks"]] == [False, True, False]
    assert truth["final_status"] == "filled"


async def test_an_order_accepted_then_timed_out_exists_at_the_venue(start_sim: StartSim) -> None:
    sim = await start_sim(order_rest_rate=1.0, order_reject_rate=0.0)
    try:
        async with asyncio.timeout(0.3):
            await sim.order("lost", fault="accept-then-timeout")
    except TimeoutError:
        pass
    else:
        raise AssertionError("accept-then-timeout answered")
    status, found = await sim.get("/v1/orders?idempotency_key=lost")
    assert status == 200
    assert _by_id(await sim.truth())[found["id"]]["create_fault"] == "accept-then-timeout"


async def test_an_amendment_is_named_by_its_key_in_every_report_and_states_its_outcome(
    start_sim: StartSim, receiver: Receiver
) -> None:
    sim = await start_sim(order_rest_rate=1.0, order_reject_rate=0.0, modify_reject_rate=0.0, webhook_url=receiver.url)
    order = (await sim.order("amend", type="limit", limit_price="10.00", quantity="100")).json()
    path = f"/v1/orders/{order['id']}/modify"
    pending = await sim.post(path, {"quantity": "60", "limit_price": "10.25"}, key="amend-1")
    assert pending.status == 202
    assert {k: pending.json()["modification"][k] for k in ("idempotency_key", "status", "quantity", "limit_price")} == {
        "idempotency_key": "amend-1",
        "status": "pending",
        "quantity": "60",
        "limit_price": "10.25",
    }

    def reported(kind: str) -> list[dict[str, Any]]:
        return [e["data"]["object"] for e in receiver.events(order["id"]) if e["type"] == f"order.{kind}"]

    async def replaced() -> bool:
        return bool(reported("replaced"))

    await eventually(replaced, what="the replace")
    (confirmed,) = reported("replaced")
    assert (confirmed["quantity"], confirmed["limit_price"], confirmed["status"]) == ("60", "10.25", "new")
    assert (confirmed["modification"]["idempotency_key"], confirmed["modification"]["status"]) == (
        "amend-1",
        "confirmed",
    )
    status, now = await sim.get(f"/v1/orders/{order['id']}")  # the status inquiry states it too
    assert (status, now["modification"]["idempotency_key"], now["modification"]["status"]) == (
        200,
        "amend-1",
        "confirmed",
    )

    async with sim.http.put(f"{sim.url}/_sim/profile", json={"settings": {"modify_reject_rate": 1.0}}) as response:
        assert response.status == 200
    assert (await sim.post(path, {"quantity": "80"}, key="amend-2")).status == 202

    async def refused() -> bool:
        return bool(reported("modify_rejected"))

    await eventually(refused, what="the refusal")
    (rejected,) = reported("modify_rejected")
    assert rejected["quantity"] == "60"  # the terms in force did not change
    assert (rejected["modification"]["idempotency_key"], rejected["modification"]["status"]) == ("amend-2", "rejected")
    assert rejected["modification"]["reason"]


async def test_a_filled_order_changes_only_by_a_larger_quantity(start_sim: StartSim) -> None:
    sim = await start_sim(order_reject_rate=0.0, modify_reject_rate=0.0)
    order = (await sim.order("done", type="limit", limit_price="10.00", quantity="10")).json()
    await eventually(sim.orders_settled, what="the fill")
    for body in ({"limit_price": "9.50"}, {"quantity": "10"}, {"quantity": "10", "limit_price": "9.50"}):
        refused = await sim.post(f"/v1/orders/{order['id']}/modify", body)
        assert (refused.status, refused.json()["error"]["param"]) == (400, "quantity"), body
    assert (await sim.get(f"/v1/orders/{order['id']}"))[1]["modification"] is None  # nothing was asked


async def test_a_rejection_while_an_amendment_waits_ends_it_unanswered(start_sim: StartSim, receiver: Receiver) -> None:
    # equal pauses: the rejection (drawn at submission) comes before the answer to an amendment sent after it
    sim = await start_sim(
        order_reject_rate=1.0, modify_reject_rate=0.0, settle_min_ms=200, settle_max_ms=200, webhook_url=receiver.url
    )
    order = (await sim.order("doomed", type="limit", limit_price="10.00")).json()
    assert (await sim.post(f"/v1/orders/{order['id']}/modify", {"quantity": "60"}, key="too-late")).status == 202

    async def done() -> bool:  # the venue's own work for the order (its rejection, the amendment's answer) is over
        return not sim.simulator._tasks and await sim.orders_settled()

    await eventually(done, what="the rejection and the amendment's end")
    assert [e["type"] for e in receiver.events(order["id"])] == ["order.new", "order.rejected"]
    status, now = await sim.get(f"/v1/orders/{order['id']}")
    assert (status, now["status"], now["quantity"]) == (200, "rejected", "100")
    assert (now["modification"]["idempotency_key"], now["modification"]["status"]) == ("too-late", "canceled")
