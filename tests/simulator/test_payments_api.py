"""The payments API over HTTP: idempotency as Stripe defines it, the status inquiry, the lifecycle."""

from __future__ import annotations

import asyncio

from tests.simulator.conftest import StartSim, eventually


async def test_same_key_and_body_replays_the_original_response(start_sim: StartSim) -> None:
    sim = await start_sim()
    first = await sim.pay("key-1")
    again = await sim.pay("key-1")
    assert first.status == again.status == 200
    assert first.json()["status"] == "pending"
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len((await sim.truth())["payments"]) == 1


async def test_same_key_with_another_body_is_a_conflict_naming_the_key(start_sim: StartSim) -> None:
    sim = await start_sim()
    assert (await sim.pay("key-2", "10.00")).status == 200
    conflict = await sim.pay("key-2", "10.01")
    assert conflict.status == 409
    assert "key-2" in conflict.json()["error"]["message"]


async def test_a_request_without_a_key_or_with_a_float_amount_is_refused(start_sim: StartSim) -> None:
    sim = await start_sim()
    body = {"amount": "1.00", "currency": "EUR", "reference": "r"}
    async with sim.http.post(f"{sim.url}/v1/payments", json=body) as response:
        assert response.status == 400
        assert "Idempotency-Key" in (await response.json())["error"]["message"]
    float_body = {"amount": 12.34, "currency": "EUR"}
    async with sim.http.post(f"{sim.url}/v1/payments", json=float_body, headers={"Idempotency-Key": "k"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "amount"
    assert (await sim.pay("k3", "1.001")).status == 400  # EUR has two decimal places
    assert (await sim.truth())["payments"] == []


async def test_fifty_concurrent_duplicates_create_exactly_one_payment(start_sim: StartSim) -> None:
    sim = await start_sim(latency="uniform", latency_ms=0, latency_max_ms=20)
    replies = await asyncio.gather(*(sim.pay("same-key") for _ in range(50)))
    assert {reply.status for reply in replies} == {200}
    assert len({reply.json()["id"] for reply in replies}) == 1
    assert sum("Idempotent-Replayed" not in reply.headers for reply in replies) == 1
    assert len((await sim.truth())["payments"]) == 1


async def test_status_inquiry_finds_a_payment_accepted_before_a_timeout(start_sim: StartSim) -> None:
    sim = await start_sim()
    status, body = await sim.get("/v1/payments?idempotency_key=never-sent")
    assert status == 404
    assert "never-sent" in body["error"]["message"]
    try:
        await sim.pay("lost-answer", fault="accept-then-timeout", timeout_s=0.3)
        raise AssertionError("accept-then-timeout answered")
    except TimeoutError:
        pass
    status, body = await sim.get("/v1/payments?idempotency_key=lost-answer")
    assert status == 200
    assert body["idempotency_key"] == "lost-answer"
    [payment] = (await sim.truth())["payments"]
    assert payment["id"] == body["id"]
    assert payment["create_fault"] == "accept-then-timeout"
    # retrying with the same key replays the answer the client never got
    retry = await sim.pay("lost-answer", fault="none")
    assert retry.json()["id"] == body["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"


async def test_payments_move_on_and_only_succeeded_ones_refund(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=1.0)
    created = (await sim.pay("ok")).json()
    assert created["status"] == "pending"

    async def moved() -> bool:
        status, body = await sim.get(f"/v1/payments/{created['id']}")
        return status == 200 and body["status"] == "succeeded"

    await eventually(moved, what="the payment to succeed")
    assert (await sim.get(f"/v1/payments/{created['id']}"))[1]["amount_refunded"] == "0.00"
    refund = await sim.refund(created["id"], "refund-all")
    assert (refund.status, refund.json()["status"], refund.json()["amount"]) == (200, "pending", "12.34")
    await eventually(sim.settled, what="the refund to succeed")
    refunded = (await sim.get(f"/v1/payments/{created['id']}"))[1]
    assert refunded["status"] == "refunded"
    assert refunded["amount_refunded"] == "12.34"
    assert (await sim.refund(created["id"], "refund-again")).status == 409
    assert (await sim.refund("pay_nope", "refund-nothing")).status == 404
    assert (await sim.get("/v1/payments/pay_nope"))[0] == 404
    [payment] = (await sim.truth())["payments"]
    assert payment["history"] == ["pending", "succeeded", "refunded"]


async def test_unsuccessful_payments_fail_or_decline_and_cannot_refund(start_sim: StartSim) -> None:
    sim = await start_sim(success_rate=0.0)
    ids = [(await sim.pay(f"bad-{n}")).json()["id"] for n in range(10)]
    await eventually(sim.settled, what="every payment to settle")
    statuses = {payment["final_status"] for payment in (await sim.truth())["payments"]}
    assert statuses <= {"failed", "declined"}
    assert len(statuses) == 2  # both outcomes occur with seed 42
    refused = await sim.refund(ids[0], "refund-failed")
    assert refused.status == 409
    assert "only succeeded" in refused.json()["error"]["message"]


async def test_client_errors_are_distinct_from_provider_errors(start_sim: StartSim) -> None:
    sim = await start_sim()
    async with sim.http.post(f"{sim.url}/v1/payments", data=b"{not json", headers={"Idempotency-Key": "k"}) as response:
        assert response.status == 400
    async with sim.http.get(f"{sim.url}/v1/payments") as response:
        assert response.status == 400
    async with sim.http.get(f"{sim.url}/v1/payments/x", headers={"Simulator-Fault": "explode"}) as response:
        assert response.status == 400
        assert "explode" in (await response.json())["error"]["message"]
